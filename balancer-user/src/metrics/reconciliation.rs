//! The reconciliation's own cost: how many readings of the kernel checked the loads, the CPU
//! they took, and how long ago the last one was.

use prometheus_client::{
    encoding::DescriptorEncoder,
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
};

use super::family;
use crate::control::Status;

pub(super) fn encode(s: &Status, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let r = &s.reconciliation;
    family(
        e,
        "balancer_reconcile_readings",
        "Readings of the kernel (open connections, accept queues, handshakes) that checked the loads.",
        MetricType::Counter,
        [(Vec::new(), ConstCounter::new(r.readings))],
    )?;
    family(
        e,
        "balancer_reconcile_cpu_seconds",
        "CPU time the readings took; they walk every open connection of the port.",
        MetricType::Counter,
        [(Vec::new(), ConstCounter::new(r.cpu_seconds))],
    )?;
    family(
        e,
        "balancer_reconcile_age_seconds",
        "Time since the last reading: none is taken while nothing moves, and readings take at most 0.5% of a core over five minutes.",
        MetricType::Gauge,
        [(Vec::new(), ConstGauge::new(r.since_seconds))],
    )
}
