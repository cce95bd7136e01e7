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

#[test]
fn a_burst_of_64_connects_spreads_over_all_workers() {
    netns();
    let b = Balancer::start(8080, 4, &[]);
    // All 64 connect at the same instant and stay open until every one has connected.
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
    let h = histogram(&replies, 4);
    eprintln!("burst of 64 over 4 idle workers: {h:?}");
    for (slot, &n) in h.iter().enumerate() {
        assert!(
            (12..=20).contains(&n),
            "slot {slot} got {n} of a 64-connection burst: {h:?}"
        );
    }
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
