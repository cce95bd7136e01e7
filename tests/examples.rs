//! The shipped example workers, unmodified Node.js and Python servers on fd 3, steered with the
//! load the kernel tracks for them (no worker reports anything).

use std::time::Duration;

use balancer_tests::*;

fn blocked_share(port: u16, command: &[&str], policy: &str) -> (f64, usize) {
    let mut args = vec!["--policy", policy, "--"];
    args.extend_from_slice(command);
    let b = Balancer::start(port, 4, &args);
    // Every interpreter serving (until then connections wait in the queues): one keep-alive
    // connection answered by each of the 4.
    drop(one_per_slot(b.addr, 4));
    // A sync worker answers one connection at a time: until each has closed its warm-up
    // connection (its load 1, truly) and is back in rotation, a new connection may have no
    // free worker to go to and wait behind a kept-alive one.
    b.wait_for(
        Duration::from_secs(10),
        "every worker up and idle after the warm-up",
        |s| all_idle(s) && all_up(s),
    );
    let r = share_while_blocked(b.addr, 4, "/block?ms=");
    // Every connection closed, counted by the kernel: loads back to exactly 0.
    b.wait_for(Duration::from_secs(10), "loads back to 0", all_idle);
    r
}

#[test]
fn unmodified_node_workers_steer_around_a_blocked_event_loop() {
    netns();
    let node = example("node/server.js");
    let (least_loaded, n) = blocked_share(8080, &["node", &node], "least-loaded");
    let (hash, n_hash) = blocked_share(8081, &["node", &node], "hash");
    eprintln!(
        "node, blocked worker's share: least-loaded {least_loaded:.3} of {n}, kernel hash {hash:.3} of {n_hash}"
    );
    assert!(
        least_loaded <= 0.05,
        "blocked Node worker got {least_loaded:.3} of new connections"
    );
    assert!(
        hash > 0.12,
        "under the kernel hash it gets about 1/4: {hash:.3}"
    );
}

#[test]
fn unmodified_python_workers_steer_around_a_blocked_worker() {
    netns();
    let py = example("python/server.py");
    let (share, n) = blocked_share(8080, &["python3", &py], "least-loaded");
    eprintln!("python, blocked worker's share: least-loaded {share:.3} of {n}");
    assert!(
        share <= 0.05,
        "blocked Python worker got {share:.3} of new connections"
    );
}

#[test]
fn kernel_tracking_counts_resets_and_gives_workers_no_bpf_fd() {
    netns();
    let py = example("python/server.py");
    let b = Balancer::start(8080, 2, &["--", "python3", &py]);
    for _ in 0..10 {
        get(b.addr, "/").unwrap();
        reset(connect(b.addr).unwrap());
    }
    b.wait_for(
        Duration::from_secs(10),
        "loads back to 0 after resets",
        all_idle,
    );
    let s = b.status().unwrap();
    let assigned: u64 = s["slots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["assigned"].as_u64().unwrap())
        .sum();
    assert_eq!(assigned, 20);
    // With the kernel counting, the worker gets its listener and nothing else: no map fd.
    let pid = b.pid_of(0);
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for fd in &fds {
        let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap_or_default();
        assert!(
            !link.to_string_lossy().contains("bpf"),
            "worker holds a BPF fd: {fd} -> {link:?}"
        );
    }
}

/// The Node example serves the shared overflow queue (fd 4) with `--overflow on`: with both
/// workers blocked, new connections wait there and the worker unblocked first serves them all,
/// where without it about half would wait for the worker blocked longest.
#[test]
fn node_workers_serve_the_overflow_queue_when_free() {
    netns();
    let node = example("node/server.js");
    let b = Balancer::start(8080, 2, &["--overflow", "on", "--", "node", &node]);
    drop(one_per_slot(b.addr, 2));
    b.wait_for(Duration::from_secs(10), "both workers up and idle", |s| {
        all_idle(s) && all_up(s)
    });
    // The shorter hold long enough that all six connect before it ends, even on a loaded
    // machine: each then finds both workers held.
    let held = hold_on_new_connections(&b, "/block?ms=", &[4000, 1500]);
    // Both inside their handlers, not about to accept with the hold: an event loop that has
    // not yet run the handler takes what waits on fd 4 in the same turn.
    let pids = [b.pid_of(0), b.pid_of(1)];
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !pids.iter().all(|&p| procfs::in_user_code(p)) {
        assert!(
            std::time::Instant::now() < deadline,
            "the holds never began"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let fast = timed_gets(b.addr, 6, "/");
    let held: Vec<Reply> = held.into_iter().map(|t| t.join().unwrap()).collect();
    for (reply, took) in &fast {
        assert_eq!(reply.slot, held[1].slot, "{fast:?}");
        assert!(*took < Duration::from_millis(3500), "{fast:?}");
    }
    let s = b.status().unwrap();
    assert_eq!(s["program"]["overflowed"].as_u64(), Some(6), "{s}");
    b.wait_for(Duration::from_secs(10), "loads back to 0", all_idle);
}
