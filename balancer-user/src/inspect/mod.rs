//! Looking at what the kernel holds, from outside the programs: the port's sockets as
//! sock_diag lists them ([`sock_diag`]), which of them each worker's processes hold open
//! ([`descriptors`], a walk of /proc, descendants found by [`children`]), the namespace's
//! count of TCP sockets ([`sockstat`]), and a worker's resident memory ([`memory`]). The
//! sockets' and descriptors' readings walk every connection: meant for a blocking thread, not
//! the supervisor's event loop (sockstat's is one small read, whatever the number). What the
//! readings mean is the [accounting](crate::rules::accounting)'s.

pub mod children;
pub mod descriptors;
pub mod memory;
pub mod sock_diag;
pub mod sockstat;

use std::time::Duration;

use nix::time::{clock_gettime, ClockId};
pub use sock_diag::{open_sockets, Sockets};

/// What a blocking thread reads for the supervisor.
#[derive(Debug)]
pub struct Reading {
    /// Connections open in each slot's processes; None where they could not be read.
    pub held: Vec<Option<u64>>,
    /// Young handshakes on the port, as (client, server), to be matched to slots by `FLOWS`.
    pub handshakes: Vec<(std::net::SocketAddr, std::net::SocketAddr)>,
    /// The CPU time the reading took (this thread's).
    pub cost: Duration,
}

/// Connections open in each slot's worker processes (`pids[slot]`: the worker and, during a
/// reload, its predecessor), for the slots of a group listening on `local`; None for a slot
/// whose processes' descriptors (or the port's sockets) could not be read.
pub fn held(local: std::net::SocketAddr, pids: &[Vec<i32>]) -> Reading {
    let start = thread_cpu();
    let mut reading = match open_sockets(local) {
        Ok(sockets) => Reading {
            held: pids
                .iter()
                .map(|p| descriptors::held_by(p, &sockets.open))
                .collect(),
            handshakes: sockets.handshakes,
            cost: Duration::ZERO,
        },
        Err(e) => {
            // Unknown for every slot: the supervisor says so once.
            log::debug!("cannot list the open connections (sock_diag): {e}");
            Reading {
                held: vec![None; pids.len()],
                handshakes: Vec::new(),
                cost: Duration::ZERO,
            }
        }
    };
    reading.cost = thread_cpu().saturating_sub(start);
    reading
}

/// The CPU time this thread has used.
fn thread_cpu() -> Duration {
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).map_or(Duration::ZERO, Duration::from)
}
