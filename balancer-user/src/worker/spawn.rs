//! Starting one worker process with its slot's listener, the systemd way.
//!
//! A worker gets its descriptors beyond stdio in order: its slot's listening socket as fd 3
//! (`LISTEN_FDS=1`, `LISTEN_PID`, `LISTEN_FDNAMES`, as `sd_listen_fds(3)` expects), and with
//! `--overflow` a second, the shared overflow listener, as fd 4 (`LISTEN_FDS=2`,
//! `LISTEN_FDNAMES=balancer:overflow`); after them, unless `--channel off`, its end of its
//! message channel (named by `BALANCER_CHANNEL_FD`, see [`channel`](crate::channel)). Every
//! other descriptor (sibling listeners, the programs, the maps, anything the supervisor
//! itself inherited) is closed in the child before the exec and never reaches it: a worker has
//! no handle on any slot's load, its own included.
//!
//! `LISTEN_PID` must hold the worker's own pid, known only after the fork; setting an
//! environment variable in the forked child of a multi-threaded parent may deadlock on the
//! allocator, so the environment block is prepared before the fork with room for the digits,
//! which the child fills in before calling `execve` itself.

use std::{
    ffi::{CString, NulError, OsStr},
    io,
    os::{
        fd::{AsRawFd, BorrowedFd, RawFd},
        unix::{ffi::OsStrExt, process::CommandExt},
    },
};

/// What can stop a worker command from being resolved or a worker from being started, each
/// worded as the user reads it: the problem, and the fix where there is one.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("empty worker command")]
    EmptyCommand,
    #[error(
        "worker command not found: {0}: check the spelling, install it, or give its full path"
    )]
    NotFound(String),
    #[error("cannot find the balancer executable")]
    CurrentExe(#[source] io::Error),
    #[error("no such user: {0} (see /etc/passwd)")]
    NoSuchUser(String),
    #[error("no such group: {0} (see /etc/group)")]
    NoSuchGroup(String),
    #[error(
        "--user {0} needs root (CAP_SETUID and CAP_SETGID) to switch workers to another account"
    )]
    NotRoot(String),
    /// Looking an account or a group up.
    #[error(transparent)]
    Lookup(#[from] nix::Error),
    #[error("argument or environment entry contains a NUL byte")]
    Nul(#[source] NulError),
    #[error(
        "cannot start worker `{command}`: its interpreter `{interpreter}` (its #! line) does not exist: install it or fix the line"
    )]
    Interpreter {
        command: String,
        interpreter: String,
    },
    #[error("cannot start worker `{command}`")]
    Start {
        command: String,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub use super::command::{Credentials, WorkerCommand};

/// Fd numbers a worker finds its descriptors at.
pub const LISTEN_FD: i32 = 3;
/// The shared overflow listener, when the worker gets one (`--overflow`).
pub const OVERFLOW_FD: i32 = 4;

/// Digits reserved for the pid in `LISTEN_PID=`.
const PID_DIGITS: usize = 10;

/// Capability numbers tried when emptying a worker's bounding set: every capability a kernel
/// defines today is below it (CAP_LAST_CAP is 40 on 6.18), and the rest answer EINVAL.
const CAP_NUMBERS: libc::c_int = 64;

/// What one spawn gives the worker beyond the command.
pub struct Spawn<'a> {
    pub slot: u32,
    /// Run the worker as this user and group, with no supplementary group.
    pub credentials: Option<Credentials>,
    /// NOTIFY_SOCKET for the worker (`@name`: an abstract socket), for READY=1.
    pub notify: Option<String>,
    pub listener: BorrowedFd<'a>,
    /// The shared overflow listener, passed as fd 4 (`--overflow`).
    pub overflow: Option<BorrowedFd<'a>>,
    /// The worker's end of its message channel, passed as the fd after the listeners.
    pub channel: Option<BorrowedFd<'a>>,
}

fn cstring(s: impl AsRef<OsStr>) -> Result<CString> {
    CString::new(s.as_ref().as_bytes()).map_err(Error::Nul)
}

