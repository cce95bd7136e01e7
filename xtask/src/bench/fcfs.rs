//! The reference of the skew scenario, as pure logic: arrival traces drawn from a seeded
//! generator, and a simulation of N servers fed from one first-come-first-served queue.
//!
//! The simulated queue has no overhead and never lets a request wait while a server is free:
//! the latency a balancer that does not know request lengths in advance could at best give,
//! with the same servers. A trace is generated once and replayed to every peer, so that the
//! peers and the simulation see the very same input.

use std::{cmp::Reverse, collections::BinaryHeap};

/// The two kinds of request of the skew scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Fast,
    Slow,
}

/// One request of a trace: when it is due, in seconds from the start, and its kind.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Request {
    pub at: f64,
    pub kind: Kind,
}

/// splitmix64: small, and the same sequence on every machine for a given seed, which is all a
/// trace needs.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), from the top 53 bits.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Poisson arrivals at `rate` per second for `seconds`, each request slow with probability
/// `slow_share`, from `seed`: the same arguments give the same trace.
pub fn poisson(seed: u64, rate: f64, seconds: f64, slow_share: f64) -> Vec<Request> {
    let mut rng = Rng(seed);
    let mut at = 0.0;
    let mut out = Vec::new();
    loop {
        // 1 - u is in (0, 1]: no ln(0).
        at += -(1.0 - rng.unit()).ln() / rate;
        if at >= seconds {
            return out;
        }
        let kind = if rng.unit() < slow_share {
            Kind::Slow
        } else {
            Kind::Fast
        };
        out.push(Request { at, kind });
    }
}

/// A server's next free moment, ordered so that the heap's top is the earliest.
#[derive(PartialEq)]
struct Free(f64);

impl Eq for Free {}

impl PartialOrd for Free {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Free {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Each request's latency (its wait plus its service, in the unit of `service`) when
/// `servers` servers take the requests of `trace` (in order of arrival) from one FCFS queue.
/// In trace order.
pub fn simulate(trace: &[Request], servers: usize, service: impl Fn(Kind) -> f64) -> Vec<f64> {
    assert!(servers > 0, "no server to simulate");
    let mut free: BinaryHeap<Reverse<Free>> = (0..servers).map(|_| Reverse(Free(0.0))).collect();
    trace
        .iter()
        .map(|r| {
            // FCFS with identical servers: the request at the head takes the server that frees
            // first, and the queue is served in arrival order.
            let Reverse(Free(earliest)) = free.pop().expect("servers > 0");
            let start = earliest.max(r.at);
            let end = start + service(r.kind);
            free.push(Reverse(Free(end)));
            end - r.at
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(k: Kind) -> f64 {
        match k {
            Kind::Fast => 1.0,
            Kind::Slow => 10.0,
        }
    }

    fn req(at: f64, kind: Kind) -> Request {
        Request { at, kind }
    }

    #[test]
    fn a_hand_checked_trace() {
        // Server A: the slow one, 0-10. Server B: 1-2, 2-3, then 3-4 for the request of 2.5
        // (waits 0.5) and 4-5 for the one of 3 (waits 1); the one of 4.5 waits for B too
        // (5-6), since A is still busy.
        let trace = [
            req(0.0, Kind::Slow),
            req(1.0, Kind::Fast),
            req(2.0, Kind::Fast),
            req(2.5, Kind::Fast),
            req(3.0, Kind::Fast),
            req(4.5, Kind::Fast),
            req(11.0, Kind::Fast),
        ];
        let lat = simulate(&trace, 2, service);
        assert_eq!(lat, vec![10.0, 1.0, 1.0, 1.5, 2.0, 1.5, 1.0]);
    }

    #[test]
    fn one_server_follows_lindley() {
        // With one server, W(n+1) = max(0, W(n) + S(n) - (A(n+1) - A(n))).
        let trace = poisson(7, 0.08, 2000.0, 0.05);
        assert!(trace.len() > 100);
        let lat = simulate(&trace, 1, service);
        let mut wait = 0.0f64;
        for (i, r) in trace.iter().enumerate() {
            if i > 0 {
                let prev = &trace[i - 1];
                wait = (wait + service(prev.kind) - (r.at - prev.at)).max(0.0);
            }
            assert!(
                (lat[i] - (wait + service(r.kind))).abs() < 1e-6,
                "request {i}"
            );
        }
    }

    #[test]
    fn no_request_waits_while_a_server_is_free() {
        let servers = 3;
        let trace = poisson(3, 0.25, 4000.0, 0.05);
        let lat = simulate(&trace, servers, service);
        let spans: Vec<(f64, f64)> = trace
            .iter()
            .zip(&lat)
            .map(|(r, l)| (r.at + l - service(r.kind), r.at + l))
            .collect();
        let mut waited = 0;
        for (i, r) in trace.iter().enumerate() {
            let wait = spans[i].0 - r.at;
            assert!(wait >= -1e-9, "request {i} started before it arrived");
            if wait > 1e-9 {
                waited += 1;
                // Every server was busy when it arrived: as many requests in service then.
                let busy = spans[..i]
                    .iter()
                    .filter(|(s, e)| *s <= r.at && r.at < *e)
                    .count();
                assert_eq!(busy, servers, "request {i} waited with a server free");
            }
            // First come, first served: no request starts before an earlier one.
            if i > 0 {
                assert!(spans[i].0 >= spans[i - 1].0 - 1e-9, "request {i} overtook");
            }
        }
        assert!(waited > 0, "the trace should make some requests wait");
    }

    #[test]
    fn more_servers_never_make_anyone_wait_longer() {
        let trace = poisson(11, 0.3, 2000.0, 0.05);
        let two = simulate(&trace, 2, service);
        let four = simulate(&trace, 4, service);
        assert!(two.iter().zip(&four).all(|(a, b)| b <= a));
    }

    #[test]
    fn traces_are_seeded_poisson() {
        let a = poisson(1, 300.0, 100.0, 0.05);
        assert_eq!(a, poisson(1, 300.0, 100.0, 0.05));
        assert_ne!(a, poisson(2, 300.0, 100.0, 0.05));
        assert!(a.windows(2).all(|w| w[0].at < w[1].at));
        assert!(a.iter().all(|r| (0.0..100.0).contains(&r.at)));
        let n = a.len() as f64;
        assert!((n / 30_000.0 - 1.0).abs() < 0.03, "{n} arrivals");
        let slow = a.iter().filter(|r| r.kind == Kind::Slow).count() as f64 / n;
        assert!((slow - 0.05).abs() < 0.005, "slow share {slow}");
        // Exponential gaps: their coefficient of variation is 1.
        let gaps: Vec<f64> = a.windows(2).map(|w| w[1].at - w[0].at).collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
        assert!((var.sqrt() / mean - 1.0).abs() < 0.05);
    }
}
