use std::{process::ExitCode, time::Duration};

use anyhow::Result;
use balancer::{
    cli::{Cli, Command, Overflow, RunArgs},
    control, listeners, logging, supervisor, worker,
};
use clap::Parser as _;

fn main() -> ExitCode {
    let argv = match balancer::config::apply(std::env::args_os().collect()) {
        Ok(argv) => argv,
        Err(e) => {
            eprintln!("balancer: error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            // clap's message, without the usage block: one line that names the problem.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("bad arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("balancer: error: {first} (see `balancer --help`)");
            return ExitCode::from(2);
        }
    };
    logging::init(&cli.log_format);
    match dispatch(cli.command, cli.log_format == "json") {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes, joined.
            eprintln!("balancer: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command, json_logs: bool) -> Result<()> {
    match command {
        Command::Run(args) => supervisor::run(options(*args, json_logs)?),
        Command::Worker => worker::builtin::run(),
        Command::Ls { json } => {
            let services = control::running();
            if json {
                println!("{}", serde_json::to_string(&services)?);
            } else {
                print!("{}", control::render_services(&services));
            }
            Ok(())
        }
        Command::Status {
            target,
            watch: true,
            json: false,
        } => control::watch::run(&target.path()?),
        Command::Status { target, json, .. } => {
            let answer = control::call(&target.path()?, "status")?;
            if json {
                println!("{answer}");
            } else {
                let status: control::Status = serde_json::from_str(&answer)?;
                print!("{}", control::render(&status));
            }
            Ok(())
        }
        Command::Stop { target } => control::call(&target.path()?, "stop").map(drop),
        Command::Check => balancer::check::run(),
        Command::Logs {
            slot,
            lines,
            follow,
            json,
            target,
        } => control::logs(&target.path()?, slot, lines, follow, json),
        Command::Reload { target } => {
            println!("{}", control::call(&target.path()?, "reload")?);
            Ok(())
        }
        Command::Scale { workers, target } => {
            let path = target.path()?;
            println!("{}", control::call(&path, &format!("scale {workers}"))?);
            Ok(())
        }
        Command::Policy { policy, target } => {
            let request = format!("policy {}", policy.name());
            println!("{}", control::call(&target.path()?, &request)?);
            Ok(())
        }
        Command::Weight {
            slot,
            weight,
            target,
        } => {
            let request = format!("weight {slot} {weight}");
            println!("{}", control::call(&target.path()?, &request)?);
            Ok(())
        }
        command @ (Command::Send { .. } | Command::Signal { .. } | Command::Messages { .. }) => {
            balancer::channel::client::run(command)
        }
    }
}

fn options(args: RunArgs, json_logs: bool) -> Result<supervisor::Options> {
    let listen = listeners::parse_addr(&args.listen)?;
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| listen.port().to_string());
    balancer::control::check_name(&name)?;
    let workers = match args.workers {
        Some(n) => n,
        None => std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
    };
    let kill_timeout = seconds("kill-timeout", args.kill_timeout)?;
    let backoff = balancer::backoff::Policy {
        initial: seconds("restart-delay", args.restart_delay)?,
        max: seconds("restart-max-delay", args.restart_max_delay)?,
        stable: seconds("restart-reset-after", args.restart_reset_after)?,
        quick: Duration::from_secs(1),
        give_up_after: args.give_up_after,
    };
    let stall_timeout = seconds("stall-timeout", args.stall_timeout)?;
    if args.weights.len() > workers as usize {
        anyhow::bail!(
            "--weights has {} values for {workers} workers: give at most one weight per worker",
            args.weights.len()
        );
    }
    if args.backlog < 1 {
        anyhow::bail!(
            "--backlog {}: give a queue length of 1 or more",
            args.backlog
        );
    }
    if !(1..=1 << 24).contains(&args.flow_table) {
        anyhow::bail!(
            "--flow-table {}: give a number of connections from 1 to 16777216",
            args.flow_table
        );
    }
    let reconcile_interval = seconds("reconcile-interval", args.reconcile_interval)?;
    if reconcile_interval < Duration::from_millis(10)
        || reconcile_interval > Duration::from_secs(60)
    {
        anyhow::bail!(
            "--reconcile-interval {}: give a number of seconds from 0.01 to 60",
            args.reconcile_interval
        );
    }
    let identity =
        balancer::identity::Identity::resolve(args.user.as_deref(), args.group.as_deref(), &name)?;
    let recycle = recycling(&args)?;
    let health = health_check(&args)?;
    let logs = balancer::logs::sink::Options {
        json: json_logs,
        dir: args.log_dir,
        max_size: args.log_max_size,
        keep: args.log_keep,
    };
    Ok(supervisor::Options {
        health,
        recycle,
        logs,
        identity,
        channel: args.channel == balancer::cli::Switch::On,
        listen,
        workers,
        policy: args.policy,
        backlog: args.backlog,
        overflow: match args.overflow {
            Overflow::On => true,
            Overflow::Off => false,
            Overflow::Auto => args.command.is_empty(),
        } && !args.udp,
        command: (!args.command.is_empty()).then_some(args.command),
        control: args
            .control
            .unwrap_or_else(|| balancer::control::path_for(&name)),
        name,
        kill_timeout,
        ready_timeout: seconds("ready-timeout", args.ready_timeout)?,
        reload_batch: args.reload_batch,
        stall_timeout: (!stall_timeout.is_zero()).then_some(stall_timeout),
        backoff,
        weights: args.weights,
        flows: args.flow_table,
        reconcile_interval,
        transport: if args.udp {
            listeners::Transport::Udp
        } else {
            listeners::Transport::Tcp
        },
        metrics: match args.metrics.as_deref().map(str::trim) {
            None => Some(supervisor::Metrics::Default),
            Some("off" | "") => None,
            Some(addr) => Some(supervisor::Metrics::At(
                listeners::parse_addr(addr).map_err(|_| {
                    anyhow::anyhow!(
                        "bad --metrics {addr:?}: expected ADDR:PORT such as 127.0.0.1:9464, or off"
                    )
                })?,
            )),
        },
    })
}

fn seconds(flag: &str, v: f64) -> Result<Duration> {
    if v.is_finite() && (0.0..1e9).contains(&v) {
        Ok(Duration::from_secs_f64(v))
    } else {
        anyhow::bail!("--{flag} {v}: give a number of seconds, 0 or more")
    }
}

/// `--max-memory`, `--max-requests` and its jitter.
fn recycling(args: &RunArgs) -> Result<supervisor::Limits> {
    if args.max_requests_jitter > 0 && args.max_requests.is_none() {
        anyhow::bail!(
            "--max-requests-jitter {} without --max-requests: give --max-requests N too",
            args.max_requests_jitter
        );
    }
    Ok(supervisor::Limits {
        max_memory: args.max_memory,
        max_requests: args.max_requests,
        jitter: args.max_requests_jitter,
    })
}

/// `--health-check` and its interval, timeout and thresholds; None without a path.
fn health_check(args: &RunArgs) -> Result<Option<supervisor::Check>> {
    let Some(path) = args.health_check.clone() else {
        return Ok(None);
    };
    if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        anyhow::bail!(
            "--health-check {path:?}: give a request path such as /healthz (starting with /, no spaces)"
        );
    }
    let interval = seconds("health-interval", args.health_interval)?;
    let timeout = seconds("health-timeout", args.health_timeout)?;
    if interval < Duration::from_millis(10) {
        anyhow::bail!(
            "--health-interval {}: give at least 0.01 seconds",
            args.health_interval
        );
    }
    if timeout.is_zero() || timeout > interval {
        anyhow::bail!(
            "--health-timeout {}: give more than 0 and at most --health-interval ({})",
            args.health_timeout,
            args.health_interval
        );
    }
    Ok(Some(supervisor::Check {
        path,
        interval,
        timeout,
        rise: args.health_rise,
        fall: args.health_fall,
    }))
}
