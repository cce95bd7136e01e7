//! The shared overflow queue (`--overflow`, on for the built-in worker): when no worker is idle
//! a new connection waits in a queue that every worker takes from when it frees up, instead of
//! behind one worker's current request. Each test in its own network namespace, loopback only.

use std::{thread, time::Duration};

use balancer_tests::{burst, truth::*, *};

/// Holds one worker for `long` ms and the other for `short` ms, on new connections; returns
/// once both are in hand.
fn hold_both(b: &Balancer, long: u64, short: u64) -> Vec<thread::JoinHandle<Reply>> {
    hold_on_new_connections(b, "/work?ms=", &[long, short])
}

/// Six requests for `/` that find both workers held: returns once all six wait in the
/// overflow queue, with their threads.
fn six_queued(b: &Balancer) -> Vec<thread::JoinHandle<Result<Reply, anyhow::Error>>> {
    let waiting: Vec<_> = (0..6)
        .map(|_| {
            let addr = b.addr;
            thread::spawn(move || get(addr, "/"))
        })
        .collect();
    b.wait_for(Duration::from_secs(5), "six connections queued", |s| {
        s["overflow"]["queued"].as_u64() == Some(6)
    });
    waiting
}

/// Every queued and every held request was answered.
fn all_answered(
    waiting: Vec<thread::JoinHandle<Result<Reply, anyhow::Error>>>,
    held: Vec<thread::JoinHandle<Reply>>,
) {
    for t in waiting {
        let r = t.join().unwrap();
        assert_eq!(
            r.map(|r| r.status).ok(),
            Some(200),
            "a queued connection was lost"
        );
    }
    for t in held {
        assert_eq!(t.join().unwrap().status, 200);
    }
}

#[test]
fn a_connection_waits_for_the_first_free_worker_not_behind_a_busy_one() {
    netns();
    let b = Balancer::start(8080, 2, &[]);
    let held = hold_both(&b, 4000, 500);
    let fast = timed_gets(b.addr, 6, "/");
    let held: Vec<Reply> = held.into_iter().map(|t| t.join().unwrap()).collect();
    let (slow_slot, quick_slot) = (held[0].slot, held[1].slot);
    assert_ne!(slow_slot, quick_slot, "{held:?}");
    for (reply, took) in &fast {
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.slot, quick_slot,
            "served by the worker that freed up first, not the one held 4 s: {fast:?}"
        );
        assert!(
            *took < Duration::from_millis(2500),
            "waited for the held worker: {fast:?}"
        );
    }
    assert_eq!(program(&b, "overflowed"), 6, "{}", b.status().unwrap());
    // The books by the kernel's events alone: each worker carried what it took from the
    // queue, and the queue ends empty.
    converge(&b, &[0, 0], CONVERGE);
    let s = b.status().unwrap();
    assert_eq!(s["overflow"]["load"], 0, "{s}");
    assert_eq!(s["overflow"]["assigned"], 6, "{s}");
    assert_eq!(s["overflow"]["closed"], 6, "{s}");
    assert_eq!(corrections(&b), 0, "{s}");
    assert_eq!(s["overflow"]["corrections"], 0, "{s}");
}

#[test]
fn while_a_worker_is_idle_nothing_goes_to_the_overflow_queue() {
    netns();
    let b = Balancer::start(8080, 4, &[]);
    // One worker held: three stay idle, so every connection goes straight to one of them.
    let held = hold_both(&b, 1500, 1500);
    let fast = timed_gets(b.addr, 2, "/");
    assert!(fast.iter().all(|(r, _)| r.status == 200));
    for _ in 0..50 {
        assert_eq!(get(b.addr, "/").unwrap().status, 200);
    }
    assert_eq!(program(&b, "overflowed"), 0, "{}", b.status().unwrap());
    for t in held {
        t.join().unwrap();
    }
}

