//! The supervisor: owns the listeners and the programs, starts one worker per slot, restarts
//! workers that exit, answers the control socket, and stops everything in order.
//!
//! # One loop, one dispatcher
//!
//! Everything the supervisor does is an answer to one input at a time from its [`Inbox`]: a
//! worker exited, a restart delay ran out, a worker said READY=1, a reading of what the kernel
//! holds came back, a control request, a metrics scrape, a signal, a timer tick.
//! [`Supervisor::handle`] is the one place that decides what an input means, and every phase
//! hears every input through it:
//!
//! - **serving**: the ordinary state. A `reload` or `scale` request (or SIGHUP) starts that
//!   operation, and so does a worker due for [`recycle`]-ing; SIGINT, SIGTERM or `stop` stops.
//! - **busy**: a [`reload`], [`scale`] or recycle is under way. It waits for its workers through
//!   [`Supervisor::pump`], which goes on handling inputs: a worker that dies is restarted,
//!   `status` answers, and a signal or `stop` cuts the operation short (systemd's stop timeout
//!   never has to wait for a reload). Requests that would start another operation are refused
//!   as busy.
//! - **stopping**: the workers got SIGTERM ([`shutdown`]); exits are reaped, `status` still
//!   answers, a second Ctrl-C kills what is left.
//!
//! # Rooms
//!
//! [`start`]: binding, loading the programs, the first workers. [`lifecycle`]: one slot's
//! lifecycle (start, ready, exit, backoff, restart) over a [`worker_slot`], whose parts each
//! room keeps its own record of. [`readiness`]: the READY=1 protocol. [`reload`] and
//! [`scale`]: the operations that replace or add and remove workers; [`recycle`]: replacing
//! one for its memory or its requests. [`health_checks`]: probing each worker through its own
//! listener. [`truth`]: reading what the kernel holds, for the
//! [accounting](crate::rules::accounting). [`stall_checks`]: taking a worker that stopped
//! accepting out of rotation. [`answers`]: status, metrics, policy and weight. [`shutdown`]: the
//! ordered stop. [`messaging`]: the workers' message channels, `balancer send` and `balancer
//! signal`. [`events`]: what the rooms' tasks tell the loop, and [`inbox`]: everything it
//! listens to. The rules each room asks are in [`crate::rules`]; what fails is an [`Error`].
//!
//! It runs on a single thread. Besides being all it needs, this matters for correctness: a
//! child's `PR_SET_PDEATHSIG` fires when the *thread* that forked it exits, so every fork must
//! come from a thread that lives as long as the supervisor.

mod answers;
mod error;
mod events;
mod health_checks;
mod inbox;
mod lifecycle;
mod messaging;
mod orphans;
mod readiness;
mod recycle;
mod reload;
mod scale;
mod shutdown;
mod stall_checks;
mod start;
mod truth;
mod worker_slot;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use balancer_common::Policy;
use tokio::sync::{mpsc, oneshot};

pub use self::error::Error;
use self::error::Result;
pub use self::health_checks::Check;
use self::{
    events::Event,
    inbox::{Inbox, Input},
    worker_slot::WorkerSlot,
};
pub use crate::rules::recycling::Limits;
use crate::{
    capabilities,
    control::{self, Request},
    kernel::Steering,
    listeners,
    logs::{self, Logs},
    metrics::Ask,
    rules::{accounting::Accounting, backoff, recycling::Reason},
    worker::spawn::WorkerCommand,
};

/// The answer to a reload or scale that a stop cut short.
const STOPPED_MIDWAY: &str = "error: stopping: a signal or `stop` arrived, so this was cut short";

/// The answer to a request that would start an operation while another is under way.
const BUSY: &str = "error: busy: a reload or scale is under way; try again when it ends";

/// The answer to any request but `status` once stopping.
const STOPPING: &str = "{\"stopping\":true}";

