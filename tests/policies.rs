//! Each policy once through the real program, a live policy switch, and IPv6 listeners.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    thread,
    time::Duration,
};

use balancer_tests::*;
use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};

fn sequential(b: &Balancer, n: usize) -> Vec<usize> {
    let replies: Vec<Reply> = (0..n).map(|_| get(b.addr, "/").unwrap()).collect();
    histogram(&replies, b.per_slot("assigned").len())
}

/// Each CPU keeps its own ticket (a shared one is a line every CPU writes on every selection),
/// so each CPU's share cycles exactly and the totals differ by at most one per CPU.
#[test]
fn round_robin_cycles_exactly_on_each_cpu() {
    netns();
    let b = Balancer::start(8080, 4, &["--policy", "round-robin"]);
    let counts = sequential(&b, 400);
    let cpus = std::thread::available_parallelism().unwrap().get();
    let (min, max) = (*counts.iter().min().unwrap(), *counts.iter().max().unwrap());
    assert_eq!(counts.iter().sum::<usize>(), 400);
    assert!(max - min <= cpus, "{counts:?} on {cpus} CPUs");
}

/// Keeps `want[i]` keep-alive connections open on slot `i`: opens connections (at most 200),
/// holding every one, until each slot has its count, then closes the extra ones and waits until
/// the program's loads show exactly `want`.
fn hold_loads(b: &Balancer, want: &[usize]) -> Vec<KeepAlive> {
    let mut held: Vec<Vec<KeepAlive>> = want.iter().map(|_| Vec::new()).collect();
    for _ in 0..200 {
        if held.iter().zip(want).all(|(h, &w)| h.len() >= w) {
            break;
        }
        let k = KeepAlive::open(b.addr).unwrap();
        held[k.slot as usize].push(k);
    }
    let mut kept = Vec::new();
    for (slot, (mut h, &w)) in held.into_iter().zip(want).enumerate() {
        assert!(
            h.len() >= w,
            "slot {slot}: {} of {w} connections in 200",
            h.len()
        );
        kept.extend(h.drain(..w));
    }
    let want: Vec<u64> = want.iter().map(|&w| w as u64).collect();
    b.wait_for(Duration::from_secs(10), "the held loads", |s| {
        s["slots"].as_array().is_some_and(|slots| {
            slots
                .iter()
                .map(|x| x["load"].as_u64())
                .eq(want.iter().map(|&w| Some(w)))
        })
    });
    kept
}

/// Power of two choices draws two distinct slots at random and takes the less loaded. With the
/// loads held at 0, 2, 4 and 6 (gaps of 2, so that a short connection not yet counted closed
/// swaps no two slots), each of the 6 pairs is equally likely and its lighter slot wins: slot 0
/// is in 3 pairs (1/2 of the connections), slot 1 wins 2 (1/3), slot 2 one (1/6), and slot 3,
/// the heaviest, never.
///
/// The kernel hash gives each slot 1/4: slot 3 gets none of 600 with probability 0.75^600 =
/// 1e-75. Least-loaded sends all 600 to slot 0. The ranges below miss p2c's binomial counts
/// with probability 7e-7, 2e-6 and 1e-6.
#[test]
fn p2c_takes_the_lighter_of_two_random_workers() {
    netns();
    let b = Balancer::start(8080, 4, &["--policy", "p2c"]);
    let held = hold_loads(&b, &[0, 2, 4, 6]);
    let h = sequential(&b, 600);
    eprintln!("p2c, loads held at 0, 2, 4, 6, then 600 sequential connections: {h:?}");
    assert_eq!(
        h[3], 0,
        "the heaviest worker is never the lighter of a pair: {h:?}"
    );
    assert!(
        (240..=360).contains(&h[0]),
        "slot 0 wins 3 pairs of 6, about 300: {h:?}"
    );
    assert!(
        (145..=255).contains(&h[1]),
        "slot 1 wins 2 pairs of 6, about 200: {h:?}"
    );
    assert!(
        (55..=145).contains(&h[2]),
        "slot 2 wins 1 pair of 6, about 100: {h:?}"
    );
    drop(held);
}

#[test]
fn weighted_splits_idle_traffic_by_weight() {
    netns();
    let b = Balancer::start(8080, 4, &["--policy", "weighted", "--weights", "3,1,1,1"]);
    let h = sequential(&b, 1200);
    eprintln!("weighted 3,1,1,1, 1200 sequential connections: {h:?}");
    assert!(
        (510..=690).contains(&h[0]),
        "weight 3 of 6 should get about 600: {h:?}"
    );
    for &n in &h[1..] {
        assert!(
            (140..=260).contains(&n),
            "weight 1 of 6 should get about 200: {h:?}"
        );
    }
    // Live weight change: slot 3 to weight 6 (of 11) takes the largest share.
    ctl(&b, &["weight", "3", "6"]);
    let h = sequential(&b, 1100);
    assert!(h[3] > h[0] && h[3] > 450, "after weight 6 on slot 3: {h:?}");
}

