//! What a client may ask the supervisor: one [`Request`], written on the wire as one line by its
//! `Display` and read back by its `FromStr`, so that the command line and the control socket
//! cannot disagree. Pure, so that it can be fuzzed on the host.
//!
//! ```text
//! status | stop | reload | scale N | policy NAME | weight SLOT N
//! logs [lines K] [slot N] [follow]
//! send [slot N] [keep] JSON      a message, to one slot or every worker
//! send clear                     forget the kept messages
//! signal [slot N] SIGNAL         SIGNAL: a name (SIGUSR2, USR2) or a number (12)
//! messages [slot N] [follow]     what the workers sent
//! ```
//!
//! The channel's part ([`ChannelRequest`]) is grammar of its own, in [`channel`].

mod channel;
#[cfg(test)]
mod tests;

use std::{fmt, str::FromStr};

use balancer_common::Policy;

use super::MAX_REQUEST;
use crate::channel::request::{ChannelRequest, MAX_LINE};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Status,
    Stop,
    /// Switch the steering policy, live.
    Policy(Policy),
    /// Set one slot's weight (for the weighted policy), live.
    Weight {
        slot: u32,
        weight: u32,
    },
    /// Replace every worker, slot by slot (zero downtime).
    Reload,
    /// Change the number of slots.
    Scale(u32),
    /// The workers' last lines (of one slot, or all), then with `follow` every new one: answered
    /// with one JSON [`Line`](crate::logs::Line) per line, not through the supervisor's loop.
    Logs {
        slot: Option<u32>,
        lines: usize,
        follow: bool,
    },
    /// `send`, `signal` and `messages`: the workers' message channels.
    Channel(ChannelRequest),
}

/// What the control socket accepts, for error messages.
const USAGE: &str =
    "expected `status`, `stop`, `reload`, `scale N`, `policy NAME`, `weight SLOT N`, \
     `logs [slot N] [lines K] [follow]`, `send [slot N] [keep] JSON`, `send clear`, \
     `signal [slot N] SIGNAL` or `messages [slot N] [follow]`";

/// Largest weight accepted: keeps weighted keys far from overflow.
pub const MAX_WEIGHT: u32 = 1_000_000;

/// Lines `logs` sends first when the request does not say.
const DEFAULT_LINES: usize = 50;

impl Request {
    /// Whether the answer waits for the work to be done (workers started and drained), which
    /// takes as long as the workers take: a client must not time it out.
    pub fn is_long(&self) -> bool {
        matches!(self, Request::Reload | Request::Scale(_))
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Status => f.write_str("status"),
            Request::Stop => f.write_str("stop"),
            Request::Reload => f.write_str("reload"),
            Request::Scale(n) => write!(f, "scale {n}"),
            Request::Policy(p) => write!(f, "policy {}", p.name()),
            Request::Weight { slot, weight } => write!(f, "weight {slot} {weight}"),
            Request::Logs {
                slot,
                lines,
                follow,
            } => {
                write!(f, "logs lines {lines}")?;
                if let Some(s) = slot {
                    write!(f, " slot {s}")?;
                }
                if *follow {
                    f.write_str(" follow")?;
                }
                Ok(())
            }
            Request::Channel(c) => c.fmt(f),
        }
    }
}

/// Parses one request line, as read from the socket: bounded, then UTF-8, then [`FromStr`].
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    // A message may be longer than any other request.
    let limit = match line.starts_with(b"send ") {
        true => MAX_LINE,
        false => MAX_REQUEST,
    };
    if line.len() > limit {
        return Err(format!("request longer than {limit} bytes"));
    }
    std::str::from_utf8(line)
        .map_err(|_| "request is not UTF-8".to_string())?
        .parse()
}

impl FromStr for Request {
    /// The refusal, as the client is told it.
    type Err = String;

    fn from_str(text: &str) -> Result<Request, String> {
        if let Some(channel) = channel::parse(text) {
            return channel.map(Request::Channel);
        }
        let words: Vec<&str> = text.split_whitespace().collect();
        match words.as_slice() {
            ["status"] => Ok(Request::Status),
            ["stop"] => Ok(Request::Stop),
            ["reload"] => Ok(Request::Reload),
            ["scale", n] => n.parse().map(Request::Scale).map_err(|_| {
                format!(
                    "bad worker count {n:?}: a number from 1 to {}",
                    balancer_common::MAX_SLOTS
                )
            }),
            ["policy", name] => policy(name).map(Request::Policy),
            ["weight", slot, weight] => parse_weight(slot, weight),
            ["logs", rest @ ..] => parse_logs(rest),
            [] => Err(format!("empty request: {USAGE}")),
            _ => {
                let shown: String = text.trim().chars().take(40).collect();
                Err(format!("unknown request {shown:?}: {USAGE}"))
            }
        }
    }
}

/// A policy by name, for the control socket and the command line alike.
pub fn policy(name: &str) -> Result<Policy, String> {
    Policy::from_name(name).ok_or_else(|| {
        let names: Vec<_> = Policy::ALL.iter().map(|p| p.name()).collect();
        let shown: String = name.chars().take(40).collect();
        format!(
            "unknown policy {shown:?}: choose one of {}",
            names.join(", ")
        )
    })
}

fn parse_weight(slot: &str, weight: &str) -> Result<Request, String> {
    let slot = slot
        .parse()
        .map_err(|_| format!("bad slot {slot:?}: a slot number"))?;
    let weight = weight
        .parse()
        .ok()
        .filter(|w| (1..=MAX_WEIGHT).contains(w))
        .ok_or_else(|| format!("bad weight {weight:?}: a number from 1 to {MAX_WEIGHT}"))?;
    Ok(Request::Weight { slot, weight })
}

fn parse_logs(words: &[&str]) -> Result<Request, String> {
    let (mut slot, mut lines, mut follow) = (None, DEFAULT_LINES, false);
    let mut words = words.iter();
    while let Some(&w) = words.next() {
        match w {
            "follow" => follow = true,
            "slot" | "lines" => {
                let n: u32 = words
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| format!("`logs {w}` needs a number"))?;
                if w == "slot" {
                    slot = Some(n);
                } else {
                    lines = n as usize;
                }
            }
            _ => {
                let shown: String = w.chars().take(40).collect();
                return Err(format!("unknown `logs` option {shown:?}: {USAGE}"));
            }
        }
    }
    Ok(Request::Logs {
        slot,
        lines,
        follow,
    })
}
