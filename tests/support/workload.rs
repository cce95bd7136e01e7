//! Load generators for measurements: clients on threads of their own, closed loop (each client
//! sends its next request when the last is answered) or open loop (requests sent on a schedule,
//! whatever the answers do).

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::{get, KeepAlive};

/// Runs `client(0..clients)` on as many threads at once and gathers what they return, in client
/// order; the first error wins.
pub fn in_parallel<T: Send>(
    clients: usize,
    client: impl Fn(usize) -> Result<Vec<T>> + Sync,
) -> Result<Vec<T>> {
    std::thread::scope(|s| {
        let client = &client;
        let handles: Vec<_> = (0..clients).map(|c| s.spawn(move || client(c))).collect();
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.join().expect("a client thread panicked")?);
        }
        Ok(all)
    })
}

/// What a closed loop achieved: answers per second, and the slot of each answer.
pub struct Closed {
    pub per_second: f64,
    pub slots: Vec<u32>,
}

/// `clients` clients in a closed loop for `dur`: a new connection per request, or with
/// `keepalive` one connection each, opened again if the server closes it.
pub fn closed_loop(
    addr: SocketAddr,
    clients: usize,
    dur: Duration,
    keepalive: bool,
) -> Result<Closed> {
    let begin = Instant::now();
    let slots = in_parallel(clients, |_| {
        let mut slots = Vec::new();
        let mut open: Option<KeepAlive> = None;
        while begin.elapsed() < dur {
            if !keepalive {
                slots.push(get(addr, "/")?.slot);
                continue;
            }
            let answer = match open.as_mut() {
                Some(k) => k.send("/").and_then(|()| k.read_reply()).map(|r| r.slot),
                None => KeepAlive::open(addr).map(|k| open.insert(k).slot),
            };
            match answer {
                Ok(slot) => slots.push(slot),
                Err(_) => open = None,
            }
        }
        Ok(slots)
    })?;
    Ok(Closed {
        per_second: slots.len() as f64 / begin.elapsed().as_secs_f64(),
        slots,
    })
}

/// One request of an open loop.
pub struct Sample {
    /// When it was due, from the start of the run.
    pub due: Duration,
    /// From when it was due to the end of its answer.
    pub latency_ms: f64,
    pub slot: u32,
}

/// Enough senders that requests stay on schedule while some wait for slow answers (a few
/// hundred per second, answers of up to a few hundred ms).
const SENDERS: usize = 96;

/// An open loop from `begin` for `dur`: request `i` is due at `begin + i / rate`, on a new
/// connection, to `path(i)`. Latency counts from the moment each request was due, so a sender
/// held up by a slow answer does not hide the wait of the requests behind it (coordinated
/// omission).
pub fn open_loop(
    addr: SocketAddr,
    begin: Instant,
    rate: f64,
    dur: Duration,
    path: impl Fn(usize) -> String + Sync,
) -> Result<Vec<Sample>> {
    let total = (rate * dur.as_secs_f64()) as usize;
    in_parallel(SENDERS, |first| {
        let mut out = Vec::new();
        for i in (first..total).step_by(SENDERS) {
            let due = Duration::from_secs_f64(i as f64 / rate);
            std::thread::sleep((begin + due).saturating_duration_since(Instant::now()));
            let slot = get(addr, &path(i))?.slot;
            out.push(Sample {
                due,
                latency_ms: (begin + due).elapsed().as_secs_f64() * 1000.0,
                slot,
            });
        }
        Ok(out)
    })
}
