//! The drift soak: faults that used to leave the load wrong, one after another under steady
//! traffic, while the load is compared with what the kernel holds every 100 ms. Reports the
//! largest error seen, the corrections the reconciliation made, and how long the loads took to
//! come back to the truth once traffic and faults stopped.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::Path,
    process::Command,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use balancer_tests::raw::{RawSender, ACK, FIN, RST, SYN};

use crate::bench::Running;

pub struct Drift {
    pub seconds: f64,
    pub faults: Vec<(&'static str, u32)>,
    pub requests: u64,
    pub failed: u64,
    /// Largest sum over slots of |load - kernel| seen while faults ran.
    pub max_error: u64,
    /// The 99th percentile of the same samples.
    pub p99_error: u64,
    pub corrections: u64,
    pub converge_ms: f64,
}

/// Per slot, |load - (queued + open)|, summed.
fn error(status: &serde_json::Value) -> u64 {
    status["slots"].as_array().map_or(0, |slots| {
        slots
            .iter()
            .map(|x| {
                let load = x["load"].as_u64().unwrap_or(0);
                let kernel = x["queued"].as_u64().unwrap_or(0) + x["open"].as_u64().unwrap_or(0);
                load.abs_diff(kernel)
            })
            .sum()
    })
}

fn ctl(r: &Running, bin: &Path, args: &[&str]) {
    let _ = Command::new(bin)
        .args(args)
        .arg("--control")
        .arg(&r.control)
        .output();
}

/// A request on a new connection that waits through SYN retransmits (bursts over the backlog
/// are answered after them), up to 20 s.
fn patient_get(addr: SocketAddr) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(20)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
    if s.write_all(b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).is_ok() && reply.starts_with(b"HTTP/1.1 200")
}

pub fn soak(bin: &Path, quick: bool) -> Result<Drift> {
    let port = 9300;
    let r = Running::start_with(
        bin,
        port,
        4,
        "least-loaded",
        &["--backlog", "8", "--restart-delay", "0.2"],
    )?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let dst = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    let duration = Duration::from_secs(if quick { 12 } else { 60 });
    let stop = AtomicBool::new(false);
    let requests = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let mut faults = vec![
        ("burst of 150 over backlog 8", 0u32),
        ("SIGKILL of a worker", 0),
        ("reload", 0),
        ("policy hash and back", 0),
        ("200 stray ACK/FIN/RST", 0),
        ("50 abandoned SYNs", 0),
    ];
    let mut errors = Vec::new();
    let begin = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        // Steady traffic: 4 clients, a new connection per request.
        for _ in 0..4 {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    if patient_get(addr) {
                        requests.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        let raw = RawSender::new();
        let mut next_fault = Instant::now() + Duration::from_millis(500);
        let mut n = 0usize;
        let mut port_base = 20_000u16;
        while begin.elapsed() < duration {
            if Instant::now() >= next_fault {
                let kind = n % faults.len();
                faults[kind].1 += 1;
                match kind {
                    0 => {
                        for _ in 0..150 {
                            s.spawn(|| {
                                if patient_get(addr) {
                                    requests.fetch_add(1, Ordering::Relaxed);
                                } else {
                                    failed.fetch_add(1, Ordering::Relaxed);
                                }
                            });
                        }
                    }
                    1 => {
                        let status = r.status()?;
                        let pid = status["slots"][n % 4]["pid"].as_i64().unwrap_or(0);
                        if pid > 0 {
                            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                        }
                    }
                    2 => ctl(&r, bin, &["reload"]),
                    3 => {
                        ctl(&r, bin, &["policy", "hash"]);
                        std::thread::sleep(Duration::from_millis(500));
                        ctl(&r, bin, &["policy", "least-loaded"]);
                    }
                    4 => {
                        for i in 0..200u16 {
                            let src = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 2), port_base + i);
                            raw.send(src, dst, [ACK, FIN | ACK, RST][i as usize % 3], 1);
                        }
                        port_base = port_base.wrapping_add(200).max(20_000);
                    }
                    _ => {
                        for i in 0..50u16 {
                            let src = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 3), port_base + i);
                            raw.send(src, dst, SYN, 7);
                        }
                        port_base = port_base.wrapping_add(50).max(20_000);
                    }
                }
                n += 1;
                next_fault = Instant::now() + Duration::from_millis(1500);
            }
            errors.push(error(&r.status()?));
            std::thread::sleep(Duration::from_millis(100));
        }
        stop.store(true, Ordering::Relaxed);
        Ok(())
    })?;
    // Quiescence: every client has its answer. Now the loads must come back to the truth.
    let quiet = Instant::now();
    let converge_ms = loop {
        let st = r.status()?;
        let zero = st["slots"].as_array().is_some_and(|a| {
            a.iter()
                .all(|x| x["load"] == 0 && x["queued"] == 0 && x["open"] == 0)
        });
        if zero {
            break quiet.elapsed().as_secs_f64() * 1e3;
        }
        if quiet.elapsed() > Duration::from_secs(10) {
            bail!("drift soak: loads not back to the truth 10 s after quiescence: {st}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let st = r.status()?;
    let corrections = st["slots"].as_array().map_or(0, |a| {
        a.iter()
            .map(|x| x["corrections"].as_u64().unwrap_or(0))
            .sum()
    });
    errors.sort_unstable();
    let p99 = errors.get(errors.len() * 99 / 100).copied().unwrap_or(0);
    Ok(Drift {
        seconds: duration.as_secs_f64(),
        faults,
        requests: requests.into_inner(),
        failed: failed.into_inner(),
        max_error: errors.last().copied().unwrap_or(0),
        p99_error: p99,
        corrections,
        converge_ms,
    })
}

pub fn markdown(d: &Drift) -> String {
    let faults: Vec<String> = d.faults.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
    format!(
        "\n## Drift soak\n\n\
         4 built-in workers, least-loaded, backlog 8; 4 clients opening a new connection per \
         request for {:.0} s while one fault every 1.5 s: {}. Every 100 ms the sum over slots \
         of |load − kernel| is sampled (kernel: the live accept queue plus the sockets open in \
         the worker at the last reconciliation, so a sample can lag by up to one 0.5 s \
         interval). Then traffic stops and the loads must return to the truth.\n\n\
         | requests answered | failed | max error | p99 error | corrections | back to the truth after quiescence |\n\
         |---:|---:|---:|---:|---:|---:|\n\
         | {} | {} | {} | {} | {} | {:.0} ms |\n\n\
         Failed: requests in flight on a SIGKILLed worker, and burst clients the kernel left \
         waiting over 20 s on a handshake it dropped under SYN cookies (docs/reliability.md).\n",
        d.seconds,
        faults.join(", "),
        d.requests,
        d.failed,
        d.max_error,
        d.p99_error,
        d.corrections,
        d.converge_ms
    )
}