#[test]
fn stopping_answers_every_connection_waiting_in_the_overflow_queue() {
    netns();
    let mut b = Balancer::start(8080, 2, &[]);
    let held = hold_both(&b, 1500, 1500);
    let waiting = six_queued(&b);
    assert!(b.stop(nix::sys::signal::Signal::SIGTERM).success());
    all_answered(waiting, held);
}

#[test]
fn a_reload_answers_every_connection_waiting_in_the_overflow_queue() {
    netns();
    let b = Balancer::start(8080, 2, &[]);
    let held = hold_both(&b, 1000, 1000);
    let waiting = six_queued(&b);
    ctl(&b, &["reload"]);
    all_answered(waiting, held);
    converge(&b, &[0, 0], CONVERGE);
    assert_eq!(b.status().unwrap()["overflow"]["load"], 0);
}

#[test]
fn a_worker_command_gets_the_overflow_listener_only_when_asked() {
    netns();
    // A shell worker that reports what it was given, then serves nothing: the balancer's
    // status shows the environment through the worker's log lines.
    let show = "echo fds=$LISTEN_FDS names=$LISTEN_FDNAMES; exec sleep 30";
    for (flag, want) in [
        ("auto", "fds=1 names=balancer"),
        ("on", "fds=2 names=balancer:overflow"),
    ] {
        let b = Balancer::start(
            8080,
            1,
            &[
                "--overflow",
                flag,
                "--ready-timeout",
                "0.2",
                "--",
                "sh",
                "-c",
                show,
            ],
        );
        b.wait_for(Duration::from_secs(5), "the worker's line", |_| {
            ctl(&b, &["logs", "--lines", "5"]).contains("fds=")
        });
        let logs = ctl(&b, &["logs", "--lines", "5"]);
        assert!(logs.contains(want), "--overflow {flag}: {logs}");
        assert_eq!(
            b.status().unwrap()["overflow"].is_null(),
            flag == "auto",
            "--overflow {flag}"
        );
    }
}

#[test]
fn the_worker_that_takes_an_overflow_connection_carries_its_load() {
    netns();
    let b = Balancer::start(8080, 2, &[]);
    let held = hold_both(&b, 3000, 300);
    let quick_slot = {
        let addr = b.addr;
        // Queued in the overflow queue, then taken by the worker freed first, which it holds.
        let taken = thread::spawn(move || get(addr, "/work?ms=1500").unwrap());
        b.wait_for(Duration::from_secs(5), "the queued request taken", |s| {
            s["program"]["overflowed"].as_u64() == Some(1)
                && s["overflow"]["load"].as_u64() == Some(0)
        });
        // Both workers hold one request each: neither may look idle to the program.
        let s = b.status().unwrap();
        let loads: Vec<u64> = b.per_slot("load");
        assert_eq!(loads, [1, 1], "{s}");
        let r = taken.join().unwrap();
        r.slot
    };
    let held: Vec<Reply> = held.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(quick_slot, held[1].slot, "{held:?}");
    converge(&b, &[0, 0], CONVERGE);
    assert_eq!(corrections(&b), 0);
}

/// One burst at a time: two at once would starve each other's workers of the CPU they need to
/// empty their queues between retransmissions, and measure that instead.
static BURSTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Both workers held for 3 s, then `n` connections at once with 30 s to be answered each.
fn burst_past_held_workers(b: &Balancer, n: usize) -> burst::Burst {
    let _one = BURSTS.lock().unwrap_or_else(|e| e.into_inner());
    let held = hold_both(b, 3000, 3000);
    let got = burst::burst(b.addr, n, "/", Duration::from_secs(30));
    for t in held {
        assert_eq!(t.join().unwrap().status, 200);
    }
    got
}

