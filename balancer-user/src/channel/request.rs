//! The channel's requests, `send`, `signal` and `messages`, and the checks of their values (a
//! message is JSON, a signal has a name or number) that the command line and the control socket
//! share. They are written and read on the wire as a part of the control socket's
//! [`Request`](crate::control::Request). Pure, so that they are tested (and fuzzed) without a
//! supervisor.

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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_message_is_compact_json_within_the_limit() {
        let m = message("{ \"cmd\": \"updateConfig\", \"data\": [1, 2] }").unwrap();
        assert_eq!(&*m, r#"{"cmd":"updateConfig","data":[1,2]}"#);
        assert!(message("{nope").unwrap_err().contains("not JSON"));
        let big = format!("\"{}\"", "x".repeat(MAX_MESSAGE));
        assert!(message(&big).unwrap_err().contains("at most 65536"));
    }
}
