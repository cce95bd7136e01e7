//! What a worker runs and as whom: the worker command, resolved once when the supervisor starts
//! (the built-in worker is the supervisor's own executable), and the account of `--user` and
//! `--group`.

use std::{
    ffi::{OsStr, OsString},
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use super::spawn::{Error, Result};

/// The supervisor's own executable, as the built-in worker is started.
const SELF_EXE: &str = "/proc/self/exe";

/// A worker command, checked once when the supervisor starts.
#[derive(Clone, Debug)]
pub struct WorkerCommand {
    /// Absolute path of the program, resolved through PATH.
    pub program: PathBuf,
    /// argv, including argv[0] as the user wrote it.
    pub args: Vec<OsString>,
}

impl WorkerCommand {
    /// Resolves `argv[0]` like a shell would, so that a typo fails at start-up with one line
    /// instead of as a crash loop.
    pub fn resolve(args: Vec<OsString>) -> Result<WorkerCommand> {
        let Some(first) = args.first() else {
            return Err(Error::EmptyCommand);
        };
        let program =
            find_program(first).ok_or_else(|| Error::NotFound(first.to_string_lossy().into()))?;
        Ok(WorkerCommand { program, args })
    }

    /// The built-in HTTP worker: this very executable, `balancer worker`, executed through
    /// `/proc/self/exe`, which reaches the file without walking its directories: a worker of
    /// another account runs it even from a directory only root may enter (a build under /root).
    pub fn builtin() -> Result<WorkerCommand> {
        let exe = std::env::current_exe().map_err(Error::CurrentExe)?;
        Ok(WorkerCommand {
            program: PathBuf::from(SELF_EXE),
            args: vec![exe.into_os_string(), "worker".into()],
        })
    }

    pub fn is_builtin(&self) -> bool {
        self.program == Path::new(SELF_EXE)
    }

    pub fn display(&self) -> String {
        self.args
            .iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn find_program(name: &OsStr) -> Option<PathBuf> {
    let is_exec = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| {
                m.is_file()
                    && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
            })
            .unwrap_or(false)
    };
    if name.as_bytes().contains(&b'/') {
        let p = PathBuf::from(name);
        return is_exec(&p).then(|| std::path::absolute(&p).unwrap_or(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_exec(p))
}

/// The unprivileged account workers run as (`--user`, `--group`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
}

impl Credentials {
    /// Resolves `--user NAME|UID` and `--group NAME|GID` (default: the user's primary group).
    pub fn resolve(user: &str, group: Option<&str>) -> Result<Credentials> {
        use nix::unistd::{Group, User};
        let u = match user.parse::<u32>() {
            Ok(uid) => User::from_uid(uid.into())?,
            Err(_) => User::from_name(user)?,
        }
        .ok_or_else(|| Error::NoSuchUser(user.to_owned()))?;
        let gid = match group {
            None => u.gid.as_raw(),
            Some(g) => match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => Group::from_name(g)?
                    .ok_or_else(|| Error::NoSuchGroup(g.to_owned()))?
                    .gid
                    .as_raw(),
            },
        };
        if !nix::unistd::geteuid().is_root() && u.uid != nix::unistd::geteuid() {
            return Err(Error::NotRoot(user.to_owned()));
        }
        Ok(Credentials {
            uid: u.uid.as_raw(),
            gid,
        })
    }
}
