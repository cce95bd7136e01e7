//! The supervisor: owns the listeners and the program, starts one worker per slot, restarts
//! workers that exit, answers the control socket, and stops everything in order.
//!
//! It runs on a single thread. Besides being all it needs, this matters for correctness: a
//! child's `PR_SET_PDEATHSIG` fires when the *thread* that forked it exits, so every fork must
//! come from a thread that lives as long as the supervisor.

use std::os::unix::process::ExitStatusExt as _;
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    os::fd::AsFd,
    path::PathBuf,
    process::ExitStatus,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use balancer_common::{stats, Policy, SlotState};
use nix::{sys::signal::Signal, unistd::Pid};
use tokio::sync::{mpsc, oneshot};

use crate::{
    accounting::{self, Accounting, Truth},
    backoff::{self, Backoff, Decision},
    capabilities,
    control::{self, Request, SlotStatus, Status},
    listeners,
    metrics::{self, Ask},
    process::{self, Spawn, WorkerCommand},
    program::Steering,
    stall::{StallWatch, Transition},
};

/// The answer to a reload or scale that a stop cut short.
const STOPPED_MIDWAY: &str = "error: stopping: a signal or `stop` arrived, so this was cut short";

/// Restart delays from this long on move a dead worker's queue to live slots instead of
/// letting it wait.
const MIGRATE_AFTER: Duration = Duration::from_millis(500);

pub struct Options {
    pub listen: SocketAddr,
    pub workers: u32,
    pub policy: Policy,
    pub backlog: i32,
    pub command: Option<Vec<std::ffi::OsString>>,
    pub control: PathBuf,
    pub kill_timeout: Duration,
    /// How long a new worker gets to send READY=1 (NOTIFY_SOCKET) before it counts as ready
    /// anyway: during a reload the previous worker of a slot stops only once its successor is
    /// ready.
    pub ready_timeout: Duration,
    /// Slots replaced at once by a reload.
    pub reload_batch: u32,
    /// How long a worker may sit on a non-shrinking accept queue before it is taken out of
    /// rotation; None: never.
    pub stall_timeout: Option<Duration>,
    pub backoff: backoff::Policy,
    /// Where to serve /metrics, /healthz and /readyz; None for off.
    pub metrics: Option<SocketAddr>,
    /// Per-slot weights for the weighted policy; missing ones are 1.
    pub weights: Vec<u32>,
    /// TCP connections or UDP datagrams.
    pub transport: listeners::Transport,
    /// Connections the close tracker follows at once (the `FLOWS` table's size).
    pub flows: u32,
    /// How often the load is compared with what the kernel holds.
    pub reconcile_interval: Duration,
    /// The account workers run as; None: the supervisor's own (minus the BPF capabilities).
    pub credentials: Option<process::Credentials>,
}

struct Slot {
    listener: listeners::Listener,
    pid: Option<Pid>,
    started: Option<Instant>,
    /// Bumped on every start, so that a stale exit or restart event is recognised.
    generation: u64,
    restarts: u64,
    last_exit: Option<String>,
    last_status: Option<ExitStatus>,
    backoff: Backoff,
    given_up: bool,
    stall: StallWatch,
    stalls: u64,
    /// Generation of the current worker once it said it is ready (or its grace ran out).
    ready: u64,
    /// A previous worker still finishing its work during a reload or scale-down.
    retiring: Option<(Pid, u64)>,
}

enum Event {
    Exited {
        slot: u32,
        generation: u64,
        status: std::io::Result<ExitStatus>,
    },
    Restart {
        slot: u32,
        generation: u64,
    },
    /// The worker sent READY=1 on its NOTIFY_SOCKET, or its --ready-timeout ran out.
    Ready {
        slot: u32,
        generation: u64,
    },
    Control(Request, oneshot::Sender<String>),
    /// Connections open in each slot's workers, read on a blocking thread.
    Held(Vec<Option<u64>>),
}

