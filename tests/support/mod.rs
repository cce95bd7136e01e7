//! Helpers for the end-to-end tests: a fresh network namespace per test, a running `balancer`
//! as a child process, and a minimal HTTP client that opens a new connection per request.
//!
//! Every test calls [`netns`] first. Network namespaces belong to threads: the test's thread
//! moves into a namespace of its own, with only a loopback interface, and every socket, client
//! thread and process it creates afterwards lives there. Tests therefore all use port 8080
//! without colliding, and no packet leaves the namespace.

use std::{
    io::{BufRead as _, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::unix::net::UnixStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

pub mod burst;
pub mod channel;
pub mod listen;
pub mod procfs;
pub mod raw;
pub mod reach;
pub mod stats;
pub mod truth;
pub mod workload;

pub use reach::{example, reachable, worker_bin, worker_path, writable_by_workers};

/// Moves the calling thread into a new network namespace with loopback up.
pub fn netns() {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .expect("unshare(CLONE_NEWNET): the end-to-end tests need root (or CAP_SYS_ADMIN)");
    // SIOCSIFFLAGS on "lo" through any socket of the namespace.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0);
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    let rc = unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) };
    unsafe { libc::close(fd) };
    assert_eq!(
        rc,
        0,
        "cannot bring lo up: {}",
        std::io::Error::last_os_error()
    );
}

/// The `balancer` binary under test: `BALANCER_BIN` if set (a release build, an installed
/// copy), else the one cargo built for this test run, never whatever a past build left in
/// target/.
///
/// The end-to-end tests are integration tests of the `balancer` package (listed under
/// `[[test]]` in balancer-user/Cargo.toml): `cargo test` builds the binary before them and
/// names it in `CARGO_BIN_EXE_balancer` when it runs them.
pub fn bin() -> PathBuf {
    if let Some(p) = std::env::var_os("BALANCER_BIN") {
        return p.into();
    }
    std::env::var_os("CARGO_BIN_EXE_balancer")
        .map(PathBuf::from)
        .expect(
            "CARGO_BIN_EXE_balancer is not set: run the end-to-end tests through cargo \
             (`cargo test -p balancer --test NAME`), list a new test file under [[test]] in \
             balancer-user/Cargo.toml, or name a binary in BALANCER_BIN",
        )
}

fn scratch_dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "balancer-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A `balancer run` child process, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Balancer {
    pub child: Child,
    pub addr: SocketAddr,
    pub control: PathBuf,
    pub log: PathBuf,
}

impl Balancer {
    /// Starts `balancer run --listen 127.0.0.1:<port> --workers <workers> <extra>` and waits
    /// until every slot is up.
    pub fn start(port: u16, workers: u32, extra: &[&str]) -> Balancer {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        Balancer::start_on(&addr.to_string(), addr, workers, extra)
    }

    /// Starts `balancer run --listen <listen>`; clients will connect to `addr`.
    pub fn start_on(listen: &str, addr: SocketAddr, workers: u32, extra: &[&str]) -> Balancer {
        Balancer::launch(listen, addr, workers, extra, true)
    }

    /// Starts it and returns once the control socket answers (and, if `all_up`, every slot is
    /// up).
    pub fn launch(
        listen: &str,
        addr: SocketAddr,
        workers: u32,
        extra: &[&str],
        all_up: bool,
    ) -> Balancer {
        Balancer::launch_under(&[], listen, addr, workers, extra, all_up)
    }

    /// Like [`Balancer::start`], with the supervisor's stdout a pipe that nobody reads (a
    /// stalled log shipper): the pipe stays open, full, for as long as the balancer lives.
    pub fn start_with_unread_stdout(port: u16, workers: u32, extra: &[&str]) -> Balancer {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        Balancer::spawn(
            &[],
            &addr.to_string(),
            addr,
            workers,
            extra,
            true,
            Stdio::piped(),
        )
    }

    /// Like [`Balancer::launch`], with `balancer` started through `prefix` (e.g.
    /// `ip netns exec NAME`).
    pub fn launch_under(
        prefix: &[&str],
        listen: &str,
        addr: SocketAddr,
        workers: u32,
        extra: &[&str],
        all_up: bool,
    ) -> Balancer {
        Balancer::spawn(prefix, listen, addr, workers, extra, all_up, Stdio::null())
    }

