//! `cargo xtask bench`: measurements, side by side in one run, written to benchmarks.md,
//! benchmarks.json and two plots.
//!
//! The scenarios, in order: the cost of one selection (the kernel's own accounting of the
//! program, `kernel.bpf_stats_enabled=1`, with 2, 16, 64 and 1024 worker slots, for every policy
//! and for `hash`, which returns at once: the fixed cost of running any program), the
//! distribution of each policy with and without a busy worker, the drift soak, the workers'
//! output through the supervisor, `balancer` against the alternatives, skewed request times
//! against a simulated shared FCFS queue at 2, 4 and one worker per core, and, on a machine of
//! 8 cores or more, new connections per second with a worker per core. `least-loaded` runs
//! without the shared overflow queue except in rows that name it. Everything runs in a private
//! network namespace on loopback.
//!
//! Apart: [`channel`], the workers' message channels (`cargo xtask bench --channel`), printed
//! rather than written to benchmarks.md.

mod alternatives;
pub mod channel;
mod client;
mod cost;
mod drift;
mod fcfs;
mod json;
mod many_core;
mod output;
mod peers;
mod plot;
mod policies;
mod report;
mod skew;

use std::{net::SocketAddr, path::Path, process::Command, time::Duration};

use anyhow::{ensure, Context as _, Result};
use balancer_tests::{all_up, ctl_in_background, stats, Balancer};

const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// The balancers of the measurements other than the comparison: `balancer run` with `policy`,
/// no metrics endpoint, a backlog of 128 and the overflow queue off unless `extra` names them
/// (the queue is on by default for the built-in worker, and these rows measure the policy
/// alone); returns once every slot is up.
fn start(port: u16, workers: u32, policy: &str, extra: &[&str]) -> Balancer {
    let mut args = vec!["--policy", policy, "--metrics", "off"];
    if !extra.contains(&"--backlog") {
        args.extend(["--backlog", "128"]);
    }
    if !extra.contains(&"--overflow") {
        args.extend(["--overflow", "off"]);
    }
    args.extend(extra);
    let addr = localhost(port);
    // Starting 1024 workers on a busy machine takes far longer than a test's balancer.
    let b = Balancer::launch(&addr.to_string(), addr, workers, &args, false);
    b.wait_for(Duration::from_secs(120), "every slot up", all_up);
    b
}

fn localhost(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Workers of the distribution, drift and comparison scenarios unless `--workers` says.
pub const DEFAULT_WORKERS: u32 = 4;

/// What to run.
pub struct Options<'a> {
    pub quick: bool,
    /// Workers of the distribution, drift and comparison scenarios.
    pub workers: u32,
    /// Run the many-core table on a machine of fewer than 8 cores too.
    pub many_core: bool,
    /// Where benchmarks.md, benchmarks.json and the plots go.
    pub out: &'a Path,
}

/// Runs everything and writes benchmarks.md, benchmarks.json and the plots into `opts.out`.
pub fn run(bin: &Path, root: &Path, opts: &Options) -> Result<()> {
    let (quick, workers, out) = (opts.quick, opts.workers, opts.out);
    ensure!(workers >= 1, "--workers must be at least 1");
    // Every balancer below comes from the test kit, which starts the binary this names.
    std::env::set_var("BALANCER_BIN", bin);
    balancer_tests::netns();
    let selection_cost = with_bpf_stats(|| cost::measure(quick))?;
    let policies = policies::measure(workers)?;
    eprintln!("bench: drift soak");
    let drift = drift::soak(quick, workers)?;
    let output = output::measure(quick)?;
    let peers = alternatives::measure(bin, root, quick, workers)?;
    let skew = skew::measure(bin, root, quick)?;
    let many_core = many_core::measure(bin, root, quick, opts.many_core)?;
    let results = json::Results {
        machine: machine(),
        cores: cores(),
        date: today(),
        workers,
        selection_cost,
        policies,
        drift,
        output,
        peers,
        skew,
        many_core,
    };
    let md = report::markdown(&results, quick);
    std::fs::create_dir_all(out)?;
    plot::draw(&results.peers, out)?;
    std::fs::write(out.join("benchmarks.md"), &md)?;
    std::fs::write(out.join("benchmarks.json"), results.to_json()?)?;
    print!("{md}");
    Ok(())
}

/// Switches a running balancer's policy, as a user would (`balancer policy NAME`).
fn set_policy(b: &Balancer, policy: &str) -> Result<()> {
    let out = ctl_in_background(b, &["policy", policy])
        .join()
        .expect("the control client thread panicked");
    ensure!(
        out.status.success(),
        "balancer policy {policy}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// The median of `values` (of an odd count, as the rounds are; NaN for none).
fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    stats::sort(&mut v);
    stats::percentile(&v, 0.5).unwrap_or(f64::NAN)
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Runs `f` with the kernel's accounting of BPF programs on, and puts the setting back.
fn with_bpf_stats<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    let old =
        std::fs::read_to_string(STATS_SYSCTL).context("cannot read kernel.bpf_stats_enabled")?;
    std::fs::write(STATS_SYSCTL, "1").context("cannot enable kernel.bpf_stats_enabled")?;
    let result = f();
    let _ = std::fs::write(STATS_SYSCTL, old.trim());
    result
}

/// The machine, as the report names it: cores, CPU model, kernel.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{} cores ({cpu}), Linux {}", cores(), kernel.trim())
}

/// Today's date in UTC, as `date -u` gives it.
fn today() -> String {
    let out = Command::new("date").args(["-u", "+%Y-%m-%d"]).output().ok();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