/// Everything the supervisor listens to, in every state: worker events, control requests,
/// metrics scrapes and signals. A reload or a scale in progress keeps listening to all of it
/// (see `pump`), so a stop is heard whatever is under way.
struct Inbox {
    events: mpsc::UnboundedReceiver<Event>,
    asks: mpsc::UnboundedReceiver<Ask>,
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Inbox {
    fn new(
        events: mpsc::UnboundedReceiver<Event>,
        asks: mpsc::UnboundedReceiver<Ask>,
    ) -> Result<Inbox> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Inbox {
            events,
            asks,
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

pub struct Supervisor {
    opts: Options,
    command: WorkerCommand,
    steering: Steering,
    slots: Vec<Slot>,
    events: mpsc::UnboundedSender<Event>,
    asks: mpsc::UnboundedSender<Ask>,
    accounting: Accounting,
    /// A reading of what the workers hold is under way.
    reading_truth: bool,
    /// The workers' descriptors could not be read once already (logged once).
    warned_unreadable: bool,
    /// A signal or `stop` arrived while a reload or scale was under way.
    stop_requested: bool,
    stopping: bool,
}

/// Everything `balancer run` does, from checks to exit.
pub fn run(opts: Options) -> Result<()> {
    // Checks first: nothing is created until every input is known good.
    listeners::check_count(opts.workers)?;
    let command = match &opts.command {
        Some(args) => WorkerCommand::resolve(args.clone())?,
        None => WorkerCommand::builtin()?,
    };
    capabilities::require_bpf()?;
    let workers_as_root = match opts.credentials {
        Some(c) => c.uid == 0,
        None => nix::unistd::geteuid().is_root(),
    };
    capabilities::require_worker_isolation(workers_as_root)?;
    control::prepare_directory(&opts.control)?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let (tx, rx) = mpsc::unbounded_channel();
        let (ask_tx, ask_rx) = mpsc::unbounded_channel();
        // Signals are caught from here on, before any worker starts.
        let inbox = Inbox::new(rx, ask_rx)?;
        let mut sup = Supervisor::start(opts, command, tx, ask_tx).await?;
        sup.serve(inbox).await
    })
}

impl Supervisor {
    async fn start(
        opts: Options,
        command: WorkerCommand,
        events: mpsc::UnboundedSender<Event>,
        asks: mpsc::UnboundedSender<Ask>,
    ) -> Result<Supervisor> {
        let group = listeners::bind_group(opts.listen, opts.transport, opts.workers, opts.backlog)?;
        let mut steering = Steering::load(opts.flows)?;
        for (i, l) in group.iter().enumerate() {
            steering.insert(i as u32, l)?;
            steering
                .slots
                .set_weight(i as u32, opts.weights.get(i).copied().unwrap_or(1));
            steering.set_state(i as u32, SlotState::Down);
        }
        steering.configure(opts.workers, opts.policy)?;
        if opts.transport == listeners::Transport::Tcp {
            steering.track(group[0].local_addr()?.port())?;
        }
        steering.attach(&group[0])?;
        let control = control::bind(&opts.control)?;
        let metrics = match opts.metrics {
            Some(addr) => match metrics::bind(addr).await {
                Ok(l) => Some(l),
                Err(e) => {
                    let _ = std::fs::remove_file(&opts.control);
                    return Err(e);
                }
            },
            None => None,
        };

        let slots = group
            .into_iter()
            .map(|listener| new_slot(listener, opts.backoff))
            .collect();
        let mut sup = Supervisor {
            opts,
            command,
            steering,
            slots,
            events,
            asks,
            accounting: Accounting::default(),
            reading_truth: false,
            warned_unreadable: false,
            stop_requested: false,
            stopping: false,
        };
        tokio::spawn(accept_control(control, sup.events.clone()));
        if let Some(listener) = metrics {
            tokio::spawn(metrics::serve(listener, sup.asks.clone()));
        }
        if let Some(log) = sup.steering.take_log() {
            tokio::spawn(forward_program_log(log));
        }
        for slot in 0..sup.slots.len() as u32 {
            if let Err(e) = sup.start_worker(slot) {
                // No half-started state: the workers already started go, and returning drops
                // the listeners, which detaches the program.
                sup.stopping = true;
                sup.signal_all(Signal::SIGKILL);
                let _ = std::fs::remove_file(&sup.opts.control);
                return Err(e);
            }
        }
        // Everything privileged is done: keep only what running the workers needs.
        match capabilities::drop_to_runtime_set() {
            Ok(()) => log::debug!("capabilities lowered to the runtime set"),
            Err(e) => log::warn!("could not lower capabilities: {e}"),
        }
        let listen = sup.slots[0].listener.local_addr()?;
        let up: Vec<String> = sup
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{i}:{}", s.pid.map_or(0, |p| p.as_raw())))
            .collect();
        log::info!(
            "serving on {listen} with {} workers (slot:pid {}), policy {}, worker `{}`",
            sup.slots.len(),
            up.join(" "),
            sup.opts.policy.name(),
            sup.command.display()
        );
        let try_it = match sup.opts.transport {
            listeners::Transport::Tcp => format!("curl http://{}/", try_addr(listen)),
            listeners::Transport::Udp => {
                format!(
                    "echo hi | nc -u -w1 {} {}",
                    try_addr(listen).rsplit_once(':').map_or("", |x| x.0),
                    listen.port()
                )
            }
        };
        log::info!(
            "try: {try_it}   status: balancer status --control {}   stop: Ctrl-C",
            sup.opts.control.display()
        );
        Ok(sup)
    }

