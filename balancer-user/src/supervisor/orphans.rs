//! The workers' descendants stay under the supervisor.
//!
//! The supervisor is a child subreaper (`PR_SET_CHILD_SUBREAPER`): a process a worker started
//! and left behind (a double fork, a daemon) is re-parented to the supervisor rather than to
//! init. Every process that descends from a worker thus keeps the supervisor among its
//! ancestors for as long as it lives, which is what the control socket checks to refuse it
//! ([`crate::control::peer`]), even when it shares the supervisor's uid.
//!
//! Those adopted processes are reaped here when they exit, so that none lingers as a zombie.
//! The supervisor's own workers are left to the tasks that wait for them: only children that
//! are no slot's worker are waited for, and only once they have exited.

use std::collections::HashSet;

use nix::{
    sys::wait::{waitpid, WaitPidFlag},
    unistd::Pid,
};

use super::error::{Error, Result};

/// Makes this process the reaper of its workers' orphans.
pub(super) fn adopt() -> Result<()> {
    nix::sys::prctl::set_child_subreaper(true).map_err(Error::Subreaper)
}

/// Reaps adopted processes that have exited, leaving `workers` (the slots' own) alone.
pub(super) fn reap(workers: impl Iterator<Item = Pid>) {
    let workers: HashSet<i32> = workers.map(Pid::as_raw).collect();
    for child in crate::inspect::children::of(std::process::id() as i32) {
        if !workers.contains(&child) {
            // WNOHANG: an adopted process still running is left alone.
            let _ = waitpid(Pid::from_raw(child), Some(WaitPidFlag::WNOHANG));
        }
    }
}
