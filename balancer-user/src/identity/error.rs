//! What can stop the workers' accounts from being settled, each variant worded as the user
//! reads it: the problem, and the fix where there is one.

use std::{ffi::NulError, io, path::PathBuf};

use super::claims::{FIRST, LAST};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `--user` or `--group` names no account, or one this supervisor cannot switch to.
    #[error(transparent)]
    Account(crate::worker::spawn::Error),
    /// What switching the workers' account needs of the supervisor's capabilities.
    #[error(transparent)]
    Capabilities(#[from] crate::capabilities::Error),
    #[error(
        "workers run as another user, which needs CAP_{}: grant {} (`--cap-add={}` for a \
         container), or pass --user root to keep workers in this account",
        .missing.join(", CAP_"),
        if .missing.len() == 1 { "it" } else { "them" },
        .missing.join(",")
    )]
    Switching { missing: Vec<&'static str> },
    #[error(
        "workers run as {what}s {first}-{last}, which this user namespace does not map \
         ({file}): map them (a rootless container's subordinate ids, /etc/subuid), or \
         pass --user with a mapped account, or --user root"
    )]
    Unmapped {
        what: &'static str,
        first: u32,
        last: u32,
        file: &'static str,
    },
    #[error("worker ids are claimed at start")]
    Unclaimed,

    // The register of dynamic ids (claims.rs).
    #[error("cannot create the worker id register {}", .dir.display())]
    CreateRegister {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the worker id register {} can be written by other users: make it owned by this user \
         with mode 0700, or set BALANCER_RUNTIME_DIR to a private directory",
        .dir.display()
    )]
    SharedRegister { dir: PathBuf },
    #[error("cannot write in the worker id register {}", .dir.display())]
    WriteRegister {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open {}/.lock", .dir.display())]
    OpenLock {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot lock the worker id register")]
    LockRegister(#[source] nix::Error),
    #[error("cannot lock this supervisor's worker id record")]
    LockRecord(#[source] nix::Error),
    #[error("cannot write the worker id record")]
    WriteRecord(#[source] io::Error),
    #[error(
        "no free worker id left in {FIRST}-{LAST} (each is an account, a group, or another \
         balancer's worker): pass --user with an account for the workers"
    )]
    NoFreeId,

    // The access check (access.rs).
    /// The message quotes the kernel's refusal (`reason`): it is not given again as a source.
    #[error(
        "uid {uid} (gid {gid}), which the workers run as, cannot {what} {} ({reason}): make it \
         and every directory above it readable by that user (e.g. chmod o+rx, or move it out \
         of /root), or pass --user with an account that can, or --user root",
        .path.display()
    )]
    Denied {
        uid: u32,
        gid: u32,
        what: &'static str,
        path: PathBuf,
        reason: io::Error,
    },
    #[error("a path of the worker command holds a NUL byte")]
    NulInPath(#[source] NulError),
    #[error("cannot create a pipe")]
    Pipe(#[source] nix::Error),
    #[error("cannot start a process as uid {uid} gid {gid} to check the worker command")]
    StartCheck {
        uid: u32,
        gid: u32,
        #[source]
        source: io::Error,
    },
    #[error("cannot wait for the access check")]
    WaitCheck(#[source] io::Error),

    /// Reading the register's directory.
    #[error(transparent)]
    Io(#[from] io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
