//! `balancer` against the alternatives: each peer under the same workloads (closed loops with
//! and without keep-alive, an open loop with a skewed mix of request times, and the open loop
//! again with one worker held), and the CPU time its balancing layer used.

use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use balancer_tests::{
    get,
    procfs::cpu_seconds,
    stats,
    workload::{closed_loop, open_loop},
};
use serde::Serialize;

use super::{
    client::{self, Until},
    peers::{self, Env, Peer},
};

/// Clients of the native load generator for new connections: enough that the workers, not the
/// round trips, are what limits.
pub const NEW_CONN_CLIENTS: usize = 32;

/// Results of one peer across the workloads.
#[derive(Serialize)]
pub struct PeerResult {
    #[serde(rename = "peer")]
    pub name: String,
    pub new_conn_rps: f64,
    /// The native client's CPU time during the new-connection run, per second of wall time.
    pub new_conn_client_cpu: f64,
    /// Its user part.
    pub new_conn_client_user_cpu: f64,
    pub new_conn_failed: u64,
    pub keepalive_rps: f64,
    pub layer_cpu: f64,
    pub counts: Vec<u64>,
    #[serde(skip)]
    pub counts_cv: f64,
    /// Open-loop latencies, sorted.
    #[serde(skip)]
    pub latencies_ms: Vec<f64>,
    #[serde(flatten)]
    pub latency: Latency,
    pub stuck_share: f64,
    pub stuck_p99_ms: f64,
}

/// The open loop's latency percentiles (NaN, written as null, when nothing was answered).
#[derive(Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    fn of(sorted: &[f64]) -> Latency {
        let at = |p| stats::percentile(sorted, p).unwrap_or(f64::NAN);
        Latency {
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            p999_ms: at(0.999),
            max_ms: sorted.last().copied().unwrap_or(f64::NAN),
        }
    }
}

/// Every peer, side by side, with the built-in worker (and the Node pair with the Node server).
pub fn measure(bin: &Path, root: &Path, quick: bool, workers: u32) -> Result<Vec<PeerResult>> {
    let env = Env {
        balancer: bin,
        root,
        workers,
    };
    let n = workers as usize;
    let rate = open_loop_rate(workers);
    // A peer behind a proxy has its workers on the ports after its own.
    let mut next_port = 9100u16;
    let mut port = || {
        let p = next_port;
        next_port += workers as u16 + 1;
        p
    };
    let mut out = Vec::new();
    let route = "/work?ms=";
    // Least-loaded alone, then (in the full run: the quick one must stay short) with the
    // shared overflow queue, the built-in worker's default; the skew scenario compares the two
    // in detail.
    let mut balancers = vec![("least-loaded", false)];
    if !quick {
        balancers.push(("least-loaded", true));
    }
    balancers.extend([("p2c", false), ("round-robin", false)]);
    for (policy, overflow) in balancers {
        let p = peers::balancer(&env, port(), policy, overflow, None)?;
        out.push(one(&p, n, quick, route, rate)?);
    }
    // Each peer is stopped before the next starts, so that none competes with another for CPU.
    let others = [
        peers::kernel_hash,
        peers::shared_queue,
        peers::nginx,
        peers::haproxy,
    ];
    for start in others {
        out.push(one(&start(&env, port())?, n, quick, route, rate)?);
    }
    // Node: the same server script under the cluster module and under balancer.
    // Where the workers' own uids can read it, if the checkout is where they cannot.
    let node = balancer_tests::reachable(&root.join("examples/node/server.js"));
    let node = node.to_str().context("path")?;
    let p = peers::node_cluster(&env, port())?;
    out.push(one(&p, n, quick, "/block?ms=", rate / 3.0)?);
    drop(p);
    let p = peers::balancer(&env, port(), "least-loaded", false, Some(&["node", node]))?;
    out.push(one(&p, n, quick, "/block?ms=", rate / 3.0)?);
    Ok(out)
}

/// The open loop's rate for `workers` single-threaded workers: mean service ~7 ms (95% 1 ms,
/// 5% 50-200 ms), so 75/s per worker is about half of what each can serve. The built-in
/// worker's holds sleep, so this does not depend on the cores.
pub fn open_loop_rate(workers: u32) -> f64 {
    75.0 * f64::from(workers)
}

/// One peer through every workload; `route` is its worker's hold route, `rate` the open loop's.
fn one(peer: &Peer, workers: usize, quick: bool, route: &str, rate: f64) -> Result<PeerResult> {
    let started = Instant::now();
    eprintln!("bench: {}", peer.name);
    let dur = if quick {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(5)
    };
    let cpu0 = cpu_seconds(&peer.layer);
    let t0 = Instant::now();
    let new_conn = client::new_connections(peer.addr, NEW_CONN_CLIENTS, Until::Elapsed(dur))?;
    let layer_cpu = (cpu_seconds(&peer.layer) - cpu0) / t0.elapsed().as_secs_f64();
    let keepalive = closed_loop(peer.addr, 16, dur, true)?;
    let mut latencies_ms: Vec<f64> = open_loop(peer.addr, soon(), rate, dur * 2, |i| {
        format!("{route}{}", skewed_ms(i))
    })?
    .into_iter()
    .map(|s| s.latency_ms)
    .collect();
    stats::sort(&mut latencies_ms);
    let (stuck_share, stuck_p99_ms) = stuck_worker(peer.addr, rate, route)?;
    eprintln!("bench: {} measured in {:.1?}", peer.name, started.elapsed());
    let mut counts = new_conn.counts;
    counts.resize(workers, 0);
    Ok(PeerResult {
        name: peer.name.clone(),
        new_conn_rps: new_conn.per_second,
        new_conn_client_cpu: new_conn.cpu,
        new_conn_client_user_cpu: new_conn.cpu_user,
        new_conn_failed: new_conn.failed,
        keepalive_rps: keepalive.per_second,
        layer_cpu,
        counts_cv: stats::cv(&counts),
        counts,
        latency: Latency::of(&latencies_ms),
        latencies_ms,
        stuck_share,
        stuck_p99_ms,
    })
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
fn stuck_worker(addr: SocketAddr, rate: f64, route: &str) -> Result<(f64, f64)> {
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