/// Forks and execs one worker. The child gets its own process group, so that a Ctrl-C in the
/// terminal reaches the supervisor alone, which then stops the workers in order; and it gets
/// SIGTERM if the supervisor dies, so no worker outlives it holding a listener.
pub fn spawn(cmd: &WorkerCommand, spawn: Spawn<'_>) -> Result<tokio::process::Child> {
    let program = cstring(&cmd.program)?;
    let argv: Vec<CString> = cmd.args.iter().map(cstring).collect::<Result<_>>()?;
    let descriptors = Descriptors::of(&spawn);
    let (env, pid_index) = environment(&spawn, descriptors.channel_fd)?;
    let image = ExecImage::new(program, argv, env, pid_index);

    let mut command = std::process::Command::new(&cmd.program);
    command.process_group(0);
    // Read by the supervisor line by line (crate::logs), never left to fill up.
    command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    // Switched in the child below rather than by std, which would do it before the bounding
    // set is emptied, and without CAP_SETPCAP by then.
    let credentials = spawn.credentials;
    let drop_groups = nix::unistd::geteuid().is_root();
    // SAFETY: the closure runs in the forked child and only makes async-signal-safe calls and
    // writes into memory prepared before the fork (the child's own copy of it).
    unsafe {
        command.pre_exec(move || {
            drop_privileges(credentials, drop_groups)?;
            descriptors.place()?;
            image.exec()
        });
    }
    tokio::process::Command::from(command)
        .kill_on_drop(false)
        .spawn()
        .map_err(|source| match missing_interpreter(&cmd.program, &source) {
            Some(interpreter) => Error::Interpreter {
                command: cmd.display(),
                interpreter,
            },
            None => Error::Start {
                command: cmd.display(),
                source,
            },
        })
}

/// The `#!` interpreter of `program` when its exec failed with ENOENT although the program
/// exists: the kernel says "no such file" for the interpreter it could not find.
fn missing_interpreter(program: &std::path::Path, error: &io::Error) -> Option<String> {
    if error.kind() != io::ErrorKind::NotFound {
        return None;
    }
    let mut head = [0u8; 256];
    let n = std::io::Read::read(&mut std::fs::File::open(program).ok()?, &mut head).ok()?;
    let line = head[..n]
        .strip_prefix(b"#!")?
        .split(|&b| b == b'\n')
        .next()?;
    let interpreter = String::from_utf8_lossy(line)
        .split_whitespace()
        .next()?
        .to_string();
    Some(interpreter)
}

/// The worker's environment: the supervisor's own, less what names descriptors or a slot,
/// then the worker's listeners, slot, readiness socket and channel. The last entry is
/// `LISTEN_PID`, with room for the digits the child fills in: the second value is its index.
fn environment(spawn: &Spawn<'_>, channel_fd: i32) -> Result<(Vec<CString>, usize)> {
    let mut env: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| {
            !k.to_str()
                .is_some_and(|k| crate::channel::ENVIRONMENT.contains(&k))
                && !matches!(
                    k.to_str(),
                    Some(
                        "LISTEN_FDS"
                            | "LISTEN_PID"
                            | "LISTEN_FDNAMES"
                            | "BALANCER_SLOT"
                            | "NOTIFY_SOCKET"
                    )
                )
        })
        .map(|(k, v)| {
            let mut kv = k;
            kv.push("=");
            kv.push(v);
            cstring(kv)
        })
        .collect::<Result<_>>()?;
    if spawn.overflow.is_some() {
        env.push(cstring("LISTEN_FDS=2")?);
        env.push(cstring("LISTEN_FDNAMES=balancer:overflow")?);
    } else {
        env.push(cstring("LISTEN_FDS=1")?);
        env.push(cstring("LISTEN_FDNAMES=balancer")?);
    }
    env.push(cstring(format!("BALANCER_SLOT={}", spawn.slot))?);
    if let Some(notify) = &spawn.notify {
        env.push(cstring(format!("NOTIFY_SOCKET={notify}"))?);
    }
    if spawn.channel.is_some() {
        for kv in crate::channel::environment(channel_fd) {
            env.push(cstring(kv)?);
        }
    }
    let pid_index = env.len();
    env.push(cstring(format!("LISTEN_PID={}", "0".repeat(PID_DIGITS)))?);
    Ok((env, pid_index))
}

