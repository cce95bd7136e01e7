//! Recycling leaky workers, as PM2's max_memory_restart and gunicorn's max_requests do: the
//! worker is replaced the reload way while clients keep coming, and none of them notices.

use std::{collections::BTreeSet, time::Duration};

use balancer_tests::*;

/// Sends `per_thread` requests (a new connection each, `pause` after each) from each of
/// `threads` clients at once; returns every reply, panicking on any request not answered.
fn requests(
    addr: std::net::SocketAddr,
    threads: usize,
    per_thread: usize,
    pause: Duration,
) -> Vec<Reply> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(move || {
                    (0..per_thread)
                        .map(|i| {
                            let reply = get(addr, "/").unwrap_or_else(|e| {
                                panic!("request {i} failed while workers recycle: {e}")
                            });
                            std::thread::sleep(pause);
                            reply
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

fn total(status: &serde_json::Value, field: &str) -> u64 {
    status["slots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x[field].as_u64().unwrap())
        .sum()
}

#[test]
fn workers_are_recycled_after_their_requests_and_no_request_fails() {
    netns();
    let b = Balancer::start(
        8080,
        2,
        &["--max-requests", "40", "--max-requests-jitter", "10"],
    );
    // At most 400 requests a second: the supervisor looks at the counts ten times a second,
    // so a worker goes over its budget by what arrives in a tenth of a second, here at most 20.
    let replies = requests(b.addr, 4, 150, Duration::from_millis(10));
    assert_eq!(replies.len(), 600);
    assert!(replies.iter().all(|r| r.status == 200));
    let s = b.wait_for(Duration::from_secs(10), "the last recycle done", |s| {
        s["slots"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["state"] == "up")
    });
    let recycled = total(&s, "recycled_requests");
    let pids: BTreeSet<u32> = replies.iter().map(|r| r.pid).collect();
    eprintln!(
        "recycle: 600 requests answered, 0 failed, {recycled} recycles, {} workers served",
        pids.len()
    );
    // 600 requests, 300 a slot, over budgets of 40 to 50 overshot by at most 20: at least
    // 300 / 70 - 1 recycles a slot (the last budget may be unfinished), at most 600 / 40.
    assert!((6..=15).contains(&recycled), "{recycled} recycles");
    assert!(
        pids.len() as u64 >= recycled,
        "{} distinct pids",
        pids.len()
    );
    // A recycle is no crash.
    assert_eq!(total(&s, "restarts"), 0);
    assert_eq!(total(&s, "recycled_memory"), 0);
    let metrics = ctl(&b, &["status", "--json"]);
    assert!(metrics.contains("\"recycled_requests\""));
}

/// A Python worker that keeps 4 MiB of every request it serves, in a list that lives as long
/// as the process.
fn leaky() -> String {
    python_worker(
        "H.leak = getattr(H, 'leak', []); H.leak.append(b'x' * (4 << 20))",
        "200",
    )
}

#[test]
fn a_worker_that_outgrows_max_memory_is_recycled_and_no_request_fails() {
    netns();
    let b = Balancer::start(
        8080,
        2,
        &["--max-memory", "64M", "--", "python3", "-c", &leaky()],
    );
    // Sequential, so that each worker grows by 4 MiB a request; ~15 requests take one past
    // 64 MiB.
    let replies = requests(b.addr, 1, 120, Duration::ZERO);
    assert!(replies.iter().all(|r| r.status == 200));
    let s = b.wait_for(Duration::from_secs(10), "a memory recycle", |s| {
        total(s, "recycled_memory") >= 2
    });
    eprintln!(
        "recycle: 120 requests answered, 0 failed, {} memory recycles",
        total(&s, "recycled_memory")
    );
    assert_eq!(total(&s, "restarts"), 0);
    assert!(
        b.log_text().contains("recycling worker"),
        "{}",
        b.log_text()
    );
    // Every worker now running is under the limit, as read by the supervisor.
    for slot in s["slots"].as_array().unwrap() {
        if let Some(m) = slot["memory_bytes"].as_u64() {
            assert!(m < 64 << 20, "slot {}: {m} bytes", slot["slot"]);
        }
    }
}

#[test]
fn bad_recycling_options_are_refused_in_one_line() {
    let dir = std::env::temp_dir().join(format!("balancer-recycle-{}", std::process::id()));
    for (args, says) in [
        (
            vec!["--max-requests-jitter", "5"],
            "--max-requests-jitter 5 without --max-requests: give --max-requests N too",
        ),
        (vec!["--max-requests", "0"], "--max-requests"),
        (vec!["--max-memory", "lots"], "bad size \"lots\""),
    ] {
        let out = std::process::Command::new(bin())
            .args(["run", "--listen", "127.0.0.1:8080", "--workers", "1"])
            .arg("--control")
            .arg(dir.join("c.sock"))
            .args(&args)
            .output()
            .unwrap();
        fails_with(&out, says);
    }
}
