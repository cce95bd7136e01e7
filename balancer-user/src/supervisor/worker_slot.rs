//! A worker slot: one listener of the group and the worker that serves it, restarted whenever
//! it exits. Not to be confused with [`balancer_common::Slot`], the slot's entry in the
//! `SLOTS` map (its counters, state and weight), which the programs read.
//!
//! Each room of the supervisor keeps its part of a slot in a record of its own: the worker
//! process here, the exits and restart pacing here, the probes in
//! [`health_checks`](super::health_checks), the stall watch in
//! [`stall_checks`](super::stall_checks), the recycling figures in [`recycle`](super::recycle).

use std::{process::ExitStatus, time::Instant};

use nix::unistd::Pid;

use super::{health_checks::Probes, recycle::Recycling, stall_checks::Stalls};
use crate::{
    listeners,
    rules::backoff::{self, Backoff},
};

pub(super) struct WorkerSlot {
    pub(super) listener: listeners::Listener,
    pub(super) worker: Worker,
    pub(super) exits: Exits,
    pub(super) probes: Probes,
    pub(super) stalls: Stalls,
    pub(super) recycling: Recycling,
}

impl WorkerSlot {
    pub(super) fn new(listener: listeners::Listener, backoff: backoff::Policy) -> WorkerSlot {
        WorkerSlot {
            listener,
            worker: Worker::default(),
            exits: Exits::new(backoff),
            probes: Probes::default(),
            stalls: Stalls::default(),
            recycling: Recycling::new(),
        }
    }
}

/// The worker a slot runs now, and a predecessor still finishing its work.
#[derive(Default)]
pub(super) struct Worker {
    pub(super) pid: Option<Pid>,
    pub(super) started: Option<Instant>,
    /// Bumped on every start, so that a stale exit or restart event is recognised.
    pub(super) generation: u64,
    /// Generation of the current worker once it said it is ready (or its grace ran out).
    pub(super) ready: u64,
    /// A previous worker still finishing its work during a reload or scale-down.
    pub(super) retiring: Option<(Pid, u64)>,
}

impl Worker {
    /// Whether the current worker runs and is ready.
    pub(super) fn serving(&self) -> bool {
        self.pid.is_some() && self.ready == self.generation
    }

    /// The current worker and the retiring one, whichever run.
    pub(super) fn pids(&self) -> impl Iterator<Item = Pid> {
        self.pid.into_iter().chain(self.retiring.map(|r| r.0))
    }

    /// How many processes [`pids`](Self::pids) names.
    pub(super) fn running(&self) -> usize {
        self.pid.is_some() as usize + self.retiring.is_some() as usize
    }
}

/// How the slot's workers ended, and what that means for the next one.
pub(super) struct Exits {
    pub(super) restarts: u64,
    pub(super) last_exit: Option<String>,
    pub(super) last_status: Option<ExitStatus>,
    /// The pid of the worker that exited last, whose stderr `status` may quote.
    pub(super) last_pid: Option<Pid>,
    pub(super) backoff: Backoff,
    pub(super) given_up: bool,
}

impl Exits {
    fn new(backoff: backoff::Policy) -> Exits {
        Exits {
            restarts: 0,
            last_exit: None,
            last_status: None,
            last_pid: None,
            backoff: Backoff::new(backoff),
            given_up: false,
        }
    }

    /// A fresh start by hand (a reload or recycle): the restart pacing starts over.
    pub(super) fn start_over(&mut self, backoff: backoff::Policy) {
        self.given_up = false;
        self.backoff = Backoff::new(backoff);
    }
}
