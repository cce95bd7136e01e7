//! The `balancer` command line as a user runs it: control requests, and the one-line errors
//! a failed command prints.

use std::process::Command;

use crate::{bin, Balancer};

/// Runs `balancer ARGS --control ...` on a thread of its own (a reload or scale that takes a
/// while); join the handle for its output.
pub fn ctl_in_background(
    b: &Balancer,
    args: &[&str],
) -> std::thread::JoinHandle<std::process::Output> {
    let mut command = Command::new(bin());
    command.args(args).arg("--control").arg(&b.control);
    std::thread::spawn(move || command.output().unwrap())
}

/// Sends a control request through the CLI, as a user would, and returns its answer.
pub fn ctl(b: &Balancer, args: &[&str]) -> String {
    let out = Command::new(bin())
        .args(args)
        .arg("--control")
        .arg(&b.control)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "balancer {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Asserts a failed `balancer` run with exactly one line on stderr, `balancer: error: ...`,
/// containing `needle`.
pub fn fails_with(out: &std::process::Output, needle: &str) {
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