pub struct Options {
    pub listen: SocketAddr,
    pub workers: u32,
    pub policy: Policy,
    pub backlog: i32,
    /// Workers also get the shared overflow listener (`--overflow`).
    pub overflow: bool,
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
    pub metrics: Option<Metrics>,
    /// This service's name (`balancer ls`, `--name`).
    pub name: String,
    /// Per-slot weights for the weighted policy; missing ones are 1.
    pub weights: Vec<u32>,
    /// TCP connections or UDP datagrams.
    pub transport: listeners::Transport,
    /// Connections the close tracker follows at once (the `FLOWS` table's size).
    pub flows: u32,
    /// How often the load is compared with what the kernel holds.
    pub reconcile_interval: Duration,
    /// Active health checks; None for none.
    pub health: Option<Check>,
    /// When a worker is replaced for its memory or the requests it served.
    pub recycle: Limits,
    /// Where the workers' output goes besides `balancer logs`.
    pub logs: crate::logs::sink::Options,
    /// Who the workers run as.
    pub identity: crate::identity::Identity,
    /// Each worker gets a message channel (`--channel on`).
    pub channel: bool,
}

pub struct Supervisor {
    opts: Options,
    command: WorkerCommand,
    steering: Steering,
    slots: Vec<WorkerSlot>,
    /// The shared overflow listener every worker also gets (`--overflow`).
    overflow: Option<listeners::Listener>,
    events: mpsc::UnboundedSender<Event>,
    asks: mpsc::UnboundedSender<Ask>,
    accounting: Accounting,
    readings: truth::Readings,
    phase: Phase,
    /// A signal or `stop` arrived (while serving, or while a reload or scale was under way).
    stop_requested: bool,
    logs: Logs,
    /// Where /metrics is served, if it is.
    metrics_addr: Option<SocketAddr>,
    memory_reads: recycle::MemoryReads,
    /// The workers' message channels.
    messaging: messaging::Messaging,
}

/// Where the supervisor is in its life (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Serving,
    /// A reload or scale is under way: requests that would start another are refused.
    Busy,
    /// The supervisor is stopping its workers: it steers nothing and restarts nothing.
    Stopping,
}

impl Phase {
    fn busy(self) -> bool {
        self == Phase::Busy
    }

    fn stopping(self) -> bool {
        self == Phase::Stopping
    }
}

/// Where /metrics is served.
#[derive(Clone, Copy, Debug)]
pub enum Metrics {
    /// Given with --metrics: that address or an error.
    At(SocketAddr),
    /// The default, 127.0.0.1:9464, or a free loopback port when another balancer has it.
    Default,
}

/// What the loop does after an input: most inputs are handled in place, the two operations
/// that wait for workers run from the loop itself.
enum Next {
    Continue,
    Reload(Option<oneshot::Sender<String>>),
    Scale(u32, oneshot::Sender<String>),
    /// A worker is due for recycling.
    Recycle(u32, Reason),
    /// A second interrupt while stopping: kill what is left.
    KillNow,
}

/// Everything `balancer run` does, from checks to exit.
pub fn run(mut opts: Options) -> Result<()> {
    // Checks first: nothing is created until every input is known good.
    listeners::check_count(opts.workers).map_err(Error::listeners)?;
    let command = match &opts.command {
        Some(args) => WorkerCommand::resolve(args.clone()),
        None => WorkerCommand::builtin(),
    }
    .map_err(|e| Error::Command(e.into()))?;
    capabilities::require_bpf().map_err(|e| Error::Capabilities(e.into()))?;
    let runtime = control::runtime_dir();
    opts.identity
        .prepare(&runtime, opts.workers, &command)
        .map_err(|e| Error::Identity(e.into()))?;
    orphans::adopt()?;
    control::prepare_directory(&opts.control).map_err(|e| Error::Control(e.into()))?;
    logs::sink::prepare(&opts.logs).map_err(|e| Error::Logs(e.into()))?;
    let (sink, sink_thread) =
        logs::sink::start(opts.logs.clone()).map_err(|e| Error::Logs(e.into()))?;
    let logs = Logs::new(Some(sink));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let outcome = runtime.block_on(async move {
        let (tx, rx) = mpsc::unbounded_channel();
        let (ask_tx, ask_rx) = mpsc::unbounded_channel();
        // Signals are caught from here on, before any worker starts.
        let inbox = Inbox::new(
            rx,
            ask_rx,
            opts.reconcile_interval,
            opts.health.as_ref().map(|h| h.interval),
        )?;
        let mut sup = Supervisor::start(opts, command, logs, tx, ask_tx).await?;
        sup.serve(inbox).await
    });
    drop(runtime);
    // Every sender is gone with the runtime: the log thread writes what it holds, then ends.
    // Bounded, for an output nobody reads.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while !sink_thread.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    outcome
}