    fn spawn(
        prefix: &[&str],
        listen: &str,
        addr: SocketAddr,
        workers: u32,
        extra: &[&str],
        all_up: bool,
        stdout: Stdio,
    ) -> Balancer {
        let dir = scratch_dir();
        let control = dir.join("control.sock");
        let log = dir.join("balancer.log");
        let mut command = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        let child = command
            .args(["run", "--listen", listen, "--workers", &workers.to_string()])
            .arg("--control")
            .arg(&control)
            .args(extra)
            .env("PATH", worker_path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("cannot start balancer");
        let mut b = Balancer {
            child,
            addr,
            control,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = b.child.try_wait() {
                panic!("balancer exited at start ({status}):\n{}", b.log_text());
            }
            if let Ok(s) = b.status() {
                let slots = s["slots"].as_array().unwrap();
                if slots.len() == workers as usize && (!all_up || self::all_up(&s)) {
                    return b;
                }
            }
            assert!(
                Instant::now() < deadline,
                "balancer did not come up:\n{}",
                b.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The supervisor's `status` answer.
    pub fn status(&self) -> Result<Value> {
        let mut s = UnixStream::connect(&self.control)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"status\n")?;
        let mut line = String::new();
        std::io::BufReader::new(s).read_line(&mut line)?;
        Ok(serde_json::from_str(&line)?)
    }

    /// The value of `field` for each slot, in slot order.
    pub fn per_slot(&self, field: &str) -> Vec<u64> {
        let s = self.status().unwrap();
        s["slots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s[field].as_u64().unwrap_or(0))
            .collect()
    }

    pub fn pid_of(&self, slot: usize) -> i32 {
        self.status().unwrap()["slots"][slot]["pid"]
            .as_i64()
            .expect("slot has a worker") as i32
    }

    /// Polls until `cond` holds on the status, or panics after `within`.
    pub fn wait_for(&self, within: Duration, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let s = self.status().unwrap();
            if cond(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last status: {s}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `sig` and waits (bounded) for the exit status.
    pub fn stop(&mut self, sig: nix::sys::signal::Signal) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, sig);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("balancer did not stop within 20 s:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop(nix::sys::signal::Signal::SIGTERM);
        }
    }
}

/// Whether every slot of a `status` answer has load 0: all connections closed and counted.
pub fn all_idle(status: &Value) -> bool {
    status["slots"]
        .as_array()
        .is_some_and(|slots| slots.iter().all(|x| x["load"] == 0))
}

pub fn all_up(status: &Value) -> bool {
    status["slots"]
        .as_array()
        .is_some_and(|slots| slots.iter().all(|x| x["state"] == "up"))
}

/// A parsed reply of the built-in worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub slot: u32,
    pub pid: u32,
}

fn parse_reply(raw: &str) -> Result<Reply> {
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status line in {raw:?}"))?;
    let body = raw.split("\r\n\r\n").nth(1).unwrap_or("");
    let field = |name: &str| -> Option<u32> {
        body.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
    };
    Ok(Reply {
        status,
        slot: field("slot").with_context(|| format!("no slot in {body:?}"))?,
        pid: field("pid").unwrap_or(0),
    })
}

/// Opens a connection (bounded in time), for requests sent later.
pub fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    // Requests go out as one segment, at once: no Nagle delay behind a first partial write.
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(s)
}

/// Sends one request on `stream` and reads the whole reply (the server closes after it).
pub fn request_on(stream: &mut TcpStream, path: &str) -> Result<Reply> {
    stream.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    parse_reply(&raw)
}

/// One request on a new connection from source address `from` (any 127.x.y.z is local).
pub fn get_from(from: std::net::IpAddr, addr: SocketAddr, path: &str) -> Result<Reply> {
    use nix::sys::socket::{
        bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrStorage,
    };
    use std::os::fd::AsRawFd as _;
    let family = if from.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    bind(
        fd.as_raw_fd(),
        &SockaddrStorage::from(SocketAddr::new(from, 0)),
    )?;
    connect(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    let mut stream = TcpStream::from(fd);
    stream.set_read_timeout(Some(Duration::from_secs(15)))?;
    stream.set_nodelay(true)?;
    request_on(&mut stream, path)
}

/// One request on a new connection: what a browser or `curl` does.
pub fn get(addr: SocketAddr, path: &str) -> Result<Reply> {
    request_on(&mut connect(addr)?, path)
}

/// A keep-alive connection that stays on one worker: tells which slot it reached.
pub struct KeepAlive {
    stream: TcpStream,
    pub slot: u32,
}

impl KeepAlive {
    pub fn open(addr: SocketAddr) -> Result<KeepAlive> {
        let mut stream = connect(addr)?;
        let reply = keepalive_request(&mut stream, "/")?;
        Ok(KeepAlive {
            stream,
            slot: reply.slot,
        })
    }

    /// Connects and sends nothing: a connection that may wait in a queue, its slot unknown
    /// (`u32::MAX`).
    pub fn open_unanswered(addr: SocketAddr) -> Result<KeepAlive> {
        Ok(KeepAlive {
            stream: connect(addr)?,
            slot: u32::MAX,
        })
    }

    /// Sends a request without waiting for the reply (e.g. `/work?ms=N` to hold the worker).
    pub fn send(&mut self, path: &str) -> Result<()> {
        self.stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())?;
        Ok(())
    }

    /// Sends a last request, asking the server to close the connection after its reply.
    pub fn send_last(&mut self, path: &str) -> Result<()> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        self.stream.write_all(req.as_bytes())?;
        Ok(())
    }

    /// Reads one reply to an earlier [`KeepAlive::send`].
    pub fn read_reply(&mut self) -> Result<Reply> {
        read_one(&mut self.stream)
    }
}

fn keepalive_request(stream: &mut TcpStream, path: &str) -> Result<Reply> {
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())?;
    read_one(stream)
}

