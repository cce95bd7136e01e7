//! The answer to `status`: every slot's state, load, queue and counters, as JSON for tools and
//! as a table for people.

use std::collections::BTreeMap;

use balancer_common::SlotState;
use serde::{Deserialize, Serialize};

/// The overflow queue's books: connections sent there (`assigned`), and those that closed or
/// moved to the worker that took them (`closed`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct OverflowStatus {
    pub load: u64,
    pub queued: u32,
    pub assigned: u64,
    pub closed: u64,
    pub corrections: u64,
}

/// A slot's state as `status`, `ls` and the metrics name it: the program's [`SlotState`], or
/// `failed` once the supervisor gave up restarting the slot's worker. Written and read as its
/// lowercase name, the same in the JSON answer, the table and the `state` label.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Up,
    Draining,
    Stalled,
    Unhealthy,
    Down,
    Failed,
}

impl State {
    /// Every state, in the order the metrics list them.
    pub const ALL: [State; 6] = [
        State::Up,
        State::Draining,
        State::Stalled,
        State::Unhealthy,
        State::Down,
        State::Failed,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Draining => "draining",
            State::Stalled => "stalled",
            State::Unhealthy => "unhealthy",
            State::Down => "down",
            State::Failed => "failed",
        }
    }
}

impl From<SlotState> for State {
    fn from(s: SlotState) -> State {
        match s {
            SlotState::Up => State::Up,
            SlotState::Draining => State::Draining,
            SlotState::Stalled => State::Stalled,
            SlotState::Unhealthy => State::Unhealthy,
            SlotState::Down => State::Down,
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `pad`, not `write_str`: the status table aligns it with `{:<9}`.
        f.pad(self.name())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SlotStatus {
    pub slot: u32,
    pub state: State,
    pub pid: Option<u32>,
    /// Connections assigned and not yet closed.
    pub load: u64,
    /// Connections the program sent to this slot (plus upward corrections).
    pub assigned: u64,
    /// Connections of this slot that closed (plus downward corrections).
    pub closed: u64,
    /// Connections waiting in the slot's accept queue.
    pub queued: u32,
    /// Connections open in the slot's worker processes, at the last reconciliation.
    #[serde(default)]
    pub open: u64,
    /// Connections in their handshake at the last reconciliation (young request sockets):
    /// counted in the load, held by the kernel, not yet in a queue.
    #[serde(default)]
    pub handshaking: u64,
    /// Connections the reconciliation added to or removed from the load, in total.
    #[serde(default)]
    pub corrections: u64,
    pub restarts: u64,
    /// Times the slot's worker was found stalled.
    #[serde(default)]
    pub stalls: u64,
    pub uptime_seconds: Option<f64>,
    pub last_exit: Option<String>,
    /// Exit code of the last worker exit, if it exited (rather than was killed).
    pub last_exit_code: Option<i32>,
    /// Signal that killed the last worker, if one did.
    pub last_exit_signal: Option<i32>,
    /// The last lines the last worker wrote to stderr, if it exited abnormally.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_stderr: Vec<String>,
    /// Workers of the slot replaced for their memory (`--max-memory`).
    #[serde(default)]
    pub recycled_memory: u64,
    /// Workers of the slot replaced for the requests they served (`--max-requests`).
    #[serde(default)]
    pub recycled_requests: u64,
    /// The worker's resident memory at the last reading (read while `--max-memory` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// The worker's health from its probes (`unknown`, `healthy`, `unhealthy`), with
    /// `--health-check`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// How long the last probe took, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_seconds: Option<f64>,
    /// Probes of the slot's workers that failed.
    #[serde(default)]
    pub health_failures: u64,
    /// Workers of the slot restarted for failing `--health-fall` probes in a row.
    #[serde(default)]
    pub health_restarts: u64,
    /// Lines of output the slot's workers wrote.
    #[serde(default)]
    pub log_lines: u64,
    /// Lines the log thread had no room for (its output was read too slowly): missing from the
    /// supervisor's output and the log files, still in `balancer logs`.
    #[serde(default)]
    pub log_dropped: u64,
    /// The slot's message channel, unless `--channel off`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<crate::channel::ChannelStatus>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// The service's name (`--name`, or its listen port).
    #[serde(default)]
    pub name: String,
    /// Where /metrics is served, if it is.
    #[serde(default)]
    pub metrics: Option<String>,
    pub pid: u32,
    pub listen: String,
    pub policy: String,
    pub command: String,
    pub slots: Vec<SlotStatus>,
    /// The shared overflow queue, when the workers have one (`--overflow`).
    #[serde(default)]
    pub overflow: Option<OverflowStatus>,
    /// The program's counters by name: selected, no_slot_up, ...
    pub program: BTreeMap<String, u64>,
    /// The readings of the kernel that check the loads.
    #[serde(default)]
    pub reconciliation: ReconciliationStatus,
}

/// The reconciliation's own cost: its readings walk every open connection of the port, and are
/// taken when something moved, within a share of a core ([pacing](crate::rules::pacing)).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ReconciliationStatus {
    /// Readings taken since the start.
    pub readings: u64,
    /// The CPU time they took, in total.
    pub cpu_seconds: f64,
    /// The time since the last reading, to a `--reconcile-interval` tick: readings are skipped
    /// while nothing moves, and spaced when they cost more than their share of a core.
    pub since_seconds: f64,
}

/// A plain table of `status`, for people.
pub fn render(status: &Status) -> String {
    let mut out = format!(
        "balancer pid {} on {}, policy {}, worker `{}`\n",
        status.pid, status.listen, status.policy, status.command
    );
    out.push_str(
        "SLOT  STATE     PID      LOAD  QUEUED  OPEN  ASSIGNED  CORRECTED  RESTARTS  UPTIME   LAST EXIT\n",
    );
    for s in &status.slots {
        out.push_str(&format!(
            "{:<5} {:<9} {:<8} {:>4}  {:>6}  {:>4}  {:>8}  {:>9}  {:>8}  {:<8} {}\n",
            s.slot,
            s.state,
            s.pid.map_or("-".into(), |p| p.to_string()),
            s.load,
            s.queued,
            s.open,
            s.assigned,
            s.corrections,
            s.restarts,
            s.uptime_seconds.map_or("-".into(), |u| format!("{u:.0}s")),
            s.last_exit.as_deref().unwrap_or("-"),
        ));
    }
    if let Some(o) = &status.overflow {
        out.push_str(&format!(
            "overflow queue: {} waiting (load {}), {} sent there, {} corrected\n",
            o.queued, o.load, o.assigned, o.corrections
        ));
    }
    for s in &status.slots {
        let Some(c) = s
            .channel
            .as_ref()
            .filter(|c| c.dropped > 0 || c.cut_off > 0)
        else {
            continue;
        };
        out.push_str(&format!(
            "slot {} channel {}: {} messages sent, {} dropped (not read), {} received, cut off {} times\n",
            s.slot, c.state, c.sent, c.dropped, c.received, c.cut_off
        ));
    }
    for s in status.slots.iter().filter(|s| !s.last_stderr.is_empty()) {
        out.push_str(&format!(
            "slot {} last exit ({}), its last stderr lines:\n",
            s.slot,
            s.last_exit.as_deref().unwrap_or("-")
        ));
        for line in &s.last_stderr {
            out.push_str(&format!("  | {line}\n"));
        }
    }
    let program: Vec<String> = status
        .program
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    out.push_str(&format!("program: {}\n", program.join(" ")));
    out
}
