//! One slot's lifecycle: a worker is started on the slot's listener, becomes ready (it joins the
//! rotation only then, so a worker that dies at start is never sent a connection), may exit, and
//! is restarted after a backoff delay, or given up on after repeated quick failures. A restart
//! far enough away moves the slot's queued connections to live slots.

use std::{
    os::fd::AsFd,
    process::ExitStatus,
    time::{Duration, Instant},
};

use balancer_common::SlotState;
use nix::{sys::signal::Signal, unistd::Pid};

use super::{
    error::{one_line, Error, Result},
    events::Event,
    readiness, Supervisor,
};
use crate::{
    listeners,
    logs::{self, Logs, Stream},
    rules::{backoff::Decision, recycling},
    worker::spawn::{self, Spawn},
};

/// A worker's stdout or stderr, read by [`logs::capture`].
type Pipe = Box<dyn tokio::io::AsyncRead + Unpin + Send>;

/// Restart delays from this long on move a dead worker's queue to live slots instead of
/// letting it wait.
const MIGRATE_AFTER: Duration = Duration::from_millis(500);

impl Supervisor {
    pub(super) fn start_worker(&mut self, slot: u32) -> Result<()> {
        let credentials = self
            .opts
            .identity
            .for_slot(slot)
            .map_err(|e| Error::Identity(e.into()))?;
        let generation = self.slots[slot as usize].worker.generation + 1;
        // systemd's readiness protocol: the worker may send READY=1 to this (abstract, per
        // worker) datagram socket once it serves.
        let notify_name = format!("balancer/{}/{slot}/{generation}", std::process::id());
        let notify = readiness::socket(&notify_name);
        let channel = self.messaging.pair()?;
        let mut child = spawn::spawn(
            &self.command,
            Spawn {
                slot,
                listener: self.slots[slot as usize].listener.as_fd(),
                overflow: self.overflow.as_ref().map(|o| o.as_fd()),
                credentials,
                notify: notify.as_ref().map(|_| format!("@{notify_name}")),
                channel: channel.as_ref().map(|c| c.worker.as_fd()),
            },
        )
        .map_err(|e| Error::Spawn(e.into()))?;
        let pid = Pid::from_raw(child.id().ok_or(Error::Untracked)? as i32);
        self.steering.worker_started(pid.as_raw() as u32, slot);
        capture(&self.logs, &mut child, slot, pid);
        self.record_start(slot, pid);
        // The slot's state is left as it is (down, or up with the worker being replaced): it
        // becomes up when this worker is ready, so a worker that dies at start (a crash loop)
        // is never sent a connection.
        if let Some(channel) = channel {
            self.link_channel(channel, slot, pid, generation);
        }
        let events = self.events.clone();
        readiness::wait(
            notify,
            pid,
            self.opts.ready_timeout,
            self.events.clone(),
            slot,
            generation,
        );
        tokio::spawn(async move {
            let mut child = child;
            let status = child.wait().await;
            let _ = events.send(Event::Exited {
                slot,
                generation,
                status,
            });
        });
        log::debug!("slot {slot}: worker pid {pid} started");
        Ok(())
    }

    /// The worker `pid` now serves `slot`: every room's record of the slot starts afresh.
    fn record_start(&mut self, slot: u32, pid: Pid) {
        let assigned = self.steering.slots.assigned(slot);
        let s = &mut self.slots[slot as usize];
        s.worker.generation += 1;
        s.worker.pid = Some(pid);
        s.worker.started = Some(Instant::now());
        let seed = (pid.as_raw() as u64) << 32 ^ s.worker.generation ^ std::process::id() as u64;
        let budget = recycling::budget(&self.opts.recycle, seed);
        s.recycling.new_worker(assigned, budget);
        s.probes.new_worker();
        s.stalls.new_worker();
    }

    pub(super) fn on_ready(&mut self, slot: u32, generation: u64) {
        let Some(s) = self.slots.get_mut(slot as usize) else {
            return;
        };
        if s.worker.generation != generation || s.worker.pid.is_none() {
            return;
        }
        s.worker.ready = generation;
        if !self.phase.stopping() && self.steering.slots.state(slot) == SlotState::Down {
            self.steering.set_state(slot, SlotState::Up);
            self.steering.refresh_sticky(self.opts.workers);
            log::debug!("slot {slot}: worker ready");
        }
    }

    pub(super) fn on_exit(
        &mut self,
        slot: u32,
        generation: u64,
        status: std::io::Result<ExitStatus>,
    ) {
        let Some(s) = self.slots.get_mut(slot as usize) else {
            return;
        };
        if let Some((pid, g)) = s.worker.retiring {
            if g == generation {
                log::info!("slot {slot}: previous worker {pid} {}", describe(&status));
                s.worker.retiring = None;
                self.messaging.unlink(pid);
                self.steering.worker_exited(pid.as_raw() as u32);
                return;
            }
        }
        if s.worker.generation != generation {
            return;
        }
        // Down first, before anything else: the program must stop choosing this slot now.
        self.steering.set_state(slot, SlotState::Down);
        self.steering.refresh_sticky(self.opts.workers);
        let (ran_for, reason, asked) = self.record_exit(slot, &status);
        if self.phase.stopping() {
            return;
        }
        // Stopped by `balancer signal`: not a failure, so no backoff delay and no count
        // towards giving up.
        if asked {
            log::info!("slot {slot}: worker {reason}, as `balancer signal` asked; restarting it");
            let _ = self.events.send(Event::Restart { slot, generation });
            return;
        }
        match self.slots[slot as usize].exits.backoff.on_exit(ran_for) {
            Decision::RestartAfter(delay) => {
                log::warn!(
                    "slot {slot}: worker {reason} after {ran_for:.1?}; restarting in {delay:?}"
                );
                self.restart_after(slot, generation, delay);
            }
            Decision::GiveUp => self.give_up(slot, reason),
        }
    }

