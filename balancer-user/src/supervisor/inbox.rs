//! Everything the supervisor listens to, as one stream of [`Input`]s: worker events (from the
//! tasks that wait on each worker), control requests (from the control socket's connections),
//! metrics scrapes, SIGINT, SIGTERM and SIGHUP, and the two timers. Signals are caught from the
//! moment the inbox exists, before any worker starts.

use std::time::Duration;

use tokio::{
    signal::unix::{signal, Signal, SignalKind},
    sync::{mpsc, oneshot},
    time::{interval, Interval, MissedTickBehavior},
};

use super::{error::Result, events::Event};
use crate::{
    channel::request::ChannelRequest,
    control::{self, Request},
    listeners,
    logs::Logs,
    metrics::Ask,
};

/// How often stalled workers are looked for.
const STALL_TICK: Duration = Duration::from_millis(100);

/// One input, in the order they arrive.
pub enum Input {
    Event(Event),
    Ask(Ask),
    Interrupt,
    Terminate,
    Hangup,
    /// Time to look for stalled workers.
    StallTick,
    /// Time to compare the loads with what the kernel holds.
    ReconcileTick,
    /// Time to probe the workers' health.
    HealthTick,
}

pub struct Inbox {
    events: mpsc::UnboundedReceiver<Event>,
    asks: mpsc::UnboundedReceiver<Ask>,
    int: Signal,
    term: Signal,
    hup: Signal,
    stalls: Interval,
    reconcile: Interval,
    /// None without health checks.
    health: Option<Interval>,
}

impl Inbox {
    pub fn new(
        events: mpsc::UnboundedReceiver<Event>,
        asks: mpsc::UnboundedReceiver<Ask>,
        reconcile_every: Duration,
        health_every: Option<Duration>,
    ) -> Result<Inbox> {
        let mut stalls = interval(STALL_TICK);
        stalls.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut reconcile = interval(reconcile_every);
        reconcile.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ok(Inbox {
            events,
            asks,
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
            stalls,
            reconcile,
            health: health_every.map(|every| {
                let mut i = interval(every);
                i.set_missed_tick_behavior(MissedTickBehavior::Delay);
                i
            }),
        })
    }

    /// The next input. Cancel-safe (every source is), so a caller may race it with a timer.
    pub async fn next(&mut self) -> Input {
        // The supervisor holds a sender of both channels for its whole life: they never close.
        tokio::select! {
            Some(event) = self.events.recv() => Input::Event(event),
            Some(ask) = self.asks.recv() => Input::Ask(ask),
            _ = self.int.recv() => Input::Interrupt,
            _ = self.term.recv() => Input::Terminate,
            _ = self.hup.recv() => Input::Hangup,
            _ = self.stalls.tick() => Input::StallTick,
            _ = self.reconcile.tick() => Input::ReconcileTick,
            _ = async { self.health.as_mut()?.tick().await; Some(()) }, if self.health.is_some() => Input::HealthTick,
        }
    }
}

/// Serves the control socket: each connection's request becomes an [`Event::Control`], and the
/// supervisor's answer goes back on the same connection.
pub async fn accept_control(
    listener: tokio::net::UnixListener,
    events: mpsc::UnboundedSender<Event>,
    logs: Logs,
    messages: crate::channel::Store,
) {
    loop {
        let mut stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                listeners::after_accept_error("control socket", &e).await;
                continue;
            }
        };
        let events = events.clone();
        let logs = logs.clone();
        let messages = messages.clone();
        tokio::spawn(async move {
            let request = control::read_request(&mut stream).await;
            // Once the request is read, so that the peer gets the refusal rather than a reset.
            if let Some(refusal) = control::peer::refusal(&stream) {
                return control::reply(&mut stream, &refusal).await;
            }
            let answer = match request {
                // Served here: the lines are the log store's, not the loop's to hand out.
                Ok(Request::Logs {
                    slot,
                    lines,
                    follow,
                }) => {
                    control::serve_logs(&mut stream, &logs, slot, lines, follow).await;
                    return;
                }
                // The same for what the workers sent.
                Ok(Request::Channel(ChannelRequest::Messages { slot, follow })) => {
                    crate::channel::received::serve(&mut stream, &messages, slot, follow).await;
                    return;
                }
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
