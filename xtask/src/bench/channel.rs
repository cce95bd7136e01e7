//! The workers' message channels (`cargo xtask bench --channel`): how many messages a second
//! `balancer send` delivers to every worker, what a worker that never reads costs the
//! supervisor, and how long a message takes from `balancer send` to a Node `'message'` event.
//!
//! - Throughput: `MESSAGES` broadcasts to 4 and to 64 Python workers that read and count, from
//!   four control clients at once (one request per connection, as `balancer send` makes), timed
//!   until every worker has answered a last message with its count.
//! - A worker that never reads: 100,000 messages sent to it; the supervisor's resident memory
//!   before and after, and what was dropped.
//! - Latency: a Node worker answers each message with the time it took from the client's write
//!   to its `'message'` event (both clocks are the host's wall clock), for messages written on
//!   the control socket directly and for messages sent by running `balancer send` itself.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{ensure, Result};
use balancer_tests::{
    all_up,
    channel::{channel_figures, messages, request, rss_kib},
    stats, Balancer,
};
use serde_json::Value;

const CLIENTS: u64 = 4;

/// Reads and counts its messages; answers `{"end":1}` with its count.
const COUNTER: &str = r#"
import json, os, socket
ch = socket.socket(fileno=int(os.environ["BALANCER_CHANNEL_FD"]))
ch.sendall(b'"ready"\n')
n = 0
for line in ch.makefile("rb"):
    n += 1
    if line.startswith(b'{"end"'):
        ch.sendall(json.dumps({"count": n}).encode() + b"\n")
"#;

/// Answers each message with how long it took to arrive, in microseconds.
const NODE_LATENCY: &str = r#"
process.on("message", (m) => {
  const now = performance.timeOrigin + performance.now();
  process.send({ lat_us: Math.round((now - m.t_ms) * 1000) });
});
process.send("ready");
"#;

fn start(workers: u32, command: &[&str]) -> Balancer {
    let mut args = vec!["--metrics", "off", "--ready-timeout", "120", "--"];
    args.extend(command);
    let addr = super::localhost(8090);
    let b = Balancer::launch(&addr.to_string(), addr, workers, &args, false);
    b.wait_for(Duration::from_secs(180), "every slot up", all_up);
    b
}

/// Sends `count` messages from [`CLIENTS`] clients at once; returns how many were dropped.
fn flood(control: &Path, count: u64, pad: usize) -> u64 {
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let control = control.to_path_buf();
            std::thread::spawn(move || {
                let pad = "x".repeat(pad);
                let mut dropped = 0;
                for i in (c..count).step_by(CLIENTS as usize) {
                    let line = format!(r#"send {{"n":{i},"pad":"{pad}"}}"#);
                    let answer: Value =
                        serde_json::from_str(&request(&control, &line)).unwrap_or_default();
                    dropped += answer["dropped"].as_u64().unwrap_or(0);
                }
                dropped
            })
        })
        .collect();
    clients.into_iter().map(|c| c.join().unwrap()).sum()
}

