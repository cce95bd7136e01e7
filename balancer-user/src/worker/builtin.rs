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
use hyper::{
    body::Incoming, server::conn::http1, service::service_fn, Request, Response, StatusCode,
};
use hyper_util::rt::TokioIo;

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

/// One connection's share of its worker's work in hand: it counts from its accept until its
/// first request ends, then again for each request in flight; whoever brings the count to
/// zero wakes the accept loop.
#[derive(Clone)]
struct Work {
    busy: Rc<std::cell::Cell<usize>>,
    idle: Rc<tokio::sync::Notify>,
    /// Accepted, no request begun yet: counted since the accept.
    pending: Rc<std::cell::Cell<bool>>,
}

impl Work {
    fn begin(&self) {
        if !self.pending.replace(false) {
            self.busy.set(self.busy.get() + 1);
        }
    }

    fn end(&self) {
        self.busy.set(self.busy.get() - 1);
        if self.busy.get() == 0 {
            self.idle.notify_one();
        }
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        // The connection's last handle, still pending: it closed without a request.
        if Rc::strong_count(&self.pending) == 1 && self.pending.replace(false) {
            self.end();
        }
    }
}

/// Counts a connection open for as long as its task lives, however it ends.
struct Open(Rc<std::cell::Cell<usize>>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
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
    local.block_on(&runtime, serve(listener, overflow, Rc::from(slot)))
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
fn notify_ready() {
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

async fn serve(
    listener: std::net::TcpListener,
    overflow: Option<std::net::TcpListener>,
    slot: Rc<str>,
) -> Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let mut overflow = overflow
        .map(tokio::net::TcpListener::from_std)
        .transpose()?;
    // Work in hand: connections accepted that have not finished a request yet, and requests in
    // flight. The overflow queue is served only when there is none (a connection taken from it
    // must not wait behind this worker's current request: that is the point of the queue).
    let busy = Rc::new(std::cell::Cell::new(0usize));
    let idle = Rc::new(tokio::sync::Notify::new());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    notify_ready();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let open = Rc::new(std::cell::Cell::new(0usize));
    let pid = std::process::id();
    // `last_call`: accepted while stopping, so it gets exactly one request and no graceful
    // shutdown (which would close it before its waiting request is even read).
    let start = |stream: tokio::net::TcpStream, last_call: bool| {
        let guard = Open(open.clone());
        open.set(open.get() + 1);
        busy.set(busy.get() + 1);
        let work = Work {
            busy: busy.clone(),
            idle: idle.clone(),
            pending: Rc::new(std::cell::Cell::new(true)),
        };
        let slot = slot.clone();
        let mut stop = stop_rx.clone();
        tokio::task::spawn_local(async move {
            let _guard = guard;
            let _ = stream.set_nodelay(true);
            // Requests begun on this connection: a stop must not close a connection whose
            // first request is waiting unread in the socket (hyper counts it as idle).
            let begun = Rc::new(std::cell::Cell::new(0u32));
            let seen = begun.clone();
            let request_work = work.clone();
            let service = service_fn(move |req| {
                seen.set(seen.get() + 1);
                let work = request_work.clone();
                work.begin();
                let answer = handle(req, slot.clone(), pid);
                async move {
                    let answer = answer.await;
                    work.end();
                    answer
                }
            });
            let conn = http1::Builder::new()
                .keep_alive(!last_call)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            if last_call {
                let _ = conn.await;
                return;
            }
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = stop.wait_for(|s| *s) => {}
            }
            // Stopping. A connection that has not begun a request yet gets to begin one (its
            // bytes are normally already here); then hyper finishes what is in flight and
            // closes. A client that sends nothing is cut off after a second.
            let first = async {
                while begun.get() == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            };
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = tokio::time::timeout(Duration::from_secs(1), first) => {}
            }
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        });
    };
    // Connections moved here from a closing listener do not wake epoll: look for them now and
    // then, so that they are not left waiting for the next new connection.
    let mut sweep = tokio::time::interval(Duration::from_millis(200));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let free = busy.get() == 0;
        // Biased: this worker's own queue before the shared one, and a stop before both.
        tokio::select! {
            biased;
            _ = term.recv() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => start(stream, false),
                Err(e) => {
                    // Out of fds or memory: back off instead of spinning on the error.
                    log::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            taken = async { overflow.as_ref().expect("guarded").accept().await },
                if free && overflow.is_some() => {
                match taken {
                    Ok((stream, _)) => start(stream, false),
                    // The supervisor closed the queue (it is stopping): nothing more comes.
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => overflow = None,
                    Err(e) => {
                        log::warn!("accept from the overflow queue failed: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            // Busy: wake when the work in hand is done, to look at the shared queue again.
            _ = idle.notified(), if !free && overflow.is_some() => {}
            _ = sweep.tick() => {
                while let Ok(stream) = accept_now(&listener) {
                    start(stream, false);
                }
            }
        }
    }
    // Stopping: serve what already waits in the queue, finish what is in flight (idle
    // keep-alive connections close at once), then exit. The supervisor's kill timeout bounds
    // it. The shared queue is not this worker's to empty: the other workers serve it, and a
    // stopping supervisor moves what it holds to the workers' own queues first.
    while let Ok(stream) = accept_now(&listener) {
        start(stream, true);
    }
    let _ = stop_tx.send(true);
    while open.get() > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// A non-blocking accept: a connection if one is queued now. It also finds connections whose
/// arrival woke no one (connections migrated from a closed listener do not wake epoll).
fn accept_now(listener: &tokio::net::TcpListener) -> std::io::Result<tokio::net::TcpStream> {
    let fd = std::os::fd::AsRawFd::as_raw_fd(listener);
    // SAFETY: borrows the listener's fd for one accept; ManuallyDrop keeps it open.
    let std_listener =
        std::mem::ManuallyDrop::new(unsafe { std::net::TcpListener::from_raw_fd(fd) });
    let (stream, _) = std_listener.accept()?;
    stream.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(stream)
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

async fn handle(
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
