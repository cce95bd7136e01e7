//! Holding workers busy: a request that keeps a worker's event loop for a while, so that the
//! tests can watch where new connections go while it is held.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use crate::{get, procfs, wait_until, Balancer, KeepAlive, Reply};

/// Holds the event loop of the worker behind each of `holders` for `ms` milliseconds, and
/// returns once the requests have had time to reach the workers.
pub fn hold(holders: &mut [KeepAlive], ms: u64) {
    hold_with(holders, "/work?ms=", ms)
}

/// Like [`hold`], with the worker's own hold route (`/work?ms=`, `/block?ms=`). The request
/// asks the server to close afterwards: a server that handles one connection at a time (a sync
/// Python worker) would otherwise sit on the idle keep-alive connection after the hold.
pub fn hold_with(holders: &mut [KeepAlive], route: &str, ms: u64) {
    for h in holders.iter_mut() {
        h.send_last(&format!("{route}{ms}")).unwrap();
    }
    // Held once each worker has read its request: a single-threaded worker then runs the
    // handler that holds it. A fixed pause would be too short on a loaded machine, and a
    // connection that came in meanwhile would find the worker still free.
    for h in holders.iter() {
        let (client, server) = (
            h.stream.local_addr().unwrap(),
            h.stream.peer_addr().unwrap(),
        );
        wait_until(
            Duration::from_secs(10),
            "the hold read by its worker",
            || procfs::read_by_server(server.port(), client),
        );
    }
}

/// Holds one of `workers` workers for 2 s (through `route`, e.g. `/work?ms=`) while 32 clients
/// open new connections (at most 200 each): returns the share of the connections started
/// during the hold that went to the held worker, and how many started. Every connection must
/// be answered.
pub fn share_while_blocked(addr: SocketAddr, workers: usize, route: &str) -> (f64, usize) {
    let (to_slow, n) = sent_while_blocked(addr, workers, route);
    (to_slow as f64 / n as f64, n)
}

/// Clients of [`share_while_blocked`], each opening one connection after another.
pub const BLOCKED_CLIENTS: usize = 32;

/// The most connections least-loaded may send a held worker of two while
/// [`BLOCKED_CLIENTS`] clients keep one connection each open: each one sent there waits,
/// raising its load, and it gets another only while the free worker holds more (ties at
/// random), so at most half the clients end up waiting on it, however fast the machine
/// serves the rest; one more for a load read an instant before another CPU's close lands.
pub const HELD_OF_TWO_AT_MOST: usize = BLOCKED_CLIENTS / 2 + 1;

/// [`HELD_OF_TWO_AT_MOST`] for a balancer whose reconciliation reads while the clients churn,
/// as after the kernel events of the truth tests: a reading that lands mid-churn may lower the
/// held worker's load by a few connections for a tick (21 and 22 have been seen, against 16
/// when quiet). Three quarters of the clients: a program that ignored the loads would strand
/// every client on the held worker, all 32 of them.
pub const HELD_OF_TWO_WHILE_READING_AT_MOST: usize = BLOCKED_CLIENTS * 3 / 4;

/// [`share_while_blocked`] as counts: connections that went to the held worker, and all
/// started during the hold.
pub fn sent_while_blocked(addr: SocketAddr, workers: usize, route: &str) -> (usize, usize) {
    let mut holders = one_per_slot(addr, workers);
    let slow = holders.remove(0);
    drop(holders);
    let mut slow = [slow];
    // Longer than the clients run, by as long as a loaded machine may take to read the
    // blocking request.
    let block = Duration::from_millis(3000);
    // From the request, not from its read: the hold ends no sooner than `block` after it, so
    // every connection started before then finds the worker held.
    let begin = Instant::now();
    hold_with(&mut slow, route, block.as_millis() as u64);
    let [mut slow] = slow;
    let results: Vec<(Duration, Reply)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..BLOCKED_CLIENTS)
            .map(|_| {
                s.spawn(move || {
                    let mut out = Vec::new();
                    while begin.elapsed() < Duration::from_millis(1900) && out.len() < 200 {
                        let started = begin.elapsed();
                        out.push((
                            started,
                            get(addr, "/").expect("every connection is answered"),
                        ));
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let held = slow.read_reply().unwrap();
    assert_eq!(held.status, 200);
    assert!(results.iter().all(|(_, r)| r.status == 200));
    let during: Vec<&Reply> = results
        .iter()
        .filter(|(t, _)| *t < block)
        .map(|(_, r)| r)
        .collect();
    assert!(
        !during.is_empty(),
        "no connection started during the hold: the worker took over 1.9 s to read it"
    );
    let to_slow = during.iter().filter(|r| r.slot == slow.slot).count();
    (to_slow, during.len())
}

/// Holds one idle worker per entry of `ms`, in turn, each with one request `ROUTE{ms}` (e.g.
/// `/work?ms=`) on a new connection: each finds the workers held before it busy and goes to an
/// idle one. Returns once every hold is in hand (that many slots at load 1), with the
/// requests' threads, whose replies say which slot each held.
pub fn hold_on_new_connections(
    b: &Balancer,
    route: &str,
    ms: &[u64],
) -> Vec<std::thread::JoinHandle<Reply>> {
    let mut held = Vec::new();
    for (i, ms) in ms.iter().enumerate() {
        let (addr, path) = (b.addr, format!("{route}{ms}"));
        held.push(std::thread::spawn(move || get(addr, &path).unwrap()));
        b.wait_for(Duration::from_secs(5), "the hold reaches its worker", |s| {
            s["program"]["selected"].as_u64() >= Some(i as u64 + 1)
                && s["slots"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|x| x["load"].as_u64() == Some(1))
                    .count()
                    == i + 1
        });
        // Counted at its SYN; held only once its worker has read it (see `hold_with`).
        wait_until(
            Duration::from_secs(10),
            "the hold read by its worker",
            || procfs::all_read(b.addr.port()),
        );
    }
    held
}

/// Opens keep-alive connections until one lands on each of `slots` distinct slots.
pub fn one_per_slot(addr: SocketAddr, slots: usize) -> Vec<KeepAlive> {
    let mut found: Vec<KeepAlive> = Vec::new();
    let mut spare = Vec::new();
    for _ in 0..500 {
        let k = KeepAlive::open(addr).unwrap();
        if found.iter().any(|f| f.slot == k.slot) {
            spare.push(k); // held open so that the next connection goes elsewhere
        } else {
            found.push(k);
            if found.len() == slots {
                return found;
            }
        }
    }
    panic!("could not reach {slots} distinct slots");
}