/// Broadcasts a second to `workers` readers.
fn throughput(workers: u32, count: u64) -> Result<(f64, u64)> {
    let b = start(workers, &["python3", "-c", COUNTER]);
    let t = Instant::now();
    let dropped = flood(&b.control, count, 20);
    request(&b.control, r#"send {"end":1}"#);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let m = messages(&b);
        let counts: Vec<u64> = m
            .iter()
            .filter_map(|x| x["message"]["count"].as_u64())
            .collect();
        if counts.len() == workers as usize {
            let rate = count as f64 / t.elapsed().as_secs_f64();
            ensure!(
                dropped > 0 || counts.iter().all(|&c| c == count + 1),
                "counts {counts:?}"
            );
            return Ok((rate, dropped));
        }
        ensure!(
            Instant::now() < deadline,
            "not every worker answered: {m:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Supervisor RSS (KiB) before and after `count` messages to a worker that never reads, and
/// the messages dropped.
fn non_reader(count: u64) -> (u64, u64, u64) {
    let b = start(1, &["sleep", "3600"]);
    let before = rss_kib(b.child.id());
    let dropped = flood(&b.control, count, 100);
    let after = rss_kib(b.child.id());
    assert_eq!(channel_figures(&b, "dropped")[0].as_u64(), Some(dropped));
    (before, after, dropped)
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0
}

/// (median, p99) in microseconds from the write of a `send` to Node's `'message'` event, over
/// `count` messages to 4 workers, each message sent by `send`.
fn latency(b: &Balancer, count: usize, send: impl Fn(&str)) -> Result<(f64, f64)> {
    // Answers to earlier messages are not this run's.
    let mut seen = messages(b)
        .last()
        .map_or(0, |m| m["seq"].as_u64().unwrap_or(0));
    let mut lat = Vec::new();
    for i in 0..count {
        send(&format!(r#"{{"t_ms":{:.3}}}"#, now_ms()));
        std::thread::sleep(Duration::from_millis(2));
        // The store keeps the last 1000: read it before it turns over.
        if i % 100 == 99 || i == count - 1 {
            std::thread::sleep(Duration::from_millis(50));
            for m in messages(b) {
                let seq = m["seq"].as_u64().unwrap_or(0);
                if seq > seen {
                    seen = seq;
                    if let Some(us) = m["message"]["lat_us"].as_f64() {
                        lat.push(us);
                    }
                }
            }
        }
    }
    ensure!(
        lat.len() == count * 4,
        "{} answers to {count} messages to 4",
        lat.len()
    );
    stats::sort(&mut lat);
    let p = |q| stats::percentile(&lat, q).unwrap_or(f64::NAN);
    Ok((p(0.5), p(0.99)))
}

/// Runs the three measurements and prints their table.
pub fn run(bin: &Path, quick: bool) -> Result<()> {
    // The test kit starts the binary this names.
    std::env::set_var("BALANCER_BIN", bin);
    let count = if quick { 5_000 } else { 20_000 };
    let mut rows = Vec::new();
    for workers in [4, 64] {
        eprintln!("bench: channel throughput, {workers} workers");
        let (rate, dropped) = throughput(workers, count)?;
        rows.push(format!(
            "| messages a second to all of {workers} workers ({count} sent, {dropped} dropped) | {rate:.0} ({:.0} deliveries a second) |",
            rate * workers as f64
        ));
    }
    eprintln!("bench: channel, a worker that never reads");
    let (before, after, dropped) = non_reader(100_000);
    rows.push(format!(
        "| supervisor RSS before and after 100,000 messages to a worker that never reads ({dropped} dropped) | {:.1} MiB -> {:.1} MiB |",
        before as f64 / 1024.0,
        after as f64 / 1024.0
    ));
    eprintln!("bench: channel latency to a Node 'message' event");
    let b = start(4, &["node", "-e", NODE_LATENCY]);
    let n = if quick { 200 } else { 1000 };
    let (median, p99) = latency(&b, n, |m| {
        request(&b.control, &format!("send {m}"));
    })?;
    rows.push(format!(
        "| control socket write to `'message'` in 4 Node workers, median / p99 ({n} messages) | {median:.0} / {p99:.0} µs |"
    ));
    let n = n / 5;
    let (median, p99) = latency(&b, n, |m| {
        let out = Command::new(bin)
            .args(["send", m, "--control"])
            .arg(&b.control)
            .output()
            .expect("balancer send");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    })?;
    rows.push(format!(
        "| `balancer send` (the command, started each time) to `'message'`, median / p99 ({n} messages) | {median:.0} / {p99:.0} µs |"
    ));
    println!("| message channel ({}) | |\n|---|---|", super::machine());
    for r in rows {
        println!("{r}");
    }
    Ok(())
}
