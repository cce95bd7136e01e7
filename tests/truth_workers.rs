//! The true-load invariant across worker events: a worker killed with connections open and
//! queued, a reload whose retiring worker is killed, scaling down and up, more connections than
//! the flow table holds, datagrams, and a worker that tries to write every counter itself. After
//! each, within 2 s of quiescence, every slot's load equals what the kernel holds for it.

use std::time::Duration;

use balancer_tests::{truth::*, *};

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
        held <= HELD_OF_TWO_WHILE_READING_AT_MOST,
        "blocked Node worker got {held} of {n}"
    );
    eprintln!("truth: node under ip netns exec: blocked worker received {held} of {n}");
}
