//! A steady background load of new connections, counting what was answered, lost or turned
//! away while the balancer does something else (a reload, a scale, a crash).

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use crate::{connect, request_on};

/// What a background load saw. Every connection attempt lands in exactly one of `ok`, `failed`
/// and `refused`, so `ok == attempted` is "nothing was lost or turned away".
#[derive(Debug, Default, Clone)]
pub struct Counts {
    /// Connections tried.
    pub attempted: u64,
    /// Requests answered with 200.
    pub ok: u64,
    /// Connections that were established and then got no (complete) answer.
    pub failed: u64,
    /// Connections that could not be opened (refused, reset or timed out in the handshake):
    /// nothing was accepted, so nothing in a worker was lost, but the client was turned away.
    pub refused: u64,
    /// When the first connection was refused, if one was.
    pub first_refused_at: Option<Instant>,
    pub first_errors: Vec<String>,
}

/// A steady load of new connections from `threads` clients, each stopping after `max` requests
/// or when told to.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handles: Vec<std::thread::JoinHandle<Counts>>,
}

impl Load {
    pub fn start(addr: SocketAddr, threads: usize, max: u64) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let handles = (0..threads)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut c = Counts::default();
                    let mut n = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < max {
                        n += 1;
                        c.attempted += 1;
                        let mut stream = match connect(addr) {
                            Ok(s) => s,
                            Err(e) => {
                                c.refused += 1;
                                c.first_refused_at.get_or_insert_with(Instant::now);
                                if c.first_errors.len() < 5 {
                                    c.first_errors.push(format!("connect: {e}"));
                                }
                                std::thread::sleep(Duration::from_millis(5));
                                continue;
                            }
                        };
                        match request_on(&mut stream, "/") {
                            Ok(r) if r.status == 200 => c.ok += 1,
                            other => {
                                c.failed += 1;
                                if c.first_errors.len() < 5 {
                                    c.first_errors.push(match other {
                                        Ok(r) => format!("status {}", r.status),
                                        Err(e) => format!("{e:#}"),
                                    });
                                }
                            }
                        }
                    }
                    c
                })
            })
            .collect();
        Load { stop, handles }
    }

    pub fn finish(self) -> Counts {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut total = Counts::default();
        for h in self.handles {
            let c = h.join().unwrap();
            total.attempted += c.attempted;
            total.first_refused_at = match (total.first_refused_at, c.first_refused_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            total.ok += c.ok;
            total.failed += c.failed;
            total.refused += c.refused;
            total.first_errors.extend(c.first_errors);
        }
        total.first_errors.truncate(5);
        total
    }
}