/// In the forked child: no capability at all, even as root, then the worker's account.
///
/// # Safety
///
/// Only in the forked child, before the exec: it makes async-signal-safe calls only.
unsafe fn drop_privileges(credentials: Option<Credentials>, drop_groups: bool) -> io::Result<()> {
    // No capability at all, even as root: the bounding set emptied, so that execve gives
    // a root worker nothing; and the inheritable set cleared. A worker can then neither
    // touch BPF objects nor read or trace the supervisor, and the supervisor, holding
    // capabilities it has not, may read its descriptor table to reconcile its load.
    for cap in 0..CAP_NUMBERS {
        // EINVAL: no such capability on this kernel. EPERM: this process cannot drop
        // capabilities (no CAP_SETPCAP), which `capabilities::require_worker_isolation`
        // allows only when it holds none worth keeping from a worker.
        if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0
            && *libc::__errno_location() != libc::EINVAL
            && *libc::__errno_location() != libc::EPERM
        {
            return Err(io::Error::last_os_error());
        }
    }
    // The account last: no supplementary group, then the gid, then the uid (which
    // drops every capability left when it is not root's).
    if let Some(c) = credentials {
        if (drop_groups && libc::setgroups(0, std::ptr::null()) != 0)
            || libc::setgid(c.gid) != 0
            || libc::setuid(c.uid) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    // After the setuid, which clears the parent-death signal.
    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
        return Err(io::Error::last_os_error());
    }
    if crate::capabilities::clear_inheritable() != 0 {
        return Err(io::Error::last_os_error());
    }
    // Ambient capabilities (e.g. systemd's AmbientCapabilities=CAP_BPF for the
    // supervisor) would survive the exec into an unprivileged worker: clear them.
    if libc::prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL,
        0,
        0,
        0,
    ) != 0
        && *libc::__errno_location() != libc::EINVAL
    {
        return Err(io::Error::last_os_error());
    }
    // No setuid binary or file capability can give the worker more than it has now.
    if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The supervisor's descriptors a worker gets, by number, for the forked child.
#[derive(Clone, Copy)]
struct Descriptors {
    listener: RawFd,
    overflow: Option<RawFd>,
    channel: Option<RawFd>,
    /// Where the channel goes in the worker: right after the listeners.
    channel_fd: i32,
}

impl Descriptors {
    fn of(spawn: &Spawn<'_>) -> Descriptors {
        Descriptors {
            listener: spawn.listener.as_raw_fd(),
            overflow: spawn.overflow.map(|o| o.as_raw_fd()),
            channel: spawn.channel.map(|c| c.as_raw_fd()),
            channel_fd: match spawn.overflow {
                Some(_) => OVERFLOW_FD + 1,
                None => LISTEN_FD + 1,
            },
        }
    }

