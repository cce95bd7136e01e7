//! The Python wheel: `pip install balancer-….whl` puts `balancer` in the environment's bin.
//!
//! ruff and uv ship this way, built by maturin's `bin` bindings: a wheel with no Python code,
//! the binary under `NAME-VERSION.data/scripts/`, which pip installs as an executable script.
//! maturin builds the binary itself through cargo; this wheel wraps the release binary that
//! every other artefact holds, so it is assembled here per the wheel format (PEP 427, PEP 491):
//! a zip with `METADATA`, `WHEEL` and a `RECORD` of every file's SHA-256.
//!
//! Tags: a static binary needs nothing of the C library, so it meets both manylinux2014 (glibc
//! 2.17 and up) and musllinux_1_1 (Alpine and other musl systems); one wheel carries both, and
//! `py3-none` since no Python ABI is involved.

use std::io::Write as _;

use anyhow::Result;
use base64::Engine as _;
use sha2::{Digest as _, Sha256};
use zip::{write::SimpleFileOptions, CompressionMethod, ZipWriter};

use super::{Release, VERSION};

/// The platform tags of the wheel, compressed as PEP 425 allows.
pub const PLATFORMS: &str = "manylinux_2_17_x86_64.manylinux2014_x86_64.musllinux_1_1_x86_64";

/// Builds the wheel into the release's output.
pub fn build(release: &Release) -> Result<()> {
    let dist_info = format!("balancer-{VERSION}.dist-info");
    let scripts = format!("balancer-{VERSION}.data/scripts");
    let metadata = format!(
        "Metadata-Version: 2.1\nName: balancer\nVersion: {VERSION}\n\
         Summary: Runs N copies of a server on one port; the kernel sends each new connection \
         to the least-loaded copy (SK_REUSEPORT eBPF).\n\
         License: MIT OR Apache-2.0\nRequires-Python: >=3.7\n"
    );
    let tags: String = PLATFORMS
        .split('.')
        .map(|p| format!("Tag: py3-none-{p}\n"))
        .collect();
    let wheel =
        format!("Wheel-Version: 1.0\nGenerator: cargo xtask dist\nRoot-Is-Purelib: false\n{tags}");
    let files: Vec<(String, Vec<u8>, u32)> = vec![
        (
            format!("{scripts}/balancer"),
            std::fs::read(&release.binary)?,
            0o755,
        ),
        (
            format!("{dist_info}/METADATA"),
            metadata.into_bytes(),
            0o644,
        ),
        (format!("{dist_info}/WHEEL"), wheel.into_bytes(), 0o644),
    ];
    let mut record = String::new();
    for (name, data, _) in &files {
        let hash = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(data));
        record.push_str(&format!("{name},sha256={hash},{}\n", data.len()));
    }
    record.push_str(&format!("{dist_info}/RECORD,,\n"));
    let path = release
        .out
        .join(format!("balancer-{VERSION}-py3-none-{PLATFORMS}.whl"));
    let mut zip = ZipWriter::new(std::fs::File::create(&path)?);
    let record_entry = (format!("{dist_info}/RECORD"), record.into_bytes(), 0o644);
    // RECORD last, as installers expect it.
    for (name, data, mode) in files.iter().chain([&record_entry]) {
        let options = SimpleFileOptions::default()
            .compression_method(CompressionMethod::Deflated)
            .unix_permissions(*mode);
        zip.start_file(name.as_str(), options)?;
        zip.write_all(data)?;
    }
    zip.finish()?;
    Ok(())
}
