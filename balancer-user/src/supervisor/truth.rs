//! Reading what the kernel holds for each slot, for the [accounting](crate::rules::accounting): the
//! workers' open connections and the port's handshakes are read on a blocking thread (it walks
//! /proc and asks sock_diag), the accept queues next to the answer on the event loop, where the
//! handshakes are matched to their slots through `FLOWS`; the accounting corrects what two
//! readings agree on. Which ticks take a reading is [pacing](crate::rules::pacing)'s: from a
//! fingerprint of what a drift would change, taken on every tick, and the readings' CPU time.

use std::hash::{Hash as _, Hasher as _};

use balancer_common::OVERFLOW;

use super::{events::Event, Supervisor};
use crate::{
    control::ReconciliationStatus,
    inspect::{self, Reading},
    kernel, listeners,
    rules::{
        accounting::{Sample, Truth},
        pacing::Pacing,
    },
};

/// The readings' own state, between two of them.
pub(super) struct Readings {
    /// Which ticks read the kernel.
    pub(super) pacing: Pacing,
    /// A reading of what the workers hold is under way.
    under_way: bool,
    /// The workers' descriptors could not be read once already (logged once).
    warned_unreadable: bool,
    /// Each slot's (assigned, closed) when the reading under way started.
    counts_at_start: Vec<(u64, u64)>,
    /// The fingerprint of the tick the reading under way started on.
    fingerprint: u64,
    /// Readings completed, and the CPU time they took.
    readings: u64,
    cpu: std::time::Duration,
}

impl Readings {
    pub(super) fn new(tick: std::time::Duration) -> Readings {
        Readings {
            pacing: Pacing::new(tick),
            under_way: false,
            warned_unreadable: false,
            counts_at_start: Vec::new(),
            fingerprint: 0,
            readings: 0,
            cpu: std::time::Duration::ZERO,
        }
    }

    pub(super) fn status(&self) -> ReconciliationStatus {
        ReconciliationStatus {
            readings: self.readings,
            cpu_seconds: self.cpu.as_secs_f64(),
            since_seconds: self.pacing.since().as_secs_f64(),
        }
    }
}

impl Supervisor {
    /// Starts reading what each slot's workers hold, on a blocking thread (it walks /proc and
    /// asks sock_diag); the answer comes back as [`Event::Held`]. One reading at a time.
    pub(super) fn reconcile(&mut self) {
        // On the same beat: the programs read the clock on every SYN until this is done.
        self.steering.close_passed_window();
        if self.phase.stopping() || self.readings.under_way {
            return;
        }
        let Ok(local) = self.slots[0].listener.local_addr() else {
            return;
        };
        let fingerprint = self.fingerprint(local);
        if !self.readings.pacing.due(fingerprint) {
            return;
        }
        if self.opts.transport == listeners::Transport::Udp {
            // A datagram is no connection: a UDP slot holds nothing and the program counts
            // nothing for it, so the books are checked against zero.
            let truth = vec![Sample::Known(Truth::default(), 0); self.slots.len()];
            self.accounting.reconcile(&self.steering.slots, &truth);
            return;
        }
        let pids: Vec<Vec<i32>> = self
            .slots
            .iter()
            .map(|s| s.worker.pids().map(|p| p.as_raw()).collect())
            .collect();
        self.readings.under_way = true;
        self.readings.fingerprint = fingerprint;
        // The counters as the reading starts, read again rather than taken from the
        // fingerprint: what they move by before it ends is traffic the reading may have caught
        // on either side, and a start taken earlier widens that slack, which then hides part
        // of a real drift under heavy traffic.
        self.readings.counts_at_start = self.counters();
        let events = self.events.clone();
        tokio::task::spawn_blocking(move || {
            let reading = inspect::held(local, &pids);
            let _ = events.send(Event::Held(reading));
        });
    }

