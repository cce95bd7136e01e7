//! The true-load invariant, one kernel event at a time: after each event, within 2 s of
//! quiescence, every slot's load equals the connections the kernel holds for it (its accept
//! queue plus what its worker has open), it stays so, and balance works as on a fresh balancer.
//! Each test drives one counter path wrong on purpose (bursts past the backlog, SYN cookies,
//! stray segments, abandoned handshakes, resets, the kernel's hash) and prints the largest error
//! seen and the time to converge. Worker events (crashes, reloads, scaling) are in
//! truth_workers.rs.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use balancer_tests::{raw::*, truth::*, *};

#[test]
fn a_burst_beyond_the_backlog_leaves_no_drift() {
    netns();
    // Both workers busy, queues of 2: most SYNs are dropped and retransmitted, each retransmit
    // runs the program again. The workers' own queues, not the shared one.
    let b = Balancer::start(8080, 2, &["--backlog", "2", "--overflow", "off"]);
    let mut holders = one_per_slot(b.addr, 2);
    hold(&mut holders, 3000);
    let replies = concurrent_gets(b.addr, 100, "/");
    // Under SYN cookies and a full queue the kernel leaves some clients waiting on a handshake
    // it dropped, with or without the program (see docs/reliability.md); the books must be
    // right regardless.
    assert!(replies.len() >= 50, "{} of 100 answered", replies.len());
    assert!(replies.iter().all(|r| r.status == 200));
    eprintln!(
        "truth: burst: {} of 100 answered within 30 s",
        replies.len()
    );
    for h in &mut holders {
        assert_eq!(h.read_reply().unwrap().status, 200);
    }
    drop(holders);
    let followed = program(&b, "followed");
    let selected = program(&b, "selected");
    settle(&b, &[0, 0], "burst of 100 over backlog 2");
    eprintln!("truth: burst: {selected} selections, {followed} retransmits followed");
    assert!(
        followed > 0,
        "no SYN was retransmitted: the burst did not overflow"
    );
    assert_eq!(
        selected, 102,
        "each connection chosen once, retransmits not counted"
    );
    balance_recovers(&b);
}

#[test]
fn syn_cookies_count_each_connection_once_on_the_slot_that_gets_it() {
    netns();
    set_sysctl("/proc/sys/net/ipv4/tcp_syncookies", "2"); // a cookie for every SYN
    let b = Balancer::start(8080, 2, &[]);
    let replies: Vec<Reply> = (0..200).map(|_| get(b.addr, "/").unwrap()).collect();
    let h = histogram(&replies, 2);
    let assigned = b.per_slot("assigned");
    assert_eq!(
        assigned,
        h.iter().map(|&n| n as u64).collect::<Vec<_>>(),
        "each slot counted exactly the connections it answered"
    );
    assert!(
        program(&b, "followed") >= 200,
        "every cookie ACK went to its SYN's slot"
    );
    settles_by_events_alone(&b, "SYN cookies");
}

#[test]
fn stray_segments_count_nothing() {
    netns();
    let b = Balancer::start(8080, 2, &[]);
    send_raw(500, Ipv4Addr::new(127, 0, 0, 2), 20_000, |i| {
        [ACK, FIN | ACK, RST, RST | ACK, FIN][i % 5]
    });
    b.wait_for(Duration::from_secs(5), "500 stray segments seen", |s| {
        s["program"]["not_a_syn"].as_u64() >= Some(500)
    });
    assert_eq!(b.per_slot("assigned"), [0, 0], "no stray segment counted");
    settles_by_events_alone(&b, "500 stray ACK/FIN/RST");
}

