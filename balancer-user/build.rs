//! Compiles the eBPF program (`balancer-ebpf`, for the BPF target, with the nightly toolchain
//! and bpf-linker) into OUT_DIR, where `src/kernel/mod.rs` embeds it. `cargo xtask setup` installs
//! what this needs; `BALANCER_EBPF_TOOLCHAIN` names a toolchain other than `nightly`.
//!
//! This is what aya-build does, plus `-C target-cpu=v3`: the round-robin policy needs the value
//! an atomic add returns (BPF_FETCH), which BPF ISA v3 has and the default v1 does not (the
//! kernel has run v3 programs since 5.1; the program needs 5.17 for `bpf_loop` anyway).
//!
//! Then it checks the object's map and program names against the lists in balancer-common
//! (`maps::MAP_NAMES`, `maps::PROGRAM_NAMES`, `maps::TRACEPOINTS`), which the supervisor loads
//! them by: aya-ebpf's macros name a map or program after its Rust identifier and take no
//! constant, so a rename on one side only fails here, not at load time.

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{anyhow, bail, Context as _, Result};
use balancer_common::maps::{MAP_NAMES, PROGRAM_NAMES, TRACEPOINTS};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _, SymbolKind};

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
    check_names(&built)?;
    std::fs::copy(&built, out.join("balancer"))
        .with_context(|| format!("cannot copy {}", built.display()))?;
    Ok(())
}

/// Fails unless the maps and programs of the object at `path` are exactly those balancer-common
/// lists, and each tracepoint program's section names the tracepoint it is attached to.
fn check_names(path: &Path) -> Result<()> {
    let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (maps, programs) =
        symbols(&data).map_err(|e| anyhow!("cannot parse {}: {e}", path.display()))?;
    let mut wrong = Vec::new();
    for (kind, listed, found) in [
        (
            "map",
            MAP_NAMES,
            maps.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
        ),
        (
            "program",
            PROGRAM_NAMES,
            programs.iter().map(|(p, _)| p.as_str()).collect(),
        ),
    ] {
        for name in listed.iter().filter(|n| !found.contains(n)) {
            wrong.push(format!(
                "no {kind} `{name}` in the object, which balancer-common names"
            ));
        }
        for name in found.iter().filter(|n| !listed.contains(n)) {
            wrong.push(format!(
                "{kind} `{name}` of the object is not listed in balancer-common"
            ));
        }
    }
    for (program, tracepoint) in TRACEPOINTS {
        let section = programs.iter().find(|(p, _)| p == program).map(|(_, s)| s);
        if section.is_some_and(|s| s.rsplit('/').next() != Some(tracepoint)) {
            wrong.push(format!(
                "program `{program}` is in section `{}`, not on tracepoint `{tracepoint}`",
                section.map_or("", |s| s.as_str())
            ));
        }
    }
    if !wrong.is_empty() {
        bail!(
            "the eBPF object's map and program names differ from balancer-common's:\n  {}\n\
             Rename both sides together: the statics and program functions in balancer-ebpf, \
             the constants and lists in balancer-common/src/maps.rs.",
            wrong.join("\n  ")
        );
    }
    Ok(())
}

/// The maps (symbols of the `maps` and `.maps` sections) and the programs with their section
/// (functions outside `.text`, which holds the functions they call) of an eBPF object.
type Symbols = (Vec<String>, Vec<(String, String)>);

fn symbols(data: &[u8]) -> object::Result<Symbols> {
    let file = object::File::parse(data)?;
    let (mut maps, mut programs) = (Vec::new(), Vec::new());
    for symbol in file.symbols() {
        let Some(index) = symbol.section_index() else {
            continue;
        };
        let section = file.section_by_index(index)?.name()?;
        let name = symbol.name()?.to_string();
        match symbol.kind() {
            SymbolKind::Data if matches!(section, "maps" | ".maps") => maps.push(name),
            SymbolKind::Text if symbol.is_global() && section != ".text" => {
                programs.push((name, section.to_string()));
            }
            _ => {}
        }
    }
    Ok((maps, programs))
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
