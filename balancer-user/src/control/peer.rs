//! Who is on the other end of a control connection: operators get answers, workers do not.
//!
//! The socket's mode (0600) keeps out every other account, which by default includes every
//! worker ([`crate::identity`]). It cannot keep out a worker of the supervisor's own uid (a
//! supervisor that is not root, or `--user root`), so each connection is also checked by
//! ancestry: the kernel names the peer's pid (`SO_PEERCRED`, taken at `connect`), and its
//! parents are followed through `/proc` up to pid 1. A peer that reaches this supervisor is a
//! worker or a descendant of one, since the supervisor starts nothing else and adopts what its
//! workers leave behind ([`crate::supervisor`] is a child subreaper). Such a peer is refused
//! with one error line, logged with its pid (at most once a second) and counted
//! (`balancer_control_refused_total`). An operator's shell is never below the supervisor.
//!
//! A peer whose parents cannot all be read is let in: a worker's descendants can always be
//! read by their supervisor (same uid, or root), so what cannot is someone else's process.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{counter::ConstCounter, MetricType},
};

/// Connections refused so far.
static REFUSED: AtomicU64 = AtomicU64::new(0);
/// When a refusal was last logged, in seconds since the epoch.
static LOGGED_AT: AtomicU64 = AtomicU64::new(0);

/// Longest chain of parents followed (pid_max is at most 4M, and a chain is rarely 20 long).
const MAX_DEPTH: usize = 4096;

/// The refusal for a connection from `stream`'s peer, or None to serve it.
pub fn refusal(stream: &tokio::net::UnixStream) -> Option<super::Answer> {
    let pid = stream.peer_cred().ok()?.pid()?;
    let worker = worker_ancestor(pid)?;
    REFUSED.fetch_add(1, Ordering::Relaxed);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if LOGGED_AT.swap(now, Ordering::Relaxed) != now {
        let of = if worker == pid {
            "a worker".to_owned()
        } else {
            format!("a descendant of worker {worker}")
        };
        log::warn!(
            "control socket: refused pid {pid}, {of} ({} refused so far)",
            REFUSED.load(Ordering::Relaxed)
        );
    }
    Some(super::Answer::Err(
        "refused: this balancer's workers and their processes may not use its control socket"
            .into(),
    ))
}

/// The worker (a child of this process) that `pid` is or descends from.
pub fn worker_ancestor(pid: i32) -> Option<i32> {
    let me = std::process::id() as i32;
    let mut below = None;
    let mut p = pid;
    for _ in 0..MAX_DEPTH {
        if p == me {
            return below;
        }
        if p <= 1 {
            return None;
        }
        let parent = procfs::process::Process::new(p).ok()?.stat().ok()?.ppid;
        below = Some(p);
        p = parent;
    }
    None
}

/// Connections refused so far.
pub fn refused() -> u64 {
    REFUSED.load(Ordering::Relaxed)
}

/// `balancer_control_refused_total`, for the metrics endpoint.
pub fn encode(e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let metric = e.encode_descriptor(
        "balancer_control_refused",
        "Control connections refused because they came from a worker or a descendant of one.",
        None,
        MetricType::Counter,
    )?;
    ConstCounter::new(refused()).encode(metric)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_is_below_its_parent_and_others_are_not() {
        // This test process has no children but the one started here.
        let mut child = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        assert_eq!(worker_ancestor(pid), Some(pid));
        assert_eq!(worker_ancestor(std::process::id() as i32), None);
        assert_eq!(worker_ancestor(1), None);
        let _ = child.kill();
        let _ = child.wait();
    }
}