#[test]
fn abandoned_handshakes_are_corrected_from_the_kernel() {
    netns();
    let b = Balancer::start(8080, 2, &[]);
    // SYNs from a client that never completes: no socket on this side will ever close, so
    // only the reconciliation can take them off the books. Once both slots hold one, the rest
    // go to the overflow queue, whose books are checked the same way.
    send_raw(100, Ipv4Addr::new(127, 0, 0, 3), 30_000, |_| SYN);
    b.wait_for(Duration::from_secs(5), "100 SYNs counted", |s| {
        s["program"]["selected"].as_u64() >= Some(100)
    });
    let quiet = Instant::now();
    settle(&b, &[0, 0], "100 abandoned handshakes");
    b.wait_for(
        Duration::from_secs(5),
        "the overflow queue's books at 0",
        |s| s["overflow"]["load"] == 0,
    );
    assert!(program(&b, "overflowed") >= 90, "{}", b.status().unwrap());
    assert_eq!(corrections(&b), 100, "each abandoned SYN corrected once");
    eprintln!(
        "truth: abandoned: corrected {:?} after the SYNs",
        quiet.elapsed()
    );
    balance_recovers(&b);
}

/// A handshake the kernel drops leaves its record in `FLOWS` (no state change reports a
/// request socket's end). A new connection that later reuses the 4-tuple (a client reusing its
/// port, common on loopback) carries another initial sequence number: it must be counted as the
/// new connection it is, not followed uncounted as a retransmission of the old SYN, which would
/// leave its close one below the truth.
#[test]
fn a_new_connection_on_the_4_tuple_of_a_dropped_handshake_is_counted() {
    netns();
    // Records exist only for SYNs sent to crowded slots (half the backlog): a backlog of 2 and
    // one connection held on each slot make every slot crowded, so the dropped handshakes
    // below leave records behind.
    let b = Balancer::start(8080, 2, &["--backlog", "2", "--overflow", "off"]);
    let held = one_per_slot(b.addr, 2);
    let client = Ipv4Addr::new(127, 0, 0, 3);
    // 20 SYNs whose SYN-ACKs meet no socket: the kernel drops each handshake at once.
    send_raw(20, client, 30_000, |_| SYN);
    b.wait_for(Duration::from_secs(5), "20 SYNs counted", |s| {
        s["program"]["selected"].as_u64() >= Some(20)
    });
    settle(&b, &[1, 1], "20 dropped handshakes");
    // Real connections from the same addresses and ports.
    for i in 0..20u16 {
        let fd = nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Inet,
            nix::sys::socket::SockType::Stream,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::ReuseAddr, &true).unwrap();
        let from = SocketAddrV4::new(client, 30_000 + i);
        nix::sys::socket::bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &nix::sys::socket::SockaddrIn::from(from),
        )
        .unwrap();
        nix::sys::socket::connect(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &nix::sys::socket::SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080)),
        )
        .unwrap();
        let mut stream = std::net::TcpStream::from(fd);
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        assert_eq!(request_on(&mut stream, "/").unwrap().status, 200);
    }
    assert_eq!(
        program(&b, "stale_flow"),
        20,
        "each new connection replaced its stale record"
    );
    // Every connection counted once and closed once: the books end at exactly 0, by the
    // kernel's events alone for the real connections.
    settle(&b, &[1, 1], "20 connections on stale records");
    drop(held);
    settle(&b, &[0, 0], "the held connections closed");
    assert_eq!(
        corrections(&b),
        20,
        "the reconciliation took off the 20 dropped handshakes and nothing else"
    );
    let s = b.status().unwrap();
    let assigned: u64 = b.per_slot("assigned").iter().sum();
    let closed: u64 = b.per_slot("closed").iter().sum();
    assert_eq!(assigned, closed, "{s}");
    balance_recovers(&b);
}

#[test]
fn client_resets_leave_no_drift() {
    netns();
    let b = Balancer::start(8080, 2, &[]);
    for _ in 0..200 {
        reset(connect(b.addr).unwrap());
    }
    // A reset closes the socket straight from ESTABLISHED: the close tracker counts it, the
    // reconciliation has nothing to do.
    settles_by_events_alone(&b, "200 client resets");
}

#[test]
fn a_hash_episode_neither_blinds_nor_skews_the_policies() {
    netns();
    let b = Balancer::start(8080, 2, &["--policy", "hash"]);
    // Open under hash: the program counts none of these.
    let open: Vec<KeepAlive> = (0..6).map(|_| KeepAlive::open(b.addr).unwrap()).collect();
    for _ in 0..400 {
        get(b.addr, "/").unwrap();
    }
    ctl(&b, &["policy", "least-loaded"]);
    let want = per_slot(&open, 2);
    settle(&b, &want, "400 connections under hash, 6 still open");
    drop(open);
    settle(&b, &[0, 0], "the 6 opened under hash closed");
    balance_recovers(&b);
}

