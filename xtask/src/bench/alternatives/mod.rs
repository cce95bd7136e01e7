//! `balancer` against the alternatives, side by side: every peer is started first and stays
//! up, idle when not measured; then interleaved rounds, each through every peer once in
//! another order (the first peer of one round is the last of the next), of new connections
//! (`Connection: close`) and of keep-alive requests, so that whatever else the machine does
//! meanwhile falls on every peer alike. Each figure is the median over the rounds, next to its
//! range and its ratio to plain SO_REUSEPORT (the same workers on listeners with no program).
//! Then, once per peer, the latency workloads: an open loop with a skewed mix of request
//! times, and the open loop again with one worker held. Last, wrk against the plain peer next
//! to the native client, so that a reader sees the client is not the limit.

mod latency;
pub mod throughput;

use std::{path::Path, time::Duration};

use anyhow::{Context as _, Result};
use balancer_tests::stats;
use serde::Serialize;

pub use latency::Latency;
use throughput::{Kind, Run};
pub use throughput::{Summary, KEEPALIVE_CLIENTS, NEW_CONN_CLIENTS};

use super::{
    peers::{self, Env, Peer},
    wrk,
};

/// Results of one peer across the workloads.
#[derive(Serialize)]
pub struct PeerResult {
    #[serde(rename = "peer")]
    pub name: String,
    pub new_conn: Summary,
    pub keepalive: Summary,
    /// Connections per worker over every new-connection round.
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

/// The native client and wrk, back to back against plain SO_REUSEPORT.
#[derive(Serialize)]
pub struct ClientCheck {
    pub native_new_conn: f64,
    pub wrk_new_conn: f64,
    pub native_keepalive: f64,
    pub wrk_keepalive: f64,
}

#[derive(Serialize)]
pub struct Alternatives {
    pub rounds: usize,
    pub seconds_per_run: f64,
    pub peers: Vec<PeerResult>,
    pub client_check: ClientCheck,
}

/// How a peer starts, on a port.
type Start = Box<dyn Fn(&Env, u16) -> Result<Peer>>;

/// A peer to start: how, its worker's hold route, its share of the open loop's rate.
struct Entry {
    start: Start,
    route: &'static str,
    rate_share: f64,
}

/// The peers, plain SO_REUSEPORT first (the baseline of the ratios).
fn roster(root: &Path, quick: bool) -> Result<Vec<Entry>> {
    let builtin = |start: Start| Entry {
        start,
        route: "/work?ms=",
        rate_share: 1.0,
    };
    let balancer = |policy: &'static str, overflow: bool| {
        builtin(Box::new(move |env: &Env, port| {
            peers::balancer(env, port, policy, overflow, None)
        }))
    };
    let mut out = vec![
        builtin(Box::new(peers::kernel_hash)),
        balancer("hash", false),
        balancer("least-loaded", false),
        // The built-in worker's default: `balancer run` with no options.
        balancer("least-loaded", true),
    ];
    if !quick {
        out.extend([balancer("p2c", false), balancer("round-robin", false)]);
    }
    out.extend([
        builtin(Box::new(peers::shared_queue)),
        builtin(Box::new(peers::nginx)),
        builtin(Box::new(peers::haproxy)),
    ]);
    // Node: the same server script under the cluster module and under balancer, where the
    // workers' own uids can read it, if the checkout is where they cannot.
    let node = balancer_tests::reachable(&root.join("examples/node/server.js"));
    let node = node.to_str().context("path")?.to_string();
    let node_entry = |start: Start| Entry {
        start,
        route: "/block?ms=",
        rate_share: 1.0 / 3.0,
    };
    out.push(node_entry(Box::new(peers::node_cluster)));
    out.push(node_entry(Box::new(move |env: &Env, port| {
        peers::balancer(env, port, "least-loaded", false, Some(&["node", &node]))
    })));
    Ok(out)
}

