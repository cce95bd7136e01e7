//! The command line: what clap parses ([`Cli`], and `balancer run`'s flags in [`run`]), and the
//! one conversion of those flags into what the supervisor runs with ([`options`]).

mod options;
pub mod run;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub use options::Error;
pub use run::RunArgs;

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
    pub fn path(&self) -> Result<PathBuf, crate::control::Error> {
        crate::control::find(self.control.clone(), self.name.as_deref())
    }
}

/// What `logs` and `messages` show, and how: the two stream what the workers wrote.
#[derive(clap::Args, Debug, Clone)]
pub struct Stream {
    /// Only what this slot's workers wrote.
    #[arg(long)]
    pub slot: Option<u32>,
    /// Keep printing new ones as they come, until interrupted.
    #[arg(long, short)]
    pub follow: bool,
    /// One JSON object per line, as the supervisor sends it (logs: {seq, slot, pid, stream,
    /// line}; messages: {seq, slot, pid, message}).
    #[arg(long)]
    pub json: bool,
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
        #[arg(value_parser = crate::control::request::policy)]
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
        /// How many of the last lines to show first.
        #[arg(long, short = 'n', default_value_t = 50)]
        lines: usize,
        #[command(flatten)]
        stream: Stream,
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
        #[command(flatten)]
        stream: Stream,
        #[command(flatten)]
        target: Target,
    },
    /// Check whether the balancer can run on this host: each kernel feature it uses (probed by
    /// loading), its programs through the verifier, capabilities and sysctls. Exits non-zero
    /// with the fix when it cannot run.
    Check,
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
