//! The command line.

use std::{ffi::OsString, path::PathBuf};

use clap::{Parser, Subcommand};

/// Which running balancer a client command talks to.
#[derive(clap::Args, Debug, Clone)]
pub struct Target {
    /// Control socket of the balancer to talk to. Default: the one --name picks, or the only
    /// one running.
    #[arg(long, env = "BALANCER_CONTROL")]
    pub control: Option<PathBuf>,
    /// The balancer to talk to, by name or listen port (`balancer ls` lists them).
    #[arg(long, env = "BALANCER_NAME")]
    pub name: Option<String>,
}

impl Target {
    pub fn path(&self) -> anyhow::Result<PathBuf> {
        crate::control::find(self.control.clone(), self.name.as_deref())
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "balancer",
    version = crate::version::SHORT,
    long_version = crate::version::LONG,
    about = "Run N copies of a server on one port; the kernel sends each new connection to the least-loaded copy.",
    long_about = "Run N copies of a server on one port. Each copy (worker) gets its own listening socket \
on fd 3 (systemd's LISTEN_FDS convention), and an SK_REUSEPORT eBPF program picks, for every new \
connection, the worker with the fewest open connections. No proxy hop: the kernel hands the \
connection straight to the worker.\n\nNeeds CAP_BPF (root works). Example:\n  \
balancer run --listen :8080 --workers 4 -- node server.js"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log format: human (default) or json (one object per line, for log shippers).
    #[arg(long, global = true, env = "BALANCER_LOG_FORMAT", default_value = "human", value_parser = ["human", "json"])]
    pub log_format: String,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Start the workers and steer connections to them (runs until Ctrl-C or `balancer stop`).
    Run(Box<RunArgs>),
    /// The built-in demo HTTP worker (what `run` starts when no command is given).
    ///
    /// Routes: GET / (slot and pid), GET /work?ms=N[&cpu=1] (holds its single event loop for N
    /// ms), GET /healthz.
    Worker,
    /// Show each worker slot of a running balancer: state, pid, load, queue, restarts.
    Status {
        #[command(flatten)]
        target: Target,
        /// Print the raw JSON answer instead of a table.
        #[arg(long)]
        json: bool,
        /// Refresh once a second: a live view with per-slot load bars and connections per second.
        #[arg(long, short)]
        watch: bool,
    },
    /// Switch the steering policy of a running balancer, without restarting anything.
    Policy {
        /// least-loaded, p2c, round-robin, weighted, sticky or hash.
        #[arg(value_parser = parse_policy)]
        policy: balancer_common::Policy,
        #[command(flatten)]
        target: Target,
    },
    /// Set one slot's weight in a running balancer (used by the weighted policy).
    Weight {
        slot: u32,
        #[arg(value_parser = clap::value_parser!(u32).range(1..=crate::control::MAX_WEIGHT as i64))]
        weight: u32,
        #[command(flatten)]
        target: Target,
    },
    /// Replace every worker of a running balancer, slot by slot, without dropping a connection
    /// (also on SIGHUP). Picks up a new binary of the worker command.
    Reload {
        #[command(flatten)]
        target: Target,
    },
    /// Change the number of workers of a running balancer: new slots start at once, removed
    /// ones drain first.
    Scale {
        #[arg(value_parser = clap::value_parser!(u32).range(1..=balancer_common::MAX_SLOTS as i64))]
        workers: u32,
        #[command(flatten)]
        target: Target,
    },
    /// Show the workers' output: the last lines of every slot (or of one), and with --follow
    /// every new line as it comes.
    Logs {
        /// Only this slot's lines.
        #[arg(long)]
        slot: Option<u32>,
        /// How many of the last lines to show first.
        #[arg(long, short = 'n', default_value_t = 50)]
        lines: usize,
        /// Keep printing new lines until interrupted.
        #[arg(long, short)]
        follow: bool,
        /// One JSON object per line ({seq, slot, pid, stream, line}).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// List the balancers running on this host (their control sockets in the runtime
    /// directory): name, listen address, workers up, policy, metrics address.
    Ls {
        /// One JSON object per balancer, as an array.
        #[arg(long)]
        json: bool,
    },
    /// Stop a running balancer gracefully (like Ctrl-C).
    Stop {
        #[command(flatten)]
        target: Target,
    },
    /// Send a JSON message to every worker (or one slot's) on its message channel: Node
    /// workers get it as a `process.on('message')` event. The answer counts the workers that
    /// took it.
    Send {
        /// The message, one JSON value (at most 64 KiB), e.g. '{"cmd":"updateConfig"}'.
        #[arg(required_unless_present = "clear", conflicts_with = "clear")]
        json: Option<String>,
        /// Only the worker of this slot.
        #[arg(long)]
        slot: Option<u32>,
        /// Also send it to every worker started later (a restart, a reload, a scale-up), in the
        /// order sent.
        #[arg(long)]
        keep: bool,
        /// Forget the kept messages instead.
        #[arg(long, conflicts_with_all = ["slot", "keep"])]
        clear: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Send a signal to every worker (or one slot's); the answer names the pids. A worker it
    /// stops is restarted at once, with no backoff.
    Signal {
        /// A name (SIGUSR2, USR2) or a number (12).
        #[arg(value_parser = crate::channel::request::signal)]
        signal: nix::sys::signal::Signal,
        /// Only the worker of this slot.
        #[arg(long)]
        slot: Option<u32>,
        #[command(flatten)]
        target: Target,
    },
    /// Show the messages the workers sent on their channel (Node: `process.send`), and with
    /// --follow every new one as it comes.
    Messages {
        /// Only this slot's messages.
        #[arg(long)]
        slot: Option<u32>,
        /// Keep printing new messages until interrupted.
        #[arg(long, short)]
        follow: bool,
        /// One JSON object per message ({seq, slot, pid, message}).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Check whether the balancer can run on this host: each kernel feature it uses (probed by
    /// loading), its programs through the verifier, capabilities and sysctls. Exits non-zero
    /// with the fix when it cannot run.
    Check,
}

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
    #[arg(short, long, env = "BALANCER_POLICY", default_value = "least-loaded", value_parser = parse_policy)]
    pub policy: balancer_common::Policy,

    /// Serve UDP instead of TCP: each datagram is steered by the program (per datagram for
    /// least-loaded, p2c, round-robin and weighted; per client address for sticky).
    #[arg(long)]
    pub udp: bool,

    /// How often, in seconds, each worker's load is compared with what the kernel holds for it
    /// (its accept queue and the connections open in its processes) and corrected where two
    /// readings agree.
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

pub fn parse_policy(s: &str) -> Result<balancer_common::Policy, String> {
    balancer_common::Policy::from_name(s).ok_or_else(|| {
        let names: Vec<_> = balancer_common::Policy::ALL
            .iter()
            .map(|p| p.name())
            .collect();
        format!("unknown policy {s:?}: choose one of {}", names.join(", "))
    })
}

/// A size in bytes: `4096`, `64K`, `10M`, `1G` (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let scale: u64 = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        _ => {
            return Err(format!(
                "bad size {s:?}: a number of bytes, or with K, M or G (10M)"
            ))
        }
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("bad size {s:?}: a number of bytes, or with K, M or G (10M)"))
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
