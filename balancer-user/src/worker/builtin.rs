//! The built-in demo worker: `balancer worker`.
//!
//! A single-threaded HTTP/1.1 server, built like a Node.js process: one event loop on one
//! thread, so a request that holds the loop (`/work?ms=N`) holds every other connection of this
//! worker too. That is the behaviour the balancer exists to route around.
//!
//! It takes its listener from fd 3 (`LISTEN_FDS`), and the shared overflow queue from fd 4 when
//! it gets one (`LISTEN_FDNAMES=balancer:overflow`), which it accepts from only when it has no
//! work in hand: a connection waiting there is for whichever worker frees up first. Like any
//! other worker, it reports nothing about its load, which the kernel tracks on its own.
//!
//! Routes: `GET /` answers `slot=<slot> pid=<pid>`; `GET /work?ms=N` holds the loop for N ms
//! (sleeping, or burning CPU with `&cpu=1`); `GET /healthz` answers `ok`.

use std::{
    convert::Infallible,
    os::fd::FromRawFd,
    rc::Rc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, Request, Response, StatusCode};

use crate::worker::spawn::{LISTEN_FD, OVERFLOW_FD};

/// What stops the built-in worker, each worded as the user reads it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("LISTEN_FDS or LISTEN_PID is malformed")]
    Malformed(#[source] std::io::Error),
    #[error(
        "no listener passed to this process (LISTEN_FDS and LISTEN_PID): `balancer worker` is \
         started by `balancer run`, which passes it a listener on fd 3"
    )]
    NoListener,
    /// Its sockets, its runtime, its signal handler.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Longest hold `/work` accepts, so that a typo cannot wedge a worker for hours.
const MAX_WORK_MS: u64 = 60_000;

/// Whether fd 3 is a datagram socket (`balancer run --udp`).
fn inherited_is_datagram() -> bool {
    let mut kind: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: reads one int into `kind`.
    let rc = unsafe {
        libc::getsockopt(
            LISTEN_FD,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&raw mut kind).cast(),
            &mut len,
        )
    };
    rc == 0 && kind == libc::SOCK_DGRAM
}

/// The UDP worker: answers each datagram with `slot=<slot> pid=<pid>`, after holding its single
/// thread for N ms if the datagram reads `work ms=N`.
fn serve_udp() -> Result<()> {
    check_listen_env()?;
    // SAFETY: fd 3 was passed to us as a bound UDP socket; we take ownership of it.
    let socket = unsafe { std::net::UdpSocket::from_raw_fd(LISTEN_FD) };
    socket.set_nonblocking(false)?;
    let slot = std::env::var("BALANCER_SLOT").unwrap_or_else(|_| "-".into());
    let pid = std::process::id();
    let mut buf = [0u8; 2048];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        let text = String::from_utf8_lossy(&buf[..n]);
        let mut reply = format!("slot={slot} pid={pid}\n");
        if let Some(ms) = text
            .trim()
            .strip_prefix("work ms=")
            .and_then(|v| v.parse::<u64>().ok())
        {
            let ms = ms.min(MAX_WORK_MS);
            hold_loop(Duration::from_millis(ms), false);
            reply = format!("slot={slot} pid={pid} worked={ms}ms\n");
        }
        let _ = socket.send_to(reply.as_bytes(), peer);
    }
}

/// Takes the listener the way `sd_listen_fds(3)` does, and the shared overflow listener when
/// one was passed as the second descriptor (`LISTEN_FDNAMES=balancer:overflow`).
fn inherited_listeners() -> Result<(std::net::TcpListener, Option<std::net::TcpListener>)> {
    // Read first: the check below consumes the variables, as sd_listen_fds(3) does.
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    let two = std::env::var("LISTEN_FDS").as_deref() == Ok("2");
    check_listen_env()?;
    // SAFETY: fd 3 was passed to us as a listening socket; we take ownership of it.
    let listener = unsafe { std::net::TcpListener::from_raw_fd(LISTEN_FD) };
    listener.set_nonblocking(true)?;
    let overflow = if two && names.split(':').nth(1) == Some("overflow") {
        // SAFETY: fd 4 was passed to us as the overflow listener; we take ownership of it.
        let overflow = unsafe { std::net::TcpListener::from_raw_fd(OVERFLOW_FD) };
        overflow.set_nonblocking(true)?;
        Some(overflow)
    } else {
        None
    };
    Ok((listener, overflow))
}

