//! `balancer run`'s flags, as clap parses them. What they mean together is checked once, when
//! they become the supervisor's options ([`RunArgs::into_options`]).

use std::{ffi::OsString, path::PathBuf};

use super::parse_size;

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Read options from this TOML file (flags and BALANCER_* variables take precedence).
    #[arg(long, env = "BALANCER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address to serve on: ADDR:PORT, [IPV6]:PORT or :PORT.
    #[arg(
        short,
        long,
        env = "BALANCER_LISTEN",
        default_value = "0.0.0.0:8080",
        value_name = "ADDR:PORT"
    )]
    pub listen: String,

    /// Number of worker processes (slots). Default: one per CPU.
    #[arg(short, long, env = "BALANCER_WORKERS", value_name = "N")]
    pub workers: Option<u32>,

    /// How the program picks a worker: least-loaded, p2c, round-robin, weighted, sticky, or hash
    /// (the kernel's own, for comparison). Switch it live with `balancer policy`.
    #[arg(short, long, env = "BALANCER_POLICY", default_value = "least-loaded", value_parser = crate::control::request::policy)]
    pub policy: balancer_common::Policy,

    /// Serve UDP instead of TCP: each datagram is steered by the program (per datagram for
    /// least-loaded, p2c, round-robin and weighted; per client address for sticky).
    #[arg(long)]
    pub udp: bool,

    /// How often, in seconds, each worker's load is compared with what the kernel holds for it
    /// (its accept queue and the connections open in its processes) and corrected where two
    /// readings agree. A tick reads nothing while nothing moved since a reading that found
    /// every load true, and the readings take at most 0.5% of a core over five minutes.
    #[arg(
        long,
        env = "BALANCER_RECONCILE_INTERVAL",
        default_value_t = 0.5,
        value_name = "SECONDS"
    )]
    pub reconcile_interval: f64,

    /// Probe each worker with `GET PATH` through its own listener: a worker that fails leaves
    /// rotation at once, rejoins after --health-rise passes, and is restarted after
    /// --health-fall failures in a row. A 2xx or 3xx answer passes.
    #[arg(long, env = "BALANCER_HEALTH_CHECK", value_name = "PATH")]
    pub health_check: Option<String>,

    /// Seconds between two probes of a worker.
    #[arg(long, default_value_t = 2.0, value_name = "SECONDS")]
    pub health_interval: f64,

    /// Seconds a probe may take before it counts as failed.
    #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
    pub health_timeout: f64,

    /// Passed probes in a row that put an unhealthy worker back in rotation.
    #[arg(long, default_value_t = 2, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub health_rise: u32,

    /// Failed probes in a row that restart a worker.
    #[arg(long, default_value_t = 3, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub health_fall: u32,

    /// Replace a worker (the reload way: successor ready first, nothing dropped) once its
    /// resident memory passes SIZE (bytes, or with K, M or G; read once a second).
    #[arg(long, env = "BALANCER_MAX_MEMORY", value_name = "SIZE", value_parser = parse_size)]
    pub max_memory: Option<u64>,

    /// Replace a worker once it has been sent N requests (each new connection counts as one:
    /// exact for clients that close after each request, a lower bound under keep-alive).
    #[arg(long, env = "BALANCER_MAX_REQUESTS", value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_requests: Option<u64>,

    /// Add up to N to each worker's --max-requests, drawn per worker, so that workers started
    /// together are not all replaced together.
    #[arg(
        long,
        env = "BALANCER_MAX_REQUESTS_JITTER",
        value_name = "N",
        default_value_t = 0
    )]
    pub max_requests_jitter: u64,

    /// Also write each worker slot's output to DIR/slot-N.log (mode 0600), rotated by size.
    #[arg(long, env = "BALANCER_LOG_DIR", value_name = "DIR")]
    pub log_dir: Option<PathBuf>,

    /// Rotate a slot's log file before it grows past this size (bytes, or with K, M or G).
    #[arg(long, env = "BALANCER_LOG_MAX_SIZE", value_name = "SIZE", default_value = "10M", value_parser = parse_size)]
    pub log_max_size: u64,

    /// Rotated log files kept per slot (slot-N.log.1 is the newest).
    #[arg(long, env = "BALANCER_LOG_KEEP", value_name = "N", default_value_t = 5)]
    pub log_keep: u32,

    /// Connections recorded at once in the FLOWS table: SYNs sent to a crowded worker (whose
    /// retransmission must not be counted twice), connections moved off a closing listener,
    /// health probes. Beyond it the oldest record goes and the reconciliation repairs the count.
    #[arg(long, env = "BALANCER_FLOW_TABLE", default_value_t = balancer_common::maps::FLOWS_DEFAULT, value_name = "N")]
    pub flow_table: u32,

    /// Run the workers as this user (name or uid); they never get the supervisor's
    /// capabilities either way.
    #[arg(long, env = "BALANCER_USER", value_name = "USER")]
    pub user: Option<String>,

    /// Run the workers with this group (name or gid). Default: the --user's primary group.
    #[arg(long, env = "BALANCER_GROUP", value_name = "GROUP", requires = "user")]
    pub group: Option<String>,

    /// Per-slot weights for the weighted policy, e.g. 3,1,1,1 (missing ones are 1).
    #[arg(long, value_delimiter = ',', value_name = "W,W,...",
          value_parser = clap::value_parser!(u32).range(1..=crate::control::MAX_WEIGHT as i64))]
    pub weights: Vec<u32>,

    /// Accept queue length of each worker's listener.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub backlog: i32,

    /// A shared overflow queue: when no worker is idle, a new connection waits there and the
    /// first worker to free up takes it, instead of queueing behind one worker's current
    /// request. Workers get it as a second listener (fd 4, LISTEN_FDS=2,
    /// LISTEN_FDNAMES=balancer:overflow) and must accept from it only when idle. auto: on for
    /// the built-in worker, off for a worker command.
    #[arg(long, env = "BALANCER_OVERFLOW", value_enum, default_value_t = Overflow::Auto)]
    pub overflow: Overflow,

    /// This service's name, which client commands pick it by (`balancer status --name NAME`)
    /// and `balancer ls` lists. Default: the listen port.
    #[arg(long, env = "BALANCER_NAME", value_name = "NAME")]
    pub name: Option<String>,

    /// Control socket (mode 0600) for `balancer status`, `stop` and the rest. Default:
    /// NAME.sock in /run/balancer (root), $XDG_RUNTIME_DIR/balancer or ~/.balancer
    /// ($BALANCER_RUNTIME_DIR overrides the directory).
    #[arg(long, env = "BALANCER_CONTROL")]
    pub control: Option<PathBuf>,

    /// Where to serve Prometheus metrics (/metrics) and probes (/healthz, /readyz), or `off`.
    /// Default: 127.0.0.1:9464 (9464 rather than 9090 so as not to collide with a local
    /// Prometheus), or, when another balancer has it, a free loopback port (`balancer ls`
    /// shows it).
    #[arg(long, env = "BALANCER_METRICS", value_name = "ADDR:PORT|off")]
    pub metrics: Option<String>,

    /// Seconds workers get to finish after SIGTERM before they are killed.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    pub kill_timeout: f64,

    /// First delay before restarting a worker that exited; doubles on each further exit.
    #[arg(long, default_value_t = 0.1, value_name = "SECONDS")]
    pub restart_delay: f64,

    /// Longest delay between restarts.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    pub restart_max_delay: f64,

    /// A worker that ran this long counts as stable: the next delay starts again from
    /// --restart-delay.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    pub restart_reset_after: f64,

    /// After this many exits in a row within a second of starting, the slot stays down (the
    /// command is broken, e.g. a typo or a missing file) instead of restarting forever.
    #[arg(long, default_value_t = 5, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub give_up_after: u32,

    /// How long a new worker has to send READY=1 to its NOTIFY_SOCKET (systemd's protocol)
    /// before it counts as ready anyway. A slot gets connections once its worker is ready, and
    /// a reload stops a slot's old worker only once the new one is ready.
    #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
    pub ready_timeout: f64,

    /// How many slots a reload replaces at once (each keeps its old worker until the new one is
    /// ready).
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub reload_batch: u32,

    /// A worker whose accept queue holds connections and does not shrink for this long is
    /// stalled: it gets no new connections until it accepts again. 0 turns this off.
    #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
    pub stall_timeout: f64,

    /// A message channel per worker (BALANCER_CHANNEL_FD, and NODE_CHANNEL_FD for Node's
    /// `process.on('message')` and `process.send`), for `balancer send` and `balancer messages`.
    #[arg(long, env = "BALANCER_CHANNEL", value_enum, default_value_t = Switch::On)]
    pub channel: Switch,

    /// The worker command and its arguments, after `--`. It must serve on fd 3. Default: the
    /// built-in demo worker.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

/// `--overflow`: whether workers get the shared overflow queue.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    /// On for the built-in worker, off for a worker command.
    Auto,
    /// On: the worker command serves fd 4 as described.
    On,
    Off,
}

/// A plain on or off (`--channel`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Switch {
    On,
    Off,
}
