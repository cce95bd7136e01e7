//! Worker death and supervisor shutdown: nothing queued is lost, nothing is left behind.

use std::{
    net::TcpListener,
    thread,
    time::{Duration, Instant},
};

use balancer_tests::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[test]
fn sigkill_of_a_worker_loses_none_of_its_queued_connections() {
    netns();
    let b = Balancer::start(8080, 2, &["--overflow", "off"]);
    // Hold both workers' event loops, so that new connections wait in their own accept queues
    // (not the shared one: it is the killed worker's queue that must not be lost).
    let mut holders = one_per_slot(b.addr, 2);
    hold(&mut holders, 1500);
    let victim = holders.iter().position(|h| h.slot == 0).unwrap();
    let old_pid = b.pid_of(0);
    let replies = thread::scope(|s| {
        let clients: Vec<_> = (0..20).map(|_| s.spawn(|| get(b.addr, "/"))).collect();
        // Wait until connections are queued on slot 0, then kill its worker.
        b.wait_for(
            Duration::from_secs(5),
            "connections queued on slot 0",
            |s| s["slots"][0]["queued"].as_u64().unwrap() >= 3,
        );
        let queued = b.per_slot("queued")[0];
        kill(Pid::from_raw(old_pid), Signal::SIGKILL).unwrap();
        let replies: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
        (queued, replies)
    });
    let (queued, replies) = replies;
    let failed: Vec<_> = replies.iter().filter(|r| r.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} of 20 queued connections failed: {failed:?}",
        failed.len()
    );
    let new_pid = b.pid_of(0) as u32;
    assert_ne!(new_pid, old_pid as u32, "slot 0 has a new worker");
    let by_replacement = replies
        .iter()
        .filter(|r| matches!(r, Ok(r) if r.slot == 0 && r.pid == new_pid))
        .count();
    assert!(
        by_replacement as u64 >= queued,
        "the replacement answered {by_replacement} connections, {queued} were queued at the kill"
    );
    // Only the request in flight on the killed worker failed.
    assert!(holders[victim].read_reply().is_err());
    let s = b.status().unwrap();
    assert_eq!(s["slots"][0]["restarts"], 1);
    assert!(
        s["slots"][0]["last_exit"]
            .as_str()
            .unwrap()
            .contains("SIGKILL"),
        "{s}"
    );
}

#[test]
fn sigint_stops_every_worker_and_frees_the_port() {
    netns();
    let mut b = Balancer::start(8080, 3, &[]);
    assert_eq!(get(b.addr, "/").unwrap().status, 200);
    let pids: Vec<i32> = (0..3).map(|i| b.pid_of(i)).collect();
    let status = b.stop(Signal::SIGINT);
    assert!(
        status.success(),
        "clean stop exits 0, got {status}:\n{}",
        b.log_text()
    );
    for pid in pids {
        // Reaped by the supervisor: no such process any more.
        assert!(
            kill(Pid::from_raw(pid), None).is_err(),
            "worker {pid} outlived the supervisor"
        );
    }
    // The port is free for a plain (non-reuseport) bind: no listener, so no program, remains.
    TcpListener::bind(b.addr).expect("port still held after stop");
    assert!(!b.control.exists(), "control socket removed");
}

#[test]
fn a_worker_that_exits_is_restarted_and_its_slot_skipped_meanwhile() {
    netns();
    let b = Balancer::start(8080, 2, &[]);
    let pid = b.pid_of(1);
    kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    // While slot 1 is down or restarting, every connection is still answered.
    while Instant::now() < deadline {
        let reply =
            get(b.addr, "/").unwrap_or_else(|e| panic!("request failed: {e:#}\n{}", b.log_text()));
        assert_eq!(reply.status, 200);
        let s = b.status().unwrap();
        if s["slots"][1]["restarts"] == 1 && s["slots"][1]["state"] == "up" {
            assert_ne!(s["slots"][1]["pid"].as_i64().unwrap() as i32, pid);
            return;
        }
    }
    panic!("slot 1 was not restarted:\n{}", b.log_text());
}