/// Every peer, side by side, with the built-in worker (and the Node pair with the Node server).
pub fn measure(bin: &Path, root: &Path, quick: bool, workers: u32) -> Result<Alternatives> {
    let env = Env {
        balancer: bin,
        root,
        workers,
    };
    let (rounds, dur) = if quick {
        (3, Duration::from_secs(1))
    } else {
        (5, Duration::from_secs(3))
    };
    let roster = roster(root, quick)?;
    // A peer behind a proxy has its workers on the ports after its own.
    let ports = (0..roster.len()).map(|i| 9100 + i as u16 * (workers as u16 + 1));
    let running: Vec<Peer> = roster
        .iter()
        .zip(ports)
        .map(|(e, port)| (e.start)(&env, port))
        .collect::<Result<_>>()?;
    let mut runs: Vec<(Vec<Run>, Vec<Run>)> = running.iter().map(|_| Default::default()).collect();
    for round in 0..rounds {
        eprintln!("bench: alternatives, round {} of {rounds}", round + 1);
        for k in 0..running.len() {
            let i = (round + k) % running.len();
            runs[i]
                .0
                .push(throughput::run(&running[i], Kind::NewConnections, dur)?);
            runs[i]
                .1
                .push(throughput::run(&running[i], Kind::KeepAlive, dur)?);
        }
    }
    let client_check = client_check(&running[0], dur)?;
    let rate = open_loop_rate(workers);
    let mut out = Vec::new();
    for ((peer, entry), (new_conn, keepalive)) in running.iter().zip(&roster).zip(runs) {
        eprintln!("bench: {}: latency", peer.name);
        out.push(one(
            peer,
            workers as usize,
            quick,
            entry,
            rate,
            new_conn,
            keepalive,
        )?);
    }
    let (plain_new, plain_ka) = (out[0].new_conn.rates(), out[0].keepalive.rates());
    for r in &mut out {
        r.new_conn.compare(&plain_new);
        r.keepalive.compare(&plain_ka);
    }
    Ok(Alternatives {
        rounds,
        seconds_per_run: dur.as_secs_f64(),
        peers: out,
        client_check,
    })
}

/// The open loop's rate for `workers` single-threaded workers: mean service ~7 ms (95% 1 ms,
/// 5% 50-200 ms), so 75/s per worker is about half of what each can serve. The built-in
/// worker's holds sleep, so this does not depend on the cores.
pub fn open_loop_rate(workers: u32) -> f64 {
    75.0 * f64::from(workers)
}

/// The native client and wrk, each kind back to back.
fn client_check(plain: &Peer, dur: Duration) -> Result<ClientCheck> {
    eprintln!("bench: the native client against wrk");
    Ok(ClientCheck {
        native_new_conn: throughput::run(plain, Kind::NewConnections, dur)?.per_second,
        wrk_new_conn: wrk::requests_per_second(plain.addr, NEW_CONN_CLIENTS, dur, true)?,
        native_keepalive: throughput::run(plain, Kind::KeepAlive, dur)?.per_second,
        wrk_keepalive: wrk::requests_per_second(plain.addr, KEEPALIVE_CLIENTS, dur, false)?,
    })
}

/// One peer's latency workloads, with its throughput rounds.
fn one(
    peer: &Peer,
    workers: usize,
    quick: bool,
    entry: &Entry,
    rate: f64,
    new_conn: Vec<Run>,
    keepalive: Vec<Run>,
) -> Result<PeerResult> {
    let rate = rate * entry.rate_share;
    let dur = Duration::from_secs(if quick { 2 } else { 10 });
    let latencies_ms = latency::skewed(peer.addr, entry.route, rate, dur)?;
    let (stuck_share, stuck_p99_ms) = latency::stuck_worker(peer.addr, rate, entry.route)?;
    let mut counts = vec![0; workers];
    for r in &new_conn {
        for (total, c) in counts.iter_mut().zip(&r.counts) {
            *total += c;
        }
    }
    Ok(PeerResult {
        name: peer.name.clone(),
        new_conn: Summary::of(new_conn),
        keepalive: Summary::of(keepalive),
        counts_cv: stats::cv(&counts),
        counts,
        latency: Latency::of(&latencies_ms),
        latencies_ms,
        stuck_share,
        stuck_p99_ms,
    })
}
