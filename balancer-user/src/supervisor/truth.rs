//! Reading what the kernel holds for each slot, for the [accounting](crate::accounting): the
//! workers' open connections are read on a blocking thread (it walks /proc and asks sock_diag),
//! the accept queues next to the answer on the event loop, and the accounting corrects what two
//! readings agree on.

use super::{inbox::Event, Supervisor};
use crate::{
    accounting::{self, Truth},
    listeners,
};

impl Supervisor {
    /// Starts reading what each slot's workers hold, on a blocking thread (it walks /proc and
    /// asks sock_diag); the answer comes back as [`Event::Held`]. One reading at a time.
    pub(super) fn reconcile(&mut self) {
        if self.stopping || self.reading_truth {
            return;
        }
        let port = match self.slots[0].listener.local_addr() {
            Ok(a) => a.port(),
            Err(_) => return,
        };
        if self.opts.transport == listeners::Transport::Udp {
            // A datagram is no connection: a UDP slot holds nothing and the program counts
            // nothing for it, so the books are checked against zero.
            let truth = vec![Some(Truth::default()); self.slots.len()];
            self.accounting.reconcile(&self.steering.slots, &truth);
            return;
        }
        let pids: Vec<Vec<i32>> = self
            .slots
            .iter()
            .map(|s| {
                s.pid
                    .iter()
                    .chain(s.retiring.as_ref().map(|r| &r.0))
                    .map(|p| p.as_raw())
                    .collect()
            })
            .collect();
        self.reading_truth = true;
        let events = self.events.clone();
        tokio::task::spawn_blocking(move || {
            let held = accounting::held(port, &pids);
            let _ = events.send(Event::Held(held));
        });
    }

    /// Completes a reading: the accept queues are read now, next to the workers' sockets, and
    /// the accounting corrects what two readings agree on.
    pub(super) fn on_held(&mut self, held: Vec<Option<u64>>) {
        self.reading_truth = false;
        // A scale in between changed the slots: this reading no longer fits them.
        if held.len() != self.slots.len() || self.stopping {
            return;
        }
        if held.iter().any(Option::is_none) && !self.warned_unreadable {
            self.warned_unreadable = true;
            log::warn!(
                "cannot read which connections the workers hold (workers of another user need \
                 CAP_SYS_PTRACE for the supervisor): their loads are not reconciled"
            );
        }
        let truth: Vec<Option<Truth>> = self
            .slots
            .iter()
            .zip(held)
            .map(|(s, held)| {
                Some(Truth {
                    queued: s.listener.queued().ok()? as u64,
                    held: held?,
                })
            })
            .collect();
        self.accounting.reconcile(&self.steering.slots, &truth);
    }
}
