//! `balancer run`'s flags become the supervisor's [`Options`] here, in one conversion that
//! also checks what clap cannot: each flag against the others, and the values clap takes as
//! plain numbers. Each refusal is one line that names the flag and what to give instead.

use std::{net::SocketAddr, time::Duration};

use super::run::{Overflow, RunArgs, Switch};
use crate::{
    listeners,
    supervisor::{self, Options},
};

type Boxed = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Listen(Boxed),
    #[error(transparent)]
    Name(crate::control::Error),
    #[error(transparent)]
    Identity(Boxed),
    #[error("--{flag} {value}: give a number of seconds, 0 or more")]
    Seconds { flag: &'static str, value: f64 },
    #[error(
        "--weights has {given} values for {workers} workers: give at most one weight per worker"
    )]
    TooManyWeights { given: usize, workers: u32 },
    #[error("--backlog {0}: give a queue length of 1 or more")]
    Backlog(i32),
    #[error("--flow-table {0}: give a number of connections from 1 to 16777216")]
    FlowTable(u32),
    #[error("--reconcile-interval {0}: give a number of seconds from 0.01 to 60")]
    ReconcileInterval(f64),
    #[error("--max-requests-jitter {0} without --max-requests: give --max-requests N too")]
    JitterWithoutLimit(u64),
    #[error(
        "--health-check {0:?}: give a request path such as /healthz (starting with /, no spaces)"
    )]
    HealthPath(String),
    #[error("--health-interval {0}: give at least 0.01 seconds")]
    HealthInterval(f64),
    #[error(
        "--health-timeout {timeout}: give more than 0 and at most --health-interval ({interval})"
    )]
    HealthTimeout { timeout: f64, interval: f64 },
    #[error("bad --metrics {0:?}: expected ADDR:PORT such as 127.0.0.1:9464, or off")]
    Metrics(String),
}

type Result<T> = std::result::Result<T, Error>;

/// The most connections the FLOWS table may be asked to hold.
const MAX_FLOWS: u32 = 1 << 24;

impl RunArgs {
    /// The options the supervisor runs with; `json_logs` is the global `--log-format json`.
    pub fn into_options(self, json_logs: bool) -> Result<Options> {
        let listen = listeners::parse_addr(&self.listen).map_err(|e| Error::Listen(e.into()))?;
        let name = self
            .name
            .clone()
            .unwrap_or_else(|| listen.port().to_string());
        crate::control::check_name(&name).map_err(Error::Name)?;
        let workers = self
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32));
        self.check_sizes(workers)?;
        let stall_timeout = seconds("stall-timeout", self.stall_timeout)?;
        let identity =
            crate::identity::Identity::resolve(self.user.as_deref(), self.group.as_deref(), &name)
                .map_err(|e| Error::Identity(e.into()))?;
        let udp = self.udp;
        Ok(Options {
            health: self.health_check()?,
            recycle: self.recycling()?,
            backoff: self.backoff()?,
            metrics: metrics(self.metrics.as_deref())?,
            reconcile_interval: self.reconcile_interval()?,
            kill_timeout: seconds("kill-timeout", self.kill_timeout)?,
            ready_timeout: seconds("ready-timeout", self.ready_timeout)?,
            stall_timeout: (!stall_timeout.is_zero()).then_some(stall_timeout),
            logs: crate::logs::sink::Options {
                json: json_logs,
                dir: self.log_dir,
                max_size: self.log_max_size,
                keep: self.log_keep,
            },
            identity,
            channel: self.channel == Switch::On,
            listen,
            workers,
            policy: self.policy,
            backlog: self.backlog,
            overflow: match self.overflow {
                Overflow::On => true,
                Overflow::Off => false,
                Overflow::Auto => self.command.is_empty(),
            } && !udp,
            command: (!self.command.is_empty()).then_some(self.command),
            control: self
                .control
                .unwrap_or_else(|| crate::control::path_for(&name)),
            name,
            reload_batch: self.reload_batch,
            weights: self.weights,
            flows: self.flow_table,
            transport: match udp {
                true => listeners::Transport::Udp,
                false => listeners::Transport::Tcp,
            },
        })
    }

    /// `--weights`, `--backlog` and `--flow-table`: within what the maps and sockets hold.
    fn check_sizes(&self, workers: u32) -> Result<()> {
        if self.weights.len() > workers as usize {
            return Err(Error::TooManyWeights {
                given: self.weights.len(),
                workers,
            });
        }
        if self.backlog < 1 {
            return Err(Error::Backlog(self.backlog));
        }
        if !(1..=MAX_FLOWS).contains(&self.flow_table) {
            return Err(Error::FlowTable(self.flow_table));
        }
        Ok(())
    }

    fn backoff(&self) -> Result<crate::rules::backoff::Policy> {
        Ok(crate::rules::backoff::Policy {
            initial: seconds("restart-delay", self.restart_delay)?,
            max: seconds("restart-max-delay", self.restart_max_delay)?,
            stable: seconds("restart-reset-after", self.restart_reset_after)?,
            quick: Duration::from_secs(1),
            give_up_after: self.give_up_after,
        })
    }

    fn reconcile_interval(&self) -> Result<Duration> {
        let interval = seconds("reconcile-interval", self.reconcile_interval)?;
        if interval < Duration::from_millis(10) || interval > Duration::from_secs(60) {
            return Err(Error::ReconcileInterval(self.reconcile_interval));
        }
        Ok(interval)
    }

    /// `--max-memory`, `--max-requests` and its jitter.
    fn recycling(&self) -> Result<supervisor::Limits> {
        if self.max_requests_jitter > 0 && self.max_requests.is_none() {
            return Err(Error::JitterWithoutLimit(self.max_requests_jitter));
        }
        Ok(supervisor::Limits {
            max_memory: self.max_memory,
            max_requests: self.max_requests,
            jitter: self.max_requests_jitter,
        })
    }

    /// `--health-check` and its interval, timeout and thresholds; None without a path.
    fn health_check(&self) -> Result<Option<supervisor::Check>> {
        let Some(path) = self.health_check.clone() else {
            return Ok(None);
        };
        if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Error::HealthPath(path));
        }
        let interval = seconds("health-interval", self.health_interval)?;
        let timeout = seconds("health-timeout", self.health_timeout)?;
        if interval < Duration::from_millis(10) {
            return Err(Error::HealthInterval(self.health_interval));
        }
        if timeout.is_zero() || timeout > interval {
            return Err(Error::HealthTimeout {
                timeout: self.health_timeout,
                interval: self.health_interval,
            });
        }
        Ok(Some(supervisor::Check {
            path,
            interval,
            timeout,
            rise: self.health_rise,
            fall: self.health_fall,
        }))
    }
}

fn seconds(flag: &'static str, value: f64) -> Result<Duration> {
    if value.is_finite() && (0.0..1e9).contains(&value) {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(Error::Seconds { flag, value })
    }
}

/// `--metrics`: the default address when not given, none for `off`.
fn metrics(flag: Option<&str>) -> Result<Option<supervisor::Metrics>> {
    Ok(match flag.map(str::trim) {
        None => Some(supervisor::Metrics::Default),
        Some("off" | "") => None,
        Some(addr) => {
            let at: SocketAddr =
                listeners::parse_addr(addr).map_err(|_| Error::Metrics(addr.to_owned()))?;
            Some(supervisor::Metrics::At(at))
        }
    })
}
