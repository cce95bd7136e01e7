//! The channels' Prometheus families, per slot: what `balancer send` queued and dropped, what
//! the workers sent, and which were cut off (rendered with the rest by
//! [`metrics`](crate::metrics)).

use prometheus_client::{
    encoding::DescriptorEncoder,
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
};

use crate::{
    control::SlotStatus,
    metrics::{family, slot},
};

type Figure = fn(&SlotStatus) -> u64;

const COUNTERS: [(&str, &str, Figure); 4] = [
    (
        "balancer_channel_messages_sent",
        "Messages queued for the slot's workers by `balancer send`.",
        |x| x.channel.as_ref().map_or(0, |c| c.sent),
    ),
    (
        "balancer_channel_messages_dropped",
        "Messages that did not fit in a worker's bounded queue (a worker that does not read its channel): dropped.",
        |x| x.channel.as_ref().map_or(0, |c| c.dropped),
    ),
    (
        "balancer_channel_messages_received",
        "Messages the slot's workers sent on their channel.",
        |x| x.channel.as_ref().map_or(0, |c| c.received),
    ),
    (
        "balancer_channel_cutoffs",
        "Workers of the slot cut off from their channel for writing garbage or flooding it.",
        |x| x.channel.as_ref().map_or(0, |c| c.cut_off),
    ),
];

pub fn encode(e: &mut DescriptorEncoder, slots: &[SlotStatus]) -> Result<(), std::fmt::Error> {
    for (name, help, value) in COUNTERS {
        let rows = slots
            .iter()
            .filter(|x| x.channel.is_some())
            .map(|x| (slot(x.slot), ConstCounter::new(value(x))));
        family(e, name, help, MetricType::Counter, rows)?;
    }
    family(
        e,
        "balancer_channel_messages_queued",
        "Messages waiting in the queue of the slot's worker.",
        MetricType::Gauge,
        slots.iter().filter_map(|x| {
            let c = x.channel.as_ref()?;
            Some((slot(x.slot), ConstGauge::new(c.queued as i64)))
        }),
    )
}