/// Checks that fd 3 was passed to this very process (LISTEN_FDS, LISTEN_PID), as
/// `sd_listen_fds(3)` does.
fn check_listen_env() -> Result<()> {
    // A launcher that cannot know the pid before the exec leaves LISTEN_PID out: fd 3 is then
    // taken on LISTEN_FDS alone. When LISTEN_PID is set, it must name this process.
    let fds_only = std::env::var_os("LISTEN_PID").is_none()
        && std::env::var("LISTEN_FDS")
            .ok()
            .and_then(|v| v.parse::<u32>().ok())
            .is_some_and(|n| n >= 1);
    if fds_only {
        return Ok(());
    }
    let mut fds = sd_notify::listen_fds().map_err(Error::Malformed)?;
    if fds.next() != Some(LISTEN_FD) {
        return Err(Error::NoListener);
    }
    Ok(())
}

pub fn run() -> Result<()> {
    print_messages();
    if inherited_is_datagram() {
        return serve_udp();
    }
    let (listener, overflow) = inherited_listeners()?;
    let slot = std::env::var("BALANCER_SLOT").unwrap_or_else(|_| "-".into());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(
        &runtime,
        super::accept::serve(listener, overflow, Rc::from(slot)),
    )?;
    Ok(())
}

/// Prints each message `balancer send` sends on this worker's channel to stdout (`balancer
/// logs` shows it), from a thread of its own, so that the demo worker reads its channel like a
/// real one would.
fn print_messages() {
    use std::io::BufRead as _;
    let Some(fd) = std::env::var("BALANCER_CHANNEL_FD")
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    else {
        return;
    };
    // SAFETY: the supervisor passed this fd as this process's end of its channel, used only here.
    let channel = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(channel).lines() {
            let Ok(line) = line else { return };
            println!("message: {line}");
        }
    });
}

/// Tells the supervisor this worker serves (systemd's READY=1), if it asked. By hand rather than
/// with sd-notify, which sends only to socket paths: the supervisor's sockets are abstract
/// (`@name`), as systemd allows.
pub(super) fn notify_ready() {
    use std::os::linux::net::SocketAddrExt as _;
    let Ok(path) = std::env::var("NOTIFY_SOCKET") else {
        return;
    };
    let addr = match path.strip_prefix('@') {
        Some(name) => std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()),
        None => std::os::unix::net::SocketAddr::from_pathname(&path),
    };
    if let (Ok(addr), Ok(socket)) = (addr, std::os::unix::net::UnixDatagram::unbound()) {
        let _ = socket.send_to_addr(b"READY=1", &addr);
    }
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

pub(super) async fn handle(
    req: Request<Incoming>,
    slot: Rc<str>,
    pid: u32,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let text = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        Ok(r)
    };
    match req.uri().path() {
        "/" => text(StatusCode::OK, format!("slot={slot} pid={pid}\n")),
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/work" => {
            let query = req.uri().query().unwrap_or("");
            let Some(ms) = query_param(query, "ms").and_then(|v| v.parse::<u64>().ok()) else {
                return text(
                    StatusCode::BAD_REQUEST,
                    "usage: /work?ms=N[&cpu=1]\n".into(),
                );
            };
            let ms = ms.min(MAX_WORK_MS);
            let cpu = query_param(query, "cpu") == Some("1");
            hold_loop(Duration::from_millis(ms), cpu);
            text(
                StatusCode::OK,
                format!("slot={slot} pid={pid} worked={ms}ms\n"),
            )
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

/// Blocks the event loop on purpose, as a synchronous handler in Node.js would.
fn hold_loop(d: Duration, cpu: bool) {
    if cpu {
        let end = Instant::now() + d;
        let mut x = 0u64;
        while Instant::now() < end {
            for i in 0..1000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
    } else {
        std::thread::sleep(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params() {
        assert_eq!(query_param("ms=20&cpu=1", "ms"), Some("20"));
        assert_eq!(query_param("ms=20&cpu=1", "cpu"), Some("1"));
        assert_eq!(query_param("msx=20", "ms"), None);
        assert_eq!(query_param("", "ms"), None);
    }
}
