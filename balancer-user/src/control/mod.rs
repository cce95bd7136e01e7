//! The control socket: a Unix stream socket, mode 0600, on which `balancer status`, `stop` and
//! the other client commands talk to a running supervisor.
//!
//! One request per connection: a single line naming the command, at most [`MAX_REQUEST`] bytes
//! (a `send`, whose message may take 64 KiB: [`MAX_LINE`](crate::channel::request::MAX_LINE)),
//! read within [`REQUEST_TIMEOUT`]. The answer is one line of JSON. Anything else gets an error
//! line and the connection is closed; a client can neither crash nor stall the supervisor.

//!
//! [`request`]: what a client may ask, written and parsed. [`answer`]: what it is answered.
//! [`status`]: the answer to `status`, and its table. [`error`]: what can go wrong. [`client`]: the client side of every command. [`logs`]: `balancer logs`, served from
//! the log store. [`services`]: several balancers on one host, found by name. [`watch`]:
//! `balancer status --watch`. [`peer`]: refusing workers.

pub mod answer;
pub mod client;
pub mod error;
pub mod logs;
pub mod peer;
pub mod request;
pub mod services;
pub mod status;
pub mod watch;

use std::{
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::Path,
    time::Duration,
};

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};

pub use answer::Answer;
pub use client::{call, logs};
pub use error::Error;
pub use logs::serve_logs;
pub use request::{parse_request, Request, MAX_WEIGHT};

type Result<T, E = Error> = std::result::Result<T, E>;
pub use services::{check_name, find, path_for, render_services, running, runtime_dir, Service};
pub use status::{render, OverflowStatus, ReconciliationStatus, SlotStatus, State, Status};

pub const MAX_REQUEST: usize = 1024;
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Creates the socket's directory (0700) if missing and checks that only this user (or root)
/// can write to it. Run with the other start-up checks, before anything is created.
pub fn prepare_directory(path: &Path) -> Result<()> {
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| Error::CreateDirectory {
                dir: dir.to_owned(),
                source,
            })?;
    }
    check_private(dir)
}

/// Refuses a directory that other users may write to: there, another user could replace the
/// socket or take its name first.
fn check_private(dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(dir).map_err(|source| Error::ReadDirectory {
        dir: dir.to_owned(),
        source,
    })?;
    let me = nix::unistd::geteuid().as_raw();
    if meta.mode() & 0o022 != 0 || (meta.uid() != me && meta.uid() != 0) {
        return Err(Error::SharedDirectory {
            dir: dir.to_owned(),
        });
    }
    Ok(())
}

/// Binds the control socket with mode 0600. A socket file left by a supervisor that died is
/// replaced; one that still answers belongs to a running supervisor and is an error.
pub fn bind(path: &Path) -> Result<tokio::net::UnixListener> {
    prepare_directory(path)?;
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(Error::InUse {
                path: path.to_owned(),
            });
        }
        std::fs::remove_file(path).map_err(|source| Error::RemoveStale {
            path: path.to_owned(),
            source,
        })?;
    }
    // The umask makes the socket 0600 from its creation: no window in which others may connect.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let listener = tokio::net::UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = listener.map_err(|source| Error::Bind {
        path: path.to_owned(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Reads one request from `stream`, bounded in size and time.
pub async fn read_request(
    stream: &mut tokio::net::UnixStream,
) -> std::result::Result<Request, String> {
    let mut reader = tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(
        stream,
        crate::channel::request::MAX_LINE as u64 + 1,
    ));
    let mut line = Vec::new();
    match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_until(b'\n', &mut line)).await {
        Err(_) => Err("request timed out".into()),
        Ok(Err(e)) => Err(format!("cannot read request: {e}")),
        Ok(Ok(_)) => parse_request(&line),
    }
}

/// Writes one answer line: an [`Answer`], or an answer already written as its line.
pub async fn reply(
    stream: &mut tokio::net::UnixStream,
    answer: &(impl std::fmt::Display + ?Sized),
) {
    let line = answer.to_string();
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, async {
        stream.write_all(line.as_bytes()).await?;
        stream.write_all(b"\n").await
    })
    .await;
}
