//! The program's own counters (per-CPU stats summed, the kernel's run statistics) and what it
//! runs with.

use prometheus_client::{
    encoding::DescriptorEncoder,
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
};

use super::family;
use crate::control::Status;

/// The program's own counters.
pub(super) fn encode_counters(
    s: &Status,
    e: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    use MetricType::Counter;
    let stat = |k: &str| s.program.get(k).copied().unwrap_or(0);
    family(
        e,
        "balancer_program_selections",
        "Connections the program sent to the slot its policy chose.",
        Counter,
        [(Vec::new(), ConstCounter::new(stat("selected")))],
    )?;
    family(
        e,
        "balancer_program_fallbacks",
        "Connections left to the kernel's hash, by reason.",
        Counter,
        balancer_common::stats::NAMES[balancer_common::stats::FALLBACKS]
            .iter()
            .map(|r| (vec![("reason", r.to_string())], ConstCounter::new(stat(r)))),
    )?;
    family(
        e,
        "balancer_program_migrations",
        "Queued connections of a closing listener (slot removed or given up) moved to another slot.",
        Counter,
        [(Vec::new(), ConstCounter::new(stat("migrated")))],
    )?;
    family(
        e,
        "balancer_program_overflowed",
        "Connections sent to the shared overflow queue because no slot was idle (--overflow).",
        Counter,
        [(Vec::new(), ConstCounter::new(stat("overflowed")))],
    )?;
    family(
        e,
        "balancer_program_followed_segments",
        "Retransmitted SYNs and SYN-cookie ACKs sent to the slot their connection already has, not counted again.",
        Counter,
        [(Vec::new(), ConstCounter::new(stat("followed")))],
    )?;
    family(
        e,
        "balancer_program_non_syn_segments",
        "Segments of no recorded connection (stray ACK, FIN, RST) left to the kernel and counted nowhere.",
        Counter,
        [(Vec::new(), ConstCounter::new(stat("not_a_syn")))],
    )?;
    family(
        e,
        "balancer_program_run_seconds",
        "Time the kernel spent running the program (counts only while kernel.bpf_stats_enabled=1).",
        Counter,
        [(
            Vec::new(),
            ConstCounter::new(stat("run_time_ns") as f64 / 1e9),
        )],
    )?;
    family(
        e,
        "balancer_program_runs",
        "Runs of the program (counts only while kernel.bpf_stats_enabled=1).",
        Counter,
        [(Vec::new(), ConstCounter::new(stat("run_count")))],
    )?;
    Ok(())
}

/// What the program runs with: the policy in force and the slots configured.
pub(super) fn encode_setup(s: &Status, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    use MetricType::Gauge;
    family(
        e,
        "balancer_policy_info",
        "The steering policy in force.",
        Gauge,
        [(vec![("policy", s.policy.clone())], ConstGauge::new(1))],
    )?;
    family(
        e,
        "balancer_slots",
        "Worker slots configured.",
        Gauge,
        [(Vec::new(), ConstGauge::new(s.slots.len() as i64))],
    )?;
    Ok(())
}

/// The shared overflow queue, when the workers have one: what waits there and what the
/// program counts on it.
pub(super) fn encode_overflow(
    s: &Status,
    e: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    use MetricType::Gauge;
    let Some(o) = &s.overflow else {
        return Ok(());
    };
    family(
        e,
        "balancer_overflow_queued",
        "Connections waiting in the shared overflow queue for a worker to free up.",
        Gauge,
        [(Vec::new(), ConstGauge::new(o.queued as i64))],
    )?;
    family(
        e,
        "balancer_overflow_load",
        "The overflow queue's load as the program reads it: sent there and not yet taken by a worker or closed.",
        Gauge,
        [(Vec::new(), ConstGauge::new(o.load as i64))],
    )?;
    Ok(())
}
