//! One trace replayed against a peer: each request on a new connection when due, by
//! whichever sender is free first, its latency counted from when it was due.

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use balancer_tests::{get, stats};

use super::{
    super::fcfs::{Kind, Request},
    TraceRun,
};

/// A request sent this much after it was due counts as sent late: the client, not the peer,
/// was behind.
pub const LATE: Duration = Duration::from_millis(5);

/// The latencies of one trace, by kind, in ms.
#[derive(Default)]
pub struct Latencies {
    pub fast: Vec<f64>,
    pub slow: Vec<f64>,
    pub failed: usize,
    pub sent_late: usize,
}

impl Latencies {
    pub fn run(mut self, ideal_fast_p99: Option<f64>, overflowed: Option<u64>) -> TraceRun {
        stats::sort(&mut self.fast);
        stats::sort(&mut self.slow);
        let at = |v: &[f64], p| stats::percentile(v, p).unwrap_or(f64::NAN);
        let fast_p99_ms = at(&self.fast, 0.99);
        TraceRun {
            requests: self.fast.len() + self.slow.len() + self.failed,
            fast_p50_ms: at(&self.fast, 0.5),
            fast_p99_ms,
            fast_p999_ms: at(&self.fast, 0.999),
            slow_p50_ms: at(&self.slow, 0.5),
            slow_p99_ms: at(&self.slow, 0.99),
            fast_p99_vs_ideal: ideal_fast_p99.map_or(1.0, |i| fast_p99_ms / i),
            failed: self.failed,
            sent_late: self.sent_late,
            overflowed,
        }
    }
}

/// Senders enough that a request is sent when due even when many wait on slow answers.
fn senders(workers: u32) -> usize {
    (32 * workers as usize).clamp(128, 1024)
}

/// Replays `trace` against `addr` from shortly from now: request `i` on a new connection at its
/// due time, by whichever sender is free first; latency counts from when it was due.
pub fn replay(
    addr: SocketAddr,
    trace: &[Request],
    workers: u32,
    [fast, slow]: &[String; 2],
) -> Result<Latencies> {
    let next = AtomicUsize::new(0);
    let begin = Instant::now() + Duration::from_millis(100);
    let per_sender: Vec<Latencies> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..senders(workers))
            .map(|_| {
                s.spawn(|| {
                    let mut l = Latencies::default();
                    while let Some(r) = trace.get(next.fetch_add(1, Ordering::Relaxed)) {
                        let due = begin + Duration::from_secs_f64(r.at);
                        std::thread::sleep(due.saturating_duration_since(Instant::now()));
                        if due.elapsed() > LATE {
                            l.sent_late += 1;
                        }
                        let path = match r.kind {
                            Kind::Fast => fast,
                            Kind::Slow => slow,
                        };
                        let answered = get(addr, path).is_ok_and(|a| a.status == 200);
                        let ms = due.elapsed().as_secs_f64() * 1e3;
                        match (answered, r.kind) {
                            (false, _) => l.failed += 1,
                            (true, Kind::Fast) => l.fast.push(ms),
                            (true, Kind::Slow) => l.slow.push(ms),
                        }
                    }
                    l
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a sender panicked"))
            .collect()
    });
    let mut all = Latencies::default();
    for l in per_sender {
        all.fast.extend(l.fast);
        all.slow.extend(l.slow);
        all.failed += l.failed;
        all.sent_late += l.sent_late;
    }
    if all.fast.is_empty() {
        bail!("{addr}: no fast request answered ({} failed)", all.failed);
    }
    Ok(all)
}