    /// In the forked child: puts each descriptor at its number and closes every other one.
    ///
    /// # Safety
    ///
    /// Only in the forked child, before the exec: it makes async-signal-safe calls only.
    unsafe fn place(self) -> io::Result<()> {
        let Descriptors {
            listener,
            overflow,
            channel,
            channel_fd,
        } = self;
        // Move the fds above the target numbers first, so that no dup2 overwrites another's
        // source.
        let l = libc::fcntl(listener, libc::F_DUPFD_CLOEXEC, 10);
        let o = match overflow {
            Some(o) => libc::fcntl(o, libc::F_DUPFD_CLOEXEC, 10),
            None => 0,
        };
        let c = match channel {
            Some(c) => libc::fcntl(c, libc::F_DUPFD_CLOEXEC, 10),
            None => 0,
        };
        if l < 0 || o < 0 || c < 0 || libc::dup2(l, LISTEN_FD) < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut keep = LISTEN_FD;
        if overflow.is_some() {
            if libc::dup2(o, OVERFLOW_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            keep = OVERFLOW_FD;
        }
        if channel.is_some() {
            if libc::dup2(c, channel_fd) < 0 {
                return Err(io::Error::last_os_error());
            }
            keep = channel_fd;
        }
        // Everything above goes at the exec, including fds the supervisor itself inherited
        // without close-on-exec from whatever started it (a jobserver pipe, a shell's fd): a
        // worker gets stdio, its listener, nothing else. Marked close-on-exec rather than
        // closed now: std reports a failed exec to the parent through a pipe among them, so
        // that a command that cannot run is "cannot start worker", not a child that aborts.
        // Kernels before 5.11 know no CLOSE_RANGE_CLOEXEC: closed now there.
        let first = keep as u32 + 1;
        if libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        ) != 0
            && libc::syscall(libc::SYS_close_range, first, u32::MAX, 0u32) != 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The program, argv and environment as `execve` wants them, built before the fork.
struct ExecImage {
    program: CString,
    _argv: Vec<CString>,
    env: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    env_ptrs: Vec<*const libc::c_char>,
    pid_index: usize,
}

// SAFETY: only used by the forked child, which has a single thread.
unsafe impl Send for ExecImage {}
unsafe impl Sync for ExecImage {}

impl ExecImage {
    fn new(program: CString, argv: Vec<CString>, env: Vec<CString>, pid_index: usize) -> ExecImage {
        let ptrs = |v: &[CString]| {
            v.iter()
                .map(|a| a.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect()
        };
        ExecImage {
            argv_ptrs: ptrs(&argv),
            env_ptrs: ptrs(&env),
            program,
            _argv: argv,
            env,
            pid_index,
        }
    }

    /// In the child: fills in `LISTEN_PID` and replaces the process image. Returns only on error.
    unsafe fn exec(&self) -> io::Result<()> {
        let entry = self.env[self.pid_index].as_ptr() as *mut u8;
        write_pid(entry.add("LISTEN_PID=".len()), libc::getpid() as u32);
        libc::execve(
            self.program.as_ptr(),
            self.argv_ptrs.as_ptr(),
            self.env_ptrs.as_ptr(),
        );
        Err(io::Error::last_os_error())
    }
}

/// Writes `pid` in decimal followed by a NUL over the placeholder, which has room for any pid.
/// No zero padding: C parsers such as systemd's read a leading zero as octal.
unsafe fn write_pid(dst: *mut u8, mut pid: u32) {
    let mut digits = [0u8; PID_DIGITS];
    let mut n = 0;
    loop {
        digits[n] = b'0' + (pid % 10) as u8;
        n += 1;
        pid /= 10;
        if pid == 0 {
            break;
        }
    }
    for i in 0..n {
        *dst.add(i) = digits[n - 1 - i];
    }
    *dst.add(n) = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_through_path_and_names_a_missing_command() {
        let sh = WorkerCommand::resolve(vec!["sh".into(), "-c".into(), "true".into()]).unwrap();
        assert!(sh.program.is_absolute());
        let e = WorkerCommand::resolve(vec!["no-such-server-xyz".into()]).unwrap_err();
        assert!(
            format!("{e:#}").contains("worker command not found: no-such-server-xyz"),
            "{e:#}"
        );
    }

    #[test]
    fn pid_is_written_in_plain_decimal() {
        let mut buf = *b"00000000000";
        unsafe { write_pid(buf.as_mut_ptr(), 4321) };
        assert_eq!(&buf[..5], b"4321\0");
        unsafe { write_pid(buf.as_mut_ptr(), u32::MAX) };
        assert_eq!(&buf, b"4294967295\0");
        unsafe { write_pid(buf.as_mut_ptr(), 0) };
        assert_eq!(&buf[..2], b"0\0");
    }
}
