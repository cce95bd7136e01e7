//! Skewed request times on new connections: 5% of requests hold their single-threaded worker
//! 100 ms, the rest 1 ms, Poisson arrivals at about half of what the workers can serve.
//!
//! Where a fast request waits is what decides its latency: behind a worker's 100 ms request it
//! waits up to 100 ms, in a queue that any worker takes from it hardly waits at all. Every peer
//! is given the same pre-generated traces (seeded, replayed identically), and the traces also
//! go through the simulation of N servers with one FCFS queue (fcfs.rs), with the service
//! times measured on this machine: the ideal the peers are held against.

mod replay;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Result;
use balancer_tests::{get, stats};
use serde::Serialize;

use super::{
    cores,
    fcfs::{self, Kind, Request},
    peers::{self, Env, Peer},
};
use replay::{replay, Latencies};

const SLOW_SHARE: f64 = 0.05;
/// How long a slow request holds its worker, and a fast one.
const SLOW_HOLD_MS: u64 = 100;
const FAST_HOLD_MS: u64 = 1;
/// Of what the workers could serve with these service times.
const UTILISATION: f64 = 0.5;
/// How much of the scenario a run makes.
struct Plan {
    traces: u64,
    /// Each trace has at least this many requests and lasts at least `min_seconds`: the
    /// percentiles of a small worker count need as many samples as those of a large one.
    min_requests: f64,
    min_seconds: f64,
    peers: Vec<Which>,
}

