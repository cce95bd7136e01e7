//! Looking at what the kernel holds, from outside the programs: the port's sockets as
//! sock_diag lists them ([`sock_diag`]), which of them each worker's processes hold open
//! ([`descriptors`], a walk of /proc), and a worker's resident memory ([`memory`]). Every read
//! here is a system call or a /proc walk: meant for a blocking thread, not the supervisor's
//! event loop. What the readings mean is the [accounting](crate::rules::accounting)'s.

pub mod descriptors;
pub mod memory;
pub mod sock_diag;

pub use sock_diag::{open_sockets, Sockets};

/// What a blocking thread reads for the supervisor.
#[derive(Debug)]
pub struct Reading {
    /// Connections open in each slot's processes; None where they could not be read.
    pub held: Vec<Option<u64>>,
    /// Young handshakes on the port, as (client, server), to be matched to slots by `FLOWS`.
    pub handshakes: Vec<(std::net::SocketAddr, std::net::SocketAddr)>,
}

/// Connections open in each slot's worker processes (`pids[slot]`: the worker and, during a
/// reload, its predecessor), for the slots of a group listening on `local`; None for a slot
/// whose processes' descriptors (or the port's sockets) could not be read.
pub fn held(local: std::net::SocketAddr, pids: &[Vec<i32>]) -> Reading {
    match open_sockets(local) {
        Ok(sockets) => Reading {
            held: pids
                .iter()
                .map(|p| descriptors::held_by(p, &sockets.open))
                .collect(),
            handshakes: sockets.handshakes,
        },
        Err(e) => {
            // Unknown for every slot: the supervisor says so once.
            log::debug!("cannot list the open connections (sock_diag): {e}");
            Reading {
                held: vec![None; pids.len()],
                handshakes: Vec::new(),
            }
        }
    }
}
