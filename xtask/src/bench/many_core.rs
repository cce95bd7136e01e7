//! New connections per second with one built-in worker per core, where the machine has the
//! cores for it to mean something: no program (the kernel's hash over plain SO_REUSEPORT
//! listeners), the shared accept queue, and `balancer` with each policy, in interleaved rounds.
//!
//! With few cores the client, the workers and the kernel share them, and every peer comes out
//! about the same: the table is made from 8 cores up, or when asked for (a smoke check).

use std::{path::Path, time::Duration};

use anyhow::{Context as _, Result};
use serde::Serialize;

use super::{
    client::{self, Until},
    cores,
    cost::POLICIES,
    median,
    peers::{self, Env, Peer},
    set_policy,
};

pub const MIN_CORES: usize = 8;
/// Interleaved rounds of a full run; the quick run (a check that the table is still made) has
/// one.
const ROUNDS: usize = 3;

#[derive(Serialize)]
pub struct ManyCore {
    pub cores: usize,
    /// Why there is no table, when there is none.
    pub skipped: Option<String>,
    /// Made on a machine of fewer than [`MIN_CORES`] cores because it was asked for.
    pub forced: bool,
    pub workers: u32,
    pub clients: usize,
    pub rounds: usize,
    pub seconds_per_run: f64,
    pub rows: Vec<ManyCoreRow>,
}

#[derive(Serialize)]
pub struct ManyCoreRow {
    pub name: String,
    /// New connections per second, the median over the rounds.
    pub per_second: f64,
    pub per_second_rounds: Vec<f64>,
    pub vs_no_program: f64,
    /// The client's CPU time per second of wall time, median over the rounds.
    pub client_cpu: f64,
    pub client_user_cpu: f64,
    pub failed: u64,
}

pub fn measure(bin: &Path, root: &Path, quick: bool, force: bool) -> Result<ManyCore> {
    let cores = cores();
    let workers = cores as u32;
    // Enough clients that every worker always has connections waiting.
    let clients = (4 * cores).max(16);
    let (rounds, seconds) = if quick { (1, 1.0) } else { (ROUNDS, 3.0) };
    let mut table = ManyCore {
        cores,
        skipped: None,
        forced: force && cores < MIN_CORES,
        workers,
        clients,
        rounds,
        seconds_per_run: seconds,
        rows: Vec::new(),
    };
    if cores < MIN_CORES && !force {
        table.skipped = Some(format!(
            "needs >= {MIN_CORES} cores, this machine has {cores}"
        ));
        return Ok(table);
    }
    eprintln!("bench: many-core table, {workers} workers");
    let env = Env {
        balancer: bin,
        root,
        workers,
    };
    // All started at once and measured in turn: an idle peer's workers only wait in accept.
    let hash = peers::kernel_hash(&env, 9500)?;
    let queue = peers::shared_queue(&env, 9501)?;
    // Overflow off: each row is the policy alone.
    let b = peers::balancer(&env, 9502, POLICIES[0], false, None)?;
    let mut entries: Vec<(String, &Peer, Option<&str>)> = vec![
        (hash.name.clone(), &hash, None),
        (queue.name.clone(), &queue, None),
    ];
    entries.extend(
        POLICIES
            .iter()
            .map(|&p| (format!("balancer {p}"), &b, Some(p))),
    );
    let mut runs: Vec<Vec<client::Run>> = entries.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for k in 0..entries.len() {
            let i = (k + round) % entries.len();
            let (name, peer, policy) = &entries[i];
            if let Some(p) = policy {
                set_policy(peer.balancer().context("a balancer peer")?, p)?;
            }
            eprintln!("bench: many-core round {}, {name}", round + 1);
            client::new_connections(
                peer.addr,
                clients,
                Until::Elapsed(Duration::from_millis(200)),
            )?;
            let dur = Duration::from_secs_f64(seconds);
            runs[i].push(client::new_connections(
                peer.addr,
                clients,
                Until::Elapsed(dur),
            )?);
        }
    }
    let names: Vec<String> = entries.into_iter().map(|(name, _, _)| name).collect();
    table.rows = rows(names, &runs);
    Ok(table)
}

/// The table's rows: the medians over the rounds, the first row the baseline of the ratios.
fn rows(names: Vec<String>, runs: &[Vec<client::Run>]) -> Vec<ManyCoreRow> {
    let mut out = Vec::new();
    let mut baseline = f64::NAN;
    for (name, measured) in names.into_iter().zip(runs) {
        let per_second_rounds: Vec<f64> = measured.iter().map(|r| r.per_second).collect();
        let per_second = median(&per_second_rounds);
        if baseline.is_nan() {
            baseline = per_second;
        }
        out.push(ManyCoreRow {
            name,
            per_second,
            per_second_rounds,
            vs_no_program: per_second / baseline,
            client_cpu: median(&measured.iter().map(|r| r.cpu).collect::<Vec<_>>()),
            client_user_cpu: median(&measured.iter().map(|r| r.cpu_user).collect::<Vec<_>>()),
            failed: measured.iter().map(|r| r.failed).sum(),
        });
    }
    out
}
