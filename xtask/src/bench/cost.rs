//! The cost of one selection: the kernel's accounting of the program's runs over a fixed
//! number of new connections, for each slot count and policy.

use anyhow::{bail, Result};
use balancer_tests::{get, workload::in_parallel, Balancer};
use serde::Serialize;

use super::start;

#[derive(Serialize)]
pub struct CostRow {
    pub slots: u32,
    pub policy: &'static str,
    pub runs: u64,
    pub ns_per_run: f64,
    /// Close-tracker time per connection (all its runs, both ends of each loopback connection).
    pub tracker_ns_per_connection: f64,
    pub tracker_runs_per_connection: f64,
}

pub fn measure(quick: bool) -> Result<Vec<CostRow>> {
    let requests = if quick { 4_000 } else { 20_000 };
    let mut rows = Vec::new();
    let mut port = 8080;
    for slots in [2u32, 64, 1024] {
        for policy in ["least-loaded", "hash"] {
            port += 1;
            eprintln!("bench: selection cost, {slots} slots, {policy}");
            let b = start(port, slots, policy, &[]);
            drive(&b, 500)?; // warm-up
            let before = b.status()?;
            drive(&b, requests)?;
            let after = b.status()?;
            let d = |k: &str| {
                after["program"][k].as_u64().unwrap_or(0)
                    - before["program"][k].as_u64().unwrap_or(0)
            };
            let (ns, runs) = (d("run_time_ns"), d("run_count"));
            if runs == 0 {
                bail!("the kernel counted no runs: is kernel.bpf_stats_enabled on?");
            }
            let connections = requests as f64;
            rows.push(CostRow {
                slots,
                policy,
                runs,
                ns_per_run: ns as f64 / runs as f64,
                tracker_ns_per_connection: d("tracker_run_time_ns") as f64 / connections,
                tracker_runs_per_connection: d("tracker_run_count") as f64 / connections,
            });
        }
    }
    Ok(rows)
}

/// `count` requests, each on a new connection, from 4 clients; every one must be answered.
fn drive(b: &Balancer, count: usize) -> Result<()> {
    in_parallel(4, |_| {
        for _ in 0..count / 4 {
            get(b.addr, "/")?;
        }
        Ok(Vec::<()>::new())
    })?;
    Ok(())
}
