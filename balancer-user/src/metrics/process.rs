//! The supervisor process's own figures, named as every Prometheus client library names its
//! own (`process_cpu_seconds`, ...), read from /proc/self at each scrape.

use prometheus_client::{
    encoding::DescriptorEncoder,
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
};

use super::family;

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

    /// The supervisor process, as every Prometheus client library reports its own.
    pub(super) fn encode(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter, Gauge};
        let p = self;
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
