//! What the supervisor answers: `status` (the control socket), /metrics and /readyz scrapes,
//! and the two live settings, the policy and a slot's weight.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt as _;

use balancer_common::{stats, Policy, OVERFLOW};

use super::error::one_line;
use super::{worker_slot::WorkerSlot, Supervisor};
use crate::{
    control::{OverflowStatus, SlotStatus, State, Status},
    metrics::{self, Ask},
};

/// Lines of stderr `status` quotes for a worker that exited abnormally.
const LAST_STDERR: usize = 5;

impl Supervisor {
    pub(super) fn status(&self) -> Status {
        let slots = self
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| self.slot_status(i as u32, s))
            .collect();
        Status {
            name: self.opts.name.clone(),
            metrics: self.metrics_addr.map(|a| a.to_string()),
            pid: std::process::id(),
            listen: self.slots[0]
                .listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            policy: self.steering.policy().name().into(),
            command: self.command.display(),
            slots,
            overflow: self.overflow.as_ref().map(|l| {
                let book = self.accounting.book(OVERFLOW);
                OverflowStatus {
                    load: self.steering.load_of(OVERFLOW),
                    queued: l.queued().unwrap_or(0),
                    assigned: self.steering.slots.assigned(OVERFLOW),
                    closed: self.steering.slots.closed(OVERFLOW),
                    corrections: book.corrections,
                }
            }),
            program: self.program_counters(),
            reconciliation: self.readings.status(),
        }
    }

    /// The programs' counters and run times, by name.
    fn program_counters(&self) -> BTreeMap<String, u64> {
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
        // 1 while the programs look connections up in FLOWS (a window opened by a SYN sent to
        // a crowded slot, closed once it passes).
        program.insert("recording".into(), self.steering.recording() as u64);
        program
    }

    /// One slot's line of `status`, from every room's record of it.
    fn slot_status(&self, i: u32, s: &WorkerSlot) -> SlotStatus {
        let book = self.accounting.book(i);
        let logs = self.logs.counts(i);
        let (worker, exits) = (&s.worker, &s.exits);
        let state = if exits.given_up {
            State::Failed
        } else {
            self.steering.slots.state(i).into()
        };
        SlotStatus {
            slot: i,
            state,
            pid: worker.pid.map(|p| p.as_raw() as u32),
            load: self.steering.load_of(i),
            assigned: self.steering.slots.assigned(i),
            closed: self.steering.slots.closed(i),
            open: book.truth.held,
            handshaking: book.truth.handshaking,
            corrections: book.corrections,
            queued: s.listener.queued().unwrap_or(0),
            restarts: exits.restarts,
            stalls: s.stalls.count,
            uptime_seconds: worker.started.map(|t| t.elapsed().as_secs_f64()),
            last_exit: exits.last_exit.clone(),
            last_exit_code: exits.last_status.and_then(|st| st.code()),
            last_exit_signal: exits.last_status.and_then(|st| st.signal()),
            last_stderr: match (exits.last_status, exits.last_pid) {
                (Some(st), Some(pid)) if !st.success() => {
                    self.logs.last_stderr(i, pid.as_raw() as u32, LAST_STDERR)
                }
                _ => Vec::new(),
            },
            recycled_memory: s.recycling.for_memory,
            recycled_requests: s.recycling.for_requests,
            memory_bytes: s.recycling.memory,
            health: self
                .opts
                .health
                .as_ref()
                .map(|_| s.probes.health.state.name().to_string()),
            probe_seconds: s.probes.latency.map(|d| d.as_secs_f64()),
            health_failures: s.probes.failures,
            health_restarts: s.probes.restarts,
            log_lines: logs.lines,
            log_dropped: logs.dropped,
            channel: self.messaging.slot(i, worker.pid),
        }
    }

    pub(super) fn answer(&self, ask: Ask) {
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

    /// Switches the policy by rewriting the program's configuration: the next connection is
    /// steered by the new policy; workers and open connections are untouched.
    pub(super) fn set_policy(&mut self, policy: Policy) -> String {
        if policy == Policy::Sticky {
            self.steering.refresh_sticky(self.opts.workers);
        }
        let configured = self
            .steering
            .configure(self.slots.len() as u32, policy)
            .and_then(|()| {
                let listeners = self.slots.iter().enumerate();
                let listeners = listeners.map(|(i, s)| (i as u32, &s.listener));
                let overflow = self.overflow.as_ref().map(|l| (OVERFLOW, l));
                self.steering.recount(listeners.chain(overflow))
            });
        match configured {
            Ok(()) => {
                log::info!("policy is now {}", policy.name());
                serde_json::json!({ "policy": policy.name() }).to_string()
            }
            Err(e) => format!("error: {}", one_line(&e)),
        }
    }

    pub(super) fn set_weight(&mut self, slot: u32, weight: u32) -> String {
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
}
