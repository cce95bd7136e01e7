//! Starting: the listening group is bound and the programs loaded and attached, the control
//! socket and the metrics endpoint start serving, then the first worker of every slot, and the
//! supervisor says where it serves. Nothing half-started is left behind when a step fails.

use std::net::SocketAddr;

use balancer_common::SlotState;
use nix::sys::signal::Signal;
use tokio::sync::mpsc;

use super::{
    error::{Error, Result},
    events::Event,
    inbox, messaging, truth,
    worker_slot::WorkerSlot,
    Metrics, Options, Phase, Supervisor,
};
use crate::{
    capabilities, control,
    kernel::Steering,
    listeners,
    logs::Logs,
    metrics::{self, Ask},
    rules::accounting::Accounting,
    worker::spawn::WorkerCommand,
};

impl Supervisor {
    pub(super) async fn start(
        opts: Options,
        command: WorkerCommand,
        logs: Logs,
        events: mpsc::UnboundedSender<Event>,
        asks: mpsc::UnboundedSender<Ask>,
    ) -> Result<Supervisor> {
        let group = listeners::bind_group(opts.listen, opts.transport, opts.workers, opts.backlog)
            .map_err(Error::listeners)?;
        let (steering, overflow) = steer(&opts, &group)?;
        let control = control::bind(&opts.control).map_err(|e| Error::Control(e.into()))?;
        let metrics = match opts.metrics {
            Some(m) => match bind_metrics(m).await {
                Ok(l) => Some(l),
                Err(e) => {
                    let _ = std::fs::remove_file(&opts.control);
                    return Err(e);
                }
            },
            None => None,
        };
        let metrics_addr = metrics.as_ref().and_then(|l| l.local_addr().ok());

        let channel = opts.channel;
        let slots = group
            .into_iter()
            .map(|listener| WorkerSlot::new(listener, opts.backoff))
            .collect();
        let readings = truth::Readings::new(opts.reconcile_interval);
        let mut sup = Supervisor {
            opts,
            command,
            steering,
            slots,
            overflow,
            events,
            asks,
            accounting: Accounting::default(),
            readings,
            phase: Phase::Serving,
            stop_requested: false,
            logs,
            metrics_addr,
            memory_reads: Default::default(),
            messaging: messaging::Messaging::new(channel),
        };
        tokio::spawn(inbox::accept_control(
            control,
            sup.events.clone(),
            sup.logs.clone(),
            sup.messaging.store.clone(),
        ));
        if let Some(listener) = metrics {
            tokio::spawn(metrics::serve(listener, sup.asks.clone()));
        }
        if let Some(log) = sup.steering.take_log() {
            tokio::spawn(crate::kernel::forward_log(log));
        }
        sup.start_workers()?;
        // Everything privileged is done: keep only what running the workers needs.
        match capabilities::drop_to_runtime_set() {
            Ok(()) => log::debug!("capabilities lowered to the runtime set"),
            Err(e) => log::warn!("could not lower capabilities: {e}"),
        }
        sup.announce()?;
        sup.opts.identity.announce();
        Ok(sup)
    }

    /// The first worker of every slot.
    fn start_workers(&mut self) -> Result<()> {
        for slot in 0..self.slots.len() as u32 {
            if let Err(e) = self.start_worker(slot) {
                // No half-started state: the workers already started go, and returning drops
                // the listeners, which detaches the program.
                self.phase = Phase::Stopping;
                self.signal_all(Signal::SIGKILL);
                let _ = std::fs::remove_file(&self.opts.control);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Says, once everything runs, where it serves and how to try it.
    fn announce(&self) -> Result<()> {
        let listen = self.slots[0]
            .listener
            .local_addr()
            .map_err(Error::listeners)?;
        let up: Vec<String> = self
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{i}:{}", s.worker.pid.map_or(0, |p| p.as_raw())))
            .collect();
        log::info!(
            "serving on {listen} with {} workers (slot:pid {}), policy {}, worker `{}`",
            self.slots.len(),
            up.join(" "),
            self.opts.policy.name(),
            self.command.display()
        );
        let try_it = match self.opts.transport {
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
            self.opts.control.display()
        );
        Ok(())
    }
}

/// Loads the programs for `group`, every slot down until its worker is ready, and attaches
/// them; with `--overflow`, binds the shared overflow listener too.
fn steer(
    opts: &Options,
    group: &[listeners::Listener],
) -> Result<(Steering, Option<listeners::Listener>)> {
    let mut steering = Steering::load(opts.flows).map_err(Error::kernel)?;
    // First: marking each listener's connections as counted or not reads the policy.
    steering
        .configure(opts.workers, opts.policy)
        .map_err(Error::kernel)?;
    for (i, l) in group.iter().enumerate() {
        steering.insert(i as u32, l).map_err(Error::kernel)?;
        steering
            .slots
            .set_weight(i as u32, opts.weights.get(i).copied().unwrap_or(1));
        steering.set_state(i as u32, SlotState::Down);
    }
    let addr = group[0].local_addr().map_err(Error::listeners)?;
    if opts.transport == listeners::Transport::Tcp {
        let backlog = listeners::effective_backlog(opts.backlog);
        steering
            .track(addr.port(), backlog)
            .map_err(Error::kernel)?;
    }
    steering
        .set_probing(opts.health.is_some())
        .map_err(Error::kernel)?;
    let overflow = if opts.overflow {
        let backlog = listeners::Backlog::new(opts.backlog).map_err(Error::listeners)?;
        let listener =
            listeners::bind_one(addr, opts.transport, backlog).map_err(Error::listeners)?;
        steering
            .enable_overflow(&listener, listeners::effective_backlog(opts.backlog))
            .map_err(Error::kernel)?;
        Some(listener)
    } else {
        None
    };
    steering.attach(&group[0]).map_err(Error::kernel)?;
    Ok((steering, overflow))
}

/// Binds the metrics endpoint: where --metrics says, or by default 127.0.0.1:9464, and a free
/// loopback port when another balancer of this host already serves there.
async fn bind_metrics(m: Metrics) -> Result<tokio::net::TcpListener> {
    let bind = |addr| async move {
        metrics::bind(addr)
            .await
            .map_err(|e| Error::Metrics(e.into()))
    };
    match m {
        Metrics::At(addr) => bind(addr).await,
        Metrics::Default => {
            let addr = SocketAddr::from(([127, 0, 0, 1], metrics::DEFAULT_PORT));
            match bind(addr).await {
                Ok(l) => Ok(l),
                Err(_) => {
                    let l = bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
                    log::info!(
                        "metrics port {} is taken (another balancer?): /metrics is on {} \
                         (`balancer ls` shows it; --metrics picks one)",
                        metrics::DEFAULT_PORT,
                        l.local_addr()?
                    );
                    Ok(l)
                }
            }
        }
    }
}

fn try_addr(listen: SocketAddr) -> String {
    if listen.ip().is_unspecified() {
        format!("localhost:{}", listen.port())
    } else {
        listen.to_string()
    }
}
