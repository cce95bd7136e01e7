//! The guest's whole filesystem, as one initramfs: busybox, the static `balancer` (the one
//! every release artefact holds), the end-to-end test binaries of the core checks, the shared
//! libraries they load, and /init.
//!
//! Nothing is shared with the host at run time (Debian's cloud kernels have no 9p, and no
//! module is loaded), so what the guest runs is exactly what went into the archive. The
//! archive is an uncompressed `newc` cpio, the format the kernel unpacks into its root tmpfs
//! before starting /init; uncompressed because unpacking it is a copy, where decompressing under
//! emulation would cost seconds. The test binaries are debug builds: their debug information is
//! stripped on the way in, which takes them from hundreds of megabytes to a few.

use std::{
    collections::BTreeSet,
    fs,
    io::{BufWriter, Write as _},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

/// What goes into the guest.
pub struct Contents<'a> {
    pub balancer: &'a Path,
    pub busybox: &'a Path,
    /// Each test binary by the name /plan uses.
    pub tests: &'a [(String, PathBuf)],
    /// "BINARY TEST" lines for /init.
    pub plan: &'a str,
}

const INIT: &str = include_str!("init.sh");

/// Writes the archive to `out`, staging stripped copies under `stage`.
pub fn build(c: &Contents, stage: &Path, out: &Path) -> Result<()> {
    let _ = fs::remove_dir_all(stage);
    fs::create_dir_all(stage)?;
    let mut files: Vec<(String, PathBuf, u32)> = vec![
        ("bin/busybox".into(), c.busybox.to_path_buf(), 0o755),
        ("bin/balancer".into(), c.balancer.to_path_buf(), 0o755),
    ];
    for (name, path) in c.tests {
        let stripped = stage.join(name);
        let status = Command::new("objcopy")
            .arg("--strip-debug")
            .arg(path)
            .arg(&stripped)
            .status()
            .context("objcopy (binutils) not found")?;
        if !status.success() {
            bail!("objcopy --strip-debug {} failed", path.display());
        }
        files.push((format!("tests/{name}"), stripped, 0o755));
    }
    let init = stage.join("init");
    fs::write(&init, INIT)?;
    files.push(("init".into(), init, 0o755));
    let plan = stage.join("plan");
    fs::write(&plan, c.plan)?;
    files.push(("plan".into(), plan, 0o644));
    let elves: Vec<PathBuf> = files.iter().map(|(_, p, _)| p.clone()).collect();
    for lib in libraries(&elves)? {
        let name = lib.to_string_lossy().trim_start_matches('/').to_string();
        files.push((name, lib, 0o755));
    }
    write(&files, out)
}

/// Every shared library (and the dynamic loader) the binaries load, by the absolute path the
/// loader looks them up at, as `ldd` lists them.
fn libraries(binaries: &[PathBuf]) -> Result<BTreeSet<PathBuf>> {
    let mut libs = BTreeSet::new();
    for b in binaries {
        let out = Command::new("ldd")
            .arg(b)
            .output()
            .context("ldd not found")?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next(),
                None => line.split_whitespace().next(),
            };
            if let Some(p) = path.filter(|p| p.starts_with('/')) {
                libs.insert(PathBuf::from(p));
            }
        }
    }
    Ok(libs)
}

/// A copy of the archive `base` with the kernel's own `modules` (files named N-NAME.ko, loaded
/// in that order by /init) appended as a second archive: the kernel unpacks concatenated
/// archives one after the other.
pub fn with_modules(base: &Path, modules: &[PathBuf], out: &Path) -> Result<()> {
    fs::copy(base, out)?;
    let files: Vec<(String, PathBuf, u32)> = modules
        .iter()
        .map(|m| {
            let name = m.file_name().unwrap().to_string_lossy();
            (format!("modules/{name}"), m.clone(), 0o644)
        })
        .collect();
    let f = fs::OpenOptions::new().append(true).open(out)?;
    let mut w = BufWriter::new(f);
    entries(&mut w, &files, &[], 1 << 20)?;
    w.flush()?;
    Ok(())
}

/// The cpio archive: every parent directory of every file, /dev/console, then the files.
fn write(files: &[(String, PathBuf, u32)], out: &Path) -> Result<()> {
    let mut w = BufWriter::new(fs::File::create(out)?);
    entries(
        &mut w,
        files,
        &["dev", "proc", "sys", "tmp", "run", "root"],
        1,
    )?;
    w.flush()?;
    Ok(())
}

/// Writes `dirs`, the parent directories of `files`, then `files` and a trailer, numbering
/// inodes from `first_ino` (unique within the archives the kernel unpacks together).
fn entries(
    w: &mut impl std::io::Write,
    files: &[(String, PathBuf, u32)],
    dirs: &[&str],
    first_ino: u32,
) -> Result<()> {
    let mut all_dirs: BTreeSet<String> = dirs.iter().map(|d| d.to_string()).collect();
    for (name, _, _) in files {
        let mut p = Path::new(name).parent();
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            all_dirs.insert(d.to_string_lossy().into_owned());
            p = d.parent();
        }
    }
    let mut ino = first_ino;
    let mut next = || {
        ino += 1;
        ino
    };
    // BTreeSet order puts each directory before what it holds.
    for d in &all_dirs {
        let entry = cpio::newc::Builder::new(d)
            .ino(next())
            .mode(0o040755)
            .nlink(2);
        entry.write(&mut *w, 0).finish()?;
    }
    if dirs.contains(&"dev") {
        // The console the kernel opens for /init before anything is mounted.
        let console = cpio::newc::Builder::new("dev/console")
            .ino(next())
            .mode(0o020600)
            .rdev_major(5)
            .rdev_minor(1)
            .nlink(1);
        console.write(&mut *w, 0).finish()?;
    }
    for (name, path, mode) in files {
        let data = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let entry = cpio::newc::Builder::new(name)
            .ino(next())
            .mode(0o100000 | mode)
            .nlink(1);
        let mut f = entry.write(&mut *w, data.len() as u32);
        f.write_all(&data)?;
        f.finish()?;
    }
    cpio::newc::trailer(&mut *w)?;
    Ok(())
}
