//! The drift soak: faults that used to leave the load wrong, one after another under steady
//! traffic, while the load is compared with what the kernel holds every 100 ms. Reports the
//! largest error seen, the corrections the reconciliation made, and how long the loads took to
//! come back to the truth once traffic and faults stopped.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::Result;
use balancer_tests::{
    all_idle, ctl_in_background,
    raw::{RawSender, ACK, FIN, RST, SYN},
    request_on, stats, truth, Balancer,
};
use serde::Serialize;

use super::start;

#[derive(Serialize)]
pub struct Drift {
    pub seconds: f64,
    pub faults: Vec<Fault>,
    pub requests: u64,
    pub failed: u64,
    /// Largest sum over slots of |load - kernel| seen while faults ran.
    pub max_error: u64,
    /// The 99th percentile of the same samples.
    pub p99_error: u64,
    pub corrections: u64,
    pub converge_ms: f64,
}

/// A kind of fault and how many times it was made.
#[derive(Serialize)]
pub struct Fault {
    pub fault: &'static str,
    pub count: u32,
}

/// Per slot, |load - (queued + open)|, summed.
fn error(status: &serde_json::Value) -> u64 {
    status["slots"].as_array().map_or(0, |slots| {
        slots
            .iter()
            .map(|x| {
                let load = x["load"].as_u64().unwrap_or(0);
                let kernel = x["queued"].as_u64().unwrap_or(0)
                    + x["open"].as_u64().unwrap_or(0)
                    + x["handshaking"].as_u64().unwrap_or(0);
                load.abs_diff(kernel)
            })
            .sum()
    })
}

/// A control request whose answer does not matter: one may be refused while a worker restarts.
fn ctl(b: &Balancer, args: &[&str]) {
    let _ = ctl_in_background(b, args).join();
}

/// A request on a new connection that waits through SYN retransmits (bursts over the backlog
/// are answered after them), up to 20 s.
fn patient_get(addr: SocketAddr) -> bool {
    let patience = Duration::from_secs(20);
    let Ok(mut s) = TcpStream::connect_timeout(&addr, patience) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(patience));
    request_on(&mut s, "/").is_ok_and(|r| r.status == 200)
}

/// The faults, made in turn, one every 1.5 s.
const FAULTS: [&str; 6] = [
    "burst of 150 over backlog 8",
    "SIGKILL of a worker",
    "reload",
    "policy hash and back",
    "200 stray ACK/FIN/RST",
    "50 abandoned SYNs",
];

/// Makes the faults of [`FAULTS`], one at a time, in turn.
struct Injector<'a> {
    b: &'a Balancer,
    raw: RawSender,
    dst: SocketAddrV4,
    /// The next source port of hand-made segments: each batch uses ports of its own, so that
    /// no segment meets what an earlier batch left in the kernel.
    port_base: u16,
    made: usize,
    workers: usize,
}

impl Injector<'_> {
    /// Makes the next fault and returns its index in [`FAULTS`]; `burst` starts the clients of
    /// a burst.
    fn next(&mut self, burst: impl FnOnce()) -> Result<usize> {
        let kind = self.made % FAULTS.len();
        match kind {
            0 => burst(),
            1 => {
                // Not `pid_of`: the slot may be between workers after an earlier kill.
                let slot = self.made % self.workers;
                let pid = self.b.status()?["slots"][slot]["pid"].as_i64().unwrap_or(0);
                if pid > 0 {
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                }
            }
            2 => ctl(self.b, &["reload"]),
            3 => {
                ctl(self.b, &["policy", "hash"]);
                std::thread::sleep(Duration::from_millis(500));
                ctl(self.b, &["policy", "least-loaded"]);
            }
            4 => self.segments(Ipv4Addr::new(127, 0, 0, 2), 200, 1, |i| {
                [ACK, FIN | ACK, RST][i as usize % 3]
            }),
            _ => self.segments(Ipv4Addr::new(127, 0, 0, 3), 50, 7, |_| SYN),
        }
        self.made += 1;
        Ok(kind)
    }

    /// `n` segments from `from`, segment `i` with `flags(i)`, each from a port of its own.
    fn segments(&mut self, from: Ipv4Addr, n: u16, seq: u32, flags: impl Fn(u16) -> u8) {
        for i in 0..n {
            let src = SocketAddrV4::new(from, self.port_base + i);
            self.raw.send(src, self.dst, flags(i), seq);
        }
        self.port_base = self.port_base.wrapping_add(n).max(20_000);
    }
}

/// Quiescence: every client has its answer. Now the loads must come back to the truth: how long
/// that took, in ms.
fn converge(b: &Balancer) -> f64 {
    let quiet = Instant::now();
    b.wait_for(
        Duration::from_secs(10),
        "drift soak: loads back to the truth after quiescence",
        |s| all_idle(s) && error(s) == 0,
    );
    quiet.elapsed().as_secs_f64() * 1e3
}

pub fn soak(quick: bool, workers: u32) -> Result<Drift> {
    let port = 9300;
    let b = start(
        port,
        workers,
        "least-loaded",
        &["--backlog", "8", "--restart-delay", "0.2"],
    );
    let addr = b.addr;
    let duration = Duration::from_secs(if quick { 12 } else { 60 });
    let stop = AtomicBool::new(false);
    let requests = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let count = |ok: bool| {
        (if ok { &requests } else { &failed }).fetch_add(1, Ordering::Relaxed);
    };
    let mut made = [0u32; FAULTS.len()];
    let mut errors = Vec::new();
    let begin = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        // Steady traffic: 4 clients, a new connection per request.
        for _ in 0..4 {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    count(patient_get(addr));
                }
            });
        }
        let mut injector = Injector {
            b: &b,
            raw: RawSender::new(),
            dst: SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
            port_base: 20_000,
            made: 0,
            workers: workers as usize,
        };
        let mut next_fault = Instant::now() + Duration::from_millis(500);
        // The clients stop however the loop ends: the scope waits for them.
        let sampled = (|| -> Result<()> {
            while begin.elapsed() < duration {
                if Instant::now() >= next_fault {
                    let kind = injector.next(|| {
                        for _ in 0..150 {
                            s.spawn(|| count(patient_get(addr)));
                        }
                    })?;
                    made[kind] += 1;
                    next_fault = Instant::now() + Duration::from_millis(1500);
                }
                errors.push(error(&b.status()?));
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        sampled
    })?;
    let converge_ms = converge(&b);
    errors.sort_unstable();
    Ok(Drift {
        seconds: duration.as_secs_f64(),
        faults: FAULTS
            .into_iter()
            .zip(made)
            .map(|(fault, count)| Fault { fault, count })
            .collect(),
        requests: requests.into_inner(),
        failed: failed.into_inner(),
        max_error: errors.last().copied().unwrap_or(0),
        p99_error: stats::percentile(&errors, 0.99).unwrap_or(0),
        corrections: truth::corrections(&b),
        converge_ms,
    })
}
