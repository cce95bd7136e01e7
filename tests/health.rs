//! Active health checks with a worker that accepts and answers 500 (a broken database pool):
//! out of rotation at once, restarted after the fall threshold, back once it passes; probes
//! reach the slot they check under every policy.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use balancer_tests::*;
use serde_json::Value;

/// A Python worker whose /healthz answers 500 while `DIR/sick-<slot>` exists.
fn worker(dir: &Path) -> String {
    python_worker(
        "pass",
        &format!(
            "500 if self.path == '/healthz' and os.path.exists(os.path.join({dir:?}, 'sick-' + SLOT)) else 200"
        ),
    )
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("balancer-health-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn slot_of(s: &Value, slot: usize) -> &Value {
    &s["slots"][slot]
}

fn start(dir: &Path, policy: &str) -> Balancer {
    let script = worker(dir);
    Balancer::start(
        8080,
        2,
        &[
            "--policy",
            policy,
            "--health-check",
            "/healthz",
            // Half a second to answer: a probe that reached the wrong worker is answered 500
            // at once, while a Python worker on a machine whose CPUs are taken may need more
            // than a fifth of a second, which would count as a failure of the right one.
            "--health-interval",
            "0.5",
            "--health-timeout",
            "0.5",
            "--health-rise",
            "2",
            "--health-fall",
            "5",
            "--",
            "python3",
            "-c",
            &script,
        ],
    )
}

#[test]
fn a_worker_answering_500_leaves_rotation_at_once_is_restarted_and_comes_back() {
    netns();
    let dir = scratch("500");
    let b = start(&dir, "least-loaded");
    b.wait_for(Duration::from_secs(10), "both healthy", |s| {
        (0..2).all(|i| slot_of(s, i)["health"] == "healthy")
    });
    let first_pid = b.pid_of(1);
    std::fs::write(dir.join("sick-1"), "").unwrap();
    let sick_at = Instant::now();
    b.wait_for(Duration::from_secs(5), "slot 1 out of rotation", |s| {
        slot_of(s, 1)["state"] == "unhealthy"
    });
    let left_after = sick_at.elapsed();
    // One interval (0.5 s) plus one probe at most, with room for a loaded machine.
    eprintln!("health: unhealthy to out of rotation in {left_after:?}");
    assert!(left_after < Duration::from_secs(2), "{left_after:?}");
    // Out of rotation: no new connection reaches the sick worker (its successor, started
    // after five failures, is in rotation until it fails in turn).
    let replies: Vec<Reply> = (0..50).map(|_| get(b.addr, "/").unwrap()).collect();
    assert!(
        replies.iter().all(|r| r.pid != first_pid as u32),
        "{:?}",
        histogram(&replies, 2)
    );
    // After 5 failures in a row (about 2.5 s), its worker is restarted.
    let s = b.wait_for(Duration::from_secs(10), "slot 1 restarted", |s| {
        slot_of(s, 1)["health_restarts"].as_u64() >= Some(1)
            && slot_of(s, 1)["pid"]
                .as_i64()
                .is_some_and(|p| p != first_pid as i64)
    });
    assert!(slot_of(&s, 1)["health_failures"].as_u64().unwrap() >= 5);
    assert_eq!(
        slot_of(&s, 0)["health_failures"],
        0,
        "slot 0 was never probed as slot 1"
    );
    // Fixed: back in rotation after two passes, and sharing again.
    std::fs::remove_file(dir.join("sick-1")).unwrap();
    b.wait_for(Duration::from_secs(10), "slot 1 back", |s| {
        slot_of(s, 1)["state"] == "up" && slot_of(s, 1)["health"] == "healthy"
    });
    let replies: Vec<Reply> = (0..40).map(|_| get(b.addr, "/").unwrap()).collect();
    let h = histogram(&replies, 2);
    assert!(h[1] >= 10, "slot 1 serves again: {h:?}");
    let m = ctl(&b, &["status", "--json"]);
    assert!(m.contains("\"health\":\"healthy\""));
    // Probes' connections are counted and their closes too: the loads return to 0.
    b.wait_for(Duration::from_secs(10), "loads back to 0", all_idle);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn probes_reach_the_slot_they_check_under_the_kernel_hash_too() {
    netns();
    let dir = scratch("hash");
    std::fs::write(dir.join("sick-1"), "").unwrap();
    let b = start(&dir, "hash");
    // Under the hash, a probe sent at random would fail for slot 0 half the time and pass
    // for slot 1 half the time.
    let s = b.wait_for(Duration::from_secs(10), "five probes of slot 1", |s| {
        slot_of(s, 1)["health_failures"].as_u64() >= Some(5)
    });
    assert_eq!(
        slot_of(&s, 0)["health_failures"],
        0,
        "slot 0's probes all reached slot 0: {s}"
    );
    assert_eq!(slot_of(&s, 0)["health"], "healthy");
    let failed = slot_of(&s, 1)["health_failures"].as_u64().unwrap();
    assert!(failed >= 5, "slot 1's probes all failed: {failed}");
    // Restarted after five failures: its successor is as sick, so never healthy.
    assert_ne!(slot_of(&s, 1)["health"], "healthy");
    assert_eq!(slot_of(&s, 0)["health_restarts"], 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_health_options_are_refused_in_one_line() {
    for (args, says) in [
        (
            vec!["--health-check", "healthz"],
            "--health-check \"healthz\": give a request path",
        ),
        (
            vec![
                "--health-check",
                "/h",
                "--health-interval",
                "1",
                "--health-timeout",
                "2",
            ],
            "--health-timeout 2: give more than 0 and at most --health-interval (1)",
        ),
        (
            vec!["--health-check", "/h", "--health-fall", "0"],
            "--health-fall",
        ),
    ] {
        let out = std::process::Command::new(bin())
            .args(["run", "--listen", "127.0.0.1:8080", "--workers", "1"])
            .args(["--control", "/run/balancer-health-bad-options.sock"])
            .args(&args)
            .output()
            .unwrap();
        fails_with(&out, says);
    }
}