fn client(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 1, i))
}

#[test]
fn sticky_keeps_each_client_on_one_worker_and_survives_a_restart() {
    netns();
    let b = Balancer::start(8080, 4, &["--policy", "sticky"]);
    let mut home = BTreeMap::new();
    for i in 1..=64 {
        let slots: Vec<u32> = (0..3)
            .map(|_| get_from(client(i), b.addr, "/").unwrap().slot)
            .collect();
        assert!(
            slots.iter().all(|&s| s == slots[0]),
            "client {i} moved between workers: {slots:?}"
        );
        home.insert(i, slots[0]);
    }
    // 64 addresses over 4 workers: about 16 each (the table gives each worker a quarter).
    let mut per_slot = [0usize; 4];
    for &s in home.values() {
        per_slot[s as usize] += 1;
    }
    assert!(
        per_slot.iter().all(|&n| (5..=28).contains(&n)),
        "clients per worker: {per_slot:?}"
    );

    // Kill the worker of one slot: its clients are answered elsewhere meanwhile, the others
    // stay where they were.
    let victim = home[&1];
    kill(Pid::from_raw(b.pid_of(victim as usize)), Signal::SIGKILL).unwrap();
    for (&i, &slot) in &home {
        let r =
            get_from(client(i), b.addr, "/").expect("every client is answered during the restart");
        if slot != victim {
            assert_eq!(r.slot, slot, "client {i} of a live slot must not move");
        }
    }
    b.wait_for(Duration::from_secs(10), "the slot's restart", |s| {
        s["slots"][victim as usize]["restarts"] == 1 && s["slots"][victim as usize]["state"] == "up"
    });
    // Back up: every client is home again.
    for (&i, &slot) in &home {
        assert_eq!(
            get_from(client(i), b.addr, "/").unwrap().slot,
            slot,
            "client {i}"
        );
    }
}

#[test]
fn switching_policy_live_drops_nothing() {
    netns();
    let b = Balancer::start(8080, 3, &[]);
    let failures = thread::scope(|s| {
        let load: Vec<_> = (0..2)
            .map(|_| s.spawn(|| (0..300).filter(|_| get(b.addr, "/").is_err()).count()))
            .collect();
        thread::sleep(Duration::from_millis(100));
        ctl(&b, &["policy", "round-robin"]);
        load.into_iter().map(|h| h.join().unwrap()).sum::<usize>()
    });
    assert_eq!(failures, 0);
    assert_eq!(b.status().unwrap()["policy"], "round-robin");
    // Round-robin rotates on each CPU's own ticket: 30 connections after the switch split
    // 10/10/10, give or take one per CPU (see `round_robin_cycles_exactly_on_each_cpu`).
    let counts = sequential(&b, 30);
    let cpus = std::thread::available_parallelism().unwrap().get();
    let (min, max) = (*counts.iter().min().unwrap(), *counts.iter().max().unwrap());
    assert_eq!(counts.iter().sum::<usize>(), 30);
    assert!(
        max - min <= cpus,
        "rotation after the switch: {counts:?} on {cpus} CPUs"
    );
}

#[test]
fn ipv6_and_dual_stack_listeners() {
    netns();
    let v6: SocketAddr = "[::1]:8080".parse().unwrap();
    {
        let b = Balancer::start_on("[::1]:8080", v6, 2, &[]);
        let h = sequential(&b, 40);
        assert_eq!(h.iter().sum::<usize>(), 40);
        assert!(h.iter().all(|&n| n > 5), "{h:?}");
    }
    // [::] accepts IPv4 clients too (v4-mapped), through the same program.
    let b = Balancer::start_on(
        "[::]:8081",
        "[::1]:8081".parse().unwrap(),
        2,
        &["--policy", "round-robin"],
    );
    let v4: SocketAddr = "127.0.0.1:8081".parse().unwrap();
    let before = b.status().unwrap()["program"]["selected"].as_u64().unwrap();
    let replies: Vec<Reply> = (0..40)
        .map(|i| get(if i % 2 == 0 { v4 } else { b.addr }, "/").unwrap())
        .collect();
    // Every connection of both families was chosen by the program (an IPv4 client that fell
    // to the kernel's hash would not count), and the rotation is the per-CPU one: exact on
    // each CPU, so the totals differ by at most one per CPU whichever CPUs the client ran on.
    let s = b.status().unwrap();
    assert_eq!(
        s["program"]["selected"].as_u64().unwrap() - before,
        40,
        "both families through the program: {s}"
    );
    let counts = histogram(&replies, 2);
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert!(
        counts[0].abs_diff(counts[1]) <= cpus,
        "rotation across families: {counts:?} on {cpus} CPUs"
    );
}
