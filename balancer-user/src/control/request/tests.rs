use nix::sys::signal::Signal;

use super::*;
use crate::channel::{
    request::{message, Outgoing},
    MAX_MESSAGE,
};

fn channel(line: &str) -> ChannelRequest {
    match line.parse() {
        Ok(Request::Channel(c)) => c,
        other => panic!("{line:?}: {other:?}"),
    }
}

fn refusal(line: &str) -> String {
    parse_request(line.as_bytes()).unwrap_err()
}

#[test]
fn every_request_reads_back_as_written() {
    let json = message("{ \"cmd\": \"updateConfig\", \"data\": [1, 2] }").unwrap();
    let all = [
        Request::Status,
        Request::Stop,
        Request::Reload,
        Request::Scale(7),
        Request::Weight { slot: 2, weight: 5 },
        Request::Logs {
            slot: None,
            lines: 50,
            follow: false,
        },
        Request::Logs {
            slot: Some(3),
            lines: 0,
            follow: true,
        },
        Request::Channel(ChannelRequest::Send(Outgoing {
            slot: Some(2),
            keep: true,
            json,
        })),
        Request::Channel(ChannelRequest::Send(Outgoing {
            slot: None,
            keep: false,
            json: "\"hi\"".into(),
        })),
        Request::Channel(ChannelRequest::Clear),
        Request::Channel(ChannelRequest::Signal {
            slot: Some(1),
            signal: Signal::SIGUSR2,
        }),
        Request::Channel(ChannelRequest::Signal {
            slot: None,
            signal: Signal::SIGHUP,
        }),
        Request::Channel(ChannelRequest::Messages {
            slot: None,
            follow: true,
        }),
        Request::Channel(ChannelRequest::Messages {
            slot: Some(0),
            follow: false,
        }),
    ];
    let policies = Policy::ALL.iter().map(|&p| Request::Policy(p));
    for request in all.into_iter().chain(policies) {
        let line = request.to_string();
        assert!(!line.contains('\n'), "{line:?}");
        assert_eq!(parse_request(line.as_bytes()), Ok(request), "{line:?}");
    }
}

#[test]
fn the_wire_is_what_clients_have_always_written() {
    assert_eq!(Request::Scale(3).to_string(), "scale 3");
    assert_eq!(Request::Policy(Policy::P2c).to_string(), "policy p2c");
    let logs = Request::Logs {
        slot: Some(1),
        lines: 10,
        follow: true,
    };
    assert_eq!(logs.to_string(), "logs lines 10 slot 1 follow");
    let signal = ChannelRequest::Signal {
        slot: Some(1),
        signal: Signal::SIGUSR2,
    };
    assert_eq!(signal.to_string(), "signal slot 1 SIGUSR2");
}

#[test]
fn parses_known_requests() {
    assert_eq!(parse_request(b"status\n"), Ok(Request::Status));
    assert_eq!(parse_request(b"  stop  "), Ok(Request::Stop));
    assert_eq!(
        parse_request(b"policy p2c\n"),
        Ok(Request::Policy(Policy::P2c))
    );
    assert_eq!(
        parse_request(b"weight 2 5"),
        Ok(Request::Weight { slot: 2, weight: 5 })
    );
    assert!(refusal("policy fastest").contains("unknown policy"));
    assert!(refusal("weight 2 0").contains("bad weight"));
    assert!(refusal("weight x 1").contains("bad slot"));
    // A message that is JSON keeps its own spacing out: one line on the wire.
    let ChannelRequest::Send(o) = channel("send keep [1,\n 2]") else {
        panic!()
    };
    assert_eq!((&*o.json, o.keep), ("[1,2]", true));
}

#[test]
fn rejects_everything_else_with_a_reason() {
    assert!(refusal("").contains("empty"));
    assert!(parse_request(b"\xff\xfe").unwrap_err().contains("UTF-8"));
    assert!(refusal("reboot").contains("unknown request"));
    assert!(parse_request(&[b'a'; 5000]).unwrap_err().contains("longer"));
    assert!(refusal("send {nope").contains("not JSON"));
    assert!(refusal("send").contains("needs a JSON message"));
    assert!(refusal("send slot x {}").contains("bad slot"));
    let big = format!("send \"{}\"", "x".repeat(MAX_MESSAGE));
    assert!(refusal(&big).contains("at most 65536"));
    assert!(refusal("signal slot 1 SIGNOPE").contains("unknown signal"));
    assert!(refusal("signal").contains("needs a signal"));
    assert!(refusal("messages sideways").contains("unknown `messages` option"));
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
