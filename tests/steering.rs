//! Where the program sends connections: even spread, avoidance of a busy worker, no pile-up on
//! a burst, and load accounting that returns to zero. Real program, real sockets, real worker
//! processes, each test in its own network namespace.

use std::{
    sync::{Arc, Barrier},
    thread,
    time::Duration,
};

use balancer_tests::*;

#[test]
fn equal_loads_split_within_15_percent_of_even() {
    netns();
    let b = Balancer::start(8080, 4, &[]);
    // 2,000 new connections, one at a time: every worker is idle at each selection, so the
    // loads are equal. (With concurrent clients on a busy 2-core machine, a worker that happens
    // to get more CPU finishes sooner and rightly receives more: that is not "equal loads".)
    let replies: Vec<Reply> = (0..2000).map(|_| get(b.addr, "/").unwrap()).collect();
    assert_eq!(replies.len(), 2000);
    assert!(replies.iter().all(|r| r.status == 200));
    let h = histogram(&replies, 4);
    eprintln!("2000 connections over 4 workers: {h:?}");
    for (slot, &n) in h.iter().enumerate() {
        assert!(
            (425..=575).contains(&n),
            "slot {slot} got {n} of 2000 connections (even: 500): {h:?}"
        );
    }
    let assigned: u64 = b.per_slot("assigned").iter().sum();
    assert_eq!(assigned, 2000, "the program counted every connection once");
}

#[test]
fn a_busy_worker_gets_far_fewer_connections_than_under_the_kernel_hash() {
    netns();
    let (least_loaded, n_ll) = {
        let b = Balancer::start(8080, 4, &[]);
        share_while_blocked(b.addr, 4, "/work?ms=")
    };
    let (hash, n_hash) = {
        let b = Balancer::start(8081, 4, &["--policy", "hash"]);
        share_while_blocked(b.addr, 4, "/work?ms=")
    };
    eprintln!(
        "busy worker's share of new connections: least-loaded {least_loaded:.3} of {n_ll}, \
         kernel hash {hash:.3} of {n_hash}"
    );
    assert!(
        hash > 0.12,
        "the kernel hash should give the busy worker about 1/4, got {hash:.3}"
    );
    assert!(
        least_loaded < 0.05,
        "least-loaded gave the busy worker {least_loaded:.3}"
    );
    assert!(
        least_loaded < hash / 5.0,
        "least-loaded {least_loaded:.3} vs hash {hash:.3}"
    );
}

