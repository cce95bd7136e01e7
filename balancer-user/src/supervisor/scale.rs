//! `balancer scale N`: slots added at once (a new listener joins the group and its worker
//! starts) or removed by draining (the slot leaves the rotation, its worker empties its queue and
//! finishes its work, and only then is its listener closed).

use balancer_common::SlotState;

use super::{error::one_line, worker_slot::WorkerSlot, Inbox, Supervisor, STOPPED_MIDWAY};
use crate::listeners;

impl Supervisor {
    /// Changes the number of slots. Adding is immediate: a new listener joins the group and its
    /// worker starts. Removing drains: the slot stops receiving, its worker empties its accept
    /// queue and finishes in-flight work, and only then is its listener closed (a connection
    /// that still arrives in that instant is moved to another listener by the program's
    /// migrate path, not reset).
    pub(super) async fn scale(&mut self, n: u32, inbox: &mut Inbox) -> String {
        if let Err(e) = listeners::check_count(n) {
            return format!("error: {}", one_line(&e));
        }
        let old = self.slots.len() as u32;
        if n > old {
            let addr = match self.slots[0].listener.local_addr() {
                Ok(a) => a,
                Err(e) => return format!("error: {}", one_line(&e)),
            };
            let backlog = listeners::Backlog::new(self.opts.backlog).expect("checked at start");
            for slot in old..n {
                let listener = match listeners::bind_one(addr, self.opts.transport, backlog) {
                    Ok(l) => l,
                    Err(e) => return format!("error: slot {slot}: {}", one_line(&e)),
                };
                self.accounting.reset(&self.steering.slots, slot);
                if let Err(e) = self.steering.insert(slot, &listener) {
                    return format!("error: {}", one_line(&e));
                }
                self.steering.set_state(slot, SlotState::Down);
                self.steering.slots.set_weight(slot, 1);
                self.slots
                    .push(WorkerSlot::new(listener, self.opts.backoff));
                self.opts.workers = slot + 1;
                if let Err(e) = self
                    .steering
                    .configure(self.opts.workers, self.steering.policy())
                {
                    return format!("error: {}", one_line(&e));
                }
                if let Err(e) = self.start_worker(slot) {
                    return format!("error: slot {slot}: {}", one_line(&e));
                }
            }
        }
        for slot in (n..old).rev() {
            self.steering.set_state(slot, SlotState::Draining);
            self.steering.refresh_sticky(self.opts.workers);
            // Let the worker take what is already queued for it.
            let drained = self
                .pump(inbox, self.opts.kill_timeout, |s| {
                    let x = &s.slots[slot as usize];
                    x.worker.pid.is_none() || x.listener.queued().unwrap_or(0) == 0
                })
                .await;
            if !drained {
                log::warn!(
                    "slot {slot}: queue not empty after {:?}; closing it moves the rest to other slots",
                    self.opts.kill_timeout
                );
            }
            let w = &mut self.slots[slot as usize].worker;
            w.retiring = w.pid.take().map(|pid| (pid, w.generation));
            if self.stop_requested {
                return STOPPED_MIDWAY.into();
            }
            self.retire(&[slot], inbox).await;
            if self.stop_requested {
                return STOPPED_MIDWAY.into();
            }
            let _ = self.steering.remove(slot);
            self.slots.pop(); // closes the listener
            self.logs.forget(slot);
            self.steering.set_state(slot, SlotState::Down);
            // Its queue migrated with its counts; whatever it still counted left with it.
            self.accounting.reset(&self.steering.slots, slot);
            self.opts.workers = slot;
            if let Err(e) = self
                .steering
                .configure(self.opts.workers, self.steering.policy())
            {
                return format!("error: {}", one_line(&e));
            }
            self.steering.refresh_sticky(self.opts.workers);
        }
        log::info!("scale: {old} -> {n} slots");
        serde_json::json!({ "slots": n }).to_string()
    }
}
