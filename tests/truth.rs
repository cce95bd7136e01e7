//! The true-load invariant, one event at a time: after each event, within 2 s of quiescence,
//! every slot's load equals the connections the kernel holds for it (its accept queue plus
//! what its worker has open), it stays so, and balance works as on a fresh balancer. Each
//! test drives one counter path wrong on purpose and prints the largest error seen and the
//! time to converge.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use balancer_tests::{raw::*, truth::*, *};

/// Waits for the loads to reach `want` (see `converge`) and prints the largest error seen and
/// the time it took.
fn settle(b: &Balancer, want: &[u64], event: &str) {
    let c = converge(b, want, CONVERGE);
    eprintln!(
        "truth: {event}: largest |load - truth| {} , converged {:?} after quiescence",
        c.worst, c.after
    );
}

/// After `event`, with nothing left open: the loads are 0 and true, the kernel's events alone
/// got them there (no correction), and balance works as on a fresh balancer.
fn settles_by_events_alone(b: &Balancer, event: &str) {
    settle(b, &[0, 0], event);
    assert_eq!(
        corrections(b),
        0,
        "{event}: nothing left for the reconciliation"
    );
    balance_recovers(b);
}

/// Opens `n` connections at once and waits up to 30 s for each answer; returns the replies
/// received. A dropped SYN is retransmitted after 1, 3, 7, 15 s, and retransmits of clients that
/// started together come together.
fn concurrent_gets(addr: std::net::SocketAddr, n: usize, path: &str) -> Vec<Reply> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                s.spawn(move || {
                    let mut stream =
                        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(30))
                            .ok()?;
                    stream
                        .set_read_timeout(Some(Duration::from_secs(30)))
                        .ok()?;
                    request_on(&mut stream, path).ok()
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().unwrap())
            .collect()
    })
}

/// Sends `n` hand-made segments to 127.0.0.1:8080 from `from`, source ports `first_port`
/// onwards, the i-th with flags `flags(i)`.
fn send_raw(n: usize, from: Ipv4Addr, first_port: u16, flags: impl Fn(usize) -> u8) {
    let raw = RawSender::new();
    let dst = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080);
    for i in 0..n {
        raw.send(
            SocketAddrV4::new(from, first_port + i as u16),
            dst,
            flags(i),
            7,
        );
    }
}

/// How many of `open` each of `slots` slots holds.
fn per_slot(open: &[KeepAlive], slots: usize) -> Vec<u64> {
    let mut n = vec![0u64; slots];
    for k in open {
        n[k.slot as usize] += 1;
    }
    n
}

fn set_sysctl(path: &str, value: &str) {
    // Network sysctls belong to the opener's namespace: this thread's own.
    std::fs::write(path, value).unwrap_or_else(|e| panic!("{path}: {e}"));
}

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

