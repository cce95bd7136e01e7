//! The control requests of the channel, `send`, `signal` and `messages`: written by the command
//! line with [`Outgoing::line`] and the other `*_line` functions, and parsed by the control
//! socket with [`parse`], one encoding for both. Pure, so that they are tested (and fuzzed)
//! without a supervisor.
//!
//! ```text
//! send [slot N] [keep] JSON     a message, to one slot or every worker
//! send clear                    forget the kept messages
//! signal [slot N] SIGNAL        SIGNAL: a name (SIGUSR2, USR2) or a number (12)
//! messages [slot N] [follow]    what the workers sent
//! ```

use std::{str::FromStr as _, sync::Arc};

use nix::sys::signal::Signal;

use super::MAX_MESSAGE;

/// The longest `send` line the control socket reads: the message and its options.
pub const MAX_LINE: usize = MAX_MESSAGE + 64;

/// A message to send: compact JSON, one line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub slot: Option<u32>,
    /// Also deliver it to every worker started later.
    pub keep: bool,
    pub json: Arc<str>,
}

/// One parsed channel request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChannelRequest {
    Send(Outgoing),
    /// Forget the kept messages.
    Clear,
    Signal {
        slot: Option<u32>,
        signal: Signal,
    },
    Messages {
        slot: Option<u32>,
        follow: bool,
    },
}

impl Outgoing {
    pub fn line(&self) -> String {
        let mut line = "send".to_string();
        if let Some(s) = self.slot {
            line.push_str(&format!(" slot {s}"));
        }
        if self.keep {
            line.push_str(" keep");
        }
        line.push(' ');
        line.push_str(&self.json);
        line
    }
}

pub fn clear_line() -> String {
    "send clear".into()
}

pub fn signal_line(slot: Option<u32>, signal: Signal) -> String {
    match slot {
        Some(s) => format!("signal slot {s} {}", signal.as_str()),
        None => format!("signal {}", signal.as_str()),
    }
}

pub fn messages_line(slot: Option<u32>, follow: bool) -> String {
    let mut line = "messages".to_string();
    if let Some(s) = slot {
        line.push_str(&format!(" slot {s}"));
    }
    if follow {
        line.push_str(" follow");
    }
    line
}

/// Checks a message given by a user and returns it as compact JSON (one line).
pub fn message(text: &str) -> Result<Arc<str>, String> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        let shown: String = text.trim().chars().take(40).collect();
        format!("message {shown:?} is not JSON ({e}): quote it for the shell, e.g. '{{\"cmd\":\"reload\"}}'")
    })?;
    let compact = value.to_string();
    if compact.len() > MAX_MESSAGE {
        return Err(format!(
            "message is {} bytes of JSON: at most {MAX_MESSAGE} (64 KiB)",
            compact.len()
        ));
    }
    Ok(compact.into())
}

/// A signal by name (`SIGUSR2`, `usr2`) or number (`12`).
pub fn signal(text: &str) -> Result<Signal, String> {
    let t = text.trim();
    let parsed = match t.parse::<i32>() {
        Ok(n) => Signal::try_from(n).ok(),
        Err(_) => {
            let upper = t.to_ascii_uppercase();
            let name = if upper.starts_with("SIG") {
                upper
            } else {
                format!("SIG{upper}")
            };
            Signal::from_str(&name).ok()
        }
    };
    parsed.ok_or_else(|| {
        let shown: String = t.chars().take(20).collect();
        format!("unknown signal {shown:?}: give a name such as SIGUSR2 or HUP, or a number such as 12 (`kill -l` lists them)")
    })
}

/// Parses a line that starts with `send`, `signal` or `messages`; None for any other.
pub fn parse(text: &str) -> Option<Result<ChannelRequest, String>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(line: &str) -> ChannelRequest {
        parse(line).expect("a channel request").unwrap()
    }

    #[test]
    fn what_the_command_line_writes_the_socket_reads() {
        let out = Outgoing {
            slot: Some(2),
            keep: true,
            json: message("{ \"cmd\": \"updateConfig\", \"data\": [1, 2] }").unwrap(),
        };
        assert_eq!(&*out.json, r#"{"cmd":"updateConfig","data":[1,2]}"#);
        assert_eq!(ok(&out.line()), ChannelRequest::Send(out.clone()));
        let all = Outgoing {
            slot: None,
            keep: false,
            json: "\"hi\"".into(),
        };
        assert_eq!(ok(&all.line()), ChannelRequest::Send(all.clone()));
        assert_eq!(ok(&clear_line()), ChannelRequest::Clear);
        let sig = ChannelRequest::Signal {
            slot: Some(1),
            signal: Signal::SIGUSR2,
        };
        assert_eq!(ok(&signal_line(Some(1), Signal::SIGUSR2)), sig);
        let m = ChannelRequest::Messages {
            slot: None,
            follow: true,
        };
        assert_eq!(ok(&messages_line(None, true)), m);
        assert!(parse("status").is_none());
    }

    #[test]
    fn signals_by_name_or_number() {
        for s in ["SIGUSR2", "usr2", "Usr2", "12"] {
            assert_eq!(signal(s), Ok(Signal::SIGUSR2), "{s}");
        }
        assert_eq!(signal("9"), Ok(Signal::SIGKILL));
        for bad in ["SIGFOO", "0", "99", "", "USR"] {
            assert!(signal(bad).unwrap_err().contains("unknown signal"), "{bad}");
        }
    }

    #[test]
    fn bad_input_is_refused_with_a_reason() {
        let err = |l: &str| parse(l).unwrap().unwrap_err();
        assert!(err("send {nope").contains("not JSON"));
        assert!(err("send").contains("needs a JSON message"));
        assert!(err("send slot x {}").contains("bad slot"));
        let big = format!("send \"{}\"", "x".repeat(MAX_MESSAGE));
        assert!(err(&big).contains("at most 65536"));
        assert!(err("signal slot 1 SIGNOPE").contains("unknown signal"));
        assert!(err("signal").contains("needs a signal"));
        assert!(err("messages sideways").contains("unknown `messages` option"));
        // A message that is JSON keeps its own spacing out: one line on the wire.
        let ChannelRequest::Send(o) = ok("send keep [1,\n 2]") else {
            panic!()
        };
        assert_eq!((&*o.json, o.keep), ("[1,2]", true));
    }
}
