//! The distribution of each policy: how evenly new connections from many client addresses
//! spread over the workers, and how many of them still go to a worker whose event loop is
//! held.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use anyhow::Result;
use balancer_tests::{get_from, stats, workload::in_parallel, KeepAlive};
use serde::Serialize;

use super::start;

#[derive(Serialize)]
pub struct PolicyRow {
    pub policy: &'static str,
    pub counts: Vec<u64>,
    pub cv: f64,
    pub busy_share: f64,
    #[serde(rename = "connections_during_block")]
    pub during_block: usize,
}

pub fn measure(workers: u32) -> Result<Vec<PolicyRow>> {
    let mut rows = Vec::new();
    for (i, (policy, extra)) in [
        ("least-loaded", &[][..]),
        ("p2c", &[][..]),
        ("round-robin", &[][..]),
        // Slot 0 weighs 3, the others 1.
        ("weighted", &["--weights", "3"][..]),
        ("sticky", &[][..]),
        ("hash", &[][..]),
    ]
    .into_iter()
    .enumerate()
    {
        eprintln!("bench: distribution and busy worker, {policy}");
        rows.push(row(9000 + i as u16, workers, policy, extra)?);
    }
    Ok(rows)
}

/// Client `i`'s source address: one of 64, so that `sticky` and `hash` see many clients.
fn client(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 3, (i % 64) as u8 + 1))
}

/// 2,000 connections from 4 concurrent clients, then one worker held for 2 s while 32 clients
/// open new connections.
fn row(port: u16, workers: u32, policy: &'static str, extra: &[&str]) -> Result<PolicyRow> {
    let b = start(port, workers, policy, extra);
    let addr = b.addr;
    let answers = in_parallel(4, |t| {
        (0..500)
            .map(|i| Ok(get_from(client(t * 500 + i), addr, "/")?.slot))
            .collect()
    })?;
    let counts = stats::per_slot(&answers, workers as usize);

    // Hold one worker: a keep-alive connection learns its slot, then asks for 2 s of work.
    let mut holder = KeepAlive::open(addr)?;
    holder.send("/work?ms=2000")?;
    std::thread::sleep(Duration::from_millis(50));
    let begin = Instant::now();
    let block = Duration::from_millis(1900);
    let during = in_parallel(32, |t| {
        let mut out = Vec::new();
        let mut i = 0;
        while begin.elapsed() < block && out.len() < 300 {
            let started = begin.elapsed();
            let slot = get_from(client(t * 300 + i), addr, "/")?.slot;
            i += 1;
            if started < block {
                out.push(slot);
            }
        }
        Ok(out)
    })?;
    let _ = holder.read_reply();
    let to_busy = during.iter().filter(|&&s| s == holder.slot).count();
    Ok(PolicyRow {
        policy,
        cv: stats::cv(&counts),
        counts,
        busy_share: to_busy as f64 / during.len().max(1) as f64,
        during_block: during.len(),
    })
}
