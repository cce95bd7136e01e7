//! `cargo xtask dist`: the release artefacts, all from one static binary, in `target/dist/`.
//!
//! A user of a production host needs no Rust toolchain, no LLVM and no bpf-linker: the eBPF
//! object is built here and embedded in the binary (balancer-user/build.rs), and the binary is
//! linked statically against musl, so one file runs on any x86_64 Linux distribution of a new
//! enough kernel. Every other artefact wraps that same file, the way each ecosystem expects:
//!
//! - `balancer-VERSION-x86_64-linux-musl`: the binary itself ([`binary`]); with `--aarch64`,
//!   `balancer-VERSION-aarch64-linux-musl` too, cross-built (linked by rust-lld), unpackaged;
//! - `balancer_VERSION-1_amd64.deb`: the binary, the systemd unit, an example config ([`deb`]);
//! - `balancer-VERSION-image.tar`: an OCI image holding the binary alone ([`image`]);
//! - `balancer-VERSION.tgz`: an npm package whose `bin` is the binary ([`npm`]);
//! - `balancer-VERSION-py3-none-….whl`: a wheel carrying it as a script, as maturin's `bin`
//!   bindings do for ruff and uv ([`wheel`]);
//! - `SHA256SUMS`: the checksums of all of the above, for `sha256sum -c`.
//!
//! Nothing is published: the artefacts are built here and tested by tests/dist.rs.

mod binary;
mod deb;
mod image;
mod npm;
mod wheel;

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use sha2::{Digest as _, Sha256};

use crate::setup;

/// The release the artefacts carry: the workspace version, which xtask shares.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What every packager needs to know.
pub struct Release {
    /// The static binary, stripped.
    pub binary: PathBuf,
    /// The workspace root: deploy/ and README.md come from there.
    pub root: PathBuf,
    /// Where the artefacts go (`target/dist/`).
    pub out: PathBuf,
    /// A scratch directory for staging packages (`target/dist-work/`).
    pub work: PathBuf,
}

impl Release {
    /// A fresh staging directory for one package.
    pub fn stage(&self, name: &str) -> Result<PathBuf> {
        let dir = self.work.join(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }
}

/// The static x86_64 binary every artefact holds, built (or found up to date) under target/:
/// what the kernel matrix boots, so that the binary users install is the one tested there.
pub fn static_binary(env: &setup::Env, root: &Path) -> Result<PathBuf> {
    binary::build(env, root, &binary::X86_64)
}

/// Builds every artefact into `root/target/dist` and prints each with its size.
pub fn run(env: &setup::Env, root: &Path, aarch64: bool) -> Result<()> {
    let out = root.join("target/dist");
    if out.exists() {
        std::fs::remove_dir_all(&out)?;
    }
    std::fs::create_dir_all(&out)?;
    let built = binary::build(env, root, &binary::X86_64)?;
    let binary = out.join(format!("balancer-{VERSION}-{}", binary::X86_64.name));
    std::fs::copy(&built, &binary)?;
    if aarch64 {
        let arm = binary::build(env, root, &binary::AARCH64)?;
        std::fs::copy(
            &arm,
            out.join(format!("balancer-{VERSION}-{}", binary::AARCH64.name)),
        )?;
    }
    let release = Release {
        binary,
        root: root.to_path_buf(),
        out: out.clone(),
        work: root.join("target/dist-work"),
    };
    deb::build(&release)?;
    npm::build(&release)?;
    wheel::build(&release)?;
    image::build(&release)?;
    let sums = checksums(&out)?;
    std::fs::write(out.join("SHA256SUMS"), &sums)?;
    for line in sums.lines() {
        let name = line.split_whitespace().last().unwrap_or_default();
        let size = std::fs::metadata(out.join(name))?.len();
        eprintln!(
            "xtask: dist: {name} {:.1} MiB",
            size as f64 / (1 << 20) as f64
        );
    }
    eprintln!("xtask: dist: {} (sha256sum -c SHA256SUMS)", out.display());
    Ok(())
}

/// `sha256sum` lines for every file of `dir`, sorted by name.
fn checksums(dir: &Path) -> Result<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    names.sort();
    let mut text = String::new();
    for name in names {
        let digest = sha256(&std::fs::read(dir.join(&name))?);
        text.push_str(&format!("{digest}  {name}\n"));
    }
    Ok(text)
}

/// The lowercase hex SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Runs `cmd`, failing with `what` and its output if it fails.
pub fn checked(cmd: &mut std::process::Command, what: &str) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("{what}: cannot run {:?}", cmd.get_program()))?;
    if !out.status.success() {
        anyhow::bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
