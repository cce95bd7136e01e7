//! The per-slot series: what the program counted for each slot, and what the supervisor knows
//! of the slot's workers. Every slot has every series from its start, so that a rate over a
//! slot that has not restarted yet is 0 rather than absent.

use prometheus_client::{
    encoding::DescriptorEncoder,
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
};

use super::{family, slot};
use crate::control::{State, Status};

/// One series per slot about its connections: counters, load, queue and state.
pub(super) fn encode_connections(
    s: &Status,
    e: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    use MetricType::{Counter, Gauge};
    let slots = || s.slots.iter();
    family(
        e,
        "balancer_slot_connections_assigned",
        "Connections the program sent to the slot.",
        Counter,
        slots().map(|x| (slot(x.slot), ConstCounter::new(x.assigned))),
    )?;
    family(
        e,
        "balancer_slot_connections_closed",
        "Connections of the slot that closed.",
        Counter,
        slots().map(|x| (slot(x.slot), ConstCounter::new(x.closed))),
    )?;
    family(
        e,
        "balancer_load_corrections",
        "Connections the reconciliation added to or removed from the slot's load to match what the kernel holds.",
        Counter,
        slots().map(|x| (slot(x.slot), ConstCounter::new(x.corrections))),
    )?;
    family(
        e,
        "balancer_slot_open_connections",
        "Connections open in the slot's worker processes, at the last reconciliation.",
        Gauge,
        slots().map(|x| (slot(x.slot), ConstGauge::new(x.open as i64))),
    )?;
    family(
        e,
        "balancer_slot_load",
        "Open connections of the slot as the program sees them (assigned, not closed).",
        Gauge,
        slots().map(|x| (slot(x.slot), ConstGauge::new(x.load as i64))),
    )?;
    family(
        e,
        "balancer_slot_accept_queue",
        "Connections waiting in the slot's accept queue.",
        Gauge,
        slots().map(|x| (slot(x.slot), ConstGauge::new(x.queued as i64))),
    )?;
    family(
        e,
        "balancer_slot_state",
        "1 for the slot's current state, 0 for the others.",
        Gauge,
        slots().flat_map(|x| {
            State::ALL.map(|st| {
                let mut l = slot(x.slot);
                l.push(("state", st.name().to_string()));
                (l, ConstGauge::new(i64::from(x.state == st)))
            })
        }),
    )?;
    Ok(())
}

/// One series per slot about its workers' lives: restarts, stalls, exits, the running pid,
/// recycling.
pub(super) fn encode_exits(s: &Status, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    use MetricType::{Counter, Gauge};
    let slots = || s.slots.iter();
    family(
        e,
        "balancer_slot_restarts",
        "Times the slot's worker was restarted.",
        Counter,
        slots().map(|x| (slot(x.slot), ConstCounter::new(x.restarts))),
    )?;
    family(
        e,
        "balancer_slot_stalls",
        "Times the slot's worker was found stalled (connections queued, none accepted) and taken out of rotation.",
        Counter,
        slots().map(|x| (slot(x.slot), ConstCounter::new(x.stalls))),
    )?;
    family(
        e,
        "balancer_slot_last_exit_code",
        "Exit code of the slot's last worker exit; -1 if none or killed by a signal.",
        Gauge,
        slots().map(|x| {
            (
                slot(x.slot),
                ConstGauge::new(x.last_exit_code.map_or(-1, i64::from)),
            )
        }),
    )?;
    family(
        e,
        "balancer_slot_last_exit_signal",
        "Signal that ended the slot's last worker; 0 if none.",
        Gauge,
        slots().map(|x| {
            (
                slot(x.slot),
                ConstGauge::new(x.last_exit_signal.map_or(0, i64::from)),
            )
        }),
    )?;
    // Info-style series are gauges of value 1 named `_info`, the convention every Prometheus
    // parser reads (the OpenMetrics `info` type is unknown to the classic text format).
    family(
        e,
        "balancer_slot_worker_info",
        "The pid of each slot's running worker.",
        Gauge,
        slots().filter_map(|x| {
            Some((
                vec![("slot", x.slot.to_string()), ("pid", x.pid?.to_string())],
                ConstGauge::new(1),
            ))
        }),
    )?;
    family(
        e,
        "balancer_slot_recycles",
        "Workers of the slot replaced for their memory (--max-memory) or the requests they served (--max-requests).",
        Counter,
        slots().flat_map(|x| {
            [
                ("memory", x.recycled_memory),
                ("requests", x.recycled_requests),
            ]
            .map(|(reason, n)| {
                (
                    vec![("slot", x.slot.to_string()), ("reason", reason.to_string())],
                    ConstCounter::new(n),
                )
            })
        }),
    )?;
    Ok(())
}

/// One series per slot about its workers' health probes, output and message channel.
pub(super) fn encode_health_and_output(
    s: &Status,
    e: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    use MetricType::{Counter, Gauge};
    let slots = || s.slots.iter();
    family(
        e,
        "balancer_slot_health_failures",
        "Health probes of the slot's workers that failed (--health-check).",
        Counter,
        slots().map(|x| (slot(x.slot), ConstCounter::new(x.health_failures))),
    )?;
    family(
        e,
        "balancer_slot_health_restarts",
        "Workers of the slot restarted for failing --health-fall probes in a row.",
        Counter,
        slots().map(|x| (slot(x.slot), ConstCounter::new(x.health_restarts))),
    )?;
    family(
        e,
        "balancer_slot_health_probe_seconds",
        "How long the slot's last health probe took.",
        Gauge,
        slots().filter_map(|x| Some((slot(x.slot), ConstGauge::new(x.probe_seconds?)))),
    )?;
    family(
        e,
        "balancer_worker_log_lines",
        "Lines of output the slot's workers wrote (stdout and stderr).",
        Counter,
        slots().map(|x| (slot(x.slot), ConstCounter::new(x.log_lines))),
    )?;
    family(
        e,
        "balancer_worker_log_lines_dropped",
        "Lines the log thread had no room for because its output was read too slowly: missing from the supervisor's output and the log files, still in `balancer logs`.",
        Counter,
        slots().map(|x| (slot(x.slot), ConstCounter::new(x.log_dropped))),
    )?;
    crate::channel::metrics::encode(e, &s.slots)
}
