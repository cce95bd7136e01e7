//! Compiles the eBPF program (`balancer-ebpf`, for the BPF target, with the nightly toolchain
//! and bpf-linker) into OUT_DIR, where `src/kernel/mod.rs` embeds it. `cargo xtask setup` installs
//! what this needs; `BALANCER_EBPF_TOOLCHAIN` names a toolchain other than `nightly`.
//!
//! This is what aya-build does, plus `-C target-cpu=v3`: the round-robin policy needs the value
//! an atomic add returns (BPF_FETCH), which BPF ISA v3 has and the default v1 does not (the
//! kernel has run v3 programs since 5.1; the program needs 5.17 for `bpf_loop` anyway).

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

fn main() -> Result<()> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest.parent().context("workspace root")?.to_path_buf();
    for watched in [
        "balancer-ebpf/src",
        "balancer-ebpf/Cargo.toml",
        "balancer-common/src",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    println!("cargo:rerun-if-env-changed=BALANCER_EBPF_TOOLCHAIN");
    println!("cargo:rustc-env=BALANCER_COMMIT={}", commit(&root));
    println!("cargo:rustc-env=BALANCER_TARGET={}", env::var("TARGET")?);
    let toolchain = env::var("BALANCER_EBPF_TOOLCHAIN")
        .ok()
        .filter(|t| !t.is_empty());
    let toolchain = toolchain.as_deref().unwrap_or("nightly");
    let arch = env::var("CARGO_CFG_TARGET_ARCH")?;
    let endian = env::var("CARGO_CFG_TARGET_ENDIAN")?;
    let target = if endian == "big" {
        "bpfeb-unknown-none"
    } else {
        "bpfel-unknown-none"
    };
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let target_dir = out.join("ebpf-target");

    let rustflags = [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".into(),
        "-Clink-arg=--btf".into(),
        "-Ctarget-cpu=v3".into(),
    ]
    .join("\x1f");
    let output = Command::new("rustup")
        .args([
            "run",
            toolchain,
            "cargo",
            "build",
            "--package",
            "balancer-ebpf",
            "--bins",
            "--release",
        ])
        .args(["--target", target, "-Z", "build-std=core", "--target-dir"])
        .arg(&target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        // The outer build's compiler settings must not leak into the nightly build.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTFLAGS")
        .current_dir(&root)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .context(
            "cannot run rustup: install the Rust toolchain with rustup, or run `cargo xtask setup`",
        )?;
    if !output.status.success() {
        for line in String::from_utf8_lossy(&output.stderr).lines() {
            println!("cargo:warning={line}");
        }
        bail!(
            "building the eBPF program failed (toolchain `{toolchain}`); `cargo xtask setup` installs \
             bpf-linker and rust-src"
        );
    }
    let built = target_dir.join(target).join("release").join("balancer");
    std::fs::copy(&built, out.join("balancer"))
        .with_context(|| format!("cannot copy {}", built.display()))?;
    Ok(())
}

/// The commit `balancer --version` names: `BALANCER_COMMIT` if set (`cargo xtask dist` sets it,
/// marking a tree with uncommitted changes), else git's HEAD, watched so that a new commit
/// rebuilds, else `unknown` (a source tree outside git).
fn commit(root: &Path) -> String {
    println!("cargo:rerun-if-env-changed=BALANCER_COMMIT");
    if let Some(c) = env::var("BALANCER_COMMIT").ok().filter(|c| !c.is_empty()) {
        return c;
    }
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .args(args)
            .current_dir(root)
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8(out.stdout).ok()?;
        out.status.success().then(|| text.trim().to_string())
    };
    let Some(commit) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        return "unknown".into();
    };
    // HEAD names a branch whose ref file (or packed-refs, once packed) moves on each commit.
    let mut watched = vec!["HEAD".to_string()];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(branch);
        watched.push("packed-refs".into());
    }
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--git-path", &name]) {
            let path = root.join(path);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    commit
}