/// SIGKILLs both workers of `b` and waits until neither slot has one (a long --restart-delay
/// keeps them down meanwhile).
fn kill_both_workers(b: &Balancer) {
    for slot in 0..2 {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(b.pid_of(slot)),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }
    b.wait_for(Duration::from_secs(5), "both slots down", |s| {
        s["slots"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["pid"].is_null())
    });
}

#[test]
fn fallbacks_to_the_kernel_hash_are_counted_by_the_reconciliation() {
    netns();
    // Without the overflow queue, where a connection waits when no slot is up (see below).
    let b = Balancer::start(8080, 2, &["--restart-delay", "5", "--overflow", "off"]);
    // Both workers gone: no slot is up, every SYN falls back to the kernel's hash.
    kill_both_workers(&b);
    let queued: Vec<_> = (0..6).map(|_| connect(b.addr).unwrap()).collect();
    assert!(program(&b, "no_slot_up") >= 6);
    let per_slot = b.per_slot("queued");
    assert_eq!(per_slot.iter().sum::<u64>(), 6, "{}", b.status().unwrap());
    settle(&b, &per_slot, "6 connections placed by the kernel's hash");
    drop(queued);
}

#[test]
fn with_no_slot_up_connections_wait_in_the_overflow_queue_counted_there() {
    netns();
    let b = Balancer::start(8080, 2, &["--restart-delay", "3"]);
    kill_both_workers(&b);
    // Not left to the kernel's hash, which counts nothing: the shared queue, counted there,
    // and served by the first worker back.
    let waiting: Vec<_> = (0..6)
        .map(|_| {
            let addr = b.addr;
            std::thread::spawn(move || get(addr, "/"))
        })
        .collect();
    let s = b.wait_for(Duration::from_secs(2), "six waiting", |s| {
        s["overflow"]["queued"].as_u64() == Some(6)
    });
    assert_eq!(s["program"]["no_slot_up"], 0, "{s}");
    assert_eq!(s["overflow"]["load"], 6, "{s}");
    for t in waiting {
        assert_eq!(t.join().unwrap().unwrap().status, 200);
    }
    converge(&b, &[0, 0], CONVERGE);
    assert_eq!(b.status().unwrap()["overflow"]["load"], 0);
    assert_eq!(corrections(&b), 0, "{}", b.status().unwrap());
}

/// The reconciliation's readings walk every open connection of the port: a balancer holding
/// connections with nothing moving takes none (at 100k connections a reading costs a third of
/// a core-second), and takes one at the next tick once a connection opens or closes, so the
/// truth stays as fresh as before. Under `hash` the program counts nothing: only the
/// namespace's socket count tells the supervisor that something moved.
#[test]
fn a_quiet_balancer_reads_the_kernel_only_once_something_moves() {
    netns();
    let b = Balancer::start(8080, 2, &[]);
    let mut open: Vec<KeepAlive> = (0..3).map(|_| KeepAlive::open(b.addr).unwrap()).collect();
    settle(&b, &per_slot(&open, 2), "3 keep-alive connections open");
    let readings = || {
        b.status().unwrap()["reconciliation"]["readings"]
            .as_u64()
            .unwrap()
    };
    let before = readings();
    // Six ticks of the default 0.5 s interval.
    std::thread::sleep(Duration::from_secs(3));
    let quiet = readings() - before;
    assert!(
        quiet <= 1,
        "{quiet} readings in 3 s with nothing moving; status: {}",
        b.status().unwrap()
    );
    ctl(&b, &["policy", "hash"]);
    std::thread::sleep(Duration::from_secs(1));
    open.push(KeepAlive::open(b.addr).unwrap());
    settle(
        &b,
        &per_slot(&open, 2),
        "a fourth opened under hash after a quiet spell",
    );
    drop(open.remove(0));
    settle(&b, &per_slot(&open, 2), "the first closed");
    assert!(corrections(&b) >= 1, "the fourth was counted by a reading");
}
