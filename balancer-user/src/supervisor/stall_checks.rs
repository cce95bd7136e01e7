//! Stalled workers: a worker whose accept queue holds connections and does not shrink for
//! `--stall-timeout` leaves the rotation until it accepts again (the decision itself is
//! [`crate::rules::stall`]'s).

use std::time::{Duration, Instant};

use balancer_common::SlotState;

use super::Supervisor;
use crate::rules::stall::{StallWatch, Transition};

/// A slot's stall watch, and how often its workers stalled.
#[derive(Default)]
pub(super) struct Stalls {
    watch: StallWatch,
    pub(super) count: u64,
}

impl Stalls {
    /// A new worker took the slot: its predecessor's history says nothing of it.
    pub(super) fn new_worker(&mut self) {
        self.watch.reset();
    }

    fn sample(
        &mut self,
        assigned: u64,
        queued: u32,
        now: Instant,
        timeout: Duration,
    ) -> Transition {
        let transition = self.watch.sample(assigned, queued, now, timeout);
        if transition == Transition::Stalled {
            self.count += 1;
        }
        transition
    }
}

impl Supervisor {
    /// Takes stalled workers out of rotation and puts them back once they accept again.
    pub(super) fn watch_stalls(&mut self) {
        let Some(timeout) = self.opts.stall_timeout.filter(|_| !self.phase.stopping()) else {
            return;
        };
        let now = Instant::now();
        let mut changed = false;
        for (i, s) in self.slots.iter_mut().enumerate() {
            let slot = i as u32;
            let state = self.steering.slots.state(slot);
            if s.worker.pid.is_none() || !matches!(state, SlotState::Up | SlotState::Stalled) {
                continue;
            }
            let queued = s.listener.queued().unwrap_or(0);
            let assigned = self.steering.slots.assigned(slot);
            match s.stalls.sample(assigned, queued, now, timeout) {
                Transition::Stalled => {
                    self.steering.set_state(slot, SlotState::Stalled);
                    changed = true;
                    log::warn!(
                        "slot {slot}: worker stalled ({queued} connections queued, none accepted for {timeout:?}); \
                         no new connections until it accepts again"
                    );
                }
                Transition::Recovered => {
                    self.steering.set_state(slot, SlotState::Up);
                    changed = true;
                    log::info!("slot {slot}: worker accepts again; back in rotation");
                }
                Transition::None => {}
            }
        }
        if changed {
            self.steering.refresh_sticky(self.opts.workers);
        }
    }
}
