//! One throughput run against a peer, new connections (`Connection: close`, the native client)
//! or keep-alive requests, with what every process involved used meanwhile, and the medians
//! over a peer's rounds.

use std::time::{Duration, Instant};

use anyhow::Result;
use balancer_tests::workload::closed_loop;
use serde::Serialize;

use super::super::{
    client::{self, Until},
    median,
    peers::Peer,
    usage::{self, Usage},
};

/// Clients of the native load generator for new connections: enough that the workers, not the
/// round trips, are what limits.
pub const NEW_CONN_CLIENTS: usize = 32;
/// Keep-alive clients, one connection each.
pub const KEEPALIVE_CLIENTS: usize = 16;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    NewConnections,
    KeepAlive,
}

/// One run: requests per second, and what each part used per second of wall time (1.0 is one
/// core).
#[derive(Serialize, Clone)]
pub struct Run {
    pub per_second: f64,
    pub failed: u64,
    pub layer_cpu: f64,
    pub workers_cpu: f64,
    pub client_cpu: f64,
    pub client_user_cpu: f64,
    /// Context switches of every process involved, the peer's and the client's, per request.
    pub switches_per_request: f64,
    #[serde(skip)]
    pub counts: Vec<u64>,
}

pub fn run(peer: &Peer, kind: Kind, dur: Duration) -> Result<Run> {
    let (layer, workers) = (peer.layer.clone(), peer.workers());
    let before = (usage::of(&layer), usage::of(&workers), usage::own());
    let t0 = Instant::now();
    let (answered, failed, counts) = match kind {
        Kind::NewConnections => {
            let r = client::new_connections(peer.addr, NEW_CONN_CLIENTS, Until::Elapsed(dur))?;
            (r.answered, r.failed, r.counts)
        }
        Kind::KeepAlive => {
            let r = closed_loop(peer.addr, KEEPALIVE_CLIENTS, dur, true)?;
            (r.slots.len() as u64, 0, Vec::new())
        }
    };
    let secs = t0.elapsed().as_secs_f64();
    let (l, w, c): (Usage, Usage, Usage) = (
        usage::of(&layer) - before.0,
        usage::of(&workers) - before.1,
        usage::own() - before.2,
    );
    Ok(Run {
        per_second: answered as f64 / secs,
        failed,
        layer_cpu: l.cpu_seconds / secs,
        workers_cpu: w.cpu_seconds / secs,
        client_cpu: c.cpu_seconds / secs,
        client_user_cpu: c.user_seconds / secs,
        switches_per_request: (l.switches + w.switches + c.switches) as f64
            / answered.max(1) as f64,
        counts,
    })
}

/// A peer's rounds of one kind: the median of each figure, the range of the rate, and its
/// ratio to plain SO_REUSEPORT: of the medians, and paired round by round.
#[derive(Serialize)]
pub struct Summary {
    pub per_second: f64,
    pub low: f64,
    pub high: f64,
    pub vs_plain: f64,
    /// The median over the rounds of this peer's rate over plain SO_REUSEPORT's in the same
    /// round, and the lowest and highest of those ratios: the two runs of a round are
    /// seconds apart, so whatever drifts over minutes falls on both alike.
    pub vs_plain_paired: f64,
    pub paired_low: f64,
    pub paired_high: f64,
    pub layer_cpu: f64,
    pub workers_cpu: f64,
    pub client_cpu: f64,
    pub client_user_cpu: f64,
    pub switches_per_request: f64,
    pub failed: u64,
    pub rounds: Vec<Run>,
}

impl Summary {
    pub fn of(rounds: Vec<Run>) -> Summary {
        let m = |f: fn(&Run) -> f64| median(&rounds.iter().map(f).collect::<Vec<_>>());
        let rates = rounds.iter().map(|r| r.per_second);
        Summary {
            per_second: m(|r| r.per_second),
            low: rates.clone().fold(f64::INFINITY, f64::min),
            high: rates.fold(f64::NEG_INFINITY, f64::max),
            vs_plain: f64::NAN,
            vs_plain_paired: f64::NAN,
            paired_low: f64::NAN,
            paired_high: f64::NAN,
            layer_cpu: m(|r| r.layer_cpu),
            workers_cpu: m(|r| r.workers_cpu),
            client_cpu: m(|r| r.client_cpu),
            client_user_cpu: m(|r| r.client_user_cpu),
            switches_per_request: m(|r| r.switches_per_request),
            failed: rounds.iter().map(|r| r.failed).sum(),
            rounds,
        }
    }

    /// The median rate and each round's, as [`Summary::compare`] takes plain SO_REUSEPORT's.
    pub fn rates(&self) -> (f64, Vec<f64>) {
        let rounds = self.rounds.iter().map(|r| r.per_second).collect();
        (self.per_second, rounds)
    }

    /// Fills in the ratios to plain SO_REUSEPORT's rates of the same kind (see
    /// [`Summary::rates`]).
    pub fn compare(&mut self, (median_rate, rounds): &(f64, Vec<f64>)) {
        self.vs_plain = self.per_second / median_rate;
        let ratios: Vec<f64> = self
            .rounds
            .iter()
            .zip(rounds)
            .map(|(r, p)| r.per_second / p)
            .collect();
        self.vs_plain_paired = median(&ratios);
        self.paired_low = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        self.paired_high = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    }
}
