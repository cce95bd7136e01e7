//! One slot's lifecycle: a worker is started on the slot's listener, becomes ready (it joins the
//! rotation only then, so a worker that dies at start is never sent a connection), may exit, and
//! is restarted after a backoff delay, or given up on after repeated quick failures. A restart
//! far enough away moves the slot's queued connections to live slots.

use std::{
    os::fd::AsFd,
    process::ExitStatus,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use balancer_common::SlotState;
use nix::{sys::signal::Signal, unistd::Pid};

use super::{inbox::Event, readiness, Supervisor};
use crate::logs::{self, Stream};

/// A worker's stdout or stderr, read by [`logs::capture`].
type Pipe = Box<dyn tokio::io::AsyncRead + Unpin + Send>;
use crate::{
    backoff::{self, Backoff, Decision},
    listeners,
    stall::StallWatch,
    worker::spawn::{self, Spawn},
};

/// Restart delays from this long on move a dead worker's queue to live slots instead of
/// letting it wait.
const MIGRATE_AFTER: Duration = Duration::from_millis(500);

pub(super) struct Slot {
    pub(super) listener: listeners::Listener,
    pub(super) pid: Option<Pid>,
    pub(super) started: Option<Instant>,
    /// Bumped on every start, so that a stale exit or restart event is recognised.
    pub(super) generation: u64,
    pub(super) restarts: u64,
    pub(super) last_exit: Option<String>,
    pub(super) last_status: Option<ExitStatus>,
    /// `assigned` when the current worker started: what it has been sent since is its count
    /// of requests for recycling.
    pub(super) assigned_at_start: u64,
    /// Requests after which the current worker is recycled (`--max-requests` plus its jitter).
    pub(super) request_budget: Option<u64>,
    /// The current worker's resident memory at the last reading.
    pub(super) memory: Option<u64>,
    pub(super) recycled_memory: u64,
    pub(super) recycled_requests: u64,
    /// The current worker's health, from its probes.
    pub(super) health: crate::health::Health,
    /// A probe of this slot is under way.
    pub(super) probing: bool,
    pub(super) probe_latency: Option<Duration>,
    pub(super) health_failures: u64,
    pub(super) health_restarts: u64,
    /// No recycling before this (after one failed).
    pub(super) recycle_after: Instant,
    /// The pid of the worker that exited last, whose stderr `status` may quote.
    pub(super) last_pid: Option<Pid>,
    pub(super) backoff: Backoff,
    pub(super) given_up: bool,
    pub(super) stall: StallWatch,
    pub(super) stalls: u64,
    /// Generation of the current worker once it said it is ready (or its grace ran out).
    pub(super) ready: u64,
    /// A previous worker still finishing its work during a reload or scale-down.
    pub(super) retiring: Option<(Pid, u64)>,
}

impl Slot {
    pub(super) fn new(listener: listeners::Listener, backoff: backoff::Policy) -> Slot {
        Slot {
            listener,
            pid: None,
            started: None,
            generation: 0,
            restarts: 0,
            last_exit: None,
            last_status: None,
            last_pid: None,
            assigned_at_start: 0,
            request_budget: None,
            memory: None,
            recycled_memory: 0,
            recycled_requests: 0,
            recycle_after: Instant::now(),
            health: Default::default(),
            probing: false,
            probe_latency: None,
            health_failures: 0,
            health_restarts: 0,
            backoff: Backoff::new(backoff),
            given_up: false,
            stall: StallWatch::default(),
            stalls: 0,
            ready: 0,
            retiring: None,
        }
    }
}

impl Supervisor {
    pub(super) fn start_worker(&mut self, slot: u32) -> Result<()> {
        let credentials = self.opts.identity.for_slot(slot)?;
        let s = &mut self.slots[slot as usize];
        // systemd's readiness protocol: the worker may send READY=1 to this (abstract, per
        // worker) datagram socket once it serves.
        let notify_name = format!(
            "balancer/{}/{slot}/{}",
            std::process::id(),
            s.generation + 1
        );
        let notify = readiness::socket(&notify_name);
        let channel = self.messaging.pair()?;
        let child = spawn::spawn(
            &self.command,
            Spawn {
                slot,
                listener: s.listener.as_fd(),
                overflow: self.overflow.as_ref().map(|o| o.as_fd()),
                credentials,
                notify: notify.as_ref().map(|_| format!("@{notify_name}")),
                channel: channel.as_ref().map(|c| c.worker.as_fd()),
            },
        )?;
        let pid = Pid::from_raw(
            child
                .id()
                .context("worker exited before it could be tracked")? as i32,
        );
        self.steering.worker_started(pid.as_raw() as u32, slot);
        let mut child = child;
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
                let logs = self.logs.clone();
                let raw = pid.as_raw() as u32;
                tokio::spawn(logs::capture(logs, slot, raw, stream, pipe));
            }
        }
        s.generation += 1;
        s.pid = Some(pid);
        s.started = Some(Instant::now());
        s.memory = None;
        s.health = Default::default();
        s.assigned_at_start = self.steering.slots.assigned(slot);
        let seed = (pid.as_raw() as u64) << 32 ^ s.generation ^ std::process::id() as u64;
        s.request_budget = super::recycle::budget(&self.opts.recycle, seed);
        s.stall.reset();
        // The slot's state is left as it is (down, or up with the worker being replaced): it
        // becomes up when this worker is ready, so a worker that dies at start (a crash loop)
        // is never sent a connection.
        let generation = s.generation;
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

    pub(super) fn on_ready(&mut self, slot: u32, generation: u64) {
        let Some(s) = self.slots.get_mut(slot as usize) else {
            return;
        };
        if s.generation != generation || s.pid.is_none() {
            return;
        }
        s.ready = generation;
        if !self.stopping && self.steering.slots.state(slot) == SlotState::Down {
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
        if let Some((pid, g)) = s.retiring {
            if g == generation {
                log::info!("slot {slot}: previous worker {pid} {}", describe(&status));
                s.retiring = None;
                self.messaging.unlink(pid);
                self.steering.worker_exited(pid.as_raw() as u32);
                return;
            }
        }
        if s.generation != generation {
            return;
        }
        // Down first, before anything else: the program must stop choosing this slot now.
        self.steering.set_state(slot, SlotState::Down);
        self.steering.refresh_sticky(self.opts.workers);
        let ran_for = s.started.map_or(Duration::ZERO, |t| t.elapsed());
        let reason = describe(&status);
        s.last_pid = s.pid.take();
        let mut asked = false;
        if let Some(pid) = s.last_pid {
            self.steering.worker_exited(pid.as_raw() as u32);
            self.messaging.unlink(pid);
            asked = self.messaging.asked_to_stop(pid, self.opts.kill_timeout);
        }
        s.started = None;
        s.last_exit = Some(reason.clone());
        s.last_status = status.as_ref().ok().copied();
        if self.stopping {
            return;
        }
        // Stopped by `balancer signal`: not a failure, so no backoff delay and no count
        // towards giving up.
        if asked {
            log::info!("slot {slot}: worker {reason}, as `balancer signal` asked; restarting it");
            let _ = self.events.send(Event::Restart { slot, generation });
            return;
        }
        match s.backoff.on_exit(ran_for) {
            Decision::RestartAfter(delay) => {
                log::warn!(
                    "slot {slot}: worker {reason} after {ran_for:.1?}; restarting in {delay:?}"
                );
                let events = self.events.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = events.send(Event::Restart { slot, generation });
                });
                // A replacement coming soon accepts what waits in the queue; one that is a
                // backoff away does not, so move those connections to live slots now.
                if delay >= MIGRATE_AFTER {
                    if let Err(e) = self.replace_listener(slot) {
                        log::warn!(
                            "slot {slot}: {e:#}; its queued connections wait for the restart"
                        );
                    }
                }
            }
            Decision::GiveUp => {
                s.given_up = true;
                s.last_exit = Some(format!(
                    "{reason}; gave up after {} quick failures",
                    s.backoff.quick_failures()
                ));
                log::error!(
                    "slot {slot}: worker `{}` {reason} {} times in a row within {:?} of starting; \
                     the slot stays down, the other slots keep serving",
                    self.command.display(),
                    s.backoff.quick_failures(),
                    self.opts.backoff.quick
                );
                // Nothing will accept from this slot's queue now: swap in a fresh listener and
                // close the old one, so that what waits there moves to live slots.
                if let Err(e) = self.replace_listener(slot) {
                    log::warn!("slot {slot}: {e:#}; its queued connections wait for a reload");
                }
            }
        }
    }

    pub(super) fn on_restart(&mut self, slot: u32, generation: u64) {
        let Some(s) = self.slots.get(slot as usize) else {
            return;
        };
        if self.stopping || s.generation != generation || s.pid.is_some() {
            return;
        }
        self.slots[slot as usize].restarts += 1;
        if let Err(e) = self.start_worker(slot) {
            log::error!("slot {slot}: {e:#}");
            // Treat a failed spawn like an instant exit, so backoff and give-up apply.
            self.on_exit(
                slot,
                generation,
                Err(std::io::Error::other(format!("{e:#}"))),
            );
        }
    }

    /// Gives `slot` a new, empty listener and closes the old one: the kernel runs the program's
    /// migrate path for each connection queued on the old one.
    pub(super) fn replace_listener(&mut self, slot: u32) -> Result<()> {
        let s = &self.slots[slot as usize];
        let addr = s.listener.local_addr()?;
        let backlog = listeners::Backlog::new(self.opts.backlog)?;
        let fresh = listeners::bind_one(addr, self.opts.transport, backlog)?;
        self.steering.insert(slot, &fresh)?;
        let old = std::mem::replace(&mut self.slots[slot as usize].listener, fresh);
        // Each queued connection moves, with its count, through the program's migrate path.
        drop(old);
        Ok(())
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
