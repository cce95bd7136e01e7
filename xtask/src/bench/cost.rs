//! The cost of one selection: the kernel's accounting of the program's runs, for every policy
//! side by side at each slot count.
//!
//! One balancer per slot count; its policy is switched live between measurements, in rounds
//! that go through every policy (each round in another order), so that whatever else the
//! machine does at some moment falls on every policy alike rather than on one. Each figure is
//! the median over the rounds.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{bail, Result};
use balancer_tests::{stats::mean, Balancer};
use serde::Serialize;

use super::{
    client::{self, Until},
    median, set_policy, start,
};

/// Every policy, `hash` (the program returning at once) last: the baseline of the ratios.
pub const POLICIES: [&str; 6] = [
    "least-loaded",
    "p2c",
    "round-robin",
    "weighted",
    "sticky",
    "hash",
];
const SLOTS: [u32; 4] = [2, 16, 64, 1024];
/// Closed-loop clients: at most this many connections are in flight, whatever the slot count.
const CLIENTS: usize = 4;

#[derive(Serialize)]
pub struct SelectionCost {
    pub rounds: usize,
    pub connections_per_round: u64,
    pub clients: usize,
    pub rows: Vec<CostRow>,
    pub load: Vec<CostLoad>,
}

#[derive(Serialize)]
pub struct CostRow {
    pub slots: u32,
    pub policy: &'static str,
    /// Runs of the program over every measured round.
    pub runs: u64,
    /// The median over the rounds.
    pub ns_per_run: f64,
    pub ns_per_run_rounds: Vec<f64>,
    /// Close-tracker time per connection (all its runs, both ends of each loopback connection),
    /// median over the rounds.
    pub tracker_ns_per_connection: f64,
    pub tracker_runs_per_connection: f64,
}

/// How busy the workers were while the program chose among them, at one slot count.
#[derive(Serialize)]
pub struct CostLoad {
    pub slots: u32,
    /// New connections per second, median over every measured round.
    pub connections_per_second: f64,
    /// The sum of the slots' loads (connections queued or open), sampled while the policies
    /// that record loads ran.
    pub in_flight_mean: f64,
    pub in_flight_max: u64,
    /// Slots with a load above 0, in the same samples.
    pub loaded_slots_mean: f64,
    pub samples: usize,
    /// The client's CPU time per second of wall time, median over the rounds.
    pub client_cpu: f64,
    pub client_user_cpu: f64,
}

pub fn measure(quick: bool) -> Result<SelectionCost> {
    let (rounds, per_round) = if quick { (3, 1_500) } else { (5, 4_000) };
    let mut rows = Vec::new();
    let mut load = Vec::new();
    for (i, slots) in SLOTS.into_iter().enumerate() {
        eprintln!(
            "bench: selection cost, {slots} slots, {rounds} rounds of {} policies",
            POLICIES.len()
        );
        // Slot 0 weighs 3, the others 1: `weighted` then has a choice to make.
        let b = start(8081 + i as u16, slots, "least-loaded", &["--weights", "3"]);
        client::new_connections(b.addr, CLIENTS, Until::Requests(500))?;
        let mut rounds_of: Vec<Vec<Round>> = POLICIES.iter().map(|_| Vec::new()).collect();
        let mut samples: Vec<(u64, u64)> = Vec::new();
        for round in 0..rounds {
            for k in 0..POLICIES.len() {
                let p = (k + round) % POLICIES.len();
                set_policy(&b, POLICIES[p])?;
                // The first connections after a switch meet cold caches and the old policy's
                // flows closing.
                client::new_connections(b.addr, CLIENTS, Until::Requests(100))?;
                std::thread::sleep(Duration::from_millis(20));
                // `hash` records no load: its samples would read idle workers.
                let sampling = (POLICIES[p] != "hash").then_some(sample_every(slots));
                rounds_of[p].push(one_round(&b, per_round, sampling, &mut samples)?);
            }
        }
        for (policy, measured) in POLICIES.into_iter().zip(&rounds_of) {
            let ns_per_run_rounds: Vec<f64> = measured.iter().map(|r| r.ns_per_run).collect();
            rows.push(CostRow {
                slots,
                policy,
                runs: measured.iter().map(|r| r.runs).sum(),
                ns_per_run: median(&ns_per_run_rounds),
                ns_per_run_rounds,
                tracker_ns_per_connection: median(
                    &measured.iter().map(|r| r.tracker_ns).collect::<Vec<_>>(),
                ),
                tracker_runs_per_connection: median(
                    &measured.iter().map(|r| r.tracker_runs).collect::<Vec<_>>(),
                ),
            });
        }
        let all: Vec<&Round> = rounds_of.iter().flatten().collect();
        let in_flight: Vec<u64> = samples.iter().map(|s| s.0).collect();
        load.push(CostLoad {
            slots,
            connections_per_second: median(&all.iter().map(|r| r.per_second).collect::<Vec<_>>()),
            in_flight_mean: mean(&in_flight),
            in_flight_max: in_flight.iter().copied().max().unwrap_or(0),
            loaded_slots_mean: mean(&samples.iter().map(|s| s.1).collect::<Vec<_>>()),
            samples: samples.len(),
            client_cpu: median(&all.iter().map(|r| r.client_cpu).collect::<Vec<_>>()),
            client_user_cpu: median(&all.iter().map(|r| r.client_user_cpu).collect::<Vec<_>>()),
        });
    }
    Ok(SelectionCost {
        rounds,
        connections_per_round: per_round,
        clients: CLIENTS,
        rows,
        load,
    })
}

