//! The workers' message channels: `balancer send` (with `--keep`), `balancer messages`,
//! `balancer signal`, with unmodified Node and Python workers.

use std::{
    io::{Read as _, Write as _},
    time::Duration,
};

use balancer_tests::{channel::*, *};
use serde_json::{json, Value};

const WITHIN: Duration = Duration::from_secs(15);

fn example(path: &str) -> String {
    format!("{}/../examples/{path}", env!("CARGO_MANIFEST_DIR"))
}

fn pids(b: &Balancer) -> Vec<i32> {
    let s = b.status().unwrap();
    let slots = s["slots"].as_array().unwrap();
    slots
        .iter()
        .map(|x| x["pid"].as_i64().unwrap_or(0) as i32)
        .collect()
}

/// The body of `GET /`, on a connection of its own.
fn body(b: &Balancer) -> String {
    let mut s = connect(b.addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    raw.split("\r\n\r\n").nth(1).unwrap_or("").to_string()
}

fn echo() -> Vec<&'static str> {
    vec!["--", "python3", "-c", ECHO_WORKER]
}

/// The cluster guides' worker code, unchanged (examples/node/config.js), gets a broadcast in
/// every slot and answers it with `process.send`; its `process.send('ready')` is what brings
/// each slot up (the ready timeout is longer than the start is given), and its SIGTERM handler,
/// which only closes its server, ends it at stop even though it listens for messages.
#[test]
fn the_guides_node_worker_gets_a_broadcast_in_every_slot() {
    netns();
    let node = example("node/config.js");
    let args = [
        "--ready-timeout",
        "60",
        "--kill-timeout",
        "5",
        "--",
        "node",
        &node,
    ];
    let mut b = Balancer::start(8080, 4, &args);
    let answer = ctl(
        &b,
        &["send", r#"{"cmd":"updateConfig","data":{"greeting":"hi"}}"#],
    );
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(
        (answer["sent"].as_u64(), answer["workers"].as_u64()),
        (Some(4), Some(4))
    );
    let mut want = pids(&b);
    want.sort();
    let m = wait_messages(&b, WITHIN, "every worker's configUpdated", |m| {
        m.iter()
            .filter(|x| x["message"]["cmd"] == "configUpdated")
            .count()
            == 4
    });
    let mut from: Vec<i32> = m
        .iter()
        .filter(|x| x["message"] == json!({"cmd": "configUpdated", "greeting": "hi"}))
        .map(|x| x["pid"].as_i64().unwrap() as i32)
        .collect();
    from.sort();
    assert_eq!(from, want, "one answer from each worker: {m:?}");
    assert_eq!(m.iter().filter(|x| x["message"] == "ready").count(), 4);
    for _ in 0..8 {
        assert!(body(&b).contains("greeting=hi"), "every worker applied it");
    }
    assert!(
        b.stop(nix::sys::signal::Signal::SIGTERM).success(),
        "{}",
        b.log_text()
    );
    assert!(!b.log_text().contains("SIGKILL"), "{}", b.log_text());
}

/// A Python worker (examples/python/config.py) finds its channel through BALANCER_CHANNEL_FD.
#[test]
fn a_python_worker_reads_balancer_channel_fd() {
    netns();
    let py = example("python/config.py");
    let b = Balancer::start(8080, 2, &["--ready-timeout", "60", "--", "python3", &py]);
    ctl(
        &b,
        &[
            "send",
            r#"{"cmd":"updateConfig","data":{"greeting":"bonjour"}}"#,
        ],
    );
    let m = wait_messages(&b, WITHIN, "both workers' answers", |m| {
        m.iter()
            .filter(|x| x["message"]["greeting"] == "bonjour")
            .count()
            == 2
    });
    let slots: Vec<u64> = m
        .iter()
        .filter(|x| x["message"]["cmd"] == "configUpdated")
        .map(|x| x["slot"].as_u64().unwrap())
        .collect();
    assert!(slots.contains(&0) && slots.contains(&1), "{m:?}");
    assert!(body(&b).contains("greeting=bonjour"));
    // `balancer messages` for people: slot and pid, then the message.
    let shown = ctl(&b, &["messages", "--slot", "1"]);
    let pid = b.pid_of(1);
    assert!(
        shown.contains(&format!("slot 1 pid {pid}: {{\"cmd\":\"configUpdated\"")),
        "{shown}"
    );
    assert!(!shown.contains("slot 0"), "{shown}");
    // --follow: what comes after, of that slot only, as it comes.
    let mut follow = std::process::Command::new(bin())
        .args(["messages", "--follow", "--json", "--slot", "0", "--control"])
        .arg(&b.control)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = std::io::BufRead::lines(std::io::BufReader::new(follow.stdout.take().unwrap()));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || lines.map_while(Result::ok).for_each(|l| drop(tx.send(l))));
    ctl(
        &b,
        &[
            "send",
            r#"{"cmd":"updateConfig","data":{"greeting":"salut"}}"#,
        ],
    );
    let deadline = std::time::Instant::now() + WITHIN;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx.recv_timeout(left).expect("a followed message");
        let m: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(m["slot"], 0, "{line}");
        if m["message"]["greeting"] == "salut" {
            break;
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
}

/// The channel is the fd after the listeners (4, or 5 with the overflow queue on 4), named in
/// the environment for Balancer's protocol and Node's.
#[test]
fn a_worker_gets_its_channel_after_its_listeners() {
    netns();
    for (overflow, fd) in [("off", 4), ("on", 5)] {
        let args = ["--overflow", overflow, "--", "sleep", "30"];
        let b = Balancer::start(8080, 1, &args);
        let pid = b.pid_of(0);
        let mut fds: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().parse().unwrap())
            .collect();
        fds.sort();
        assert_eq!(fds, (0..=fd).collect::<Vec<u32>>(), "--overflow {overflow}");
        let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
        assert!(link.to_string_lossy().starts_with("socket:"), "{link:?}");
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let env = String::from_utf8_lossy(&environ).replace('\0', "\n");
        for want in [
            format!("BALANCER_CHANNEL_FD={fd}"),
            format!("NODE_CHANNEL_FD={fd}"),
            "NODE_CHANNEL_SERIALIZATION_MODE=json".into(),
        ] {
            assert!(env.lines().any(|l| l == want), "lacks {want}: {env}");
        }
    }
}

