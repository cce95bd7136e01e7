//! For the tests of the workers' message channels: raw control requests (as fast as the socket
//! takes them), what the workers sent (`messages`), and a Python worker that answers every
//! message it gets.

use std::{
    io::{BufRead as _, Write as _},
    os::unix::net::UnixStream,
    time::Duration,
};

use serde_json::Value;

use crate::Balancer;

/// A worker that serves a fixed answer on fd 3, says "ready" on its channel, answers every
/// message with `{"got": message}`, and answers SIGUSR2 with `{"usr2": pid}`.
pub const ECHO_WORKER: &str = r#"
import json, os, signal, socket, threading
ch = socket.socket(fileno=int(os.environ["BALANCER_CHANNEL_FD"]))
lock = threading.Lock()
def send(v):
    with lock:
        ch.sendall(json.dumps(v).encode() + b"\n")
# From a thread: the handler interrupts the main thread, which may hold the lock.
signal.signal(signal.SIGUSR2, lambda *_: threading.Thread(target=send, args=({"usr2": os.getpid()},)).start())
listener = socket.socket(fileno=3)
def serve():
    while True:
        c, _ = listener.accept()
        c.recv(4096)
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
        c.close()
threading.Thread(target=serve, daemon=True).start()
send("ready")
for line in ch.makefile("rb"):
    send({"got": json.loads(line)})
"#;

/// One control request on a connection of its own, answered with one line.
pub fn request(control: &std::path::Path, line: &str) -> String {
    let mut s = UnixStream::connect(control).expect("control socket");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    writeln!(s, "{line}").unwrap();
    let mut answer = String::new();
    std::io::BufReader::new(s).read_line(&mut answer).unwrap();
    answer.trim_end().to_string()
}

/// Every message the workers sent that the supervisor keeps, oldest first.
pub fn messages(b: &Balancer) -> Vec<Value> {
    let mut s = UnixStream::connect(&b.control).expect("control socket");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"messages\n").unwrap();
    std::io::BufReader::new(s)
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect()
}

/// Polls [`messages`] until `cond` holds, or panics after `within`.
pub fn wait_messages(
    b: &Balancer,
    within: Duration,
    what: &str,
    cond: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    crate::poll(
        within,
        Duration::from_millis(20),
        || messages(b),
        |m| cond(m),
    )
    .unwrap_or_else(|m| panic!("timed out waiting for {what}; messages: {m:?}"))
}

/// What [`ECHO_WORKER`] `pid` answered it got, in order.
pub fn got_by(messages: &[Value], pid: i32) -> Vec<Value> {
    messages
        .iter()
        .filter(|m| m["pid"] == pid)
        .filter_map(|m| m["message"].get("got").cloned())
        .collect()
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// Each slot's `channel` figure `field` from `status`.
pub fn channel_figures(b: &Balancer, field: &str) -> Vec<Value> {
    let s = b.status().unwrap();
    s["slots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["channel"][field].clone())
        .collect()
}