    fn start_worker(&mut self, slot: u32) -> Result<()> {
        let s = &mut self.slots[slot as usize];
        // systemd's readiness protocol: the worker may send READY=1 to this (abstract, per
        // worker) datagram socket once it serves.
        let notify_name = format!(
            "balancer/{}/{slot}/{}",
            std::process::id(),
            s.generation + 1
        );
        let notify = notify_socket(&notify_name);
        let child = process::spawn(
            &self.command,
            Spawn {
                slot,
                listener: s.listener.as_fd(),
                credentials: self.opts.credentials,
                notify: notify.as_ref().map(|_| format!("@{notify_name}")),
            },
        )?;
        let pid = Pid::from_raw(
            child
                .id()
                .context("worker exited before it could be tracked")? as i32,
        );
        s.generation += 1;
        s.pid = Some(pid);
        s.started = Some(Instant::now());
        s.stall.reset();
        // The slot's state is left as it is (down, or up with the worker being replaced): it
        // becomes up when this worker is ready, so a worker that dies at start (a crash loop)
        // is never sent a connection.
        let generation = s.generation;
        let events = self.events.clone();
        let ready_timeout = self.opts.ready_timeout;
        let ready_events = self.events.clone();
        tokio::spawn(async move {
            let said_ready = async {
                let Some(socket) = notify else {
                    return std::future::pending().await;
                };
                loop {
                    if let Some(true) = notify_from(&socket, pid).await {
                        return;
                    }
                }
            };
            tokio::select! {
                _ = said_ready => {}
                _ = tokio::time::sleep(ready_timeout) => {}
            }
            let _ = ready_events.send(Event::Ready { slot, generation });
        });
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

    async fn serve(&mut self, mut inbox: Inbox) -> Result<()> {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut reconcile = tokio::time::interval(self.opts.reconcile_interval);
        reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !self.stop_requested {
            tokio::select! {
                _ = tick.tick(), if self.opts.stall_timeout.is_some() => self.watch_stalls(),
                _ = reconcile.tick() => self.reconcile(),
                _ = inbox.int.recv() => break,
                _ = inbox.term.recv() => break,
                _ = inbox.hup.recv() => {
                    let outcome = self.reload(&mut inbox).await;
                    log::info!("reload (SIGHUP): {outcome}");
                }
                Some(ask) = inbox.asks.recv() => self.answer(ask),
                Some(event) = inbox.events.recv() => match event {
                    Event::Exited { slot, generation, status } => self.on_exit(slot, generation, status),
                    Event::Restart { slot, generation } => self.on_restart(slot, generation),
                    Event::Ready { slot, generation } => self.on_ready(slot, generation),
                    Event::Held(held) => self.on_held(held),
                    Event::Control(Request::Reload, reply) => {
                        let outcome = self.reload(&mut inbox).await;
                        let _ = reply.send(outcome);
                    }
                    Event::Control(Request::Scale(n), reply) => {
                        let outcome = self.scale(n, &mut inbox).await;
                        let _ = reply.send(outcome);
                    }
                    Event::Control(Request::Status, reply) => {
                        let _ = reply.send(serde_json::to_string(&self.status())?);
                    }
                    Event::Control(Request::Stop, reply) => {
                        let _ = reply.send("{\"stopping\":true}".into());
                        break;
                    }
                    Event::Control(Request::Policy(policy), reply) => {
                        let _ = reply.send(self.set_policy(policy));
                    }
                    Event::Control(Request::Weight { slot, weight }, reply) => {
                        let _ = reply.send(self.set_weight(slot, weight));
                    }
                },
            }
        }
        log::info!("stopping: no new connections are steered, workers get SIGTERM");
        let clean = self.stop_with(&mut inbox).await;
        if clean {
            Ok(())
        } else {
            anyhow::bail!("some workers had to be killed after --kill-timeout")
        }
    }

    fn on_exit(&mut self, slot: u32, generation: u64, status: std::io::Result<ExitStatus>) {
        let Some(s) = self.slots.get_mut(slot as usize) else {
            return;
        };
        if let Some((pid, g)) = s.retiring {
            if g == generation {
                log::info!("slot {slot}: previous worker {pid} {}", describe(&status));
                s.retiring = None;
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
        s.pid = None;
        s.started = None;
        s.last_exit = Some(reason.clone());
        s.last_status = status.as_ref().ok().copied();
        if self.stopping {
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

    /// Gives `slot` a new, empty listener and closes the old one: the kernel runs the program's
    /// migrate path for each connection queued on the old one.
    fn replace_listener(&mut self, slot: u32) -> Result<()> {
        let s = &self.slots[slot as usize];
        let addr = s.listener.local_addr()?;
        let backlog = nix::sys::socket::Backlog::new(self.opts.backlog)?;
        let fresh = listeners::bind_one(addr, self.opts.transport, backlog)?;
        self.steering.insert(slot, &fresh)?;
        let old = std::mem::replace(&mut self.slots[slot as usize].listener, fresh);
        // Each queued connection moves, with its count, through the program's migrate path.
        drop(old);
        Ok(())
    }

    fn on_ready(&mut self, slot: u32, generation: u64) {
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

    /// Handles events while a reload or scale is under way: exits, restarts and readiness as
    /// usual, status answered, other control requests refused as busy.
    fn on_busy_event(&mut self, event: Event) {
        match event {
            Event::Exited {
                slot,
                generation,
                status,
            } => self.on_exit(slot, generation, status),
            Event::Restart { slot, generation } => self.on_restart(slot, generation),
            Event::Ready { slot, generation } => self.on_ready(slot, generation),
            Event::Held(held) => self.on_held(held),
            Event::Control(Request::Status, reply) => {
                let _ = reply.send(serde_json::to_string(&self.status()).unwrap_or_default());
            }
            Event::Control(Request::Stop, reply) => {
                self.stop_requested = true;
                let _ = reply.send("{\"stopping\":true}".into());
            }
            Event::Control(_, reply) => {
                let _ = reply.send(
                    "error: busy: a reload or scale is under way; try again when it ends".into(),
                );
            }
        }
    }

    /// Processes events until `done` holds or `within` passes; returns whether `done` held.
    /// Returns false at once when a stop is requested (a signal, or `stop`): the operation in
    /// progress then gives up, and the supervisor stops.
    async fn pump(
        &mut self,
        inbox: &mut Inbox,
        within: Duration,
        done: impl Fn(&Supervisor) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let mut reconcile = tokio::time::interval(self.opts.reconcile_interval);
        reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
            tokio::select! {
                Some(event) = inbox.events.recv() => self.on_busy_event(event),
                Some(ask) = inbox.asks.recv() => self.answer(ask),
                _ = inbox.int.recv() => self.stop_requested = true,
                _ = inbox.term.recv() => self.stop_requested = true,
                _ = inbox.hup.recv() => log::info!("SIGHUP: a reload or scale is already under way"),
                _ = reconcile.tick() => self.reconcile(),
                _ = tick.tick() => {}
            }
        }
    }

    /// Stops the previous workers of `slots`: SIGTERM, then SIGKILL after --kill-timeout;
    /// returns once they have exited.
    async fn retire(&mut self, slots: &[u32], inbox: &mut Inbox) {
        let pids: Vec<Pid> = slots
            .iter()
            .filter_map(|&s| self.slots[s as usize].retiring.map(|r| r.0))
            .collect();
        for &pid in &pids {
            let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
        }
        let gone = |s: &Supervisor| {
            slots
                .iter()
                .all(|&x| s.slots[x as usize].retiring.is_none())
        };
        if !self.pump(inbox, self.opts.kill_timeout, gone).await && !self.stop_requested {
            for &slot in slots {
                if let Some((pid, _)) = self.slots[slot as usize].retiring {
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
    async fn reload(&mut self, inbox: &mut Inbox) -> String {
        if let Some(args) = &self.opts.command {
            match WorkerCommand::resolve(args.clone()) {
                Ok(c) => self.command = c,
                Err(e) => return format!("error: {e:#}; the running workers were kept"),
            }
        }
        let n = self.slots.len() as u32;
        let batch = self.opts.reload_batch.max(1) as usize;
        log::info!("reload: replacing {n} workers, {batch} at a time");
        let all: Vec<u32> = (0..n).collect();
        for chunk in all.chunks(batch) {
            let mut started = Vec::new();
            for &slot in chunk {
                let s = &mut self.slots[slot as usize];
                s.given_up = false;
                s.backoff = Backoff::new(self.opts.backoff);
                let old = s.pid.map(|pid| (pid, s.generation));
                s.retiring = old;
                if let Err(e) = self.start_worker(slot) {
                    self.slots[slot as usize].retiring = None;
                    return format!("error: slot {slot}: {e:#}; slots before it were reloaded");
                }
                started.push((slot, self.slots[slot as usize].generation, old));
            }
            let settled = |s: &Supervisor| {
                started.iter().all(|&(slot, g, _)| {
                    let x = &s.slots[slot as usize];
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
                return STOPPED_MIDWAY.into();
            }
            let mut failed = None;
            let mut retire = Vec::new();
            for &(slot, g, old) in &started {
                let x = &self.slots[slot as usize];
                if x.ready == g && x.generation == g && x.pid.is_some() {
                    retire.push(slot);
                    continue;
                }
                // The new worker died (or never got ready): keep the old one serving.
                let reason = x
                    .last_exit
                    .clone()
                    .unwrap_or_else(|| "did not get ready".into());
                if let Some(new) = x.pid.filter(|_| x.generation == g) {
                    let _ = nix::sys::signal::kill(new, Signal::SIGKILL);
                }
                if let Some((pid, generation)) = old {
                    let x = &mut self.slots[slot as usize];
                    x.retiring = None;
                    x.pid = Some(pid);
                    x.generation = generation;
                    self.steering.set_state(slot, SlotState::Up);
                    self.steering.refresh_sticky(self.opts.workers);
                }
                failed.get_or_insert(format!(
                    "error: reload stopped at slot {slot}: the new worker {reason}; the previous worker keeps serving"
                ));
            }
            self.retire(&retire, inbox).await;
            if self.stop_requested {
                return STOPPED_MIDWAY.into();
            }
            if let Some(e) = failed {
                return e;
            }
        }
        log::info!("reload: done");
        serde_json::json!({ "reloaded": n }).to_string()
    }

    /// Changes the number of slots. Adding is immediate: a new listener joins the group and its
    /// worker starts. Removing drains: the slot stops receiving, its worker empties its accept
    /// queue and finishes in-flight work, and only then is its listener closed (a connection
    /// that still arrives in that instant is moved to another listener by the program's
    /// migrate path, not reset).
    async fn scale(&mut self, n: u32, inbox: &mut Inbox) -> String {
        if let Err(e) = listeners::check_count(n) {
            return format!("error: {e:#}");
        }
        let old = self.slots.len() as u32;
        if n > old {
            let addr = match self.slots[0].listener.local_addr() {
                Ok(a) => a,
                Err(e) => return format!("error: {e:#}"),
            };
            let backlog =
                nix::sys::socket::Backlog::new(self.opts.backlog).expect("checked at start");
            for slot in old..n {
                let listener = match listeners::bind_one(addr, self.opts.transport, backlog) {
                    Ok(l) => l,
                    Err(e) => return format!("error: slot {slot}: {e:#}"),
                };
                self.accounting.reset(&self.steering.slots, slot);
                if let Err(e) = self.steering.insert(slot, &listener) {
                    return format!("error: {e:#}");
                }
                self.steering.set_state(slot, SlotState::Down);
                self.steering.slots.set_weight(slot, 1);
                self.slots.push(new_slot(listener, self.opts.backoff));
                self.opts.workers = slot + 1;
                if let Err(e) = self
                    .steering
                    .configure(self.opts.workers, self.steering.policy())
                {
                    return format!("error: {e:#}");
                }
                if let Err(e) = self.start_worker(slot) {
                    return format!("error: slot {slot}: {e:#}");
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
                    x.pid.is_none() || x.listener.queued().unwrap_or(0) == 0
                })
                .await;
            if !drained {
                log::warn!(
                    "slot {slot}: queue not empty after {:?}; closing it moves the rest to other slots",
                    self.opts.kill_timeout
                );
            }
            let s = &mut self.slots[slot as usize];
            s.retiring = s.pid.take().map(|pid| (pid, s.generation));
            if self.stop_requested {
                return STOPPED_MIDWAY.into();
            }
            self.retire(&[slot], inbox).await;
            if self.stop_requested {
                return STOPPED_MIDWAY.into();
            }
            let _ = self.steering.remove(slot);
            self.slots.pop(); // closes the listener
            self.steering.set_state(slot, SlotState::Down);
            // Its queue migrated with its counts; whatever it still counted left with it.
            self.accounting.reset(&self.steering.slots, slot);
            self.opts.workers = slot;
            if let Err(e) = self
                .steering
                .configure(self.opts.workers, self.steering.policy())
            {
                return format!("error: {e:#}");
            }
            self.steering.refresh_sticky(self.opts.workers);
        }
        log::info!("scale: {old} -> {n} slots");
        serde_json::json!({ "slots": n }).to_string()
    }

    fn on_restart(&mut self, slot: u32, generation: u64) {
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

    fn status(&self) -> Status {
        let stats = self.steering.stats();
        let mut program = stats::NAMES
            .iter()
            .zip(stats)
            .map(|(n, v)| (n.to_string(), v))
            .collect::<BTreeMap<_, _>>();
        // Non-zero only while kernel.bpf_stats_enabled=1.
        let (run_time_ns, run_count) = self.steering.run_stats();
        program.insert("run_time_ns".into(), run_time_ns);
        program.insert("run_count".into(), run_count);
        let (tracker_ns, tracker_runs) = self.steering.tracker_run_stats();
        program.insert("tracker_run_time_ns".into(), tracker_ns);
        program.insert("tracker_run_count".into(), tracker_runs);
        let slots = self
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let i = i as u32;
                let book = self.accounting.book(i);
                let state = if s.given_up {
                    "failed"
                } else {
                    self.steering.slots.state(i).name()
                };
                SlotStatus {
                    slot: i,
                    state: state.into(),
                    pid: s.pid.map(|p| p.as_raw() as u32),
                    load: self.steering.load_of(i),
                    assigned: self.steering.slots.assigned(i),
                    closed: self.steering.slots.closed(i),
                    open: book.truth.held,
                    corrections: book.corrections,
                    queued: s.listener.queued().unwrap_or(0),
                    restarts: s.restarts,
                    stalls: s.stalls,
                    uptime_seconds: s.started.map(|t| t.elapsed().as_secs_f64()),
                    last_exit: s.last_exit.clone(),
                    last_exit_code: s.last_status.and_then(|st| st.code()),
                    last_exit_signal: s.last_status.and_then(|st| st.signal()),
                }
            })
            .collect();
        Status {
            pid: std::process::id(),
            listen: self.slots[0]
                .listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            policy: self.steering.policy().name().into(),
            command: self.command.display(),
            slots,
            program,
        }
    }

    /// Starts reading what each slot's workers hold, on a blocking thread (it walks /proc and
    /// asks sock_diag); the answer comes back as [`Event::Held`]. One reading at a time.
    fn reconcile(&mut self) {
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
    fn on_held(&mut self, held: Vec<Option<u64>>) {
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

    /// Takes stalled workers out of rotation and puts them back once they accept again.
    fn watch_stalls(&mut self) {
        let Some(timeout) = self.opts.stall_timeout else {
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

    /// Switches the policy by rewriting the program's configuration: the next connection is
    /// steered by the new policy; workers and open connections are untouched.
    fn set_policy(&mut self, policy: Policy) -> String {
        if policy == Policy::Sticky {
            self.steering.refresh_sticky(self.opts.workers);
        }
        match self.steering.configure(self.slots.len() as u32, policy) {
            Ok(()) => {
                log::info!("policy is now {}", policy.name());
                serde_json::json!({ "policy": policy.name() }).to_string()
            }
            Err(e) => format!("error: {e:#}"),
        }
    }

    fn set_weight(&mut self, slot: u32, weight: u32) -> String {
        if slot as usize >= self.slots.len() {
            return format!(
                "error: no slot {slot}: slots are 0 to {}",
                self.slots.len() - 1
            );
        }
        self.steering.slots.set_weight(slot, weight);
        log::info!("slot {slot}: weight {weight}");
        serde_json::json!({ "slot": slot, "weight": weight }).to_string()
    }

    fn answer(&self, ask: Ask) {
        match ask {
            Ask::Metrics(reply) => {
                let _ = reply.send(metrics::render(metrics::Snapshot {
                    status: self.status(),
                    process: metrics::Process::read(),
                }));
            }
            Ask::Status(reply) => {
                let _ = reply.send(self.status());
            }
        }
    }

    /// Sends `sig` to every worker, retiring ones (a reload or scale cut short) included.
    fn signal_all(&self, sig: Signal) {
        for s in &self.slots {
            for pid in s.pid.iter().chain(s.retiring.as_ref().map(|r| &r.0)) {
                let _ = nix::sys::signal::kill(*pid, sig);
            }
        }
    }

    fn running(&self) -> usize {
        self.slots
            .iter()
            .map(|s| s.pid.is_some() as usize + s.retiring.is_some() as usize)
            .sum()
    }

    /// Marks every slot down, sends SIGTERM, waits up to the kill timeout (a second Ctrl-C cuts
    /// it short), then SIGKILLs the rest. Returns whether every worker stopped by itself.
    async fn stop_with(&mut self, inbox: &mut Inbox) -> bool {
        self.stopping = true;
        for i in 0..self.slots.len() as u32 {
            self.steering.set_state(i, SlotState::Down);
        }
        // New connections are refused from here on; handshakes already under way complete
        // into the queues within a round trip, which the pause covers, and the workers then
        // serve everything queued before they exit.
        if let Err(e) = self.steering.refuse_new() {
            log::warn!("{e:#}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.signal_all(Signal::SIGTERM);
        let deadline = tokio::time::sleep(self.opts.kill_timeout);
        tokio::pin!(deadline);
        let mut clean = true;
        while self.running() > 0 {
            tokio::select! {
                Some(event) = inbox.events.recv() => match event {
                    Event::Exited { slot, generation, status } => self.on_exit(slot, generation, status),
                    Event::Control(_, reply) => { let _ = reply.send("{\"stopping\":true}".into()); }
                    Event::Restart { .. } | Event::Ready { .. } | Event::Held(_) => {}
                },
                _ = &mut deadline, if clean => {
                    log::warn!("{} workers still running after {:?}: SIGKILL", self.running(), self.opts.kill_timeout);
                    self.signal_all(Signal::SIGKILL);
                    clean = false;
                }
                _ = inbox.int.recv(), if clean => {
                    log::warn!("second interrupt: SIGKILL");
                    self.signal_all(Signal::SIGKILL);
                    clean = false;
                }
            }
        }
        let _ = std::fs::remove_file(&self.opts.control);
        log::info!("stopped");
        clean
    }
}

fn new_slot(listener: listeners::Listener, backoff: backoff::Policy) -> Slot {
    Slot {
        listener,
        pid: None,
        started: None,
        generation: 0,
        restarts: 0,
        last_exit: None,
        last_status: None,
        backoff: Backoff::new(backoff),
        given_up: false,
        stall: StallWatch::default(),
        stalls: 0,
        ready: 0,
        retiring: None,
    }
}

/// Binds the abstract datagram socket a worker may send READY=1 to. None if it cannot be
/// bound: the worker is then ready after --ready-timeout.
fn notify_socket(name: &str) -> Option<tokio::net::UnixDatagram> {
    use std::os::linux::net::SocketAddrExt as _;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).ok()?;
    let socket = std::os::unix::net::UnixDatagram::bind_addr(&addr).ok()?;
    socket.set_nonblocking(true).ok()?;
    // The kernel then attaches the sender's credentials to every datagram.
    nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::PassCred, &true).ok()?;
    tokio::net::UnixDatagram::from_std(socket).ok()
}

/// Waits for the next datagram on a worker's NOTIFY_SOCKET: Some(true) if it says READY=1 and
/// comes from `worker` itself (an abstract socket can be reached by any local process, so the
/// kernel's SCM_CREDENTIALS decide), Some(false) for any other datagram, None on an error.
async fn notify_from(socket: &tokio::net::UnixDatagram, worker: Pid) -> Option<bool> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
    use std::os::fd::AsRawFd as _;
    let mut buf = [0u8; 512];
    socket
        .async_io(tokio::io::Interest::READABLE, || {
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let mut space = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
            let msg = recvmsg::<UnixAddr>(
                socket.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_DONTWAIT,
            )
            .map_err(std::io::Error::from)?;
            let sender = msg.cmsgs().ok().and_then(|mut c| {
                c.find_map(|m| match m {
                    ControlMessageOwned::ScmCredentials(creds) => Some(creds.pid()),
                    _ => None,
                })
            });
            let text = msg.iovs().next().map(<[u8]>::to_vec).unwrap_or_default();
            Ok(sender == Some(worker.as_raw())
                && text.split(|&b| b == b'\n').any(|l| l == b"READY=1"))
        })
        .await
        .ok()
}

fn describe(status: &std::io::Result<ExitStatus>) -> String {
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

fn try_addr(listen: SocketAddr) -> String {
    if listen.ip().is_unspecified() {
        format!("localhost:{}", listen.port())
    } else {
        listen.to_string()
    }
}

async fn accept_control(listener: tokio::net::UnixListener, events: mpsc::UnboundedSender<Event>) {
    loop {
        let mut stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                listeners::after_accept_error("control socket", &e).await;
                continue;
            }
        };
        let events = events.clone();
        tokio::spawn(async move {
            let answer = match control::read_request(&mut stream).await {
                Ok(request) => {
                    let (tx, rx) = oneshot::channel();
                    if events.send(Event::Control(request, tx)).is_err() {
                        return;
                    }
                    rx.await
                        .unwrap_or_else(|_| "error: supervisor is stopping".into())
                }
                Err(e) => format!("error: {e}"),
            };
            control::reply(&mut stream, &answer).await;
        });
    }
}

/// Copies the program's records into the supervisor's log as they arrive.
async fn forward_program_log(log: crate::program::ProgramLog) {
    // SAFETY: the logger owns its ring buffer fd for as long as the AsyncFd lives.
    let Ok(mut fd) = (unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(log, tokio::io::Interest::READABLE)
    }) else {
        return;
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