/// `--keep` messages reach, in the order sent and before anything else, a worker restarted
/// after a crash, every worker of a reload and the worker of a new slot; `--clear` forgets them.
#[test]
fn kept_messages_reach_every_later_worker_in_order() {
    netns();
    let mut args = vec!["--ready-timeout", "60"];
    args.extend(echo());
    let b = Balancer::start(8080, 2, &args);
    ctl(&b, &["send", "--keep", r#"{"k":1}"#]);
    ctl(&b, &["send", r#"{"t":2}"#]);
    ctl(&b, &["send", "--keep", r#"{"k":3}"#]);
    let first = pids(&b);
    let kept = [json!({"k": 1}), json!({"k": 3})];
    wait_messages(&b, WITHIN, "the first workers got all three", |m| {
        first.iter().all(|&p| got_by(m, p).len() == 3)
    });
    // A crash (not asked for): the restarted worker gets the kept ones only.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let s = b.wait_for(WITHIN, "slot 0 restarted", |s| {
        s["slots"][0]["pid"]
            .as_i64()
            .is_some_and(|p| p as i32 != first[0])
            && all_up(s)
    });
    let restarted = s["slots"][0]["pid"].as_i64().unwrap() as i32;
    let m = wait_messages(&b, WITHIN, "the restarted worker's", |m| {
        got_by(m, restarted).len() == 2
    });
    assert_eq!(got_by(&m, restarted), kept);
    ctl(&b, &["reload"]);
    ctl(&b, &["scale", "3"]);
    b.wait_for(WITHIN, "three slots up", all_up);
    let later = pids(&b);
    assert!(later.iter().all(|p| !first.contains(p)) && later.len() == 3);
    let m = wait_messages(&b, WITHIN, "every later worker's", |m| {
        later.iter().all(|&p| got_by(m, p).len() == 2)
    });
    for p in &later {
        assert_eq!(got_by(&m, *p), kept, "worker {p}");
    }
    assert_eq!(ctl(&b, &["send", "--clear"]), r#"{"cleared":2}"#);
    ctl(&b, &["reload"]);
    let fresh = pids(&b);
    // Each says "ready" before it reads anything: a short wait past that finds nothing got.
    wait_messages(&b, WITHIN, "the fresh workers ready", |m| {
        fresh
            .iter()
            .all(|&p| m.iter().any(|x| x["pid"] == p && x["message"] == "ready"))
    });
    std::thread::sleep(Duration::from_millis(300));
    let m = messages(&b);
    assert!(fresh.iter().all(|&p| got_by(&m, p).is_empty()), "{m:?}");
}

/// `signal --slot 1 SIGUSR2` reaches slot 1's worker and no other; the answer names it.
#[test]
fn signal_slot_1_sigusr2_reaches_exactly_one_pid() {
    netns();
    let mut args = vec!["--ready-timeout", "60"];
    args.extend(echo());
    let b = Balancer::start(8080, 3, &args);
    let before = pids(&b);
    let answer: Value =
        serde_json::from_str(&ctl(&b, &["signal", "--slot", "1", "SIGUSR2"])).unwrap();
    assert_eq!(answer, json!({"signal": "SIGUSR2", "pids": [before[1]]}));
    wait_messages(&b, WITHIN, "slot 1's answer", |m| {
        m.iter().any(|x| x["message"].get("usr2").is_some())
    });
    std::thread::sleep(Duration::from_millis(300));
    let usr2: Vec<Value> = messages(&b)
        .into_iter()
        .filter(|x| x["message"].get("usr2").is_some())
        .collect();
    assert_eq!(usr2.len(), 1, "{usr2:?}");
    assert_eq!(
        (usr2[0]["pid"].clone(), usr2[0]["slot"].clone()),
        (json!(before[1]), json!(1))
    );
    assert_eq!(pids(&b), before, "nobody stopped");
}

/// A worker stopped by `balancer signal` is restarted at once and its slot is not penalised:
/// stopped right after each start, more times than --give-up-after quick failures allow, the
/// slot comes back every time, with no growing delay.
#[test]
fn a_requested_stop_restarts_with_no_backoff() {
    netns();
    let mut args = vec!["--ready-timeout", "60", "--give-up-after", "3"];
    args.extend(echo());
    let b = Balancer::start(8080, 2, &args);
    for round in 1..=6u64 {
        let pid = b.pid_of(1);
        ctl(&b, &["signal", "--slot", "1", "TERM"]);
        b.wait_for(WITHIN, "slot 1 back with a new worker", |s| {
            let x = &s["slots"][1];
            x["state"] == "up" && x["pid"].as_i64().is_some_and(|p| p as i32 != pid)
        });
        assert_eq!(b.per_slot("restarts")[1], round);
    }
    let s = b.status().unwrap();
    assert_eq!(s["slots"][1]["state"], "up", "{s}");
    assert!(!b.log_text().contains("gave up"), "{}", b.log_text());
}

/// Each bad request is refused with one line naming the problem, before anything is sent: the
/// workers keep running and have been sent nothing.
#[test]
fn bad_input_is_refused_and_nothing_is_sent() {
    netns();
    let mut args = vec!["--ready-timeout", "60"];
    args.extend(echo());
    let b = Balancer::start(8080, 2, &args);
    let before = pids(&b);
    let run = |args: &[&str]| {
        std::process::Command::new(bin())
            .args(args)
            .arg("--control")
            .arg(&b.control)
            .output()
            .unwrap()
    };
    let big = format!("\"{}\"", "x".repeat(64 << 10));
    fails_with(&run(&["send", "{\"cmd\":"]), "is not JSON");
    fails_with(&run(&["send", "updateConfig"]), "is not JSON");
    fails_with(&run(&["send", &big]), "at most 65536 (64 KiB)");
    fails_with(
        &run(&["send", "--slot", "2", "{}"]),
        "no slot 2: slots are 0 to 1",
    );
    fails_with(&run(&["signal", "SIGNOPE"]), "unknown signal \"SIGNOPE\"");
    fails_with(&run(&["signal", "--slot", "5", "USR2"]), "no slot 5");
    // The supervisor refuses the same on its own, for clients other than the command line.
    assert!(request(&b.control, &format!("send {big}")).contains("at most 65536"));
    assert!(request(&b.control, "send {nope").contains("is not JSON"));
    assert!(request(&b.control, "signal slot 0 64000").contains("unknown signal"));
    // Kept messages are bounded: the one past the bound is refused and not sent either.
    for i in 0..64 {
        ctl(&b, &["send", "--keep", &format!("{{\"k\":{i}}}")]);
    }
    fails_with(&run(&["send", "--keep", "{\"k\":64}"]), "messages (");
    fails_with(
        &run(&["send", "--keep", "{\"k\":64}"]),
        "`balancer send --clear` forgets them",
    );
    assert_eq!(pids(&b), before, "the workers were untouched");
    let sent: Vec<Value> = channel_figures(&b, "sent");
    assert_eq!(sent, [json!(64), json!(64)], "only the 64 kept went out");
    let m = wait_messages(&b, WITHIN, "the 64 kept", |m| {
        got_by(m, before[0]).len() == 64
    });
    assert!(!got_by(&m, before[0]).contains(&json!({"k": 64})));
}

/// With `--channel off` the workers get no channel and `send` says how to turn it on.
#[test]
fn without_a_channel_send_is_refused() {
    netns();
    let b = Balancer::start(8080, 1, &["--channel", "off", "--", "sleep", "30"]);
    let out = std::process::Command::new(bin())
        .args(["send", "{}", "--control"])
        .arg(&b.control)
        .output()
        .unwrap();
    fails_with(&out, "start the balancer with `--channel on`");
    assert!(b.status().unwrap()["slots"][0].get("channel").is_none());
}