impl Supervisor {
    async fn serve(&mut self, mut inbox: Inbox) -> Result<()> {
        while !self.stop_requested {
            let input = inbox.next().await;
            match self.handle(input) {
                Next::Continue | Next::KillNow => {}
                Next::Reload(reply) => {
                    self.phase = Phase::Busy;
                    let outcome = self.reload(&mut inbox).await;
                    self.phase = Phase::Serving;
                    match reply {
                        Some(reply) => {
                            let _ = reply.send(outcome);
                        }
                        None => log::info!("reload (SIGHUP): {outcome}"),
                    }
                }
                Next::Recycle(slot, reason) => {
                    self.phase = Phase::Busy;
                    self.recycle(slot, reason, &mut inbox).await;
                    self.phase = Phase::Serving;
                }
                Next::Scale(n, reply) => {
                    self.phase = Phase::Busy;
                    let outcome = self.scale(n, &mut inbox).await;
                    self.phase = Phase::Serving;
                    let _ = reply.send(outcome);
                }
            }
        }
        log::info!("stopping: no new connections are steered, workers get SIGTERM");
        let clean = self.stop_with(&mut inbox).await;
        if clean {
            Ok(())
        } else {
            Err(Error::Killed)
        }
    }

    /// What an input means, in whichever phase it arrives (see the module docs).
    fn handle(&mut self, input: Input) -> Next {
        match input {
            Input::Event(Event::Exited {
                slot,
                generation,
                status,
            }) => self.on_exit(slot, generation, status),
            Input::Event(Event::Restart { slot, generation }) => self.on_restart(slot, generation),
            Input::Event(Event::Ready { slot, generation }) => self.on_ready(slot, generation),
            Input::Event(Event::Held(held)) => self.on_held(held),
            Input::Event(Event::Probe(probe)) => self.on_probe(probe),
            Input::HealthTick => self.probe_all(),
            Input::Event(Event::Control(request, reply)) => return self.on_request(request, reply),
            Input::Ask(ask) => self.answer(ask),
            Input::Interrupt if self.phase.stopping() => return Next::KillNow,
            Input::Interrupt | Input::Terminate => self.stop_requested = true,
            Input::Hangup if self.phase.stopping() => {}
            Input::Hangup if self.phase.busy() => {
                log::info!("SIGHUP: a reload or scale is already under way")
            }
            Input::Hangup => return Next::Reload(None),
            Input::StallTick => {
                self.watch_stalls();
                orphans::reap(self.slots.iter().flat_map(|s| s.worker.pids()));
                if self.phase == Phase::Serving {
                    if let Some((slot, reason)) = self.due_recycle() {
                        return Next::Recycle(slot, reason);
                    }
                }
            }
            Input::ReconcileTick => self.reconcile(),
        }
        Next::Continue
    }

    fn on_request(&mut self, request: Request, reply: oneshot::Sender<String>) -> Next {
        let answer = match request {
            Request::Status => serde_json::to_string(&self.status()).unwrap_or_default(),
            // The control socket serves these from the log store itself.
            Request::Logs { .. } => "error: `logs` is served by the control socket".into(),
            _ if self.phase.stopping() => STOPPING.into(),
            // Answered at once, during a reload or scale too.
            Request::Channel(request) => self.on_channel_request(request),
            Request::Stop => {
                self.stop_requested = true;
                STOPPING.into()
            }
            _ if self.phase.busy() => BUSY.into(),
            Request::Reload => return Next::Reload(Some(reply)),
            Request::Scale(n) => return Next::Scale(n, reply),
            Request::Policy(policy) => self.set_policy(policy),
            Request::Weight { slot, weight } => self.set_weight(slot, weight),
        };
        let _ = reply.send(answer);
        Next::Continue
    }
}
