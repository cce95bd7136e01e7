//! Booting a kernel and an initramfs under QEMU, and reading what the guest says.
//!
//! The machine is emulated (TCG), not virtualised: on the nested machines CI runs on, KVM
//! stops a guest kernel in early boot with an emulation failure, and TCG boots the same kernel
//! in seconds. Emulation makes everything in the guest several times slower, which the core
//! checks tolerate since none of them is timing-bound. The guest has two CPUs (some checks count
//! per CPU), 2 GiB of memory (the initramfs is unpacked into it), no network card and no disk;
//! its serial console is this process's pipe, and the guest's /init powers it off when done.

use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

/// What the guest printed: each "@@ " result line, with when it came.
pub struct Transcript {
    pub lines: Vec<(Duration, String)>,
    /// The whole run, from starting QEMU to its exit.
    pub wall: Duration,
    pub timed_out: bool,
}

/// Boots `kernel` with `initrd`, copying the console to `log`; gives up after `limit`.
pub fn boot(kernel: &Path, initrd: &Path, log: &Path, limit: Duration) -> Result<Transcript> {
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "2048"])
        .args(["-nic", "none", "-display", "none", "-monitor", "none"])
        .args(["-serial", "stdio", "-no-reboot", "-kernel"])
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 quiet loglevel=3 panic=-1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("qemu-system-x86_64 not found: apt-get install qemu-system-x86")?;
    let start = Instant::now();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
            if tx
                .send(String::from_utf8_lossy(&line).into_owned())
                .is_err()
            {
                break;
            }
        }
    });
    let mut console = fs::File::create(log)?;
    let mut lines = Vec::new();
    let mut timed_out = false;
    loop {
        let left = limit.saturating_sub(start.elapsed());
        match rx.recv_timeout(left.max(Duration::from_millis(1))) {
            Ok(line) => {
                let line = line.trim_end_matches('\r');
                writeln!(console, "{line}")?;
                // The first line may carry the firmware's terminal escapes before the text.
                if let Some(at) = line.find("@@ ") {
                    lines.push((start.elapsed(), line[at + 3..].to_string()));
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                let _ = child.kill();
                break;
            }
        }
    }
    let status = child.wait()?;
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
    }
    if !status.success() && !timed_out && lines.is_empty() {
        anyhow::bail!("qemu-system-x86_64 failed ({status}): {}", stderr.trim());
    }
    Ok(Transcript {
        lines,
        wall: start.elapsed(),
        timed_out,
    })
}
