//! What can go wrong on either side of the control socket, each worded as the user reads it:
//! the problem, and the fix where there is one.

use std::{io, path::PathBuf, time::Duration};

use super::Request;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create {}", .dir.display())]
    CreateDirectory {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the control socket's directory {}", .dir.display())]
    ReadDirectory {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the control socket's directory {} can be written by other users: pass --control \
         with a path in a private directory (such as $XDG_RUNTIME_DIR)",
        .dir.display()
    )]
    SharedDirectory { dir: PathBuf },
    #[error(
        "control socket {} is in use by another running balancer: stop it \
         (`balancer stop --control {}`) or pass another --control",
        .path.display(),
        .path.display()
    )]
    InUse { path: PathBuf },
    #[error("cannot remove the stale control socket {}", .path.display())]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create the control socket {}", .path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "bad --name {0:?}: use 1 to 64 letters, digits, '-', '_' or '.', not starting with '.'"
    )]
    BadName(String),
    #[error("no balancer named {name:?} runs here (running: {running}); `balancer ls` lists them")]
    NoSuchName { name: String, running: String },
    #[error(
        "no balancer runs here (none answers in {}): start one with `balancer run`, or pass \
         --control",
        .dir.display()
    )]
    NoneRunning { dir: PathBuf },
    #[error("several balancers run here ({0}): pick one with --name")]
    Several(String),
    #[error(
        "no balancer answers on {}: is it running? (pass --control if it uses another socket)",
        .path.display()
    )]
    NotRunning {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the supervisor closed the connection without answering `{0}` (it is stopping, or it \
         exited)"
    )]
    Closed(Request),
    #[error("the supervisor did not answer `{request}` within {limit:?}")]
    Timeout { request: Request, limit: Duration },
    #[error("reading the answer to `{request}`")]
    ReadAnswer {
        request: Request,
        #[source]
        source: io::Error,
    },
    #[error("reading the supervisor's answer")]
    ReadStream(#[source] io::Error),
    #[error("the supervisor refused `{request}`: {reason}")]
    Refused { request: Request, reason: String },
    #[error("unexpected answer line {line:?}")]
    Unexpected {
        line: String,
        #[source]
        source: serde_json::Error,
    },
    /// A `status` answer that is not a status.
    #[error(transparent)]
    BadStatus(serde_json::Error),
    /// Writing the request, or the output.
    #[error(transparent)]
    Io(#[from] io::Error),
}
