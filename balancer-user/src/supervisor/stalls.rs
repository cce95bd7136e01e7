//! Stalled workers: a worker whose accept queue holds connections and does not shrink for
//! `--stall-timeout` leaves the rotation until it accepts again (the decision itself is
//! [`crate::stall`]'s).

use std::time::Instant;

use balancer_common::SlotState;

use super::Supervisor;
use crate::stall::Transition;

impl Supervisor {
    /// Takes stalled workers out of rotation and puts them back once they accept again.
    pub(super) fn watch_stalls(&mut self) {
        let Some(timeout) = self.opts.stall_timeout.filter(|_| !self.stopping) else {
            return;
        };
        let now = Instant::now();
        let mut changed = false;
        for (i, s) in self.slots.iter_mut().enumerate() {
            let slot = i as u32;
            let state = self.steering.slots.state(slot);
            if s.pid.is_none() || !matches!(state, SlotState::Up | SlotState::Stalled) {
                continue;
            }
            let queued = s.listener.queued().unwrap_or(0);
            match s
                .stall
                .sample(self.steering.slots.assigned(slot), queued, now, timeout)
            {
                Transition::Stalled => {
                    self.steering.set_state(slot, SlotState::Stalled);
                    s.stalls += 1;
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