#[test]
fn a_burst_past_every_queue_is_answered_as_fast_as_without_the_overflow_queue() {
    netns();
    // Queues of 3 (a backlog of 2): 100 connections overflow every queue, and most wait for
    // SYN retransmissions. Side by side in one namespace, with the queue (the default for the
    // built-in worker) and without.
    let with = Balancer::start(8080, 2, &["--backlog", "2"]);
    let queued = burst_past_held_workers(&with, 100);
    let without = Balancer::start(8081, 2, &["--backlog", "2", "--overflow", "off"]);
    let plain = burst_past_held_workers(&without, 100);
    // Where the machine answers the whole burst without the queue, it does with it too: none
    // strands in a full overflow queue. A machine whose CPUs are taken by other work may not
    // empty queues of 3 between the kernel's retransmissions (a handshake whose last ACK
    // found the queue full waits for the client's data retransmission, 3 s doubling after a
    // retransmitted SYN) and leave some past the deadline either way: then only the books
    // below are checked.
    if plain.answered == 100 {
        assert_eq!(
            queued.answered, 100,
            "stranded: {queued:?} (without: {plain:?})"
        );
        // Twice the time without it, and one round of retransmissions more (a SYN's come 1,
        // 3, 7 and 15 s after the first), which a loaded machine may need either way.
        assert!(
            queued.slowest <= plain.slowest * 2 + Duration::from_secs(4),
            "with the overflow queue {queued:?}, without {plain:?}"
        );
    }
    // The overflow queue's books by the kernel's events alone: a connection sent there is
    // never dropped, so none is counted there and then lost, nor found there uncounted.
    converge(&with, &[0, 0], CONVERGE);
    let s = with.status().unwrap();
    assert_eq!(s["overflow"]["load"], 0, "{s}");
    assert_eq!(s["overflow"]["corrections"], 0, "{s}");
    assert_eq!(s["overflow"]["assigned"], s["overflow"]["closed"], "{s}");
    // Sent there only while it had room, each connection at most once: retransmissions of
    // SYNs it dropped are not sent back to it.
    assert!(s["program"]["overflowed"].as_u64().unwrap() <= 100, "{s}");
}

#[test]
fn a_burst_of_thousands_at_the_default_backlog_sends_each_connection_to_the_queue_once() {
    netns();
    // 3,000 connections for two held workers: more than the overflow queue holds (1,024),
    // fewer than it and the workers' own queues together. None needs a retransmission.
    let b = Balancer::start(8080, 2, &[]);
    let got = burst_past_held_workers(&b, 3000);
    assert_eq!(got.answered, 3000, "{got:?}");
    let s = b.status().unwrap();
    let overflowed = s["program"]["overflowed"].as_u64().unwrap();
    assert!(
        (1000..=3000).contains(&overflowed),
        "the queue takes what it holds, each connection once: {s}"
    );
    converge(&b, &[0, 0], CONVERGE);
    assert_eq!(corrections(&b), 0, "{}", b.status().unwrap());
    let s = b.status().unwrap();
    assert_eq!(s["overflow"]["load"], 0, "{s}");
    assert_eq!(s["overflow"]["assigned"], s["overflow"]["closed"], "{s}");
}

#[test]
fn clients_that_reset_mid_request_leave_the_worker_free_for_the_queue() {
    use std::io::Write as _;
    netns();
    let b = Balancer::start(8080, 1, &[]);
    // Each client sends its request and resets at once: the worker reads the request, then
    // the reset, and hyper drops the request's answer unwritten. The worker must still count
    // that request done, or it never takes from the shared queue again.
    for _ in 0..300 {
        let mut s = connect(b.addr).unwrap();
        s.write_all(b"GET /work?ms=1 HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        reset(s);
    }
    // The one worker held: the next connections wait in the shared queue, and the worker
    // takes them once the hold ends.
    let held = hold_on_new_connections(&b, "/work?ms=", &[500]);
    let queued = timed_gets(b.addr, 3, "/");
    for (reply, took) in &queued {
        assert_eq!(reply.status, 200);
        assert!(
            *took < Duration::from_secs(3),
            "waited past the hold in the shared queue: {queued:?}; status: {}",
            b.status().unwrap()
        );
    }
    assert_eq!(program(&b, "overflowed"), 3, "{}", b.status().unwrap());
    for t in held {
        t.join().unwrap();
    }
}
