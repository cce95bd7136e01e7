//! The channel's requests on the wire: `send`, `signal` and `messages`. Their values (a
//! message, a signal) are checked by [`crate::channel::request`], the same way a command-line
//! argument is.

use std::fmt;

use crate::channel::request::{message, signal, ChannelRequest, Outgoing};

impl fmt::Display for ChannelRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let slot = |f: &mut fmt::Formatter<'_>, slot: &Option<u32>| match slot {
            Some(s) => write!(f, " slot {s}"),
            None => Ok(()),
        };
        match self {
            ChannelRequest::Send(out) => {
                f.write_str("send")?;
                slot(f, &out.slot)?;
                if out.keep {
                    f.write_str(" keep")?;
                }
                write!(f, " {}", out.json)
            }
            ChannelRequest::Clear => f.write_str("send clear"),
            ChannelRequest::Signal { slot: s, signal } => {
                f.write_str("signal")?;
                slot(f, s)?;
                write!(f, " {}", signal.as_str())
            }
            ChannelRequest::Messages { slot: s, follow } => {
                f.write_str("messages")?;
                slot(f, s)?;
                if *follow {
                    f.write_str(" follow")?;
                }
                Ok(())
            }
        }
    }
}

/// Parses a line that starts with `send`, `signal` or `messages`; None for any other.
pub(super) fn parse(text: &str) -> Option<Result<ChannelRequest, String>> {
    let text = text.trim();
    let (verb, rest) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
    let parsed = match verb {
        "send" => parse_send(rest),
        "signal" => parse_signal(rest),
        "messages" => parse_messages(rest),
        _ => return None,
    };
    Some(parsed)
}

/// Takes a leading `slot N`, if there is one.
fn take_slot(rest: &str) -> Result<(Option<u32>, &str), String> {
    let Some(after) = rest.strip_prefix("slot") else {
        return Ok((None, rest));
    };
    let after = after.trim_start();
    let (n, tail) = after.split_once(char::is_whitespace).unwrap_or((after, ""));
    let slot = n.parse().map_err(|_| {
        format!(
            "bad slot {:?}: a slot number",
            n.chars().take(20).collect::<String>()
        )
    })?;
    Ok((Some(slot), tail.trim_start()))
}

fn parse_send(rest: &str) -> Result<ChannelRequest, String> {
    let rest = rest.trim();
    if rest == "clear" {
        return Ok(ChannelRequest::Clear);
    }
    let (slot, rest) = take_slot(rest)?;
    let (keep, rest) = match rest.strip_prefix("keep") {
        Some(r) if r.is_empty() || r.starts_with(char::is_whitespace) => (true, r.trim_start()),
        _ => (false, rest),
    };
    if rest.is_empty() {
        return Err("`send` needs a JSON message: send [slot N] [keep] JSON".into());
    }
    Ok(ChannelRequest::Send(Outgoing {
        slot,
        keep,
        json: message(rest)?,
    }))
}

fn parse_signal(rest: &str) -> Result<ChannelRequest, String> {
    let (slot, rest) = take_slot(rest.trim())?;
    if rest.is_empty() {
        return Err("`signal` needs a signal: signal [slot N] SIGNAL".into());
    }
    Ok(ChannelRequest::Signal {
        slot,
        signal: signal(rest)?,
    })
}

fn parse_messages(rest: &str) -> Result<ChannelRequest, String> {
    let (slot, rest) = take_slot(rest.trim())?;
    match rest {
        "" => Ok(ChannelRequest::Messages {
            slot,
            follow: false,
        }),
        "follow" => Ok(ChannelRequest::Messages { slot, follow: true }),
        other => Err(format!(
            "unknown `messages` option {:?}: messages [slot N] [follow]",
            other.chars().take(40).collect::<String>()
        )),
    }
}
