//! `balancer send`, `balancer signal` and the workers' channels, the supervisor's side.
//!
//! Each running worker has a [`Link`] (its channel), found by pid. A message goes into the
//! queue of every worker it is for and the answer counts those that took it; nothing waits on a
//! worker. A message sent with `keep` is also remembered, in order, and queued for every worker
//! started afterwards (a restart after a crash, a reload, a scale-up) before anything else, so
//! a configuration change outlives the workers it was sent to. What is kept is bounded so that
//! it always fits in a fresh worker's queue.
//!
//! A signal sent with `balancer signal` is remembered with its time: a worker that exits within
//! `--kill-timeout` of it was asked to, so it is restarted at once and its slot's backoff is
//! left as it was.

use std::{
    collections::HashMap,
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Instant,
};

use nix::{sys::signal::Signal, unistd::Pid};

use super::error::one_line;
use super::{
    error::{Error, Result},
    events::Event,
    Supervisor,
};
use crate::channel::{
    queue::MAX_QUEUED_BYTES,
    request::{ChannelRequest, Outgoing},
    ChannelStatus, Counters, Link, Message, Pair, Peer, Store,
};

/// Messages kept for later workers, at most, and their bytes.
pub(super) const MAX_KEPT: usize = 64;
const MAX_KEPT_BYTES: usize = MAX_QUEUED_BYTES;

/// What the channels of all workers share.
pub(super) struct Messaging {
    /// `--channel on`.
    enabled: bool,
    links: HashMap<Pid, Link>,
    /// Per slot, over all its workers.
    counters: Vec<Arc<Counters>>,
    /// Messages for workers started later: the slot they are for (None: all), in order.
    kept: Vec<(Option<u32>, Message)>,
    kept_bytes: usize,
    /// Workers sent a signal by `balancer signal`, and when.
    signalled: HashMap<Pid, Instant>,
    /// What the workers sent, for `balancer messages`.
    pub(super) store: Store,
}

impl Messaging {
    pub(super) fn new(enabled: bool) -> Messaging {
        Messaging {
            enabled,
            links: HashMap::new(),
            counters: Vec::new(),
            kept: Vec::new(),
            kept_bytes: 0,
            signalled: HashMap::new(),
            store: Store::default(),
        }
    }

    fn counters(&mut self, slot: u32) -> Arc<Counters> {
        while self.counters.len() <= slot as usize {
            self.counters.push(Arc::default());
        }
        self.counters[slot as usize].clone()
    }

    /// A channel for a worker about to start; None with `--channel off`.
    pub(super) fn pair(&self) -> Result<Option<Pair>> {
        self.enabled
            .then(Pair::new)
            .transpose()
            .map_err(|e| Error::Channel(e.into()))
    }

    /// The worker `pid` of `slot` started with `pair`'s other end: its channel opens, and the
    /// kept messages meant for it are its first.
    pub(super) fn link(
        &mut self,
        pair: Pair,
        slot: u32,
        pid: Pid,
        on_ready: Box<dyn Fn() + Send + Sync>,
    ) {
        let peer = Peer {
            slot,
            pid: pid.as_raw() as u32,
            counters: self.counters(slot),
            store: self.store.clone(),
            on_ready,
        };
        match Link::start(pair, peer) {
            Ok(link) => {
                for (_, m) in self
                    .kept
                    .iter()
                    .filter(|(s, _)| s.is_none_or(|s| s == slot))
                {
                    link.push(m.clone());
                }
                self.links.insert(pid, link);
            }
            Err(e) => log::warn!(
                "slot {slot}: worker {pid} has no message channel: {}",
                one_line(&e)
            ),
        }
    }

    /// The worker `pid` exited: its channel closes.
    pub(super) fn unlink(&mut self, pid: Pid) {
        self.links.remove(&pid);
    }

    /// The worker `pid` is being stopped: the end of its channel tells it too (see
    /// [`channel`](crate::channel#nodes-event-loop)).
    pub(super) fn hang_up(&self, pid: Pid) {
        if let Some(link) = self.links.get(&pid) {
            link.hang_up();
        }
    }

    /// Whether the worker `pid`, which just exited, was sent a signal within `within` by
    /// `balancer signal`.
    pub(super) fn asked_to_stop(&mut self, pid: Pid, within: std::time::Duration) -> bool {
        self.signalled
            .remove(&pid)
            .is_some_and(|at| at.elapsed() <= within)
    }

