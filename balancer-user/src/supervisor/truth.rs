//! Reading what the kernel holds for each slot, for the [accounting](crate::rules::accounting): the
//! workers' open connections and the port's handshakes are read on a blocking thread (it walks
//! /proc and asks sock_diag), the accept queues next to the answer on the event loop, where the
//! handshakes are matched to their slots through `FLOWS`; the accounting corrects what two
//! readings agree on.

use balancer_common::OVERFLOW;

use super::{events::Event, Supervisor};
use crate::{
    inspect::{self, Reading},
    kernel, listeners,
    rules::accounting::{Sample, Truth},
};

/// The readings' own state, between two of them.
#[derive(Default)]
pub(super) struct Readings {
    /// A reading of what the workers hold is under way.
    under_way: bool,
    /// The workers' descriptors could not be read once already (logged once).
    warned_unreadable: bool,
    /// Each slot's (assigned, closed) when the reading under way started.
    counts_at_start: Vec<(u64, u64)>,
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
        // The counters as the reading starts: what they move by before it ends is traffic the
        // reading may have caught on either side.
        self.readings.counts_at_start = self.counters();
        let events = self.events.clone();
        tokio::task::spawn_blocking(move || {
            let reading = inspect::held(local, &pids);
            let _ = events.send(Event::Held(reading));
        });
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
        if self.overflow.is_some() {
            let overflow = truth.pop().unwrap_or(Sample::Unknown);
            truth.resize(OVERFLOW as usize, Sample::Unknown);
            truth.push(overflow);
        }
        self.accounting.reconcile(&self.steering.slots, &truth);
    }
}
