//! `balancer reload` (and SIGHUP): every worker replaced, a batch of slots at a time, with no
//! moment at which a slot's queue has no worker, and the previous worker kept when its successor
//! fails. [`Supervisor::pump`], which an operation awaits its workers through, and
//! [`Supervisor::retire`], which stops a slot's previous worker, serve [`scale`](super::scale)
//! too.

use std::time::Duration;

use balancer_common::SlotState;
use nix::{sys::signal::Signal, unistd::Pid};

use super::error::{one_line, Error};
use super::{Inbox, Supervisor, STOPPED_MIDWAY};
use crate::worker::spawn::WorkerCommand;

const LOOK_AGAIN: Duration = Duration::from_millis(10);

impl Supervisor {
    /// Handles inputs until `done` holds or `within` passes; returns whether `done` held.
    /// Returns false at once when a stop is requested (a signal, or `stop`): the operation in
    /// progress then gives up, and the supervisor stops.
    pub(super) async fn pump(
        &mut self,
        inbox: &mut Inbox,
        within: Duration,
        done: impl Fn(&Supervisor) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.stop_requested {
                return false;
            }
            if done(self) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            // Some conditions change with no input (a queue empties): look again every 10 ms.
            if let Ok(input) = tokio::time::timeout(LOOK_AGAIN, inbox.next()).await {
                // Busy: the dispatcher starts no other operation, so there is nothing to run.
                let _ = self.handle(input);
            }
        }
    }

    /// Stops the previous workers of `slots`: SIGTERM, then SIGKILL after --kill-timeout;
    /// returns once they have exited.
    pub(super) async fn retire(&mut self, slots: &[u32], inbox: &mut Inbox) {
        let pids: Vec<Pid> = slots
            .iter()
            .filter_map(|&s| self.slots[s as usize].worker.retiring.map(|r| r.0))
            .collect();
        for &pid in &pids {
            self.messaging.hang_up(pid);
            let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
        }
        let gone = |s: &Supervisor| {
            slots
                .iter()
                .all(|&x| s.slots[x as usize].worker.retiring.is_none())
        };
        if !self.pump(inbox, self.opts.kill_timeout, gone).await && !self.stop_requested {
            for &slot in slots {
                if let Some((pid, _)) = self.slots[slot as usize].worker.retiring {
                    log::warn!(
                        "slot {slot}: previous worker {pid} still running after {:?}: SIGKILL",
                        self.opts.kill_timeout
                    );
                    let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                }
            }
            self.pump(inbox, Duration::from_secs(5), gone).await;
        }
    }

    /// Replaces every worker, --reload-batch slots at a time, with no moment at which a slot's
    /// queue has no worker: a new worker starts on the same listener as the old one (both accept
    /// from one queue), and the old one gets SIGTERM only once the new one is ready. The worker
    /// command is resolved again, so a new binary on disk is picked up.
    pub(super) async fn reload(&mut self, inbox: &mut Inbox) -> String {
        if let Some(args) = &self.opts.command {
            let resolved = WorkerCommand::resolve(args.clone())
                .map_err(|e| Error::Command(e.into()))
                .and_then(|c| {
                    let access = self.opts.identity.check_access(&c);
                    access.map(|()| c).map_err(|e| Error::Command(e.into()))
                });
            match resolved {
                Ok(c) => self.command = c,
                Err(e) => return format!("error: {}; the running workers were kept", one_line(&e)),
            }
        }
        let n = self.slots.len() as u32;
        let batch = self.opts.reload_batch.max(1) as usize;
        log::info!("reload: replacing {n} workers, {batch} at a time");
        let all: Vec<u32> = (0..n).collect();
        for chunk in all.chunks(batch) {
            if let Err(e) = self.replace(chunk, inbox).await {
                return e;
            }
        }
        log::info!("reload: done");
        serde_json::json!({ "reloaded": n }).to_string()
    }

    /// Replaces the workers of `slots` at once: each successor starts on its slot's listener,
    /// and each previous worker gets SIGTERM once its successor is ready. A successor that dies
    /// or never gets ready is killed and its previous worker kept: the error says so.
    pub(super) async fn replace(&mut self, slots: &[u32], inbox: &mut Inbox) -> Result<(), String> {
        let mut started = Vec::new();
        for &slot in slots {
            let s = &mut self.slots[slot as usize];
            s.exits.start_over(self.opts.backoff);
            let w = &mut s.worker;
            let old = w.pid.map(|pid| (pid, w.generation));
            w.retiring = old;
            if let Err(e) = self.start_worker(slot) {
                self.slots[slot as usize].worker.retiring = None;
                return Err(format!(
                    "error: slot {slot}: {}; slots before it were replaced",
                    one_line(&e)
                ));
            }
            started.push((slot, self.slots[slot as usize].worker.generation, old));
        }
        let settled = |s: &Supervisor| {
            started.iter().all(|&(slot, g, _)| {
                let x = &s.slots[slot as usize].worker;
                x.ready == g || x.generation != g || x.pid.is_none()
            })
        };
        self.pump(
            inbox,
            self.opts.ready_timeout + Duration::from_secs(1),
            settled,
        )
        .await;
        if self.stop_requested {
            return Err(STOPPED_MIDWAY.into());
        }
        let mut failed = None;
        let mut retire = Vec::new();
        for &(slot, g, old) in &started {
            let (x, exits) = (
                &self.slots[slot as usize].worker,
                &self.slots[slot as usize].exits,
            );
            if x.ready == g && x.generation == g && x.pid.is_some() {
                retire.push(slot);
                continue;
            }
            // The new worker died (or never got ready): keep the old one serving.
            let reason = exits
                .last_exit
                .clone()
                .unwrap_or_else(|| "did not get ready".into());
            if let Some(new) = x.pid.filter(|_| x.generation == g) {
                let _ = nix::sys::signal::kill(new, Signal::SIGKILL);
            }
            if let Some((pid, generation)) = old {
                let x = &mut self.slots[slot as usize].worker;
                x.retiring = None;
                x.pid = Some(pid);
                x.generation = generation;
                self.steering.set_state(slot, SlotState::Up);
                self.steering.refresh_sticky(self.opts.workers);
            }
            failed.get_or_insert(format!(
                "error: stopped at slot {slot}: the new worker {reason}; the previous worker keeps serving"
            ));
        }
        self.retire(&retire, inbox).await;
        if self.stop_requested {
            return Err(STOPPED_MIDWAY.into());
        }
        failed.map_or(Ok(()), Err)
    }
}
