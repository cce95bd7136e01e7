//! The Prometheus endpoint: `/metrics` in the OpenMetrics text format, plus `/healthz` and
//! `/readyz` for probes.
//!
//! Nothing is counted per connection in user space: each scrape reads the program's maps (the
//! per-slot counters through the shared mapping, the per-CPU stats with one lookup per reason)
//! and each listener's accept queue (one `getsockopt` per slot), and encodes that snapshot. The
//! server binds loopback by default; it answers nothing but these three paths.
//!
//! [`slots`] encodes the per-slot series (connections, then workers), [`program`] the program's
//! own counters, [`reconciliation`] what checking the loads costs, [`process`] the supervisor
//! process's figures, [`server`] answers HTTP.

mod process;
mod program;
mod reconciliation;
mod server;
mod slots;

use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::MetricType,
    registry::Registry,
};
use tokio::sync::oneshot;

pub use process::Process;
pub use server::{bind, serve, Error, DEFAULT_PORT};

use crate::control::Status;

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the supervisor is asked for by the HTTP side.
pub enum Ask {
    /// The rendered exposition.
    Metrics(oneshot::Sender<String>),
    /// The current status, for the probes.
    Status(oneshot::Sender<Status>),
}

/// One scrape's worth of data.
#[derive(Debug)]
pub struct Snapshot {
    pub status: Status,
    pub process: Process,
}

pub(crate) type Labels = Vec<(&'static str, String)>;

/// Writes one metric family: its descriptor, then one sample per row.
pub(crate) fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: impl IntoIterator<Item = (Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in rows {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

pub(crate) fn slot(i: u32) -> Labels {
    vec![("slot", i.to_string())]
}

impl prometheus_client::collector::Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        slots::encode_connections(&self.status, &mut e)?;
        slots::encode_exits(&self.status, &mut e)?;
        slots::encode_health_and_output(&self.status, &mut e)?;
        program::encode_counters(&self.status, &mut e)?;
        program::encode_overflow(&self.status, &mut e)?;
        program::encode_setup(&self.status, &mut e)?;
        reconciliation::encode(&self.status, &mut e)?;
        crate::control::peer::encode(&mut e)?;
        self.process.encode(&mut e)
    }
}

/// Encodes one snapshot.
pub fn render(snapshot: Snapshot) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).expect("writing to a String");
    out
}