    /// What a drift of the books would change, hashed: every slot's counters, accept queue and
    /// processes, and the namespace's count of TCP sockets of the listeners' family (`local`).
    /// A few system calls, whatever the number of connections.
    fn fingerprint(&self, local: std::net::SocketAddr) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.counters().hash(&mut h);
        inspect::sockstat::tcp_in_use(local).hash(&mut h);
        for s in &self.slots {
            s.listener.queued().ok().hash(&mut h);
            s.worker.pids().for_each(|p| p.as_raw().hash(&mut h));
        }
        self.overflow.as_ref().map(|l| l.queued().ok()).hash(&mut h);
        h.finish()
    }

    /// Each slot's (assigned, closed), then the overflow queue's if there is one.
    fn counters(&self) -> Vec<(u64, u64)> {
        let overflow = self.overflow.as_ref().map(|_| OVERFLOW);
        (0..self.slots.len() as u32)
            .chain(overflow)
            .map(|i| {
                (
                    self.steering.slots.assigned(i),
                    self.steering.slots.closed(i),
                )
            })
            .collect()
    }

    /// Completes a reading: the accept queues are read now, next to the workers' sockets, and
    /// the accounting corrects what two readings agree on.
    pub(super) fn on_held(&mut self, reading: Reading) {
        self.readings.under_way = false;
        self.readings.pacing.read(reading.cost);
        self.readings.readings += 1;
        self.readings.cpu += reading.cost;
        // A scale in between changed the slots: this reading no longer fits them.
        if reading.held.len() != self.slots.len() || self.phase.stopping() {
            return;
        }
        if reading.held.iter().any(Option::is_none) && !self.readings.warned_unreadable {
            self.readings.warned_unreadable = true;
            log::warn!(
                "cannot read which connections the workers hold (workers of another user need \
                 CAP_SYS_PTRACE for the supervisor): their loads are not reconciled"
            );
        }
        // The overflow queue's entry comes last, as in `counters`.
        let entries = self.slots.len() + self.overflow.is_some() as usize;
        let index = |slot: u32| {
            if slot == OVERFLOW {
                self.slots.len()
            } else {
                slot as usize
            }
        };
        let mut handshaking = vec![0u64; entries];
        for (client, server) in reading.handshakes {
            if let Some(slot) = self.steering.flow_slot(&kernel::flow_key(client, server)) {
                if let Some(n) = handshaking.get_mut(index(slot)) {
                    *n += 1;
                }
            }
        }
        let queued: Vec<Option<u64>> = self
            .slots
            .iter()
            .map(|s| &s.listener)
            .chain(self.overflow.as_ref())
            .map(|l| l.queued().ok().map(u64::from))
            .collect();
        // Nothing holds an overflow connection but its queue: the worker that takes one
        // carries it from then on (the program's taker tracker).
        let mut held = reading.held;
        held.resize(entries, Some(0));
        let after = self.counters();
        let mut truth: Vec<Sample> = (0..entries)
            .map(|i| {
                let slack = match (self.readings.counts_at_start.get(i), after.get(i)) {
                    (Some(b), Some(a)) => a.0.abs_diff(b.0) + a.1.abs_diff(b.1),
                    _ => return Sample::Unknown,
                };
                match (queued[i], held[i]) {
                    (Some(queued), Some(held)) => Sample::Known(
                        Truth {
                            queued,
                            held,
                            handshaking: handshaking[i],
                        },
                        slack,
                    ),
                    _ => Sample::Unknown,
                }
            })
            .collect();
        // Before the overflow queue's entry moves to its index: the slots between are unknown.
        let known = truth.iter().all(|t| !matches!(t, Sample::Unknown));
        if self.overflow.is_some() {
            let overflow = truth.pop().unwrap_or(Sample::Unknown);
            truth.resize(OVERFLOW as usize, Sample::Unknown);
            truth.push(overflow);
        }
        self.accounting.reconcile(&self.steering.slots, &truth);
        if known && handshaking.iter().all(|&n| n == 0) && self.accounting.settled() {
            self.readings.pacing.settled(self.readings.fingerprint);
        }
    }
}
