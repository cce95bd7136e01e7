use std::process::ExitCode;

use anyhow::Result;
use balancer::{
    cli::{Cli, Command},
    control::{self, Request},
    logging, supervisor, worker,
};
use clap::Parser as _;

fn main() -> ExitCode {
    let argv = match balancer::config::apply(std::env::args_os().collect()) {
        Ok(argv) => argv,
        Err(e) => {
            // One line: the error and its causes, joined.
            eprintln!("balancer: error: {:#}", anyhow::Error::new(e));
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
        Command::Run(args) => Ok(supervisor::run(args.into_options(json_logs)?)?),
        Command::Worker => Ok(worker::builtin::run()?),
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
        } => Ok(control::watch::run(&target.path()?)?),
        Command::Status { target, json, .. } => {
            let answer = control::call(&target.path()?, &Request::Status)?;
            if json {
                println!("{answer}");
            } else {
                let status: control::Status = serde_json::from_str(&answer)?;
                print!("{}", control::render(&status));
            }
            Ok(())
        }
        Command::Stop { target } => Ok(control::call(&target.path()?, &Request::Stop).map(drop)?),
        Command::Check => Ok(balancer::check::run()?),
        Command::Logs {
            lines,
            stream,
            target,
        } => Ok(control::logs(
            &target.path()?,
            stream.slot,
            lines,
            stream.follow,
            stream.json,
        )?),
        Command::Reload { target } => print(&target, Request::Reload),
        Command::Scale { workers, target } => print(&target, Request::Scale(workers)),
        Command::Policy { policy, target } => print(&target, Request::Policy(policy)),
        Command::Weight {
            slot,
            weight,
            target,
        } => print(&target, Request::Weight { slot, weight }),
        command @ (Command::Send { .. } | Command::Signal { .. } | Command::Messages { .. }) => {
            Ok(balancer::channel::client::run(command)?)
        }
    }
}

/// Sends `request` and prints its answer.
fn print(target: &balancer::cli::Target, request: Request) -> Result<()> {
    println!("{}", control::call(&target.path()?, &request)?);
    Ok(())
}