    /// Files the exit of `slot`'s current worker: how long it ran, how it ended, and whether
    /// `balancer signal` asked for it.
    fn record_exit(
        &mut self,
        slot: u32,
        status: &std::io::Result<ExitStatus>,
    ) -> (Duration, String, bool) {
        let s = &mut self.slots[slot as usize];
        let ran_for = s.worker.started.map_or(Duration::ZERO, |t| t.elapsed());
        let reason = describe(status);
        s.exits.last_pid = s.worker.pid.take();
        let mut asked = false;
        if let Some(pid) = s.exits.last_pid {
            self.steering.worker_exited(pid.as_raw() as u32);
            self.messaging.unlink(pid);
            asked = self.messaging.asked_to_stop(pid, self.opts.kill_timeout);
        }
        s.worker.started = None;
        s.exits.last_exit = Some(reason.clone());
        s.exits.last_status = status.as_ref().ok().copied();
        (ran_for, reason, asked)
    }

    fn restart_after(&mut self, slot: u32, generation: u64, delay: Duration) {
        let events = self.events.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = events.send(Event::Restart { slot, generation });
        });
        // A replacement coming soon accepts what waits in the queue; one that is a backoff
        // away does not, so move those connections to live slots now.
        if delay >= MIGRATE_AFTER {
            if let Err(e) = self.replace_listener(slot) {
                log::warn!(
                    "slot {slot}: {}; its queued connections wait for the restart",
                    one_line(&e)
                );
            }
        }
    }

    fn give_up(&mut self, slot: u32, reason: String) {
        let exits = &mut self.slots[slot as usize].exits;
        exits.given_up = true;
        let failures = exits.backoff.quick_failures();
        exits.last_exit = Some(format!("{reason}; gave up after {failures} quick failures"));
        log::error!(
            "slot {slot}: worker `{}` {reason} {failures} times in a row within {:?} of starting; \
             the slot stays down, the other slots keep serving",
            self.command.display(),
            self.opts.backoff.quick
        );
        // Nothing will accept from this slot's queue now: swap in a fresh listener and close
        // the old one, so that what waits there moves to live slots.
        if let Err(e) = self.replace_listener(slot) {
            log::warn!(
                "slot {slot}: {}; its queued connections wait for a reload",
                one_line(&e)
            );
        }
    }

    pub(super) fn on_restart(&mut self, slot: u32, generation: u64) {
        let Some(s) = self.slots.get(slot as usize) else {
            return;
        };
        if self.phase.stopping() || s.worker.generation != generation || s.worker.pid.is_some() {
            return;
        }
        self.slots[slot as usize].exits.restarts += 1;
        if let Err(e) = self.start_worker(slot) {
            let line = one_line(&e);
            log::error!("slot {slot}: {line}");
            // Treat a failed spawn like an instant exit, so backoff and give-up apply.
            self.on_exit(slot, generation, Err(std::io::Error::other(line)));
        }
    }

    /// Gives `slot` a new, empty listener and closes the old one: the kernel runs the program's
    /// migrate path for each connection queued on the old one.
    pub(super) fn replace_listener(&mut self, slot: u32) -> Result<()> {
        let s = &self.slots[slot as usize];
        let addr = s.listener.local_addr().map_err(Error::listeners)?;
        let backlog = listeners::Backlog::new(self.opts.backlog).map_err(Error::listeners)?;
        let fresh =
            listeners::bind_one(addr, self.opts.transport, backlog).map_err(Error::listeners)?;
        self.steering.insert(slot, &fresh).map_err(Error::kernel)?;
        let old = std::mem::replace(&mut self.slots[slot as usize].listener, fresh);
        // Each queued connection moves, with its count, through the program's migrate path.
        drop(old);
        Ok(())
    }
}

/// Hands the worker's stdout and stderr to the log store, line by line.
fn capture(logs: &Logs, child: &mut tokio::process::Child, slot: u32, pid: Pid) {
    let pipes = [
        (
            Stream::Stdout,
            child.stdout.take().map(|p| Box::new(p) as Pipe),
        ),
        (
            Stream::Stderr,
            child.stderr.take().map(|p| Box::new(p) as Pipe),
        ),
    ];
    for (stream, pipe) in pipes {
        if let Some(pipe) = pipe {
            let raw = pid.as_raw() as u32;
            tokio::spawn(logs::capture(logs.clone(), slot, raw, stream, pipe));
        }
    }
}

pub(super) fn describe(status: &std::io::Result<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exited with code {code}"),
            (None, Some(sig)) => {
                let name = Signal::try_from(sig)
                    .map(|s| s.as_str())
                    .unwrap_or("unknown signal");
                format!("killed by {name}")
            }
            _ => "ended".into(),
        },
        Err(e) => format!("could not be waited for: {e}"),
    }
}
