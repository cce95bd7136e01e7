//! The native load generator: closed-loop clients on plain threads, a new connection per
//! request (`Connection: close`), with as little work per request as the measurement allows,
//! so that on a small machine the cores go to the server rather than to the client.
//!
//! Per request a client makes a socket, binds it to one of 64 loopback addresses, connects,
//! writes one request and reads to the end: no allocation, and the reply is parsed only for its
//! status and the answering slot. Each thread reads its own CPU time (`RUSAGE_THREAD`), so the
//! client's CPU use is known apart from whatever else the process does. On loopback the kernel
//! mostly delivers a sent segment in the sender's context: the client's system time includes
//! part of the server's side of each handshake and close, the eBPF program's run on each SYN
//! among it.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    os::fd::FromRawFd as _,
    sync::{
        atomic::{AtomicU64, Ordering},
        Barrier,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Result};

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";

/// When the clients stop.
#[derive(Clone, Copy)]
pub enum Until {
    /// After this long (the requests in flight then are finished and counted).
    Elapsed(Duration),
    /// After this many requests, all clients together.
    Requests(u64),
}

/// What one run of the clients achieved.
pub struct Run {
    pub answered: u64,
    /// Connections refused or reset, and answers other than 200.
    pub failed: u64,
    /// Answers per second of wall time.
    pub per_second: f64,
    /// The clients' CPU time (user + system) per second of wall time: 1.0 is one core.
    pub cpu: f64,
    /// The user part of it: the client's own work, apart from the kernel's.
    pub cpu_user: f64,
    /// Answers per slot, by the slot each reply names.
    pub counts: Vec<u64>,
}

#[derive(Default)]
struct Tally {
    answered: u64,
    failed: u64,
    counts: Vec<u64>,
    cpu: (f64, f64),
}

/// `threads` clients against `addr`, each in a closed loop, until `until`.
pub fn new_connections(addr: SocketAddr, threads: usize, until: Until) -> Result<Run> {
    let SocketAddr::V4(addr) = addr else {
        bail!("the native client speaks IPv4 only");
    };
    let tickets = AtomicU64::new(0);
    let start = Barrier::new(threads + 1);
    let (began, tallies) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (tickets, start) = (&tickets, &start);
                s.spawn(move || {
                    start.wait();
                    client(addr, t, until, tickets)
                })
            })
            .collect();
        start.wait();
        let began = Instant::now();
        let tallies: Vec<Tally> = handles
            .into_iter()
            .map(|h| h.join().expect("a client thread panicked"))
            .collect();
        (began, tallies)
    });
    let seconds = began.elapsed().as_secs_f64();
    let mut run = Run {
        answered: 0,
        failed: 0,
        per_second: 0.0,
        cpu: 0.0,
        cpu_user: 0.0,
        counts: Vec::new(),
    };
    for t in tallies {
        run.answered += t.answered;
        run.failed += t.failed;
        run.cpu_user += t.cpu.0;
        run.cpu += t.cpu.0 + t.cpu.1;
        if run.counts.len() < t.counts.len() {
            run.counts.resize(t.counts.len(), 0);
        }
        for (total, c) in run.counts.iter_mut().zip(t.counts) {
            *total += c;
        }
    }
    if run.answered == 0 {
        bail!("{addr}: no request was answered ({} failed)", run.failed);
    }
    run.per_second = run.answered as f64 / seconds;
    run.cpu /= seconds;
    run.cpu_user /= seconds;
    Ok(run)
}

fn client(addr: SocketAddrV4, thread: usize, until: Until, tickets: &AtomicU64) -> Tally {
    let cpu0 = thread_cpu_seconds();
    let began = Instant::now();
    let mut tally = Tally::default();
    let mut reply = Vec::with_capacity(4096);
    // Spread over client addresses, so that `sticky` (which keys on the address) sees many
    // clients, as it would in production.
    let mut source = thread;
    loop {
        match until {
            Until::Elapsed(d) if began.elapsed() >= d => break,
            Until::Requests(n) if tickets.fetch_add(1, Ordering::Relaxed) >= n => break,
            _ => {}
        }
        source = source.wrapping_add(1);
        let from = Ipv4Addr::new(127, 0, 3, (source % 64) as u8 + 1);
        reply.clear();
        match request(from, addr, &mut reply) {
            Some(slot) => {
                tally.answered += 1;
                if tally.counts.len() <= slot {
                    tally.counts.resize(slot + 1, 0);
                }
                tally.counts[slot] += 1;
            }
            None => {
                tally.failed += 1;
                // A refusing server would otherwise be hammered in a tight loop.
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    let cpu1 = thread_cpu_seconds();
    tally.cpu = (cpu1.0 - cpu0.0, cpu1.1 - cpu0.1);
    tally
}

/// One request on a new connection from `from`: the answering slot of a 200 reply.
fn request(from: Ipv4Addr, to: SocketAddrV4, reply: &mut Vec<u8>) -> Option<usize> {
    let mut stream = connect_from(from, to).ok()?;
    stream.write_all(REQUEST).ok()?;
    stream.read_to_end(reply).ok()?;
    if !(reply.starts_with(b"HTTP/1.1 200") || reply.starts_with(b"HTTP/1.0 200")) {
        return None;
    }
    let at = reply.windows(5).rposition(|w| w == b"slot=")? + 5;
    let digits = reply[at..].iter().take_while(|b| b.is_ascii_digit());
    Some(digits.fold(0, |n, &d| n * 10 + usize::from(d - b'0')))
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

pub fn connect_from(from: Ipv4Addr, to: SocketAddrV4) -> std::io::Result<TcpStream> {
    let check = |rc: libc::c_int| {
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    unsafe {
        let fd = check(libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
        ))?;
        // Owned from here, so that every early return closes it.
        let stream = TcpStream::from_raw_fd(fd);
        // The port is picked at connect, per destination: binding a port per source address
        // alone would run out of ports long before the 4-tuples run out.
        let one: libc::c_int = 1;
        check(libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&raw const one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ))?;
        let src = sockaddr(SocketAddrV4::new(from, 0));
        check(libc::bind(fd, (&raw const src).cast(), len))?;
        let dst = sockaddr(to);
        check(libc::connect(fd, (&raw const dst).cast(), len))?;
        // A peer that never answers must not hang the benchmark.
        stream.set_read_timeout(Some(Duration::from_secs(15)))?;
        Ok(stream)
    }
}

/// CPU seconds of the calling thread so far: (user, system).
fn thread_cpu_seconds() -> (f64, f64) {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) } != 0 {
        return (0.0, 0.0);
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(u.ru_utime), secs(u.ru_stime))
}
