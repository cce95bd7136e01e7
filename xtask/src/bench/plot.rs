//! The PNG plots of benchmarks.md, drawn by matplotlib (plot.py): the latency CDF per peer and
//! the per-worker distribution bars.

use std::{path::Path, process::Command};

use anyhow::{bail, Result};
use serde::Serialize;

use super::alternatives::PeerResult;

const SCRIPT: &str = include_str!("plot.py");

/// What plot.py reads of each peer.
#[derive(Serialize)]
struct Run<'a> {
    name: &'a str,
    lat: &'a [f64],
    counts: &'a [u64],
}

pub fn draw(results: &[PeerResult], docs: &Path) -> Result<()> {
    let runs: Vec<Run> = results
        .iter()
        .map(|r| Run {
            name: &r.name,
            lat: &r.latencies_ms,
            counts: &r.counts,
        })
        .collect();
    let input = docs.join(".bench-plot.json");
    std::fs::write(&input, serde_json::to_string(&runs)?)?;
    let status = Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(&input)
        .arg(docs)
        .status()?;
    let _ = std::fs::remove_file(&input);
    if !status.success() {
        bail!("plotting failed (pip install matplotlib)");
    }
    Ok(())
}
