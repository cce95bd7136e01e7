//! `cargo xtask`: set up the toolchain the eBPF program needs, then build, run, test.
//!
//! Every command first runs `setup`, which is idempotent and quick when all is in place, so
//! that the two commands in the README work on a fresh machine.

mod bench;
mod dist;
mod setup;
mod vm;

use std::process::{Command, ExitCode};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Development tasks for balancer")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building the eBPF program needs (LLVM 22, bpf-linker, rust-src).
    Setup,
    /// Build (release) and run `balancer run`; arguments after `--` go to it.
    /// Default: --listen 0.0.0.0:8080, one built-in worker per CPU.
    Run {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Measure (release build, needs root) and write docs/benchmarks.md and .json.
    Bench {
        /// A shorter run (a few minutes).
        #[arg(long)]
        quick: bool,
        /// Where to write benchmarks.md, benchmarks.json and the plots (default: docs/).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// Workers of the distribution, drift and comparison scenarios.
        #[arg(long, default_value_t = bench::DEFAULT_WORKERS, value_name = "N",
              value_parser = clap::value_parser!(u32).range(1..=256))]
        workers: u32,
        /// Make the many-core table (a worker per core) on a machine of fewer than 8 cores too,
        /// as a smoke check.
        #[arg(long, env = "BALANCER_BENCH_MANY_CORE")]
        many_core: bool,
        /// Measure only the workers' message channels and print their table.
        #[arg(long)]
        channel: bool,
        /// Run only these parts (comma-separated); the other sections of benchmarks.md keep the
        /// text of the one already there, or say that they were not run.
        #[arg(long, value_delimiter = ',', value_name = "PARTS")]
        only: Vec<bench::Part>,
    },
    /// Hold idle connections open for the benchmark (its own child processes).
    #[command(hide = true)]
    Hold {
        to: std::net::SocketAddrV4,
        count: usize,
        first: usize,
    },
    /// Build the container image `balancer:latest` with podman (deploy/Containerfile).
    Image,
    /// Check formatting and lints, then run every test (unit and end-to-end; needs root).
    Test {
        /// Extra arguments for `cargo test`, e.g. a test name filter.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Boot Debian kernels in QEMU and run `balancer check` and the core end-to-end checks in
    /// each (needs root). Without --kernel: the whole matrix, writing docs/kernels.md and
    /// README's kernel table.
    Vm {
        /// A kernel series of the matrix (6.1, 6.12, 5.10); repeat for several.
        #[arg(long = "kernel", value_name = "SERIES")]
        kernels: Vec<String>,
    },
    /// Build the release artefacts in target/dist/: a static x86_64 binary (musl, the eBPF
    /// program embedded), a .deb, an OCI image, an npm package, a wheel, and SHA256SUMS.
    Dist {
        /// Also cross-build the static aarch64 binary (the binary alone, not packaged).
        #[arg(long)]
        aarch64: bool,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().task {
        // A child of the benchmark: nothing to set up.
        Task::Hold { to, count, first } => bench::held::hold(to, count, first),
        task => run(task),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<()> {
    let env = setup::ensure(matches!(
        task,
        Task::Setup | Task::Test { .. } | Task::Bench { .. } | Task::Vm { .. }
    ))?;
    match task {
        Task::Setup => Ok(()),
        Task::Run { args } => {
            cargo(&env, &["build", "--release", "-p", "balancer"])?;
            let mut cmd = Command::new(release_binary());
            cmd.arg("run");
            if args.is_empty() {
                cmd.args(["--listen", "0.0.0.0:8080"]);
            }
            cmd.args(&args);
            exec(cmd)
        }
        Task::Image => image(&env),
        Task::Bench {
            quick,
            out,
            workers,
            many_core,
            channel,
            only,
        } => {
            cargo(&env, &["build", "--release", "-p", "balancer"])?;
            if channel {
                balancer_tests::netns();
                return bench::channel::run(&release_binary(), quick);
            }
            let out = out.unwrap_or_else(|| root().join("docs"));
            let opts = bench::Options {
                quick,
                only,
                workers,
                many_core,
                out: &out,
            };
            bench::run(&release_binary(), &root(), &opts)
        }
        Task::Vm { kernels } => vm::run(&env, &root(), &vm::Options { kernels }),
        Task::Test { args } => test(&env, &args),
        Task::Dist { aarch64 } => dist::run(&env, &root(), aarch64),
        Task::Hold { .. } => unreachable!("handled in main"),
    }
}

fn release_binary() -> std::path::PathBuf {
    root().join("target/release/balancer")
}

/// `cargo xtask image`: the container image, from the release binary.
fn image(env: &setup::Env) -> Result<()> {
    cargo(env, &["build", "--release", "-p", "balancer"])?;
    let context = root().join("target/image");
    let status = Command::new(root().join("deploy/build-context.sh"))
        .arg(release_binary())
        .arg(&context)
        .status()?;
    if !status.success() {
        bail!("deploy/build-context.sh failed");
    }
    let status = Command::new("podman")
        .env("CONTAINERS_CONF", root().join("deploy/containers.conf"))
        .args(["build", "-t", "balancer:latest", "-f"])
        .arg(context.join("Containerfile"))
        .arg(&context)
        .status()
        .context("podman not found: apt-get install podman runc")?;
    if !status.success() {
        bail!("podman build failed");
    }
    Ok(())
}

/// `cargo xtask test`: lints, the release artefacts, every test, the 6.1 kernel leg, the
/// benchmark's smoke run.
fn test(env: &setup::Env, args: &[String]) -> Result<()> {
    cargo(env, &["fmt", "--all", "--", "--check"]).context("run `cargo fmt --all`")?;
    cargo(env, &["clippy", "--all-targets", "--", "-D", "warnings"])?;
    clippy_ebpf(env)?;
    // tests/dist.rs installs the release artefacts: built first, as a release would.
    dist::run(env, &root(), false)?;
    // The end-to-end tests are integration tests of `balancer`: cargo builds the binary
    // they run and names it to them (CARGO_BIN_EXE_balancer).
    // Every test binary runs even after one fails, so that a run reports every
    // failure; cargo still exits non-zero.
    let mut test = vec!["test", "--no-fail-fast", "--", "--test-threads=2"];
    test.extend(args.iter().map(String::as_str));
    let status = env
        .command("cargo")
        .args(&test)
        .env_remove("BALANCER_BIN")
        .current_dir(root())
        .status()?;
    if !status.success() {
        bail!("tests failed");
    }
    vm_leg(env)?;
    bench_smoke(env)
}

/// The benchmark is no pass/fail test, but it must keep running: --quick once, written
/// outside docs/.
fn bench_smoke(env: &setup::Env) -> Result<()> {
    let skip = std::env::var_os("BALANCER_SKIP_BENCH_SMOKE").is_some();
    if skip && std::env::var_os("CI").is_some() {
        bail!("BALANCER_SKIP_BENCH_SMOKE is set under CI: the benchmark smoke run must run there; unset it");
    }
    if skip {
        eprintln!("xtask: BALANCER_SKIP_BENCH_SMOKE is set: benchmark smoke run skipped");
        return Ok(());
    }
    // The static binary every release artefact holds, which `test` has built already: a
    // check that the benchmark keeps running needs no second, glibc release build.
    let bin = dist::static_binary(env, &root())?;
    let out = root().join("target/bench-smoke");
    // The many-core table forced on any machine: its code runs here too, not only
    // where 8 cores happen to be.
    let opts = bench::Options {
        quick: true,
        only: Vec::new(),
        workers: bench::DEFAULT_WORKERS,
        many_core: true,
        out: &out,
    };
    bench::run(&bin, &root(), &opts)
        .context("benchmark smoke run (cargo xtask bench --quick) failed")?;
    eprintln!(
        "xtask: benchmark smoke run ok: {}",
        out.join("benchmarks.md").display()
    );
    Ok(())
}

/// The 6.1 kernel in a VM: `balancer check` and the core checks on what Debian 12 and Amazon
/// Linux 2023 run, on every change.
fn vm_leg(env: &setup::Env) -> Result<()> {
    let skip = std::env::var_os("BALANCER_SKIP_VM").is_some();
    if skip && std::env::var_os("CI").is_some() {
        bail!("BALANCER_SKIP_VM is set under CI: the 6.1 kernel leg must run there; unset it");
    }
    if skip {
        eprintln!("xtask: BALANCER_SKIP_VM is set: the 6.1 kernel leg skipped");
        return Ok(());
    }
    let opts = vm::Options {
        kernels: vec!["6.1".into()],
    };
    vm::run(env, &root(), &opts).context("the 6.1 kernel leg (cargo xtask vm --kernel 6.1) failed")
}

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Lints the eBPF crate for the BPF target, with the toolchain and flags that build it.
fn clippy_ebpf(env: &setup::Env) -> Result<()> {
    let status = env
        .command("cargo")
        .arg(format!("+{}", env.toolchain))
        .args([
            "clippy",
            "-p",
            "balancer-ebpf",
            "--target",
            "bpfel-unknown-none",
        ])
        .args(["-Z", "build-std=core", "--target-dir"])
        .arg(root().join("target/ebpf-clippy"))
        .args(["--", "-D", "warnings"])
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            ["--cfg=bpf_target_arch=\"x86_64\"", "-Ctarget-cpu=v3"].join("\x1f"),
        )
        .current_dir(root())
        .status()?;
    if !status.success() {
        bail!("clippy found problems in balancer-ebpf");
    }
    Ok(())
}

fn cargo(env: &setup::Env, args: &[&str]) -> Result<()> {
    let status = env
        .command("cargo")
        .args(args)
        .current_dir(root())
        .status()?;
    if !status.success() {
        bail!("`cargo {}` failed", args.join(" "));
    }
    Ok(())
}

/// Replaces this process with `cmd`, so that Ctrl-C and the exit code are the balancer's own.
fn exec(mut cmd: Command) -> Result<()> {
    use std::os::unix::process::CommandExt as _;
    let err = cmd.exec();
    bail!("cannot start {:?}: {err}", cmd.get_program())
}
