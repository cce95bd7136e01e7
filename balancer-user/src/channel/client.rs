//! `balancer send`, `balancer signal` and `balancer messages`: each checks its input before it
//! connects (a message that is not JSON never reaches the supervisor), sends its
//! [`Request`], and prints the answer.

use std::io::Write as _;

use super::{
    received::Received,
    request::{self, ChannelRequest, Outgoing},
};
use crate::{
    cli::{Command, Target},
    control::{self, Request},
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("give a JSON message, or --clear")]
    NoMessage,
    /// The message is not JSON, or too long.
    #[error("{0}")]
    BadMessage(String),
    #[error(transparent)]
    Control(#[from] control::Error),
}

/// Runs one of the three commands.
pub fn run(command: Command) -> Result<(), Error> {
    match command {
        Command::Send {
            json,
            slot,
            keep,
            clear,
            target,
        } => {
            let request = match (clear, json) {
                (true, _) => ChannelRequest::Clear,
                (false, Some(json)) => ChannelRequest::Send(Outgoing {
                    slot,
                    keep,
                    json: request::message(&json).map_err(Error::BadMessage)?,
                }),
                (false, None) => return Err(Error::NoMessage),
            };
            call(&target, request)
        }
        Command::Signal {
            signal,
            slot,
            target,
        } => call(&target, ChannelRequest::Signal { slot, signal }),
        Command::Messages { stream, target } => {
            let request = Request::Channel(ChannelRequest::Messages {
                slot: stream.slot,
                follow: stream.follow,
            });
            Ok(messages(&target.path()?, &request, stream.json)?)
        }
        _ => unreachable!("only the channel's commands come here"),
    }
}

fn call(target: &Target, request: ChannelRequest) -> Result<(), Error> {
    let answer = control::call(&target.path()?, &Request::Channel(request))?;
    println!("{answer}");
    Ok(())
}

/// Prints the messages the supervisor sends, as they come (human: prefixed with slot and pid;
/// `json`: as sent), until it closes the connection or, with `follow`, forever.
fn messages(path: &std::path::Path, request: &Request, json: bool) -> Result<(), control::Error> {
    let mut out = std::io::stdout().lock();
    control::client::stream(path, request, |line| {
        if json {
            return Ok(writeln!(out, "{line}")?);
        }
        let r: Received = control::client::decode(line)?;
        Ok(writeln!(
            out,
            "slot {} pid {}: {}",
            r.slot, r.pid, r.message
        )?)
    })
}