#[test]
fn a_worker_gets_its_listener_on_fd_3_and_nothing_else_of_the_supervisor() {
    netns();
    // `sleep` opens nothing itself: its fds and environment are exactly what it was given.
    // The message channel (fd 4 by default) is off here: tests/channel.rs checks it.
    let b = Balancer::start(8080, 2, &["--channel", "off", "--", "sleep", "30"]);
    for slot in 0..2 {
        let pid = b.pid_of(slot);
        let mut fds: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().parse().unwrap())
            .collect();
        fds.sort();
        assert_eq!(
            fds,
            [0, 1, 2, 3],
            "worker {slot} holds exactly stdio and its listener: no map, no program"
        );
        let fd = |n: u32| std::fs::read_link(format!("/proc/{pid}/fd/{n}")).unwrap();
        assert!(
            fd(3).to_string_lossy().starts_with("socket:"),
            "{:?}",
            fd(3)
        );
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let env: Vec<String> = environ
            .split(|&c| c == 0)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        for want in [
            format!("LISTEN_PID={pid}"),
            "LISTEN_FDS=1".into(),
            "LISTEN_FDNAMES=balancer".into(),
            format!("BALANCER_SLOT={slot}"),
        ] {
            assert!(env.contains(&want), "worker {slot} lacks {want}: {env:?}");
        }
        assert!(
            !env.iter().any(|v| v.starts_with("BALANCER_REPORT_FD=")),
            "worker {slot} is told of a map: {env:?}"
        );
        // A root worker holds no capability, and can gain none.
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            let line = status
                .lines()
                .find(|l| l.starts_with(set))
                .unwrap_or_else(|| panic!("no {set} in /proc/{pid}/status"));
            assert_eq!(
                line.split_whitespace().nth(1),
                Some("0000000000000000"),
                "worker {slot}: {line}"
            );
        }
    }
    // Each worker's fd 3 is its own slot's listener: two different sockets.
    let inode = |slot| std::fs::read_link(format!("/proc/{}/fd/3", b.pid_of(slot))).unwrap();
    assert_ne!(inode(0), inode(1));
}

#[test]
fn a_stalled_worker_leaves_rotation_until_it_accepts_again() {
    netns();
    // Round-robin would keep sending every other connection to a stuck worker; stall
    // detection takes it out.
    let b = Balancer::start(
        8080,
        2,
        &["--policy", "round-robin", "--stall-timeout", "0.5"],
    );
    let mut holders = one_per_slot(b.addr, 2);
    let stuck = holders.iter().position(|h| h.slot == 0).unwrap();
    let mut held = [holders.remove(stuck)];
    drop(holders);
    hold_with(&mut held, "/work?ms=", 2500);
    let begin = Instant::now();
    // A new connection every 20 ms for 1.8 s, replies read afterwards.
    let mut open = Vec::new();
    while begin.elapsed() < Duration::from_millis(1800) {
        let started = begin.elapsed();
        let mut c = connect(b.addr).unwrap();
        std::io::Write::write_all(
            &mut c,
            b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        open.push((started, c));
        thread::sleep(Duration::from_millis(20));
    }
    let s = b.status().unwrap();
    assert_eq!(s["slots"][0]["state"], "stalled", "{s}");
    assert_eq!(s["slots"][0]["stalls"], 1);
    let mut late_on_stuck = 0;
    for (started, mut c) in open {
        let mut raw = String::new();
        std::io::Read::read_to_string(&mut c, &mut raw).expect("every connection is answered");
        assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
        // Detection takes the timeout plus a sampling period; after that, nothing new for slot 0.
        if started > Duration::from_millis(1000) && raw.contains("slot=0") {
            late_on_stuck += 1;
        }
    }
    assert_eq!(
        late_on_stuck, 0,
        "connections sent to the stalled worker after detection"
    );
    assert!(held[0].read_reply().is_ok());
    b.wait_for(Duration::from_secs(5), "slot 0 back in rotation", |s| {
        s["slots"][0]["state"] == "up"
    });
}

#[test]
fn a_crash_looping_command_stays_down_and_the_others_serve() {
    netns();
    // Slot 0's worker dies at once, every time; slot 1's is the built-in worker.
    let b = crash_looping_slot_0(2, 3, &["--give-up-after", "4"]);
    let s = b.wait_for(Duration::from_secs(10), "slot 0 given up", |s| {
        s["slots"][0]["state"] == "failed"
    });
    assert_eq!(
        s["slots"][0]["restarts"], 3,
        "4 quick failures: the first start and 3 restarts"
    );
    assert!(
        s["slots"][0]["last_exit"]
            .as_str()
            .unwrap()
            .contains("exited with code 3"),
        "{s}"
    );
    assert!(
        s["slots"][0]["last_exit"]
            .as_str()
            .unwrap()
            .contains("gave up"),
        "{s}"
    );
    thread::sleep(Duration::from_millis(500));
    assert_eq!(
        b.status().unwrap()["slots"][0]["restarts"],
        3,
        "no restart after giving up"
    );
    for _ in 0..50 {
        assert_eq!(get(b.addr, "/").unwrap().slot, 1);
    }
    assert!(b.log_text().contains("stays down"), "{}", b.log_text());
}

/// The hex capability masks and flags of a process, from /proc/PID/status.
fn proc_status(pid: i32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field).map(|v| v.trim().to_string()))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn has_cap(mask: &str, cap: u32) -> bool {
    u64::from_str_radix(mask, 16).unwrap() & (1 << cap) != 0
}

