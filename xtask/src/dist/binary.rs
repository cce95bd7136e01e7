//! The static binary: `balancer` built for `x86_64-unknown-linux-musl` (or, cross-built,
//! `aarch64-unknown-linux-musl`) with the `stripped` profile (the release build, stripped), the
//! commit named in `balancer --version`.
//!
//! Rust's musl target links statically by default, with the C library Rust ships for it, so no
//! C cross-toolchain is needed; the only step outside cargo is `rustup target add`. The build
//! fails rather than ship a binary that still asks for a dynamic loader.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::setup;

/// A target the release binary is built for.
pub struct Target {
    /// The Rust target.
    pub triple: &'static str,
    /// How the artefacts name it.
    pub name: &'static str,
    /// The linker, where the host's C compiler cannot link for it: rust-lld, with the musl
    /// start files and C library that Rust ships for the target, needs no cross toolchain.
    linker: Option<&'static str>,
}

pub const X86_64: Target = Target {
    triple: "x86_64-unknown-linux-musl",
    name: "x86_64-linux-musl",
    linker: None,
};

pub const AARCH64: Target = Target {
    triple: "aarch64-unknown-linux-musl",
    name: "aarch64-linux-musl",
    linker: Some("rust-lld"),
};

/// Builds the binary and returns its path under target/.
pub fn build(env: &setup::Env, root: &Path, target: &Target) -> Result<PathBuf> {
    let triple = target.triple;
    add_target(env, triple)?;
    let commit = commit(root)?;
    eprintln!("xtask: dist: building {triple} at commit {commit}");
    let mut cargo = env.command("cargo");
    cargo
        .args(["build", "--profile", "stripped", "-p", "balancer"])
        .args(["--target", triple])
        .env("BALANCER_COMMIT", &commit)
        .current_dir(root);
    if let Some(linker) = target.linker {
        let var = format!(
            "CARGO_TARGET_{}_LINKER",
            triple.to_uppercase().replace('-', "_")
        );
        cargo.env(var, linker);
    }
    if !cargo.status()?.success() {
        bail!("`cargo build --profile stripped --target {triple}` failed");
    }
    let binary = root.join("target").join(triple).join("stripped/balancer");
    let elf = std::fs::read(&binary).with_context(|| format!("{}", binary.display()))?;
    if has_interpreter(&elf)? {
        bail!(
            "{} asks for a dynamic loader: the musl build is not static",
            binary.display()
        );
    }
    Ok(binary)
}

/// `rustup target add` once: the target's standard library and musl.
fn add_target(env: &setup::Env, triple: &str) -> Result<()> {
    let out = env
        .command("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("cannot run rustup: the release build needs rustup")?;
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == triple)
    {
        return Ok(());
    }
    let status = env
        .command("rustup")
        .args(["target", "add", triple])
        .status()?;
    if !status.success() {
        bail!("`rustup target add {triple}` failed");
    }
    Ok(())
}

/// HEAD's short hash, with `-dirty` when tracked files have uncommitted changes: a binary built
/// from such a tree is not that commit.
fn commit(root: &Path) -> Result<String> {
    let git = |args: &[&str]| -> Result<String> {
        let out = Command::new("git")
            .args(args)
            .current_dir(root)
            .output()
            .context("cannot run git: the release names its commit")?;
        if !out.status.success() {
            bail!(
                "git {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let hash = git(&["rev-parse", "--short=12", "HEAD"])?;
    let dirty = !git(&["status", "--porcelain", "--untracked-files=no"])?.is_empty();
    Ok(if dirty { format!("{hash}-dirty") } else { hash })
}

/// Whether a 64-bit little-endian ELF file has a PT_INTERP program header, i.e. needs ld.so.
pub fn has_interpreter(elf: &[u8]) -> Result<bool> {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    if elf.get(..5) != Some(b"\x7fELF\x02") {
        bail!("not a 64-bit ELF file");
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        bail!("truncated ELF header");
    };
    for i in 0..phnum as usize {
        let at = phoff as usize + i * phentsize as usize;
        if u32_at(at).context("truncated program header")? == PT_INTERP {
            return Ok(true);
        }
    }
    Ok(false)
}
