//! Can the workers' account reach the worker command? Asked once at start (and at each
//! reload), so that a script only root can read fails with one line naming the file, the
//! account and the fix, instead of as a worker that dies at every start.
//!
//! The question goes to the kernel, not to the mode bits: a child forked for the purpose takes
//! the workers' uid and gid (no supplementary group, as a worker) and calls `access(2)` on each
//! path, which weighs every directory on the way, ACLs and security modules alike. The paths
//! are the program (execute; read too when it is a `#!` script, which its interpreter opens)
//! and every argument that names an existing file (read) or directory (search): the script of
//! `python3 app.py` or `node server.js`, a config file. An argument that only looks like a path
//! (`--config=/etc/x`) is not weighed.

use std::{
    ffi::CString,
    io::Read as _,
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::{ffi::OsStrExt as _, process::CommandExt as _},
    },
    path::{Path, PathBuf},
};

use super::{Error, Result};
use crate::worker::spawn::{Credentials, WorkerCommand};

/// One path to weigh, and what the worker does with it.
struct Need {
    path: PathBuf,
    mode: libc::c_int,
}

/// Fails with one line unless `who` can run `cmd`: execute its program and read the files its
/// arguments name.
pub fn check(cmd: &WorkerCommand, who: Credentials) -> Result<()> {
    let needs = needs(cmd);
    let Some((i, errno)) = probe(&needs, who)? else {
        return Ok(());
    };
    let need = &needs[i];
    let what = if need.mode & libc::X_OK != 0 && need.path == cmd.program {
        "execute"
    } else if need.mode == libc::X_OK {
        "enter the directory"
    } else {
        "read"
    };
    Err(Error::Denied {
        uid: who.uid,
        gid: who.gid,
        what,
        path: need.path.clone(),
        reason: std::io::Error::from_raw_os_error(errno),
    })
}

fn needs(cmd: &WorkerCommand) -> Vec<Need> {
    let mut program = libc::X_OK;
    let mut head = [0u8; 2];
    let script = std::fs::File::open(&cmd.program)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && head == *b"#!";
    if script {
        program |= libc::R_OK;
    }
    let mut needs = vec![Need {
        path: cmd.program.clone(),
        mode: program,
    }];
    for arg in cmd.args.iter().skip(1) {
        let path = Path::new(arg);
        let Ok(meta) = std::fs::metadata(path) else {
            continue;
        };
        needs.push(Need {
            path: std::path::absolute(path).unwrap_or_else(|_| path.to_owned()),
            mode: if meta.is_dir() {
                libc::X_OK
            } else {
                libc::R_OK
            },
        });
    }
    needs
}

/// Forks a child that becomes `who` and tries each need: the index of the first refused and
/// its errno, or None when all pass.
fn probe(needs: &[Need], who: Credentials) -> Result<Option<(usize, i32)>> {
    let paths: Vec<CString> = needs
        .iter()
        .map(|n| CString::new(n.path.as_os_str().as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(Error::NulInPath)?;
    let modes: Vec<libc::c_int> = needs.iter().map(|n| n.mode).collect();
    let (read, write): (OwnedFd, OwnedFd) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(Error::Pipe)?;
    let out = write.as_raw_fd();
    // Never executed: the child ends in the closure, once it has its answer.
    let mut child = std::process::Command::new("/");
    child
        .uid(who.uid)
        .gid(who.gid)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: the closure runs in the forked child and makes only async-signal-safe calls
    // (access, write, _exit) on memory prepared before the fork.
    unsafe {
        child.pre_exec(move || {
            for (i, (path, mode)) in paths.iter().zip(&modes).enumerate() {
                if libc::access(path.as_ptr(), *mode) != 0 {
                    let answer = [i as u32, *libc::__errno_location() as u32];
                    libc::write(out, answer.as_ptr().cast(), std::mem::size_of_val(&answer));
                    libc::_exit(1);
                }
            }
            libc::_exit(0)
        });
    }
    let mut child = child.spawn().map_err(|source| Error::StartCheck {
        uid: who.uid,
        gid: who.gid,
        source,
    })?;
    drop(write);
    child.wait().map_err(Error::WaitCheck)?;
    let mut answer = [0u8; 8];
    let mut reader = std::fs::File::from(read);
    match reader.read_exact(&mut answer) {
        Ok(()) => {
            let index = u32::from_ne_bytes(answer[..4].try_into().expect("4 bytes"));
            let errno = u32::from_ne_bytes(answer[4..].try_into().expect("4 bytes"));
            Ok(Some((index as usize, errno as i32)))
        }
        Err(_) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_that_name_files_are_weighed() {
        let cmd = WorkerCommand::resolve(vec![
            "sh".into(),
            "-c".into(),
            "/etc/hostname".into(),
            "/".into(),
        ])
        .unwrap();
        let needs = needs(&cmd);
        assert_eq!(needs.len(), 3, "the program, a file, a directory");
        assert_eq!(needs[1].path, Path::new("/etc/hostname"));
        assert_eq!(needs[1].mode, libc::R_OK);
        assert_eq!(needs[2].mode, libc::X_OK);
    }
}
