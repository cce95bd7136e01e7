//! How the cost grows: with workers, and with idle connections held open.
//!
//! Workers: new connections per second of the default `balancer run` (least-loaded with the
//! shared overflow queue) and of plain SO_REUSEPORT (the same workers on listeners with no
//! program) at each worker count, in interleaved rounds. Idle connections: one default
//! balancer, and idle keep-alive connections held open to it in steps; at each step the
//! supervisor's CPU time over a quiet window (its reconciliation's readings walk every socket of
//! the port through /proc and sock_diag, when something moved, within 0.5% of a core), then new
//! connections per second with them held, and the supervisor's CPU meanwhile; the
//! reconciliation's own readings and CPU in both, from `status`.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde::Serialize;

use super::{
    alternatives::throughput::{self, Kind, Run},
    held::Held,
    median,
    peers::{self, Env, Peer},
    usage,
};

/// Workers of the idle-connection steps: enough that 100k connections stay within each
/// worker's descriptors where RLIMIT_NOFILE cannot be raised (20k here), however unevenly the
/// overflow queue spreads them.
const IDLE_WORKERS: u32 = 16;

/// The supervisor's reconciliation period the figures were taken at (balancer's default).
pub const RECONCILE_INTERVAL_S: f64 = 0.5;

#[derive(Serialize)]
pub struct Scale {
    pub rounds: usize,
    pub seconds_per_run: f64,
    pub window_seconds: f64,
    pub reconcile_interval_s: f64,
    pub idle_workers: u32,
    pub workers: Vec<WorkersRow>,
    pub idle: Vec<IdleRow>,
}

/// One worker count: medians over the rounds.
#[derive(Serialize)]
pub struct WorkersRow {
    pub workers: u32,
    pub default_per_second: f64,
    pub plain_per_second: f64,
    pub ratio: f64,
    /// The default's supervisor, per second of wall time (1.0 is one core).
    pub supervisor_cpu: f64,
    pub default_rounds: Vec<f64>,
    pub plain_rounds: Vec<f64>,
}

/// One number of idle connections held.
#[derive(Serialize)]
pub struct IdleRow {
    pub connections: usize,
    /// The supervisor's CPU per second of wall time over the quiet window.
    pub supervisor_cpu_quiet: f64,
    pub new_conn_per_second: f64,
    /// The supervisor's CPU during the new-connection run.
    pub supervisor_cpu_busy: f64,
    /// The reconciliation's readings over the quiet window and during the run, and the CPU
    /// they took per second of wall time (from `status`).
    pub readings_quiet: u64,
    pub reconcile_cpu_quiet: f64,
    pub readings_busy: u64,
    pub reconcile_cpu_busy: f64,
    pub failed: u64,
}

/// The reconciliation's readings so far and the CPU they took, as `status` says.
fn reconciliation(peer: &Peer) -> Result<(u64, f64)> {
    let b = peer.balancer().context("the scale peer is a balancer")?;
    let status = b.status()?;
    let r = &status["reconciliation"];
    Ok((
        r["readings"].as_u64().unwrap_or(0),
        r["cpu_seconds"].as_f64().unwrap_or(0.0),
    ))
}

pub fn measure(bin: &Path, root: &Path, quick: bool) -> Result<Scale> {
    let (counts, idle, rounds, secs, window): (&[u32], &[usize], _, _, _) = if quick {
        (&[2, 16], &[0, 1000], 1, 1, 2)
    } else {
        (&[2, 4, 16, 64], &[0, 1000, 10_000, 100_000], 3, 3, 10)
    };
    let dur = Duration::from_secs(secs);
    let mut workers = Vec::new();
    for &n in counts {
        eprintln!("bench: scale, {n} workers");
        workers.push(by_workers(bin, root, n, rounds, dur)?);
    }
    let env = Env {
        balancer: bin,
        root,
        workers: IDLE_WORKERS,
    };
    let peer = peers::balancer(&env, 9800, "least-loaded", true, None)?;
    let mut held = Held::new(peer.addr)?;
    let mut rows = Vec::new();
    for &n in idle {
        eprintln!("bench: scale, {n} idle connections");
        rows.push(with_idle(
            &peer,
            &mut held,
            n,
            dur,
            Duration::from_secs(window),
        )?);
    }
    Ok(Scale {
        rounds,
        seconds_per_run: dur.as_secs_f64(),
        window_seconds: window as f64,
        reconcile_interval_s: RECONCILE_INTERVAL_S,
        idle_workers: IDLE_WORKERS,
        workers,
        idle: rows,
    })
}

/// Plain and the default at `n` workers, `rounds` rounds, the order swapped each round.
fn by_workers(bin: &Path, root: &Path, n: u32, rounds: usize, dur: Duration) -> Result<WorkersRow> {
    let env = Env {
        balancer: bin,
        root,
        workers: n,
    };
    let both = [
        peers::kernel_hash(&env, 9700)?,
        peers::balancer(&env, 9701, "least-loaded", true, None)?,
    ];
    let mut runs: [Vec<Run>; 2] = Default::default();
    for round in 0..rounds {
        for k in 0..2 {
            let i = (round + k) % 2;
            runs[i].push(throughput::run(&both[i], Kind::NewConnections, dur)?);
        }
    }
    let rates = |r: &[Run]| r.iter().map(|x| x.per_second).collect::<Vec<_>>();
    let (plain, default) = (rates(&runs[0]), rates(&runs[1]));
    let supervisor: Vec<f64> = runs[1].iter().map(|r| r.layer_cpu).collect();
    Ok(WorkersRow {
        workers: n,
        default_per_second: median(&default),
        plain_per_second: median(&plain),
        ratio: median(&default) / median(&plain),
        supervisor_cpu: median(&supervisor),
        default_rounds: default,
        plain_rounds: plain,
    })
}

/// `n` idle connections held to `peer`: its supervisor's CPU over `window` with nothing else
/// happening, then new connections for `dur`.
fn with_idle(
    peer: &Peer,
    held: &mut Held,
    n: usize,
    dur: Duration,
    window: Duration,
) -> Result<IdleRow> {
    held.grow_to(n)?;
    // A few reconciliations first, so that the window starts in the steady state.
    std::thread::sleep(Duration::from_secs_f64(RECONCILE_INTERVAL_S * 4.0));
    let before = usage::of(&peer.layer);
    let r0 = reconciliation(peer)?;
    let t0 = Instant::now();
    std::thread::sleep(window);
    let quiet_s = t0.elapsed().as_secs_f64();
    let quiet = (usage::of(&peer.layer) - before).cpu_seconds / quiet_s;
    let r1 = reconciliation(peer)?;
    let t1 = Instant::now();
    let run = throughput::run(peer, Kind::NewConnections, dur)?;
    let busy_s = t1.elapsed().as_secs_f64();
    let r2 = reconciliation(peer)?;
    Ok(IdleRow {
        connections: held.len(),
        supervisor_cpu_quiet: quiet,
        new_conn_per_second: run.per_second,
        supervisor_cpu_busy: run.layer_cpu,
        readings_quiet: r1.0 - r0.0,
        reconcile_cpu_quiet: (r1.1 - r0.1) / quiet_s,
        readings_busy: r2.0 - r1.0,
        reconcile_cpu_busy: (r2.1 - r1.1) / busy_s,
        failed: run.failed,
    })
}
