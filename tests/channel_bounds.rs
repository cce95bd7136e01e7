//! What a worker cannot do to the supervisor through its message channel: slow it down or grow
//! its memory by not reading, or by writing garbage or a flood.

use std::time::{Duration, Instant};

use balancer_tests::{channel::*, *};
use serde_json::{json, Value};

const MESSAGES: u64 = 30_000;
/// Each message's padding: an unbounded queue of `MESSAGES` of them per worker would grow the
/// supervisor by over 16 MiB, which the memory check below sees.
const PAD: usize = 800;
const SENDERS: u64 = 4;

/// Two workers that never read their channel are sent 30,000 messages: every `send` answers,
/// what does not fit is dropped and counted, `status` keeps answering within 100 ms, the
/// supervisor's memory stays put, and the workers keep serving.
#[test]
fn a_worker_that_never_reads_neither_slows_nor_grows_the_supervisor() {
    netns();
    let script = python_worker("pass", "200");
    let b = Balancer::start(8080, 2, &["--", "python3", "-c", &script]);
    let supervisor = b.child.id();
    let rss_before = rss_kib(supervisor);
    // From a few clients at once, as fast as the supervisor answers.
    let senders: Vec<_> = (0..SENDERS)
        .map(|t| {
            let control = b.control.clone();
            std::thread::spawn(move || {
                let mut dropped = 0;
                for i in (t..MESSAGES).step_by(SENDERS as usize) {
                    let pad = "x".repeat(PAD);
                    let line = format!(r#"send {{"n":{i},"pad":"{pad}"}}"#);
                    let answer: Value = serde_json::from_str(&request(&control, &line)).unwrap();
                    dropped += answer["dropped"].as_u64().unwrap();
                }
                dropped
            })
        })
        .collect();
    let mut waits = Vec::new();
    while !senders.iter().all(|s| s.is_finished()) {
        let t = Instant::now();
        b.status().unwrap();
        waits.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    let dropped: u64 = senders.into_iter().map(|s| s.join().unwrap()).sum();
    waits.sort();
    let median = waits[waits.len() / 2];
    let worst = *waits.last().unwrap();
    let rss_after = rss_kib(supervisor);
    eprintln!(
        "{MESSAGES} messages to 2 non-readers: {dropped} drops answered, status median {median:?} \
         worst {worst:?} over {} samples, supervisor RSS {rss_before} -> {rss_after} KiB",
        waits.len()
    );
    assert!(median < Duration::from_millis(100), "median {median:?}");
    // The worst sample is the machine's scheduling as much as the supervisor's: bounded
    // loosely, so that a supervisor blocked behind the fan-out still fails.
    assert!(worst < Duration::from_secs(5), "worst {worst:?}");
    let sent = channel_figures(&b, "sent");
    let lost = channel_figures(&b, "dropped");
    for slot in 0..2 {
        let (s, d) = (sent[slot].as_u64().unwrap(), lost[slot].as_u64().unwrap());
        assert_eq!(
            s + d,
            MESSAGES,
            "slot {slot}: every message taken or counted as dropped"
        );
        // What fits: the kernel's socket buffer and the queue's 4096 messages.
        assert!(
            s < 10_000,
            "slot {slot}: {s} taken by a worker that reads nothing"
        );
    }
    assert_eq!(
        dropped,
        lost.iter().map(|d| d.as_u64().unwrap()).sum::<u64>()
    );
    // The queues hold at most 4096 short messages each: a few MiB at most, whatever was sent.
    assert!(
        rss_after < rss_before + 16 * 1024,
        "RSS {rss_before} -> {rss_after} KiB"
    );
    assert_eq!(
        get(b.addr, "/").unwrap().status,
        200,
        "the workers still serve"
    );
    let metrics = b.status().unwrap();
    assert_eq!(metrics["slots"][0]["channel"]["state"], "open");
}

/// A worker that floods its channel, and one that writes a line that is not JSON, are cut off
/// from it (counted), without growing the supervisor's memory; both keep serving, and the
/// supervisor's own answers do not wait for them.
#[test]
fn a_flooding_or_garbage_writing_worker_is_cut_off_and_keeps_serving() {
    netns();
    let script = r#"
import os, socket, threading, time
listener = socket.socket(fileno=3)
def serve():
    while True:
        c, _ = listener.accept()
        c.recv(4096)
        body = f"slot={os.environ['BALANCER_SLOT']} pid={os.getpid()}\n".encode()
        c.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        c.close()
threading.Thread(target=serve, daemon=True).start()
ch = socket.socket(fileno=int(os.environ["BALANCER_CHANNEL_FD"]))
try:
    if os.environ["BALANCER_SLOT"] == "0":
        line = b'{"flood":"' + b"x" * 200 + b'"}\n'
        while True:
            ch.sendall(line * 64)
    elif os.environ["BALANCER_SLOT"] == "1":
        ch.sendall(b"hello, not json\n")
        ch.recv(1)
except OSError:
    pass
time.sleep(600)
"#;
    let b = Balancer::start(8080, 3, &["--", "python3", "-c", script]);
    let supervisor = b.child.id();
    let rss_before = rss_kib(supervisor);
    let s = b.wait_for(Duration::from_secs(15), "slots 0 and 1 cut off", |s| {
        let state = |i: usize| s["slots"][i]["channel"]["state"].clone();
        state(0) == "cut off" && state(1) == "cut off"
    });
    assert_eq!(s["slots"][2]["channel"]["state"], "open", "{s}");
    assert_eq!(
        channel_figures(&b, "cut_off"),
        [json!(1), json!(1), json!(0)]
    );
    let received = channel_figures(&b, "received")[0].as_u64().unwrap();
    assert!(
        received < 3000,
        "the flood was cut off at its burst of 2000, not read on: {received}"
    );
    let log = b.log_text();
    assert!(log.contains("flooded its channel"), "{log}");
    assert!(log.contains("wrote a line that is not JSON"), "{log}");
    // Cut off from the channel, not from their traffic: every slot still serves.
    let pids: Vec<u32> = (0..3).map(|i| b.pid_of(i) as u32).collect();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..60 {
        seen.insert(get(b.addr, "/").unwrap().pid);
        if seen.len() == 3 {
            break;
        }
    }
    assert_eq!(seen, pids.iter().copied().collect(), "every worker serves");
    assert_eq!(b.per_slot("restarts"), [0, 0, 0]);
    let rss_after = rss_kib(supervisor);
    assert!(
        rss_after < rss_before + 16 * 1024,
        "RSS {rss_before} -> {rss_after} KiB"
    );
}
