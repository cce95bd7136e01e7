//! `cargo xtask bench`: measurements, side by side in one run, written to benchmarks.md,
//! benchmarks.json and two plots.
//!
//! The scenarios, in order: the cost of one selection (the kernel's own accounting of the
//! program, `kernel.bpf_stats_enabled=1`, with 2, 16, 64 and 1024 worker slots, for every policy
//! and for `hash`, which returns at once: the fixed cost of running any program), the
//! distribution of each policy with and without a busy worker, the drift soak, the workers'
//! output through the supervisor, `balancer` against the alternatives, skewed request times
//! against a simulated shared FCFS queue at 2, 4 and one worker per core, and, on a machine of
//! 8 cores or more, new connections per second with a worker per core, and how the cost grows
//! with workers and with idle connections held open. `least-loaded` runs without the shared
//! overflow queue except in rows that name it. Everything runs in a private network namespace on
//! loopback.
//!
//! Each scenario is a [`Part`], a section of benchmarks.md: `--only` runs some of them, and the
//! sections of the others keep the text of the benchmarks.md already there (their figures in
//! benchmarks.json too), or say that they were not run.
//!
//! Apart: [`channel`], the workers' message channels (`cargo xtask bench --channel`), printed
//! rather than written to benchmarks.md.

mod alternatives;
pub mod channel;
mod client;
mod cost;
mod drift;
mod fcfs;
pub mod held;
mod json;
mod many_core;
mod output;
mod peers;
mod plot;
mod policies;
mod report;
mod scale;
mod skew;
mod usage;
mod wrk;

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

/// A part of the benchmark: one scenario, one section of benchmarks.md.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Part {
    /// The cost of one selection (kernel.bpf_stats_enabled).
    Cost,
    /// The distribution of each policy, with and without a busy worker.
    Policies,
    /// The drift soak.
    Drift,
    /// The workers' output through the supervisor.
    Output,
    /// `balancer` against the alternatives, in interleaved rounds.
    Alternatives,
    /// Skewed request times against a simulated shared FCFS queue.
    Skew,
    /// A worker per core (8 cores or more, or --many-core).
    ManyCore,
    /// How the cost grows with workers and with idle connections held open.
    Scale,
}

/// What to run.
pub struct Options<'a> {
    pub quick: bool,
    /// The parts to run; none: all of them.
    pub only: Vec<Part>,
    /// Workers of the distribution, drift and comparison scenarios.
    pub workers: u32,
    /// Run the many-core table on a machine of fewer than 8 cores too.
    pub many_core: bool,
    /// Where benchmarks.md, benchmarks.json and the plots go.
    pub out: &'a Path,
}

/// Runs the parts `opts` asks for and writes benchmarks.md, benchmarks.json and the plots into
/// `opts.out`.
pub fn run(bin: &Path, root: &Path, opts: &Options) -> Result<()> {
    let (quick, workers, out) = (opts.quick, opts.workers, opts.out);
    ensure!(workers >= 1, "--workers must be at least 1");
    // Every balancer below comes from the test kit, which starts the binary this names.
    std::env::set_var("BALANCER_BIN", bin);
    balancer_tests::netns();
    let wanted = |p: Part| opts.only.is_empty() || opts.only.contains(&p);
    let selection_cost = wanted(Part::Cost)
        .then(|| with_bpf_stats(|| cost::measure(quick)))
        .transpose()?;
    let policies = wanted(Part::Policies)
        .then(|| policies::measure(workers))
        .transpose()?;
    let drift = wanted(Part::Drift)
        .then(|| {
            eprintln!("bench: drift soak");
            drift::soak(quick, workers)
        })
        .transpose()?;
    let output = wanted(Part::Output)
        .then(|| output::measure(quick))
        .transpose()?;
    let peers = wanted(Part::Alternatives)
        .then(|| alternatives::measure(bin, root, quick, workers))
        .transpose()?;
    let skew = wanted(Part::Skew)
        .then(|| skew::measure(bin, root, quick))
        .transpose()?;
    let many_core = wanted(Part::ManyCore)
        .then(|| many_core::measure(bin, root, quick, opts.many_core))
        .transpose()?;
    let scale = wanted(Part::Scale)
        .then(|| scale::measure(bin, root, quick))
        .transpose()?;
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
        scale,
    };
    std::fs::create_dir_all(out)?;
    let previous = |name: &str| std::fs::read_to_string(out.join(name)).ok();
    let md = report::markdown(&results, opts, previous("benchmarks.md").as_deref());
    if let Some(a) = &results.peers {
        plot::draw(&a.peers, out)?;
    }
    let json = results.to_json(previous("benchmarks.json").as_deref())?;
    std::fs::write(out.join("benchmarks.md"), &md)?;
    std::fs::write(out.join("benchmarks.json"), json)?;
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
