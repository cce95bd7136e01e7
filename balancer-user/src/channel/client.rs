//! `balancer send`, `balancer signal` and `balancer messages`: each checks its input before it
//! connects (a message that is not JSON never reaches the supervisor), writes its request the
//! one way [`request`](super::request) defines, and prints the answer.

use std::io::{BufRead as _, Write as _};

use anyhow::{bail, Context as _, Result};

use super::{
    received::Received,
    request::{self, Outgoing},
};
use crate::{cli::Command, control};

/// Runs one of the three commands.
pub fn run(command: Command) -> Result<()> {
    match command {
        Command::Send {
            json,
            slot,
            keep,
            clear,
            target,
        } => {
            let line = match (clear, json) {
                (true, _) => request::clear_line(),
                (false, Some(json)) => Outgoing {
                    slot,
                    keep,
                    json: request::message(&json).map_err(anyhow::Error::msg)?,
                }
                .line(),
                (false, None) => bail!("give a JSON message, or --clear"),
            };
            println!("{}", control::call(&target.path()?, &line)?);
            Ok(())
        }
        Command::Signal {
            signal,
            slot,
            target,
        } => {
            let line = request::signal_line(slot, signal);
            println!("{}", control::call(&target.path()?, &line)?);
            Ok(())
        }
        Command::Messages {
            slot,
            follow,
            json,
            target,
        } => messages(&target.path()?, &request::messages_line(slot, follow), json),
        _ => unreachable!("only the channel's commands come here"),
    }
}

/// Prints the messages the supervisor sends, as they come (human: prefixed with slot and pid;
/// `json`: as sent), until it closes the connection or, with `follow`, forever.
fn messages(path: &std::path::Path, line: &str, json: bool) -> Result<()> {
    let mut stream = std::os::unix::net::UnixStream::connect(path).with_context(|| {
        format!(
            "no balancer answers on {}: is it running? (pass --control if it uses another socket)",
            path.display()
        )
    })?;
    writeln!(stream, "{line}")?;
    let mut out = std::io::stdout().lock();
    for answer in std::io::BufReader::new(stream).lines() {
        let answer = answer.context("reading the supervisor's answer")?;
        if let Some(err) = answer.strip_prefix("error: ") {
            bail!("the supervisor refused `{line}`: {err}");
        }
        if json {
            writeln!(out, "{answer}")?;
            continue;
        }
        let r: Received = serde_json::from_str(&answer)
            .with_context(|| format!("unexpected answer line {answer:?}"))?;
        writeln!(out, "slot {} pid {}: {}", r.slot, r.pid, r.message)?;
    }
    Ok(())
}
