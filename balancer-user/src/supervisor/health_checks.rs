//! Active health checks, the probing: every `--health-interval`, each slot's ready worker gets
//! one `GET --health-check PATH` through its own listener. The probe's connection is recorded
//! in `FLOWS` (and counted on the slot) before it connects, so the program sends it to the slot
//! it checks whatever the policy, even a slot out of rotation; whoever removes the record
//! afterwards, the close tracker or [`Supervisor::on_probe`], counts the close. What the results
//! mean is [`crate::rules::health`]'s.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use balancer_common::SlotState;
use nix::sys::signal::Signal;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::error::one_line;
use super::{
    error::{Error, Result},
    events::{Event, Probe},
    Supervisor,
};
use crate::{
    kernel,
    rules::health::{Health, Transition},
};

/// The health check's settings.
#[derive(Clone, Debug)]
pub struct Check {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Passed probes in a row that put a worker back in rotation.
    pub rise: u32,
    /// Failed probes in a row that restart it.
    pub fall: u32,
}

/// A slot's probes: its worker's health and the figures `status` shows.
#[derive(Default)]
pub(super) struct Probes {
    pub(super) health: Health,
    /// A probe of this slot is under way.
    under_way: bool,
    pub(super) latency: Option<Duration>,
    pub(super) failures: u64,
    pub(super) restarts: u64,
}

impl Probes {
    /// A new worker took the slot: its health is unknown until its first probe.
    pub(super) fn new_worker(&mut self) {
        self.health = Health::default();
    }

    /// Files a probe's answer and says what it means.
    fn record(&mut self, p: &Probe, check: &Check) -> Transition {
        self.latency = Some(p.latency);
        if !p.ok {
            self.failures += 1;
        }
        let transition = self.health.probe(p.ok, check.rise, check.fall);
        if transition == Transition::Restart {
            self.restarts += 1;
        }
        transition
    }
}

impl Supervisor {
    /// Starts one probe for each slot whose worker is ready.
    pub(super) fn probe_all(&mut self) {
        if self.phase.stopping() || self.opts.health.is_none() {
            return;
        }
        for slot in 0..self.slots.len() as u32 {
            let s = &self.slots[slot as usize];
            if s.worker.serving() && !s.probes.under_way {
                if let Err(e) = self.probe(slot) {
                    log::warn!("slot {slot}: cannot start a health probe: {}", one_line(&e));
                }
            }
        }
    }

    fn probe(&mut self, slot: u32) -> Result<()> {
        let Some(check) = self.opts.health.clone() else {
            return Ok(());
        };
        let listen = self.slots[0]
            .listener
            .local_addr()
            .map_err(Error::listeners)?;
        let server = match listen.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => {
                SocketAddr::new(Ipv4Addr::LOCALHOST.into(), listen.port())
            }
            IpAddr::V6(ip) if ip.is_unspecified() => {
                SocketAddr::new(Ipv6Addr::LOCALHOST.into(), listen.port())
            }
            _ => listen,
        };
        let socket = if server.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.bind(SocketAddr::new(server.ip(), 0))?;
        let key = kernel::flow_key(socket.local_addr()?, server);
        self.steering
            .record_flow(key, slot)
            .map_err(Error::kernel)?;
        self.accounting.probe_opened(&self.steering.slots, slot);
        let s = &mut self.slots[slot as usize];
        s.probes.under_way = true;
        let generation = s.worker.generation;
        let events = self.events.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let (ok, detail) =
                match tokio::time::timeout(check.timeout, ask(socket, server, &check.path)).await {
                    Ok(Ok(code)) => ((200..400).contains(&code), format!("HTTP {code}")),
                    Ok(Err(e)) => (false, e.to_string()),
                    Err(_) => (false, format!("no answer within {:?}", check.timeout)),
                };
            let _ = events.send(Event::Probe(Probe {
                slot,
                generation,
                key,
                ok,
                latency: started.elapsed(),
                detail,
            }));
        });
        Ok(())
    }

    pub(super) fn on_probe(&mut self, p: Probe) {
        if self.steering.forget_flow(&p.key) {
            self.accounting.probe_closed(&self.steering.slots, p.slot);
        }
        let Some(check) = self.opts.health.clone() else {
            return;
        };
        let Some(s) = self.slots.get_mut(p.slot as usize) else {
            return;
        };
        s.probes.under_way = false;
        if s.worker.generation != p.generation || s.worker.pid.is_none() || self.phase.stopping() {
            return;
        }
        let slot = p.slot;
        match s.probes.record(&p, &check) {
            Transition::None => {}
            Transition::Leave => {
                log::warn!(
                    "slot {slot}: health check {} failed ({}); out of rotation",
                    check.path,
                    p.detail
                );
                if self.steering.slots.state(slot) == SlotState::Up {
                    self.steering.set_state(slot, SlotState::Unhealthy);
                    self.steering.refresh_sticky(self.opts.workers);
                }
            }
            Transition::Rejoin => {
                log::info!("slot {slot}: health check passes again; back in rotation");
                if self.steering.slots.state(slot) == SlotState::Unhealthy {
                    self.steering.set_state(slot, SlotState::Up);
                    self.steering.refresh_sticky(self.opts.workers);
                }
            }
            Transition::Restart => {
                log::warn!(
                    "slot {slot}: {} health checks failed in a row ({}); restarting its worker",
                    check.fall,
                    p.detail
                );
                if let Some(pid) = s.worker.pid {
                    self.messaging.hang_up(pid);
                    let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
                }
            }
        }
    }
}

/// One `GET path` on a connection from `socket` to `server`: the status code.
async fn ask(
    socket: tokio::net::TcpSocket,
    server: SocketAddr,
    path: &str,
) -> std::io::Result<u16> {
    let mut stream = socket.connect(server).await?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: balancer-health-check\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    // The whole answer, to its end (the request asked for `Connection: close`): a probe that
    // hung up after the status line would make the worker's write of the body fail.
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        if head.len() < 4096 {
            head.extend_from_slice(&buf[..n]);
        }
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .filter(|_| line.starts_with("HTTP/"))
        .ok_or_else(|| std::io::Error::other("no HTTP status line in the answer"))
}