/// One policy's measurement in one round.
struct Round {
    runs: u64,
    ns_per_run: f64,
    tracker_ns: f64,
    tracker_runs: f64,
    per_second: f64,
    client_cpu: f64,
    client_user_cpu: f64,
}

/// How often the loads are sampled: a status of 1024 slots is a few hundred kB of JSON, which
/// the supervisor must not spend a core making.
fn sample_every(slots: u32) -> Duration {
    Duration::from_millis(if slots > 64 { 250 } else { 25 })
}

/// `connections` new connections, with the program's counters read before and after; with
/// `sampling`, the slots' loads are sampled meanwhile into `samples` (sum of loads, slots
/// loaded).
fn one_round(
    b: &Balancer,
    connections: u64,
    sampling: Option<Duration>,
    samples: &mut Vec<(u64, u64)>,
) -> Result<Round> {
    let before = b.status()?;
    let done = AtomicBool::new(false);
    let run = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut out = Vec::new();
            let Some(every) = sampling else {
                return out;
            };
            loop {
                std::thread::sleep(every);
                if done.load(Ordering::Relaxed) {
                    return out;
                }
                if let Ok(status) = b.status() {
                    out.push(loads(&status));
                }
            }
        });
        let run = client::new_connections(b.addr, CLIENTS, Until::Requests(connections));
        done.store(true, Ordering::Relaxed);
        samples.extend(sampler.join().expect("the load sampler panicked"));
        run
    })?;
    // Let the last connections' closes reach the tracker before it is read.
    std::thread::sleep(Duration::from_millis(20));
    let after = b.status()?;
    let d = |k: &str| {
        after["program"][k]
            .as_u64()
            .unwrap_or(0)
            .saturating_sub(before["program"][k].as_u64().unwrap_or(0))
    };
    let (ns, runs) = (d("run_time_ns"), d("run_count"));
    if runs == 0 {
        bail!("the kernel counted no runs: is kernel.bpf_stats_enabled on?");
    }
    let opened = (run.answered + run.failed) as f64;
    Ok(Round {
        runs,
        ns_per_run: ns as f64 / runs as f64,
        tracker_ns: d("tracker_run_time_ns") as f64 / opened,
        tracker_runs: d("tracker_run_count") as f64 / opened,
        per_second: run.per_second,
        client_cpu: run.cpu,
        client_user_cpu: run.cpu_user,
    })
}

/// The sum of the slots' loads, and how many slots have any.
fn loads(status: &serde_json::Value) -> (u64, u64) {
    let slots = status["slots"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let each = slots.iter().map(|x| x["load"].as_u64().unwrap_or(0));
    (each.clone().sum(), each.filter(|&l| l > 0).count() as u64)
}
