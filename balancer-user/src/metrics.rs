//! The Prometheus endpoint: `/metrics` in the OpenMetrics text format, plus `/healthz` and
//! `/readyz` for probes.
//!
//! Nothing is counted per connection in user space: each scrape reads the program's maps (the
//! per-slot counters through the shared mapping, the per-CPU stats with one lookup per reason)
//! and each listener's accept queue (one `getsockopt` per slot), and encodes that snapshot. The
//! server binds loopback by default; it answers nothing but these three paths.

use std::{convert::Infallible, net::SocketAddr};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    body::Incoming, header, server::conn::http1, service::service_fn, Request, Response, StatusCode,
};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    encoding::DescriptorEncoder,
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};
use tokio::sync::{mpsc, oneshot};

use crate::control::Status;

/// Slot states exposed as `balancer_slot_state{state=...}`: every slot has one series per state,
/// 1 for the current one, so that every series exists from the start.
pub const STATES: [&str; 6] = ["up", "draining", "stalled", "unhealthy", "down", "failed"];

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

/// This process's own figures, as the Prometheus client libraries name them.
#[derive(Debug, Default)]
pub struct Process {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub open_fds: u64,
    pub start_time_seconds: f64,
}

impl Process {
    /// Reads /proc/self. Fields that cannot be read stay 0.
    pub fn read() -> Process {
        let mut p = Process::default();
        let Ok(me) = procfs::process::Process::myself() else {
            return p;
        };
        if let Ok(stat) = me.stat() {
            let tick = procfs::ticks_per_second() as f64;
            p.cpu_seconds = (stat.utime + stat.stime) as f64 / tick;
            p.resident_bytes = stat.rss * procfs::page_size();
            if let Ok(boot) = procfs::boot_time_secs() {
                p.start_time_seconds = boot as f64 + stat.starttime as f64 / tick;
            }
        }
        p.open_fds = me.fd_count().map_or(0, |n| n as u64);
        p
    }
}

pub(crate) type Labels = Vec<(&'static str, String)>;

pub(crate) fn family<M: prometheus_client::encoding::EncodeMetric>(
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
        self.encode_slots(&mut e)?;
        self.encode_workers(&mut e)?;
        self.encode_program(&mut e)?;
        crate::control::peer::encode(&mut e)?;
        self.encode_process(&mut e)
    }
}

impl Snapshot {
    /// One series per slot about its connections: counters, load, queue and state.
    fn encode_slots(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter, Gauge};
        let s = &self.status;
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
                STATES.iter().map(move |st| {
                    let mut l = slot(x.slot);
                    l.push(("state", st.to_string()));
                    (l, ConstGauge::new(i64::from(x.state == *st)))
                })
            }),
        )?;
        Ok(())
    }

    /// One series per slot about its workers: restarts, stalls, exits, recycling, health and
    /// output.
    fn encode_workers(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter, Gauge};
        let s = &self.status;
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
        crate::channel::metrics::encode(e, &self.status.slots)
    }

    /// The program's own counters.
    fn encode_program(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter, Gauge};
        let s = &self.status;
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
        if let Some(o) = &s.overflow {
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
        }
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
        family(e, "balancer_program_run_seconds", "Time the kernel spent running the program (counts only while kernel.bpf_stats_enabled=1).", Counter,
            [(Vec::new(), ConstCounter::new(stat("run_time_ns") as f64 / 1e9))])?;
        family(
            e,
            "balancer_program_runs",
            "Runs of the program (counts only while kernel.bpf_stats_enabled=1).",
            Counter,
            [(Vec::new(), ConstCounter::new(stat("run_count")))],
        )?;
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

    /// The supervisor process, as every Prometheus client library reports its own.
    fn encode_process(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter, Gauge};
        let p = &self.process;
        family(
            e,
            "process_cpu_seconds",
            "User and system CPU time of the supervisor.",
            Counter,
            [(Vec::new(), ConstCounter::new(p.cpu_seconds))],
        )?;
        family(
            e,
            "process_resident_memory_bytes",
            "Resident memory of the supervisor.",
            Gauge,
            [(Vec::new(), ConstGauge::new(p.resident_bytes as i64))],
        )?;
        family(
            e,
            "process_open_fds",
            "Open file descriptors of the supervisor.",
            Gauge,
            [(Vec::new(), ConstGauge::new(p.open_fds as i64))],
        )?;
        family(
            e,
            "process_start_time_seconds",
            "Start time of the supervisor, seconds since the epoch.",
            Gauge,
            [(Vec::new(), ConstGauge::new(p.start_time_seconds))],
        )?;
        Ok(())
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

/// Binds the endpoint. Port in use is an error here, before any worker starts.
/// The default metrics port: 9464 rather than 9090, so as not to collide with a local
/// Prometheus.
pub const DEFAULT_PORT: u16 = 9464;

pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                anyhow::anyhow!(
                    "metrics port {} is in use on {}: pass --metrics ADDR:PORT or --metrics off",
                    addr.port(),
                    addr.ip()
                )
            } else {
                anyhow::anyhow!("cannot bind the metrics endpoint {addr}: {e}")
            }
        })
        .context("metrics")
}

pub async fn serve(listener: tokio::net::TcpListener, asks: mpsc::UnboundedSender<Ask>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                crate::listeners::after_accept_error("metrics", &e).await;
                continue;
            }
        };
        let asks = asks.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(req, asks.clone()));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    req: Request<Incoming>,
    asks: mpsc::UnboundedSender<Ask>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            content_type.parse().expect("valid header"),
        );
        Ok(r)
    };
    let unavailable = || {
        reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "supervisor not answering\n".into(),
        )
    };
    match req.uri().path() {
        "/metrics" => {
            let (tx, rx) = oneshot::channel();
            if asks.send(Ask::Metrics(tx)).is_err() {
                return unavailable();
            }
            match rx.await {
                Ok(body) => reply(StatusCode::OK, CONTENT_TYPE, body),
                Err(_) => unavailable(),
            }
        }
        path @ ("/healthz" | "/readyz") => {
            let (tx, rx) = oneshot::channel();
            if asks.send(Ask::Status(tx)).is_err() {
                return unavailable();
            }
            let Ok(status) = rx.await else {
                return unavailable();
            };
            let up = status.slots.iter().filter(|s| s.state == "up").count();
            if path == "/readyz" && up == 0 {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "no worker slot is up\n".into(),
                )
            } else {
                reply(
                    StatusCode::OK,
                    "text/plain",
                    format!("ok: {up} of {} slots up\n", status.slots.len()),
                )
            }
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "see /metrics, /healthz, /readyz\n".into(),
        ),
    }
}
