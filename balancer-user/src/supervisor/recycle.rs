//! Recycling: a worker whose resident memory passed `--max-memory`, or that was sent its
//! request budget (when either is due is [`crate::rules::recycling`]'s), is replaced the way a
//! reload replaces it: its successor starts on the same listener and is ready before the old
//! worker gets SIGTERM and finishes what it holds. Nothing queued or in flight is lost.
//!
//! The program sees connections, not the requests inside them: a request is counted per new
//! connection, exact for clients that close after each request, a lower bound under keep-alive.

use std::time::{Duration, Instant};

use super::{Inbox, Supervisor};
use crate::{
    inspect::memory::resident,
    rules::recycling::{self, Reason},
};

/// How often workers' memory is read (a /proc read per worker).
const MEMORY_EVERY: Duration = Duration::from_secs(1);

/// After a failed recycle (the successor never got ready), the slot is left alone this long.
const AFTER_FAILURE: Duration = Duration::from_secs(30);

/// A slot's recycling figures.
pub(super) struct Recycling {
    /// `assigned` when the current worker started: what it has been sent since is its count
    /// of requests for recycling.
    assigned_at_start: u64,
    /// Requests after which the current worker is recycled (`--max-requests` plus its jitter).
    budget: Option<u64>,
    /// The current worker's resident memory at the last reading.
    pub(super) memory: Option<u64>,
    pub(super) for_memory: u64,
    pub(super) for_requests: u64,
    /// No recycling before this (after one failed).
    not_before: Instant,
}

impl Recycling {
    pub(super) fn new() -> Recycling {
        Recycling {
            assigned_at_start: 0,
            budget: None,
            memory: None,
            for_memory: 0,
            for_requests: 0,
            not_before: Instant::now(),
        }
    }

    /// A new worker took the slot, with the slot's `assigned` at `assigned` and `budget`.
    pub(super) fn new_worker(&mut self, assigned: u64, budget: Option<u64>) {
        self.memory = None;
        self.assigned_at_start = assigned;
        self.budget = budget;
    }

    fn served(&self, assigned: u64) -> u64 {
        assigned - self.assigned_at_start
    }
}

/// When the workers' memory was last read.
#[derive(Default)]
pub(super) struct MemoryReads {
    last: Option<Instant>,
}

impl MemoryReads {
    /// Whether it is time to read it again; if so, the time is taken as now.
    fn due(&mut self, now: Instant) -> bool {
        let due = self.last.is_none_or(|t| now - t >= MEMORY_EVERY);
        if due {
            self.last = Some(now);
        }
        due
    }
}

impl Supervisor {
    /// The first slot whose worker is due for recycling, if any; reads memory at most once a
    /// second.
    pub(super) fn due_recycle(&mut self) -> Option<(u32, Reason)> {
        let limits = self.opts.recycle;
        if !limits.any() {
            return None;
        }
        let now = Instant::now();
        let read_memory = limits.max_memory.is_some() && self.memory_reads.due(now);
        for (i, s) in self.slots.iter_mut().enumerate() {
            let Some(pid) = s.worker.pid else { continue };
            let r = &mut s.recycling;
            if read_memory {
                r.memory = resident(pid.as_raw());
            }
            // Only a worker that is ready and serving; not twice while one is under way.
            if !s.worker.serving() || s.worker.retiring.is_some() || r.not_before > now {
                continue;
            }
            let served = r.served(self.steering.slots.assigned(i as u32));
            if let Some(reason) = recycling::due(&limits, r.memory, served, r.budget) {
                return Some((i as u32, reason));
            }
        }
        None
    }

    /// Replaces `slot`'s worker (see the module docs).
    pub(super) async fn recycle(&mut self, slot: u32, reason: Reason, inbox: &mut Inbox) {
        let s = &self.slots[slot as usize];
        let old = s.worker.pid;
        let detail = match reason {
            Reason::Memory => format!(
                "resident memory {} MiB over --max-memory {} MiB",
                s.recycling.memory.unwrap_or(0) >> 20,
                self.opts.recycle.max_memory.unwrap_or(0) >> 20
            ),
            Reason::Requests => format!(
                "{} requests, its budget",
                s.recycling.served(self.steering.slots.assigned(slot))
            ),
        };
        log::info!(
            "slot {slot}: recycling worker {} for its {}: {detail}",
            old.map_or(0, |p| p.as_raw()),
            reason.name()
        );
        match self.replace(&[slot], inbox).await {
            Ok(()) => {
                let r = &mut self.slots[slot as usize].recycling;
                match reason {
                    Reason::Memory => r.for_memory += 1,
                    Reason::Requests => r.for_requests += 1,
                }
            }
            Err(e) => {
                log::warn!("slot {slot}: recycling failed: {e}; trying again in {AFTER_FAILURE:?}");
                if let Some(s) = self.slots.get_mut(slot as usize) {
                    s.recycling.not_before = Instant::now() + AFTER_FAILURE;
                }
            }
        }
    }
}
