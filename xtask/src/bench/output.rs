//! Worker output: how fast a worker can write lines through the supervisor, what each line
//! costs the supervisor, and what an output nobody reads costs the worker.
//!
//! One worker writes `lines` lines of 100 bytes as fast as `yes | head` can, three ways: into
//! /dev/null directly (the limit: no supervisor at all), through a supervisor whose own output
//! goes to /dev/null (a reader that keeps up), and through one whose stdout is a pipe nobody
//! reads (a stalled log shipper). The worker starts writing when the test creates a file, and
//! creates another when it is done.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use balancer_tests::{procfs, Balancer};
use serde::Serialize;

/// 98 characters; with its newline, 99 bytes.
const LINE: &str = "worker output line, 100 bytes with its newline, the length of a typical application log line .....";

#[derive(Serialize)]
pub struct Output {
    pub lines: u64,
    pub line_bytes: usize,
    /// The same writer into /dev/null: the limit.
    pub direct_seconds: f64,
    /// Through a supervisor whose output is read at once.
    pub read_seconds: f64,
    /// Until the supervisor had captured every line.
    pub read_captured_seconds: f64,
    pub read_dropped: u64,
    /// Supervisor CPU time per line captured and written.
    pub supervisor_ns_per_line: f64,
    /// Through a supervisor whose stdout nobody reads.
    pub unread_seconds: f64,
    pub unread_dropped: u64,
}

fn script(dir: &Path, lines: u64) -> String {
    format!(
        "while [ ! -e {go} ]; do sleep 0.01; done; yes '{LINE}' | head -n {lines}; touch {done}; exec sleep 600",
        go = dir.join("go").display(),
        done = dir.join("done").display(),
    )
}

fn wait_for(path: &Path, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    while !path.exists() {
        if Instant::now() > deadline {
            bail!("{} did not appear within {within:?}", path.display());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

fn fresh(dir: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).context("bench scratch directory")?;
    // The worker, under a uid of its own, leaves its marker there.
    balancer_tests::writable_by_workers(dir);
    Ok(())
}

pub fn measure(quick: bool) -> Result<Output> {
    eprintln!("bench: worker output");
    let lines: u64 = if quick { 200_000 } else { 1_000_000 };
    let dir = std::env::temp_dir().join(format!("balancer-bench-output-{}", std::process::id()));

    let begin = Instant::now();
    let status = Command::new("sh")
        .args(["-c", &format!("yes '{LINE}' | head -n {lines} > /dev/null")])
        .status()?;
    anyhow::ensure!(status.success(), "yes | head failed");
    let direct_seconds = begin.elapsed().as_secs_f64();

    // A reader that keeps up: the kit's balancer sends the supervisor's stdout to /dev/null.
    fresh(&dir)?;
    let b = Balancer::start(8090, 1, &writer_args(&script(&dir, lines)));
    let sup = b.status()?["pid"].as_i64().context("supervisor pid")? as i32;
    let cpu_before = procfs::cpu_seconds(&[sup]);
    let begin = Instant::now();
    std::fs::write(dir.join("go"), "")?;
    wait_for(&dir.join("done"), Duration::from_secs(120))?;
    let read_seconds = begin.elapsed().as_secs_f64();
    let s = b.wait_for(Duration::from_secs(120), "every line captured", |s| {
        s["slots"][0]["log_lines"].as_u64() == Some(lines)
    });
    let read_captured_seconds = begin.elapsed().as_secs_f64();
    let supervisor_ns_per_line = (procfs::cpu_seconds(&[sup]) - cpu_before) * 1e9 / lines as f64;
    let read_dropped = s["slots"][0]["log_dropped"].as_u64().unwrap_or(0);
    drop(b);

    // Nobody reads the supervisor's stdout.
    fresh(&dir)?;
    let (unread_seconds, unread_dropped) = unread(&dir, lines)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Output {
        lines,
        line_bytes: LINE.len() + 1,
        direct_seconds,
        read_seconds,
        read_captured_seconds,
        read_dropped,
        supervisor_ns_per_line,
        unread_seconds,
        unread_dropped,
    })
}

/// `balancer run` arguments for one worker that runs `script` under sh.
fn writer_args(script: &str) -> [&str; 8] {
    [
        "--metrics",
        "off",
        "--ready-timeout",
        "0.1",
        "--",
        "sh",
        "-c",
        script,
    ]
}

fn unread(dir: &Path, lines: u64) -> Result<(f64, u64)> {
    let b = Balancer::start_with_unread_stdout(8091, 1, &writer_args(&script(dir, lines)));
    let begin = Instant::now();
    std::fs::write(dir.join("go"), "")?;
    wait_for(&dir.join("done"), Duration::from_secs(120))?;
    let seconds = begin.elapsed().as_secs_f64();
    let s = b.wait_for(Duration::from_secs(120), "every line captured", |s| {
        s["slots"][0]["log_lines"].as_u64() == Some(lines)
    });
    Ok((seconds, s["slots"][0]["log_dropped"].as_u64().unwrap_or(0)))
}