/// Opens 64 connections at the same instant, holds them all until the last has connected, then
/// asks each which slot it reached: connections per slot.
fn burst_of_64(b: &Balancer) -> Vec<usize> {
    let barrier = Arc::new(Barrier::new(64));
    let streams: Vec<_> = thread::scope(|s| {
        let handles: Vec<_> = (0..64)
            .map(|_| {
                let barrier = barrier.clone();
                s.spawn(move || {
                    barrier.wait();
                    connect(b.addr).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let replies: Vec<Reply> = streams
        .into_iter()
        .map(|mut s| request_on(&mut s, "/").unwrap())
        .collect();
    histogram(&replies, 4)
}

/// Each pure SYN is counted on its slot (an atomic add) before the program returns, so the
/// next SYN, on either CPU, already sees it, and every connection of a burst stays open until
/// the burst is over: least-loaded fills the four slots level by level. Two CPUs can race by
/// one selection (both read the same minimum before either adds); a race early in the burst is
/// evened out by the selections after it, and only one among the last few could leave a 17
/// and a 15. Measured on 2 cores: none in 1,200 bursts idle or with both cores kept busy, about
/// one in 600 while a full build and test run shared the machine. So one burst of the three
/// may be off by one.
///
/// Random choice (the kernel's hash of the 4-tuple) lands a burst 16/16/16/16 with probability
/// 64! / (16!^4 * 4^64) = 0.0019, and within one of 16 on every slot with about 0.02: it passes
/// this test with probability about 3 * 0.0019^2 * 0.02 = 2e-7.
#[test]
fn bursts_of_64_connects_put_exactly_16_on_each_of_4_idle_workers() {
    // The placement by least-loaded alone: with the overflow queue, all but the first four
    // would wait there for whichever worker frees up.
    const BURSTS: usize = 3;
    netns();
    let b = Balancer::start(8080, 4, &["--overflow", "off"]);
    let mut bursts = Vec::new();
    for _ in 0..BURSTS {
        b.wait_for(Duration::from_secs(10), "every slot idle", all_idle);
        bursts.push(burst_of_64(&b));
    }
    eprintln!("{BURSTS} bursts of 64 over 4 idle workers: {bursts:?}");
    let exact = bursts.iter().filter(|h| *h == &[16, 16, 16, 16]).count();
    assert!(
        exact >= BURSTS - 1 && bursts.iter().flatten().all(|n| (15..=17).contains(n)),
        "each burst must put 16 on each worker: {bursts:?}"
    );
    let mut answered = [0u64; 4];
    for h in &bursts {
        for (a, n) in answered.iter_mut().zip(h) {
            *a += *n as u64;
        }
    }
    assert_eq!(
        b.per_slot("assigned"),
        answered,
        "the program counted each connection once, on the slot that answered it"
    );
}

/// The reconciliation reads the kernel while bursts come and go: a reading taken mid-burst must
/// neither count a connection still in its handshake as drift nor correct a slot whose
/// counters moved while it was read. Before it left those out, 200 bursts in a row made 6 to
/// 191 corrections and ended skewed (13/19/19/13) with the books showing load 0 everywhere.
#[test]
fn back_to_back_bursts_stay_exact_while_the_reconciliation_reads() {
    const BURSTS: usize = 200;
    netns();
    let b = Balancer::start(8080, 4, &["--overflow", "off"]);
    let mut skewed = Vec::new();
    let mut answered = [0u64; 4];
    for i in 0..BURSTS {
        b.wait_for(Duration::from_secs(10), "every slot idle", all_idle);
        let h = burst_of_64(&b);
        for (a, n) in answered.iter_mut().zip(&h) {
            *a += *n as u64;
        }
        if h != [16, 16, 16, 16] {
            skewed.push((i, h));
        }
    }
    b.wait_for(Duration::from_secs(10), "every slot idle", all_idle);
    let corrections: u64 = b.per_slot("corrections").iter().sum();
    eprintln!(
        "{BURSTS} bursts with the reconciliation on: {} skewed, {corrections} corrections",
        skewed.len()
    );
    // Two CPUs may race by one selection (see above), under load now and then: a 17 and a 15.
    // What a wrong correction does is larger and lasts: 13/19/19/13 burst after burst.
    assert!(
        skewed
            .iter()
            .all(|(_, h)| h.iter().all(|n| (15..=17).contains(n)))
            && skewed.len() <= 2,
        "bursts off 16/16/16/16: {skewed:?}"
    );
    assert_eq!(corrections, 0, "nothing drifted, so nothing was corrected");
    assert_eq!(
        b.per_slot("assigned"),
        answered,
        "each connection counted once, on the slot that answered it"
    );
    assert_eq!(b.per_slot("closed"), answered, "and closed once");
}

#[test]
fn load_returns_to_exactly_zero_including_reset_connections() {
    netns();
    let b = Balancer::start(8080, 4, &[]);
    thread::scope(|s| {
        for t in 0..4 {
            s.spawn(move || {
                for i in 0..75 {
                    match i % 3 {
                        0 => drop(get(b.addr, "/").unwrap()),
                        // Reset right after the handshake, before any request.
                        1 => reset(connect(b.addr).unwrap()),
                        // Reset with a request in flight.
                        _ => {
                            let mut c = connect(b.addr).unwrap();
                            std::io::Write::write_all(
                                &mut c,
                                b"GET /work?ms=5 HTTP/1.1\r\nHost: t\r\n\r\n",
                            )
                            .unwrap();
                            reset(c);
                        }
                    }
                    let _ = t;
                }
            });
        }
    });
    let s = b.wait_for(
        Duration::from_secs(10),
        "every slot's load back to 0",
        all_idle,
    );
    let assigned: u64 = s["slots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["assigned"].as_u64().unwrap())
        .sum();
    let closed: u64 = s["slots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["closed"].as_u64().unwrap())
        .sum();
    assert_eq!(assigned, 300, "each connection is assigned once: {s}");
    assert_eq!(closed, 300, "each connection is reported closed once: {s}");
    for x in s["slots"].as_array().unwrap() {
        assert_eq!(x["assigned"], x["closed"], "slot books balance: {x}");
    }
}