/// Reads one HTTP/1.1 reply with a Content-Length body.
fn read_one(stream: &mut TcpStream) -> Result<Reply> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed before the reply was complete");
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(head_end) = text.find("\r\n\r\n") {
            let len: usize = text[..head_end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if buf.len() >= head_end + 4 + len {
                return parse_reply(&text);
            }
        }
    }
}

/// Holds the event loop of the worker behind each of `holders` for `ms` milliseconds, and
/// returns once the requests have had time to reach the workers.
pub fn hold(holders: &mut [KeepAlive], ms: u64) {
    hold_with(holders, "/work?ms=", ms)
}

/// Like [`hold`], with the worker's own hold route (`/work?ms=`, `/block?ms=`). The request
/// asks the server to close afterwards: a server that handles one connection at a time (a sync
/// Python worker) would otherwise sit on the idle keep-alive connection after the hold.
pub fn hold_with(holders: &mut [KeepAlive], route: &str, ms: u64) {
    for h in holders.iter_mut() {
        h.send_last(&format!("{route}{ms}")).unwrap();
    }
    // Held once each worker has read its request: a single-threaded worker then runs the
    // handler that holds it. A fixed pause would be too short on a loaded machine, and a
    // connection that came in meanwhile would find the worker still free.
    for h in holders.iter() {
        let (client, server) = (
            h.stream.local_addr().unwrap(),
            h.stream.peer_addr().unwrap(),
        );
        wait_until(
            Duration::from_secs(10),
            "the hold read by its worker",
            || procfs::read_by_server(server.port(), client),
        );
    }
}