    /// A slot's channel figures for `status`; None with `--channel off`.
    pub(super) fn slot(&self, slot: u32, pid: Option<Pid>) -> Option<ChannelStatus> {
        if !self.enabled {
            return None;
        }
        let c = self.counters.get(slot as usize);
        let n =
            |f: fn(&Counters) -> &std::sync::atomic::AtomicU64| c.map_or(0, |c| f(c).load(Relaxed));
        let link = pid.and_then(|p| self.links.get(&p));
        let state = match link {
            None => "none",
            Some(l) if l.is_cut_off() => "cut off",
            Some(_) => "open",
        };
        Some(ChannelStatus {
            state: state.into(),
            sent: n(|c| &c.sent),
            dropped: n(|c| &c.dropped),
            queued: link.map_or(0, Link::queued) as u64,
            received: n(|c| &c.received),
            cut_off: n(|c| &c.cut_off),
        })
    }
}

impl Supervisor {
    /// Opens the channel of the worker `pid` just started in `slot` (of `generation`).
    pub(super) fn link_channel(&mut self, pair: Pair, slot: u32, pid: Pid, generation: u64) {
        let events = self.events.clone();
        let on_ready = Box::new(move || {
            let _ = events.send(Event::Ready { slot, generation });
        });
        self.messaging.link(pair, slot, pid, on_ready);
    }

    pub(super) fn on_channel_request(&mut self, request: ChannelRequest) -> String {
        if !self.messaging.enabled && !matches!(request, ChannelRequest::Signal { .. }) {
            return "error: the workers have no message channel (`--channel off`): start the \
                    balancer with `--channel on`"
                .into();
        }
        match request {
            ChannelRequest::Send(out) => self.send(out),
            ChannelRequest::Clear => {
                let n = self.messaging.kept.len();
                self.messaging.kept.clear();
                self.messaging.kept_bytes = 0;
                log::info!("forgot {n} kept messages");
                serde_json::json!({ "cleared": n }).to_string()
            }
            ChannelRequest::Signal { slot, signal } => self.signal(slot, signal),
            // The control socket serves these from the store itself.
            ChannelRequest::Messages { .. } => {
                "error: `messages` is served by the control socket".into()
            }
        }
    }

    /// The slots a request names: `slot`, or all; an error line for a slot that does not exist.
    fn slots_named(&self, slot: Option<u32>) -> std::result::Result<std::ops::Range<u32>, String> {
        let n = self.slots.len() as u32;
        match slot {
            None => Ok(0..n),
            Some(s) if s < n => Ok(s..s + 1),
            Some(s) => Err(format!("error: no slot {s}: slots are 0 to {}", n - 1)),
        }
    }

    fn send(&mut self, out: Outgoing) -> String {
        let slots = match self.slots_named(out.slot) {
            Ok(r) => r,
            Err(e) => return e,
        };
        let mut line = Vec::with_capacity(out.json.len() + 1);
        line.extend_from_slice(out.json.as_bytes());
        line.push(b'\n');
        let message: Message = line.into();
        let m = &mut self.messaging;
        if out.keep {
            if m.kept.len() >= MAX_KEPT || m.kept_bytes + message.len() > MAX_KEPT_BYTES {
                return format!(
                    "error: {} messages ({} bytes) are kept already, at most {MAX_KEPT} \
                     ({MAX_KEPT_BYTES} bytes): `balancer send --clear` forgets them; nothing \
                     was sent",
                    m.kept.len(),
                    m.kept_bytes
                );
            }
            m.kept_bytes += message.len();
            m.kept.push((out.slot, message.clone()));
        }
        let (mut workers, mut took) = (0, 0);
        for slot in slots {
            let pid = self.slots[slot as usize].worker.pid;
            if let Some(link) = pid.and_then(|p| self.messaging.links.get(&p)) {
                workers += 1;
                took += link.push(message.clone()) as u32;
            }
        }
        serde_json::json!({
            "sent": took,
            "workers": workers,
            "dropped": workers - took,
            "kept": self.messaging.kept.len(),
        })
        .to_string()
    }

    fn signal(&mut self, slot: Option<u32>, signal: Signal) -> String {
        let slots = match self.slots_named(slot) {
            Ok(r) => r,
            Err(e) => return e,
        };
        // A signal older than the window no longer explains an exit.
        let window = self.opts.kill_timeout;
        self.messaging
            .signalled
            .retain(|_, at| at.elapsed() <= window);
        let mut pids = Vec::new();
        for slot in slots {
            let Some(pid) = self.slots[slot as usize].worker.pid else {
                continue;
            };
            // Recorded first: the exit may be reaped before this returns.
            self.messaging.signalled.insert(pid, Instant::now());
            match nix::sys::signal::kill(pid, signal) {
                Ok(()) => pids.push(pid.as_raw()),
                Err(_) => {
                    self.messaging.signalled.remove(&pid);
                }
            }
        }
        if pids.is_empty() {
            return match slot {
                Some(s) => format!("error: slot {s} has no worker running"),
                None => "error: no worker is running".into(),
            };
        }
        log::info!("sent {} to workers {pids:?}", signal.as_str());
        serde_json::json!({ "signal": signal.as_str(), "pids": pids }).to_string()
    }
}