#[test]
fn workers_never_hold_cap_bpf_and_can_run_unprivileged() {
    netns();
    {
        // Workers of a root supervisor stay root, but without CAP_BPF or CAP_SYS_ADMIN.
        let b = Balancer::start(8080, 1, &["--", "sleep", "30"]);
        let pid = b.pid_of(0);
        for field in ["CapEff:", "CapPrm:", "CapBnd:"] {
            let mask = proc_status(pid, field);
            assert!(!has_cap(&mask, 39), "{field} {mask} has CAP_BPF");
            assert!(!has_cap(&mask, 21), "{field} {mask} has CAP_SYS_ADMIN");
        }
        assert_eq!(proc_status(pid, "NoNewPrivs:"), "1");
        assert_eq!(
            u64::from_str_radix(&proc_status(pid, "CapAmb:"), 16).unwrap(),
            0
        );
    }
    // --user nobody: the built-in worker serves, as uid 65534 with no capabilities at all.
    let b = Balancer::start(8081, 2, &["--user", "nobody"]);
    assert_eq!(get(b.addr, "/").unwrap().status, 200);
    let pid = b.pid_of(0);
    assert!(
        proc_status(pid, "Uid:").starts_with("65534"),
        "{}",
        proc_status(pid, "Uid:")
    );
    assert_eq!(
        u64::from_str_radix(&proc_status(pid, "CapEff:"), 16).unwrap(),
        0
    );
    assert_eq!(proc_status(pid, "NoNewPrivs:"), "1");
    // Load reports still reach the program from the unprivileged worker (through the mapping).
    b.wait_for(Duration::from_secs(5), "closes reported", |s| {
        all_idle(s)
            && s["slots"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x["closed"].as_u64().unwrap())
                .sum::<u64>()
                == 1
    });
}

#[test]
fn the_supervisor_keeps_only_the_capabilities_it_needs_after_start() {
    netns();
    let b = Balancer::start(8080, 2, &[]);
    let sup = b.status().unwrap()["pid"].as_i64().unwrap() as i32;
    let eff = u64::from_str_radix(&proc_status(sup, "CapEff:"), 16).unwrap();
    let allowed: u64 = [2u32, 5, 6, 7, 8, 10, 19].iter().map(|c| 1u64 << c).sum();
    assert_eq!(
        eff & !allowed,
        0,
        "supervisor CapEff {eff:x} has more than DAC_READ_SEARCH, KILL, SETGID, SETUID, SETPCAP, NET_BIND_SERVICE, SYS_PTRACE"
    );
    assert_eq!(eff & (1 << 39), 0, "CAP_BPF was dropped");
    // And it still does its job: reload and scale work without the dropped capabilities.
    assert_eq!(ctl(&b, &["scale", "3"]), "{\"slots\":3}");
    assert_eq!(ctl(&b, &["reload"]), "{\"reloaded\":3}");
    assert_eq!(get(b.addr, "/").unwrap().status, 200);
}