fn plan(quick: bool) -> Plan {
    if quick {
        // The judged pair on one trace only: the quick run must stay short.
        Plan {
            traces: 1,
            min_requests: 1200.0,
            min_seconds: 3.5,
            peers: vec![Which::LeastLoaded, Which::Overflow],
        }
    } else {
        Plan {
            traces: 5,
            min_requests: 2500.0,
            min_seconds: 8.0,
            peers: vec![
                Which::KernelHash,
                Which::SharedQueue,
                Which::NodeCluster,
                Which::LeastLoaded,
                Which::Overflow,
            ],
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Which {
    KernelHash,
    SharedQueue,
    NodeCluster,
    LeastLoaded,
    Overflow,
}

impl Which {
    /// The row's key in benchmarks.json, whatever its name in the table.
    fn key(self) -> &'static str {
        match self {
            Which::KernelHash => "kernel-hash",
            Which::SharedQueue => "shared-queue",
            Which::NodeCluster => "node-cluster",
            Which::LeastLoaded => LEAST_LOADED,
            Which::Overflow => OVERFLOW,
        }
    }

    fn start(self, env: &Env, port: u16) -> Result<Peer> {
        match self {
            Which::KernelHash => peers::kernel_hash(env, port),
            Which::SharedQueue => peers::shared_queue(env, port),
            Which::NodeCluster => peers::node_cluster(env, port),
            Which::LeastLoaded => peers::balancer(env, port, "least-loaded", false, None),
            Which::Overflow => peers::balancer(env, port, "least-loaded", true, None),
        }
    }

    /// The request of each kind: the built-in worker's sleep, or Node's hold by a synchronous
    /// wait (`/block` without `sleep=1` would burn a core per held worker, which on a machine
    /// of fewer cores than workers is a CPU limit rather than a hold).
    fn path(self, kind: Kind) -> String {
        let ms = match kind {
            Kind::Fast => FAST_HOLD_MS,
            Kind::Slow => SLOW_HOLD_MS,
        };
        match self {
            Which::NodeCluster => format!("/block?ms={ms}&sleep=1"),
            _ => format!("/work?ms={ms}"),
        }
    }
}

#[derive(Serialize)]
pub struct Skew {
    pub slow_share: f64,
    pub slow_hold_ms: u64,
    pub slow_path: String,
    pub fast_path: String,
    /// Median time of one request of each kind, alone, on a new connection: the simulation's
    /// service times.
    pub fast_service_ms: f64,
    pub slow_service_ms: f64,
    pub utilisation: f64,
    pub traces: u64,
    pub min_requests_per_trace: f64,
    pub min_seconds_per_trace: f64,
    /// Peers of the full scenario not in this run, and why.
    pub left_out: Vec<String>,
    pub sizes: Vec<SkewSize>,
}

/// One worker count.
#[derive(Serialize)]
pub struct SkewSize {
    pub workers: u32,
    /// Requests per second.
    pub rate: f64,
    pub seconds_per_trace: f64,
    pub seeds: Vec<u64>,
    /// The simulated shared FCFS queue first, then the peers.
    pub rows: Vec<SkewRow>,
}

#[derive(Serialize)]
pub struct SkewRow {
    /// `ideal`, or the peer's key (`least-loaded+overflow`, ...).
    pub key: &'static str,
    pub name: String,
    /// One per trace, in seed order.
    pub runs: Vec<TraceRun>,
}

/// One trace through one peer (or the simulation).
#[derive(Serialize)]
pub struct TraceRun {
    pub requests: usize,
    pub fast_p50_ms: f64,
    pub fast_p99_ms: f64,
    pub fast_p999_ms: f64,
    pub slow_p50_ms: f64,
    pub slow_p99_ms: f64,
    /// This fast p99 over the simulated ideal's on the same trace.
    pub fast_p99_vs_ideal: f64,
    /// Refused, reset, timed out or not answered with 200.
    pub failed: usize,
    /// Sent more than [`replay::LATE`] after they were due.
    pub sent_late: usize,
    /// Connections the program sent to the overflow queue (`balancer` peers only).
    pub overflowed: Option<u64>,
}

/// The worker counts: 2, 4 and one per core.
fn sizes() -> Vec<u32> {
    let mut v = vec![2, 4, cores() as u32];
    v.sort_unstable();
    v.dedup();
    v
}

pub fn measure(bin: &Path, root: &Path, quick: bool) -> Result<Skew> {
    let started = Instant::now();
    // No check for node: `cargo xtask setup` installs it, and a missing one fails the run
    // (peers::node_cluster names the fix) rather than leaving its row out.
    let plan = plan(quick);
    let mut left_out = Vec::new();
    if quick {
        left_out.push(
            "kernel hash, shared accept queue and node cluster: full run only, the quick run \
             keeps the pair the goal is judged by"
                .to_string(),
        );
    }
    let (fast_s, slow_s) = service_times(bin, root)?;
    eprintln!(
        "bench: skew, service times {:.2} ms and {:.1} ms",
        fast_s * 1e3,
        slow_s * 1e3
    );
    let mean_s = (1.0 - SLOW_SHARE) * fast_s + SLOW_SHARE * slow_s;
    let mut out = Skew {
        slow_share: SLOW_SHARE,
        slow_hold_ms: SLOW_HOLD_MS,
        slow_path: Which::LeastLoaded.path(Kind::Slow),
        fast_path: Which::LeastLoaded.path(Kind::Fast),
        fast_service_ms: fast_s * 1e3,
        slow_service_ms: slow_s * 1e3,
        utilisation: UTILISATION,
        traces: plan.traces,
        min_requests_per_trace: plan.min_requests,
        min_seconds_per_trace: plan.min_seconds,
        left_out,
        sizes: Vec::new(),
    };
    for (i, workers) in sizes().into_iter().enumerate() {
        let rate = UTILISATION * f64::from(workers) / mean_s;
        let seconds = (plan.min_requests / rate).max(plan.min_seconds);
        out.sizes.push(size(
            bin,
            root,
            &plan,
            workers,
            rate,
            seconds,
            9600 + 10 * i as u16,
            (fast_s, slow_s),
        )?);
    }
    eprintln!("bench: skew measured in {:.1?}", started.elapsed());
    Ok(out)
}

/// The time of one request of each kind, alone, on a new connection to one built-in worker
/// (seconds, the median of several in a row): what a request costs when it never waits.
fn service_times(bin: &Path, root: &Path) -> Result<(f64, f64)> {
    let env = Env {
        balancer: bin,
        root,
        workers: 1,
    };
    let p = peers::kernel_hash(&env, 9690)?;
    let median_of = |path: &str, n: usize| -> Result<f64> {
        let mut took = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            get(p.addr, path)?;
            took.push(t.elapsed().as_secs_f64());
        }
        stats::sort(&mut took);
        Ok(stats::percentile(&took, 0.5).unwrap_or(f64::NAN))
    };
    median_of("/", 20)?;
    let fast = median_of(&Which::LeastLoaded.path(Kind::Fast), 200)?;
    let slow = median_of(&Which::LeastLoaded.path(Kind::Slow), 5)?;
    Ok((fast, slow))
}

/// Every trace of one worker count through every peer, and through the simulation.
#[allow(clippy::too_many_arguments)]
fn size(
    bin: &Path,
    root: &Path,
    plan: &Plan,
    workers: u32,
    rate: f64,
    seconds: f64,
    first_port: u16,
    service: (f64, f64),
) -> Result<SkewSize> {
    let env = Env {
        balancer: bin,
        root,
        workers,
    };
    let seeds: Vec<u64> = (1..=plan.traces).collect();
    let traces: Vec<Vec<Request>> = seeds
        .iter()
        .map(|&s| fcfs::poisson(s, rate, seconds, SLOW_SHARE))
        .collect();
    let ideal: Vec<TraceRun> = traces.iter().map(|t| ideal(t, workers, service)).collect();
    // All started at once and measured in turn: an idle peer's workers only wait in accept.
    let mut running = Vec::new();
    for (k, &which) in plan.peers.iter().enumerate() {
        let peer = which.start(&env, first_port + k as u16)?;
        let warm = which.path(Kind::Fast);
        for _ in 0..20 {
            get(peer.addr, &warm)?;
        }
        running.push((which, peer));
    }
    let runs = through_peers(&running, &traces, &ideal, workers)?;
    let mut rows = vec![SkewRow {
        key: IDEAL,
        name: "ideal: one FCFS queue, simulated".into(),
        runs: ideal,
    }];
    for ((which, peer), runs) in running.iter().zip(runs) {
        rows.push(SkewRow {
            key: which.key(),
            name: peer.name.clone(),
            runs,
        });
    }
    Ok(SkewSize {
        workers,
        rate,
        seconds_per_trace: seconds,
        seeds,
        rows,
    })
}

/// `trace` through the simulation of `workers` servers with one FCFS queue.
fn ideal(trace: &[Request], workers: u32, (fast_s, slow_s): (f64, f64)) -> TraceRun {
    let lat = fcfs::simulate(trace, workers as usize, |k| match k {
        Kind::Fast => fast_s,
        Kind::Slow => slow_s,
    });
    let mut l = Latencies::default();
    for (r, seconds) in trace.iter().zip(lat) {
        match r.kind {
            Kind::Fast => l.fast.push(seconds * 1e3),
            Kind::Slow => l.slow.push(seconds * 1e3),
        }
    }
    l.run(None, None)
}

/// Every trace through every running peer: the runs of each peer, in trace order.
fn through_peers(
    running: &[(Which, Peer)],
    traces: &[Vec<Request>],
    ideal: &[TraceRun],
    workers: u32,
) -> Result<Vec<Vec<TraceRun>>> {
    let mut runs: Vec<Vec<TraceRun>> = running.iter().map(|_| Vec::new()).collect();
    for (t, trace) in traces.iter().enumerate() {
        // Each trace through the peers in another order: whatever else the machine does at
        // some moment falls on every peer alike.
        let mut order: Vec<usize> = (0..running.len()).collect();
        order.rotate_left(t % running.len().max(1));
        for k in order {
            let (which, peer) = &running[k];
            eprintln!(
                "bench: skew, {workers} workers, trace {} of {}, {}",
                t + 1,
                traces.len(),
                peer.name
            );
            let before = overflowed(peer);
            let paths = [which.path(Kind::Fast), which.path(Kind::Slow)];
            let l = replay(peer.addr, trace, workers, &paths)?;
            let sent = overflowed(peer)
                .zip(before)
                .map(|(a, b)| a.saturating_sub(b));
            runs[k].push(l.run(Some(ideal[t].fast_p99_ms), sent));
            // The last connections close and their loads come back to zero before the next.
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    Ok(runs)
}

/// The program's count of connections sent to the overflow queue, for a `balancer` peer.
fn overflowed(peer: &Peer) -> Option<u64> {
    let b = peer.balancer()?;
    b.status().ok()?["program"]["overflowed"].as_u64()
}

/// The median of `values`, the mean of the middle two for an even count, and the range.
pub fn spread(values: impl IntoIterator<Item = f64>) -> (f64, f64, f64) {
    let mut v: Vec<f64> = values.into_iter().collect();
    stats::sort(&mut v);
    let n = v.len();
    if n == 0 {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let mid = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (mid, v[0], v[n - 1])
}

/// The scenario's summary of one size: the median ratio of `row`'s fast p99 to `base`'s, and
/// in how many traces `row` was worse.
pub fn compare(base: &SkewRow, row: &SkewRow) -> (f64, usize) {
    let ratios = base
        .runs
        .iter()
        .zip(&row.runs)
        .map(|(b, r)| r.fast_p99_ms / b.fast_p99_ms);
    let worse = base
        .runs
        .iter()
        .zip(&row.runs)
        .filter(|(b, r)| r.fast_p99_ms > b.fast_p99_ms)
        .count();
    (spread(ratios).0, worse)
}

/// The row of `key`, if this run has it.
pub fn row<'a>(size: &'a SkewSize, key: &str) -> Option<&'a SkewRow> {
    size.rows.iter().find(|r| r.key == key)
}

pub const IDEAL: &str = "ideal";
pub const LEAST_LOADED: &str = "least-loaded";
pub const OVERFLOW: &str = "least-loaded+overflow";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_takes_the_middle() {
        assert_eq!(spread([3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(spread([4.0, 1.0]), (2.5, 1.0, 4.0));
        assert!(spread([]).0.is_nan());
    }

    #[test]
    fn sizes_are_deduplicated_and_sorted() {
        let s = sizes();
        assert!(s.windows(2).all(|w| w[0] < w[1]));
        assert!(s.contains(&2) && s.contains(&4));
    }

    #[test]
    fn node_holds_by_waiting() {
        assert!(Which::NodeCluster.path(Kind::Slow).contains("sleep=1"));
        assert_eq!(Which::Overflow.path(Kind::Slow), "/work?ms=100");
    }
}