/// Holds slot 0's worker, queues `n` more connections behind it, and SIGKILLs it.
fn kill_with_open_and_queued(b: &Balancer, n: usize) -> (Vec<KeepAlive>, Vec<KeepAlive>) {
    let mut holders = one_per_slot(b.addr, 2);
    let mut slow = holders.remove(0);
    slow.send_last("/work?ms=5000").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    // Weighted towards slot 0 by holding slot 1 with idle open connections.
    let mut queued = Vec::new();
    let mut extra = Vec::new();
    while queued.len() < n {
        let k = KeepAlive::open_unanswered(b.addr).unwrap();
        if b.per_slot("queued")[slow.slot as usize] as usize > queued.len() {
            queued.push(k);
        } else {
            extra.push(k);
        }
        assert!(extra.len() < 400, "could not queue on slot {}", slow.slot);
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(b.pid_of(slow.slot as usize)),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    (queued, extra)
}

/// Sends a last request on each connection and checks that every one is answered.
fn answer_all(connections: impl IntoIterator<Item = KeepAlive>) {
    for mut k in connections {
        k.send_last("/").unwrap();
        assert_eq!(
            k.read_reply().unwrap().status,
            200,
            "nothing queued is lost"
        );
    }
}

#[test]
fn sigkill_with_open_and_queued_connections_then_a_quick_restart() {
    netns();
    let b = Balancer::start(8080, 2, &["--policy", "round-robin"]);
    let (queued, extra) = kill_with_open_and_queued(&b, 5);
    answer_all(queued.into_iter().chain(extra));
    settle(&b, &[0, 0], "SIGKILL, 1 open and 5 queued, quick restart");
    ctl(&b, &["policy", "least-loaded"]);
    balance_recovers(&b);
}

#[test]
fn sigkill_with_queued_connections_moves_them_and_their_count() {
    netns();
    // The restart is 3 s away: the queue migrates to the live slot, counts included.
    let b = Balancer::start(
        8080,
        2,
        &["--policy", "round-robin", "--restart-delay", "3"],
    );
    let (queued, extra) = kill_with_open_and_queued(&b, 5);
    b.wait_for(Duration::from_secs(5), "the queue migrated", |s| {
        s["program"]["migrated"].as_u64() >= Some(5)
    });
    let want = [0, 0];
    answer_all(queued.into_iter().chain(extra));
    settle(&b, &want, "SIGKILL, 5 queued migrated");
    assert_eq!(
        corrections(&b),
        0,
        "each migrated connection moved its count"
    );
}

#[test]
fn a_reload_whose_retiring_worker_is_killed_leaves_no_drift() {
    netns();
    let b = Balancer::start(8080, 2, &["--kill-timeout", "10"]);
    let open: Vec<KeepAlive> = (0..6).map(|_| KeepAlive::open(b.addr).unwrap()).collect();
    let old: Vec<i32> = (0..2).map(|s| b.pid_of(s)).collect();
    let reload = ctl_in_background(&b, &["reload"]);
    // Kill each previous worker while it retires (its idle connections keep it busy).
    b.wait_for(Duration::from_secs(10), "new workers started", |s| {
        s["slots"]
            .as_array()
            .unwrap()
            .iter()
            .zip(&old)
            .all(|(x, &p)| x["pid"].as_i64().is_some_and(|n| n != p as i64))
    });
    for pid in old {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(reload.join().unwrap().status.success());
    drop(open);
    settle(
        &b,
        &[0, 0],
        "reload, retiring workers SIGKILLed with 6 open",
    );
    balance_recovers(&b);
}

#[test]
fn scaling_down_and_up_keeps_every_slot_true() {
    netns();
    let b = Balancer::start(8080, 4, &[]);
    let open: Vec<KeepAlive> = (0..8).map(|_| KeepAlive::open(b.addr).unwrap()).collect();
    ctl(&b, &["scale", "2"]);
    ctl(&b, &["scale", "4"]);
    let mut want = vec![0u64; 4];
    for k in &open {
        if (k.slot as usize) < 2 {
            want[k.slot as usize] += 1;
        }
    }
    // Connections of the removed slots' workers closed with them; the new slots start empty.
    settle(&b, &want, "scale 4 -> 2 -> 4 with 8 open");
    drop(open);
    converge(&b, &[0, 0, 0, 0], CONVERGE);
    ctl(&b, &["scale", "2"]);
    balance_recovers(&b);
}

#[test]
fn more_connections_than_the_flow_table_holds() {
    netns();
    // A backlog of 4 makes a slot crowded at 2 connections: nearly all of the 200 SYNs are
    // recorded, in a table of 64, so most records are evicted before their connection closes.
    // A close is counted on the slot the socket inherited from its listener, record or not.
    let b = Balancer::start(8080, 2, &["--flow-table", "64", "--backlog", "4"]);
    let open: Vec<KeepAlive> = (0..200).map(|_| KeepAlive::open(b.addr).unwrap()).collect();
    let want = per_slot(&open, 2);
    settle(&b, &want, "200 open, flow table of 64");
    drop(open);
    settle(&b, &[0, 0], "200 closed, flow table of 64");
    assert_eq!(
        corrections(&b),
        0,
        "every close counted by the kernel's events, evicted record or not"
    );
    balance_recovers(&b);
}

#[test]
fn datagrams_are_no_load_for_any_worker() {
    netns();
    // An unmodified UDP echo server on fd 3.
    let echo = "import socket\ns = socket.socket(fileno=3)\nwhile True:\n    d, a = s.recvfrom(2048)\n    s.sendto(d, a)\n";
    let b = Balancer::start(8080, 2, &["--udp", "--", "python3", "-c", echo]);
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 64];
    for _ in 0..200 {
        s.send_to(b"hi", b.addr).unwrap();
        s.recv_from(&mut buf).expect("every datagram is echoed");
    }
    settle(&b, &[0, 0], "200 datagrams");
    assert_eq!(b.per_slot("assigned"), [0, 0]);
}

/// Run by every worker of the isolation test before it serves: tries each way a process could
/// reach a load counter, writes what worked to `$REPORT_DIR/<slot>`, then becomes the built-in
/// worker.
const INTRUDER: &str = r#"
import ctypes, errno, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
tried, got = 0, []
ppid = os.getppid()
# The supervisor's descriptors: its maps and programs.
try:
    names = os.listdir(f"/proc/{ppid}/fd")
except OSError:
    names = [str(n) for n in range(64)]
for name in names:
    tried += 1
    try:
        fd = os.open(f"/proc/{ppid}/fd/{name}", os.O_RDWR)
        got.append(f"open /proc/{ppid}/fd/{name}")
        os.close(fd)
    except OSError:
        pass
try:
    pidfd = os.pidfd_open(ppid)
    for n in range(64):
        tried += 1
        fd = libc.syscall(438, pidfd, n, 0)  # pidfd_getfd
        if fd >= 0:
            got.append(f"pidfd_getfd {n}: {os.readlink(f'/proc/self/fd/{fd}')}")
except OSError:
    tried += 1
# Every BPF map on the host, by id.
attr = (ctypes.c_uint32 * 8)()
for map_id in range(1, 4096):
    tried += 1
    attr[0] = map_id
    fd = libc.syscall(321, 14, ctypes.byref(attr), ctypes.sizeof(attr))  # BPF_MAP_GET_FD_BY_ID
    if fd >= 0:
        got.append(f"bpf map id {map_id}")
with open(os.path.join(os.environ["REPORT_DIR"], os.environ["BALANCER_SLOT"]), "w") as f:
    json.dump({"tried": tried, "got": got}, f)
os.execv(sys.argv[1], [sys.argv[1], "worker"])
"#;

#[test]
fn a_worker_that_tries_everything_reaches_no_counter() {
    netns();
    let dir = std::env::temp_dir().join(format!("balancer-intruder-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The workers' uids are their own: they may add their reports, and no more.
    writable_by_workers(&dir);
    // SAFETY: set before any thread of this test reads the environment.
    unsafe { std::env::set_var("REPORT_DIR", &dir) };
    let bin = worker_bin();
    let b = Balancer::start(
        8080,
        2,
        &["--", "python3", "-c", INTRUDER, bin.to_str().unwrap()],
    );
    for slot in 0..2 {
        // Written before the worker serves, but a slot is up at its ready timeout even if
        // the worker is slower than that to try everything.
        let report = dir.join(slot.to_string());
        wait_until(Duration::from_secs(20), "the worker's report", || {
            std::fs::read_to_string(&report).is_ok_and(|r| r.ends_with('}'))
        });
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
        assert!(
            report["tried"].as_u64().unwrap() > 4000,
            "slot {slot} tried: {report}"
        );
        assert_eq!(
            report["got"],
            serde_json::json!([]),
            "slot {slot} reached something"
        );
    }
    let open: Vec<KeepAlive> = (0..4).map(|_| KeepAlive::open(b.addr).unwrap()).collect();
    let want = per_slot(&open, 2);
    converge(&b, &want, CONVERGE);
    drop(open);
    converge(&b, &[0, 0], CONVERGE);
    assert_eq!(corrections(&b), 0);
    balance_recovers(&b);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A named network namespace (`ip netns add`), deleted when dropped.
struct NamedNetns(String);

impl NamedNetns {
    fn new() -> NamedNetns {
        let name = format!("balancer-truth-{}", std::process::id());
        let ok = std::process::Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("`ip` (iproute2) is installed by `cargo xtask setup`")
            .success();
        assert!(ok, "ip netns add {name}");
        NamedNetns(name)
    }

    /// Moves the calling thread into the namespace, with loopback up.
    fn enter(&self) {
        let ns = std::fs::File::open(format!("/run/netns/{}", self.0)).unwrap();
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let ok = std::process::Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

#[test]
fn an_unmodified_node_worker_under_ip_netns_exec() {
    // `ip netns exec` remounts /sys for the namespace: no cgroup hierarchy is visible there,
    // which is what kernel close tracking used to need.
    let ns = NamedNetns::new();
    ns.enter();
    let server = example("node/server.js");
    let addr: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let b = Balancer::launch_under(
        &["ip", "netns", "exec", &ns.0],
        "127.0.0.1:8080",
        addr,
        2,
        &["--", "node", &server],
        true,
    );
    let open: Vec<KeepAlive> = (0..4)
        .map(|_| KeepAlive::open(b.addr).expect("node answers"))
        .collect();
    let want = per_slot(&open, 2);
    converge(&b, &want, Duration::from_secs(5));
    drop(open);
    for _ in 0..100 {
        get(b.addr, "/").unwrap();
    }
    settle(&b, &[0, 0], "node under ip netns exec, 100 connections");
    assert_eq!(
        corrections(&b),
        0,
        "every close seen by the kernel's tracker"
    );
    let (held, n) = sent_while_blocked(b.addr, 2, "/block?ms=");
    assert!(
        held <= HELD_OF_TWO_AT_MOST,
        "blocked Node worker got {held} of {n}"
    );
    eprintln!("truth: node under ip netns exec: blocked worker received {held} of {n}");
}
