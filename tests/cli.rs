//! The mistakes a user makes get one line that names the problem and the fix, a non-zero exit,
//! and leave nothing running.

use std::{
    net::TcpListener,
    os::unix::process::CommandExt as _,
    process::{Command, Output},
};

use balancer_tests::*;

fn run(args: &[&str]) -> Output {
    Command::new(bin()).arg("run").args(args).output().unwrap()
}

/// Asserts a failed run with exactly one line on stderr containing `needle`.
fn fails_with(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr: {err}"
    );
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {err}");
    assert!(lines[0].starts_with("balancer: error: "), "{err}");
    assert!(lines[0].contains(needle), "expected {needle:?} in: {err}");
}

#[test]
fn bad_flags() {
    netns();
    fails_with(&run(&["--workers", "0"]), "at least one worker");
    fails_with(&run(&["--workers", "5000"]), "maximum of 1024");
    fails_with(&run(&["--listen", "localhost"]), "bad listen address");
    fails_with(&run(&["--listen", "127.0.0.1:99999"]), "bad listen address");
    fails_with(
        &run(&["--policy", "fastest"]),
        "unknown policy \"fastest\": choose one of least-loaded, hash",
    );
    fails_with(&run(&["--frobnicate"]), "--frobnicate");
}

#[test]
fn port_in_use() {
    netns();
    let other = TcpListener::bind("127.0.0.1:8080").unwrap();
    let out = run(&["--listen", "127.0.0.1:8080", "--workers", "2"]);
    fails_with(&out, "port 8080 is in use");
    drop(other);
}

#[test]
fn worker_command_not_found_leaves_nothing_behind() {
    netns();
    let out = run(&[
        "--listen",
        "127.0.0.1:8080",
        "--",
        "no-such-server-xyz",
        "--port",
        "3",
    ]);
    fails_with(&out, "worker command not found: no-such-server-xyz");
    TcpListener::bind("127.0.0.1:8080").expect("nothing may hold the port after a failed start");
}

#[test]
fn missing_cap_bpf_is_named_with_the_fix() {
    netns();
    // As an unprivileged user: no capabilities at all.
    let out = Command::new(bin())
        .args([
            "run",
            "--listen",
            "127.0.0.1:8080",
            "--control",
            "/tmp/balancer-test-nobody.sock",
        ])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    fails_with(&out, "missing capability CAP_BPF");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("setcap cap_bpf+ep") && err.contains("--cap-add=BPF"),
        "{err}"
    );
    TcpListener::bind("127.0.0.1:8080").expect("nothing may hold the port after a failed start");
}

#[test]
fn unknown_worker_user() {
    netns();
    fails_with(
        &run(&["--listen", "127.0.0.1:8080", "--user", "no-such-user-xyz"]),
        "no such user: no-such-user-xyz",
    );
}