/// Polls `cond` until it holds; panics after `within`, naming `what`.
pub fn wait_until(within: Duration, what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Holds one of `workers` workers for 2 s (through `route`, e.g. `/work?ms=`) while 32 clients
/// open new connections (at most 200 each): returns the share of the connections started
/// during the hold that went to the held worker, and how many started. Every connection must
/// be answered.
pub fn share_while_blocked(addr: SocketAddr, workers: usize, route: &str) -> (f64, usize) {
    let (to_slow, n) = sent_while_blocked(addr, workers, route);
    (to_slow as f64 / n as f64, n)
}

/// Clients of [`share_while_blocked`], each opening one connection after another.
pub const BLOCKED_CLIENTS: usize = 32;

/// The most connections least-loaded may send a held worker of two while
/// [`BLOCKED_CLIENTS`] clients keep one connection each open: each one sent there waits,
/// raising its load, and it gets another only while the free worker holds more (ties at
/// random), so at most half the clients end up waiting on it, however fast the machine
/// serves the rest; one more for a load read an instant before another CPU's close lands.
pub const HELD_OF_TWO_AT_MOST: usize = BLOCKED_CLIENTS / 2 + 1;

/// [`share_while_blocked`] as counts: connections that went to the held worker, and all
/// started during the hold.
pub fn sent_while_blocked(addr: SocketAddr, workers: usize, route: &str) -> (usize, usize) {
    let mut holders = one_per_slot(addr, workers);
    let slow = holders.remove(0);
    drop(holders);
    let mut slow = [slow];
    // Longer than the clients run, by as long as a loaded machine may take to read the
    // blocking request.
    let block = Duration::from_millis(3000);
    // From the request, not from its read: the hold ends no sooner than `block` after it, so
    // every connection started before then finds the worker held.
    let begin = Instant::now();
    hold_with(&mut slow, route, block.as_millis() as u64);
    let [mut slow] = slow;
    let results: Vec<(Duration, Reply)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..BLOCKED_CLIENTS)
            .map(|_| {
                s.spawn(move || {
                    let mut out = Vec::new();
                    while begin.elapsed() < Duration::from_millis(1900) && out.len() < 200 {
                        let started = begin.elapsed();
                        out.push((
                            started,
                            get(addr, "/").expect("every connection is answered"),
                        ));
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let held = slow.read_reply().unwrap();
    assert_eq!(held.status, 200);
    assert!(results.iter().all(|(_, r)| r.status == 200));
    let during: Vec<&Reply> = results
        .iter()
        .filter(|(t, _)| *t < block)
        .map(|(_, r)| r)
        .collect();
    assert!(
        !during.is_empty(),
        "no connection started during the hold: the worker took over 1.9 s to read it"
    );
    let to_slow = during.iter().filter(|r| r.slot == slow.slot).count();
    (to_slow, during.len())
}

/// Holds one idle worker per entry of `ms`, in turn, each with one request `ROUTE{ms}` (e.g.
/// `/work?ms=`) on a new connection: each finds the workers held before it busy and goes to an
/// idle one. Returns once every hold is in hand (that many slots at load 1), with the
/// requests' threads, whose replies say which slot each held.
pub fn hold_on_new_connections(
    b: &Balancer,
    route: &str,
    ms: &[u64],
) -> Vec<std::thread::JoinHandle<Reply>> {
    let mut held = Vec::new();
    for (i, ms) in ms.iter().enumerate() {
        let (addr, path) = (b.addr, format!("{route}{ms}"));
        held.push(std::thread::spawn(move || get(addr, &path).unwrap()));
        b.wait_for(Duration::from_secs(5), "the hold reaches its worker", |s| {
            s["program"]["selected"].as_u64() >= Some(i as u64 + 1)
                && s["slots"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|x| x["load"].as_u64() == Some(1))
                    .count()
                    == i + 1
        });
        // Counted at its SYN; held only once its worker has read it (see `hold_with`).
        wait_until(
            Duration::from_secs(10),
            "the hold read by its worker",
            || procfs::all_read(b.addr.port()),
        );
    }
    held
}

/// `n` requests for `path`, each on a new connection, from threads started together: each
/// reply with the time it took. Every one must be answered.
pub fn timed_gets(addr: SocketAddr, n: usize, path: &str) -> Vec<(Reply, Duration)> {
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let path = path.to_string();
            std::thread::spawn(move || {
                let t = Instant::now();
                let r = get(addr, &path).unwrap();
                (r, t.elapsed())
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

/// Opens keep-alive connections until one lands on each of `slots` distinct slots.
pub fn one_per_slot(addr: SocketAddr, slots: usize) -> Vec<KeepAlive> {
    let mut found: Vec<KeepAlive> = Vec::new();
    let mut spare = Vec::new();
    for _ in 0..500 {
        let k = KeepAlive::open(addr).unwrap();
        if found.iter().any(|f| f.slot == k.slot) {
            spare.push(k); // held open so that the next connection goes elsewhere
        } else {
            found.push(k);
            if found.len() == slots {
                return found;
            }
        }
    }
    panic!("could not reach {slots} distinct slots");
}

/// Resets a connection (RST instead of FIN) when dropped: SO_LINGER with a zero timeout.
pub fn reset(stream: TcpStream) {
    use std::os::fd::AsRawFd as _;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(stream);
}

/// Counts of replies per slot.
pub fn histogram(replies: &[Reply], slots: usize) -> Vec<usize> {
    let mut h = vec![0; slots];
    for r in replies {
        h[r.slot as usize] += 1;
    }
    h
}

/// What a background load saw. Every connection attempt lands in exactly one of `ok`, `failed`
/// and `refused`, so `ok == attempted` is "nothing was lost or turned away".
#[derive(Debug, Default, Clone)]
pub struct Counts {
    /// Connections tried.
    pub attempted: u64,
    /// Requests answered with 200.
    pub ok: u64,
    /// Connections that were established and then got no (complete) answer.
    pub failed: u64,
    /// Connections that could not be opened (refused, reset or timed out in the handshake):
    /// nothing was accepted, so nothing in a worker was lost, but the client was turned away.
    pub refused: u64,
    /// When the first connection was refused, if one was.
    pub first_refused_at: Option<Instant>,
    pub first_errors: Vec<String>,
}

/// A steady load of new connections from `threads` clients, each stopping after `max` requests
/// or when told to.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handles: Vec<std::thread::JoinHandle<Counts>>,
}

impl Load {
    pub fn start(addr: SocketAddr, threads: usize, max: u64) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let handles = (0..threads)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut c = Counts::default();
                    let mut n = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < max {
                        n += 1;
                        c.attempted += 1;
                        let mut stream = match connect(addr) {
                            Ok(s) => s,
                            Err(e) => {
                                c.refused += 1;
                                c.first_refused_at.get_or_insert_with(Instant::now);
                                if c.first_errors.len() < 5 {
                                    c.first_errors.push(format!("connect: {e}"));
                                }
                                std::thread::sleep(Duration::from_millis(5));
                                continue;
                            }
                        };
                        match request_on(&mut stream, "/") {
                            Ok(r) if r.status == 200 => c.ok += 1,
                            other => {
                                c.failed += 1;
                                if c.first_errors.len() < 5 {
                                    c.first_errors.push(match other {
                                        Ok(r) => format!("status {}", r.status),
                                        Err(e) => format!("{e:#}"),
                                    });
                                }
                            }
                        }
                    }
                    c
                })
            })
            .collect();
        Load { stop, handles }
    }

    pub fn finish(self) -> Counts {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut total = Counts::default();
        for h in self.handles {
            let c = h.join().unwrap();
            total.attempted += c.attempted;
            total.first_refused_at = match (total.first_refused_at, c.first_refused_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            total.ok += c.ok;
            total.failed += c.failed;
            total.refused += c.refused;
            total.first_errors.extend(c.first_errors);
        }
        total.first_errors.truncate(5);
        total
    }
}

/// Runs `balancer ARGS --control ...` on a thread of its own (a reload or scale that takes a
/// while); join the handle for its output.
pub fn ctl_in_background(
    b: &Balancer,
    args: &[&str],
) -> std::thread::JoinHandle<std::process::Output> {
    let mut command = Command::new(bin());
    command.args(args).arg("--control").arg(&b.control);
    std::thread::spawn(move || command.output().unwrap())
}

/// Sends a control request through the CLI, as a user would, and returns its answer.
pub fn ctl(b: &Balancer, args: &[&str]) -> String {
    let out = Command::new(bin())
        .args(args)
        .arg("--control")
        .arg(&b.control)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "balancer {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Starts `workers` slots whose slot 0 exits with `code` at once, every time, while the other
/// slots run the built-in worker; returns as soon as the control socket answers.
pub fn crash_looping_slot_0(workers: u32, code: i32, extra: &[&str]) -> Balancer {
    let script = format!(
        "if [ \"$BALANCER_SLOT\" = 0 ]; then echo boom >&2; exit {code}; fi; exec {} worker",
        worker_bin().display()
    );
    let mut args = vec!["--restart-delay", "0.05"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sh", "-c", &script]);
    let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    Balancer::launch("127.0.0.1:8080", addr, workers, &args, false)
}

/// A Python HTTP worker on fd 3 (standard library only), for tests that need a server with a
/// twist: `on_get` is a Python statement run first on every GET, `status` a Python expression
/// for its status code (`self.path`, `SLOT` and `os` in scope). Answers `slot=N pid=P` like the
/// built-in worker, closes each connection after its reply, and on SIGTERM stops after the
/// request in hand.
pub fn python_worker(on_get: &str, status: &str) -> String {
    format!(
        r#"
import http.server, os, signal, socket, threading
SLOT = os.environ["BALANCER_SLOT"]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        {on_get}
        body = f"slot={{SLOT}} pid={{os.getpid()}}\n".encode()
        self.send_response({status})
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(http.server.ThreadingHTTPServer):
    def server_bind(self): pass
    def server_activate(self): pass
s = S(("", 0), H, bind_and_activate=False)
s.socket = socket.socket(fileno=3)
signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=s.shutdown).start())
s.serve_forever()
"#
    )
}

/// Asserts a failed `balancer` run with exactly one line on stderr, `balancer: error: ...`,
/// containing `needle`.
pub fn fails_with(out: &std::process::Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr: {err}"
    );
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {err}");
    assert!(lines[0].starts_with("balancer: error: "), "{err}");
    assert!(lines[0].contains(needle), "expected {needle:?} in: {err}");
}
