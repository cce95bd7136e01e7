//! The latency workloads of a peer: an open loop with a skewed mix of request times, and the
//! open loop again with one worker held.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::Result;
use balancer_tests::{get, stats, workload::open_loop};
use serde::Serialize;

/// The open loop's latency percentiles (NaN, written as null, when nothing was answered).
#[derive(Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn of(sorted: &[f64]) -> Latency {
        let at = |p| stats::percentile(sorted, p).unwrap_or(f64::NAN);
        Latency {
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            p999_ms: at(0.999),
            max_ms: sorted.last().copied().unwrap_or(f64::NAN),
        }
    }
}

/// The open loop at `rate` for `dur`, 95% 1 ms requests and 5% of 50-200 ms on `route`: the
/// latencies, sorted.
pub fn skewed(addr: SocketAddr, route: &str, rate: f64, dur: Duration) -> Result<Vec<f64>> {
    let mut latencies_ms: Vec<f64> = open_loop(addr, soon(), rate, dur, |i| {
        format!("{route}{}", skewed_ms(i))
    })?
    .into_iter()
    .map(|s| s.latency_ms)
    .collect();
    stats::sort(&mut latencies_ms);
    Ok(latencies_ms)
}

/// The start of an open loop: shortly from now, once its senders are running.
fn soon() -> Instant {
    Instant::now() + Duration::from_millis(50)
}

/// A fixed pseudo-random mix: request `i` takes 1 ms, or 50-200 ms when its hash falls in 5%.
fn skewed_ms(i: usize) -> u64 {
    let h = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40;
    if h % 100 < 5 {
        50 + h % 151
    } else {
        1
    }
}

/// One worker held for 2 s in the middle of a 4 s open loop of 1 ms requests: the share of the
/// connections due during the hold that it answered, and the run's p99.
pub fn stuck_worker(addr: SocketAddr, rate: f64, route: &str) -> Result<(f64, f64)> {
    let begin = soon();
    let hold_at = Duration::from_secs(1);
    let hold_for = Duration::from_secs(2);
    std::thread::scope(|s| {
        let holder = s.spawn(|| {
            std::thread::sleep((begin + hold_at).saturating_duration_since(Instant::now()));
            get(addr, &format!("{route}2000")).map(|r| r.slot)
        });
        let all = open_loop(addr, begin, rate, Duration::from_secs(4), |_| {
            format!("{route}1")
        })?;
        let stuck = holder.join().expect("the holding client panicked")?;
        let window: Vec<_> = all
            .iter()
            .filter(|x| x.due >= hold_at && x.due < hold_at + hold_for)
            .collect();
        let share =
            window.iter().filter(|x| x.slot == stuck).count() as f64 / window.len().max(1) as f64;
        let mut lat: Vec<f64> = all.iter().map(|x| x.latency_ms).collect();
        stats::sort(&mut lat);
        Ok((share, stats::percentile(&lat, 0.99).unwrap_or(f64::NAN)))
    })
}
