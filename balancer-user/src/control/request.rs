//! What a client may ask the supervisor: one line naming the command, parsed here. Pure, so
//! that it can be fuzzed on the host.

use super::MAX_REQUEST;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Status,
    Stop,
    /// Switch the steering policy, live.
    Policy(balancer_common::Policy),
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
    Channel(crate::channel::request::ChannelRequest),
}

/// What the control socket accepts, for error messages.
const USAGE: &str =
    "expected `status`, `stop`, `reload`, `scale N`, `policy NAME`, `weight SLOT N`, \
     `logs [slot N] [lines K] [follow]`, `send [slot N] [keep] JSON`, `send clear`, \
     `signal [slot N] SIGNAL` or `messages [slot N] [follow]`";

/// Largest weight accepted: keeps weighted keys far from overflow.
pub const MAX_WEIGHT: u32 = 1_000_000;

/// Parses one request line. Pure, so that it can be fuzzed on the host.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    // A message may be longer than any other request.
    let limit = match line.starts_with(b"send ") {
        true => crate::channel::request::MAX_LINE,
        false => MAX_REQUEST,
    };
    if line.len() > limit {
        return Err(format!("request longer than {limit} bytes"));
    }
    let text = std::str::from_utf8(line).map_err(|_| "request is not UTF-8".to_string())?;
    if let Some(channel) = crate::channel::request::parse(text) {
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
        ["policy", name] => balancer_common::Policy::from_name(name)
            .map(Request::Policy)
            .ok_or_else(|| {
                let names: Vec<_> = balancer_common::Policy::ALL
                    .iter()
                    .map(|p| p.name())
                    .collect();
                let shown: String = name.chars().take(40).collect();
                format!(
                    "unknown policy {shown:?}: choose one of {}",
                    names.join(", ")
                )
            }),
        ["weight", slot, weight] => {
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
        ["logs", rest @ ..] => parse_logs(rest),
        [] => Err(format!("empty request: {USAGE}")),
        _ => {
            let shown: String = text.trim().chars().take(40).collect();
            Err(format!("unknown request {shown:?}: {USAGE}"))
        }
    }
}

fn parse_logs(words: &[&str]) -> Result<Request, String> {
    let (mut slot, mut lines, mut follow) = (None, 50, false);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_requests() {
        assert_eq!(parse_request(b"status\n"), Ok(Request::Status));
        assert_eq!(parse_request(b"  stop  "), Ok(Request::Stop));
        assert_eq!(
            parse_request(b"policy p2c\n"),
            Ok(Request::Policy(balancer_common::Policy::P2c))
        );
        assert_eq!(
            parse_request(b"weight 2 5"),
            Ok(Request::Weight { slot: 2, weight: 5 })
        );
        assert!(parse_request(b"policy fastest")
            .unwrap_err()
            .contains("unknown policy"));
        assert!(parse_request(b"weight 2 0")
            .unwrap_err()
            .contains("bad weight"));
        assert!(parse_request(b"weight x 1")
            .unwrap_err()
            .contains("bad slot"));
    }

    #[test]
    fn rejects_everything_else_with_a_reason() {
        assert!(parse_request(b"").unwrap_err().contains("empty"));
        assert!(parse_request(b"\xff\xfe").unwrap_err().contains("UTF-8"));
        assert!(parse_request(b"reboot")
            .unwrap_err()
            .contains("unknown request"));
        assert!(parse_request(&[b'a'; 5000]).unwrap_err().contains("longer"));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap stand-in for a fuzzer: every short byte string, and long random ones.
        let mut x = 0x9e3779b97f4a7c15u64;
        for len in 0..2048usize {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = parse_request(&bytes);
        }
    }
}
