//! Nothing is lost: reloads, kills, crash loops, scaling and stopping, each under a steady load
//! of new connections. The counts are printed (run with --nocapture) and recorded in
//! docs/reliability.md.

use std::{
    thread,
    time::{Duration, Instant},
};

use balancer_tests::*;
use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};

const CLIENTS: usize = 8;

fn report(name: &str, c: &Counts) {
    eprintln!(
        "{name}: {} tried, {} answered, {} failed, {} refused; first errors: {:?}",
        c.attempted, c.ok, c.failed, c.refused, c.first_errors
    );
}

/// Nothing lost and nobody turned away: every connection tried was answered, and enough were
/// tried that the event under test happened under load. A refused connection is a failure
/// here: a balancer that turned clients away would otherwise pass with nothing "lost".
fn assert_every_connection_answered(c: &Counts, at_least: u64) {
    assert_eq!(
        (c.failed, c.refused),
        (0, 0),
        "{} failed, {} refused of {} tried; first errors: {:?}",
        c.failed,
        c.refused,
        c.attempted,
        c.first_errors
    );
    assert_eq!(
        c.ok, c.attempted,
        "every connection tried was answered: {c:?}"
    );
    assert!(
        c.ok >= at_least,
        "the load ran: {} answered, at least {at_least} expected",
        c.ok
    );
}

#[test]
fn ten_rolling_reloads_under_load_fail_nothing() {
    netns();
    let b = Balancer::start(8080, 4, &["--reload-batch", "2"]);
    let load = Load::start(b.addr, CLIENTS, 20_000);
    let pids_before: Vec<i32> = (0..4).map(|i| b.pid_of(i)).collect();
    for _ in 0..10 {
        assert_eq!(ctl(&b, &["reload"]), "{\"reloaded\":4}");
        thread::sleep(Duration::from_millis(200));
    }
    let c = load.finish();
    report("10 rolling reloads", &c);
    assert_every_connection_answered(&c, 1_000);
    for (i, pid) in pids_before.iter().enumerate() {
        assert_ne!(b.pid_of(i), *pid, "slot {i} has a new worker");
    }
}

#[test]
fn sigkill_of_a_worker_every_second_loses_only_requests_in_flight() {
    netns();
    let b = Balancer::start(8080, 4, &[]);
    let load = Load::start(b.addr, CLIENTS, 1_000_000);
    let mut kills = 0;
    let begin = Instant::now();
    for i in 0..30 {
        thread::sleep(Duration::from_secs(1));
        let slot = i % 4;
        if let Some(pid) = b.status().unwrap()["slots"][slot]["pid"].as_i64() {
            kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
            kills += 1;
        }
    }
    let c = load.finish();
    report(&format!("{kills} SIGKILLs in {:?}", begin.elapsed()), &c);
    // A killed worker takes with it the connections it had accepted and not yet answered; with
    // 8 clients there are never more than 8 of those. Everything queued survives.
    assert!(
        c.failed <= kills * CLIENTS as u64,
        "{} failed for {kills} kills",
        c.failed
    );
    // The listeners outlive the workers: a kill turns no client away.
    assert_eq!(c.refused, 0, "{:?}", c.first_errors);
    assert_eq!(c.ok + c.failed, c.attempted, "{c:?}");
    assert!(c.ok > 10_000, "the load ran: {} answered", c.ok);
}

#[test]
fn a_crash_looping_slot_costs_the_others_nothing() {
    netns();
    let b = crash_looping_slot_0(4, 1, &[]);
    let load = Load::start(b.addr, CLIENTS, 4_000);
    let s = b.wait_for(Duration::from_secs(10), "slot 0 given up", |s| {
        s["slots"][0]["state"] == "failed"
    });
    thread::sleep(Duration::from_secs(1));
    let c = load.finish();
    report("crash loop on slot 0", &c);
    // The program steers around the slot that is down: the clients see nothing of it.
    assert_every_connection_answered(&c, 1_000);
    // 5 quick failures: the first start and 4 restarts, and no more.
    assert_eq!(s["slots"][0]["restarts"], 4);
    assert_eq!(b.status().unwrap()["slots"][0]["restarts"], 4);
}

#[test]
fn scaling_4_8_2_4_under_load_fails_nothing() {
    netns();
    let b = Balancer::start(8080, 4, &[]);
    let load = Load::start(b.addr, CLIENTS, 30_000);
    for n in [8, 2, 4] {
        thread::sleep(Duration::from_millis(500));
        assert_eq!(
            ctl(&b, &["scale", &n.to_string()]),
            format!("{{\"slots\":{n}}}")
        );
        assert_eq!(b.per_slot("assigned").len(), n);
    }
    thread::sleep(Duration::from_millis(500));
    let c = load.finish();
    report("scale 4 -> 8 -> 2 -> 4", &c);
    assert_every_connection_answered(&c, 1_000);
    let s = b.status().unwrap();
    assert!(
        s["slots"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["state"] == "up"),
        "{s}"
    );
}

#[test]
fn sigterm_under_load_answers_every_accepted_connection() {
    netns();
    let mut b = Balancer::start(8080, 4, &[]);
    let load = Load::start(b.addr, CLIENTS, 1_000_000);
    // Under way by count, not by time: a loaded machine may take longer to get there.
    b.wait_for(
        Duration::from_secs(30),
        "1,500 connections under load",
        |s| s["program"]["selected"].as_u64() >= Some(1_500),
    );
    let stop_sent = Instant::now();
    let status = b.stop(Signal::SIGTERM);
    assert!(status.success(), "{status}\n{}", b.log_text());
    let c = load.finish();
    report("SIGTERM under load", &c);
    // Connections that reached a queue were answered; later ones were refused outright, and
    // none before the stop began.
    assert_eq!(c.failed, 0, "{:?}", c.first_errors);
    assert_eq!(c.ok + c.refused, c.attempted, "{c:?}");
    if let Some(at) = c.first_refused_at {
        assert!(
            at >= stop_sent,
            "a connection was refused {:?} before SIGTERM was sent: {:?}",
            stop_sent - at,
            c.first_errors
        );
    }
    assert!(c.ok > 1_000, "the load ran: {} answered", c.ok);
}
