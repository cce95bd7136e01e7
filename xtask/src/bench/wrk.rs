//! wrk, the reference HTTP load generator, run against the plain peer next to the native
//! client: if both reach the same rate, the client is not what limits the tables.

use std::{net::SocketAddr, process::Command, time::Duration};

use anyhow::{bail, Context as _, Result};

/// Requests per second wrk reached against `addr` with `connections` connections for `dur`,
/// a new connection per request with `close`.
pub fn requests_per_second(
    addr: SocketAddr,
    connections: usize,
    dur: Duration,
    close: bool,
) -> Result<f64> {
    let threads = super::cores().min(connections).to_string();
    let mut cmd = Command::new("wrk");
    cmd.args(["-t", &threads, "-c", &connections.to_string()])
        .arg(format!("-d{}s", dur.as_secs().max(1)));
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    let out = cmd
        .arg(format!("http://{addr}/"))
        .output()
        .context("wrk not installed: `cargo xtask setup` installs it (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output: {text}"))
}