#[test]
fn sigterm_during_a_reload_is_heard_at_once() {
    netns();
    let addr: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
    // Workers that never say READY=1: a reload waits the whole --ready-timeout for each.
    let mut b = Balancer::launch(
        "127.0.0.1:8080",
        addr,
        2,
        &["--ready-timeout", "8", "--", "sleep", "60"],
        false,
    );
    let reload = ctl_in_background(&b, &["reload"]);
    b.wait_for(
        std::time::Duration::from_secs(5),
        "the reload's new workers",
        |s| s["slots"][0]["pid"].as_i64().is_some(),
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    let begin = std::time::Instant::now();
    let status = b.stop(nix::sys::signal::Signal::SIGTERM);
    let took = begin.elapsed();
    assert!(
        took < std::time::Duration::from_secs(3),
        "SIGTERM during a reload took {took:?} (the reload would have waited 8 s)"
    );
    assert!(status.success(), "{status}:\n{}", b.log_text());
    let out = reload.join().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the cut-short reload reports failure"
    );
    assert!(
        err.contains("stopping") && !err.contains("os error"),
        "`balancer reload` says what happened: {err}"
    );
    eprintln!("SIGTERM during a reload: exited after {took:?}; reload client: {err}");
}

#[test]
fn running_out_of_descriptors_neither_spins_nor_wedges_the_supervisor() {
    netns();
    let addr: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
    // About 29 descriptors in use with 2 workers: 48 leaves room for a few connections.
    let b = Balancer::launch_under(
        &["prlimit", "--nofile=48:48", "--"],
        "127.0.0.1:8080",
        addr,
        2,
        &[],
        true,
    );
    let sup = b.status().unwrap()["pid"].as_i64().unwrap() as i32;
    // Idle control connections: each accepted one holds a descriptor for up to 2 s, the rest
    // wait in the backlog while accept fails with EMFILE.
    let idle: Vec<_> = (0..40)
        .map(|_| std::os::unix::net::UnixStream::connect(&b.control).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let before = procfs::cpu_seconds(&[sup]);
    std::thread::sleep(Duration::from_millis(1000));
    let spent = ((procfs::cpu_seconds(&[sup]) - before) * 1000.0).round() as u64;
    assert!(
        spent < 300,
        "the supervisor used {spent} ms of CPU in 1 s while out of descriptors: it spins"
    );
    drop(idle);
    // Once the idle connections are gone, it answers again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.status().is_err() {
        assert!(
            Instant::now() < deadline,
            "the control socket never answered again"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(get(b.addr, "/").unwrap().status, 200);
    eprintln!("out of descriptors: {spent} ms of supervisor CPU in 1 s");
}

#[test]
fn ready_is_taken_only_from_the_slot_s_own_worker() {
    use std::os::linux::net::SocketAddrExt as _;
    netns();
    let addr: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
    // A worker that never says READY=1: its slot is up only after --ready-timeout.
    let b = Balancer::launch(
        "127.0.0.1:8080",
        addr,
        1,
        &["--ready-timeout", "6", "--", "sleep", "60"],
        false,
    );
    let sup = b.status().unwrap()["pid"].as_i64().unwrap();
    // Any local process can reach the worker's abstract NOTIFY_SOCKET by name.
    let name = format!("balancer/{sup}/0/1");
    let to = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let forger = std::os::unix::net::UnixDatagram::unbound().unwrap();
    forger
        .send_to_addr(b"READY=1", &to)
        .expect("the notify socket exists");
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        b.status().unwrap()["slots"][0]["state"],
        "down",
        "a READY=1 from another process put the slot in rotation"
    );
}
