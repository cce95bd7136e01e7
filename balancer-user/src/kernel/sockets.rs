//! `SOCKETS`: a `REUSEPORT_SOCKARRAY` map, slot index to listener. The program's choice is an
//! index into it (`bpf_sk_select_reuseport`); the kernel drops a socket from it when the socket
//! closes.

use std::os::fd::{AsFd, AsRawFd};

use aya::maps::{MapData, ReusePortSockArray};

use super::{Error, Result};

/// The `SOCKETS` map.
pub struct Sockets(ReusePortSockArray<MapData>);

impl Sockets {
    pub(super) fn new(map: ReusePortSockArray<MapData>) -> Sockets {
        Sockets(map)
    }

    /// Puts `listener` in `slot`. The socket must already be listening.
    ///
    /// # Errors
    ///
    /// [`Error::Insert`] when the kernel refuses it (a socket not listening, not in the group).
    pub fn set(&mut self, slot: u32, listener: &(impl AsRawFd + AsFd)) -> Result<()> {
        self.0
            .set(slot, listener, 0)
            .map_err(|source| Error::Insert { slot, source })
    }

    /// Takes `slot` out (its socket then leaves the group's choices).
    ///
    /// # Errors
    ///
    /// [`Error::Clear`] when the kernel refuses it.
    pub fn clear(&mut self, slot: u32) -> Result<()> {
        self.0
            .clear_index(&slot)
            .map_err(|source| Error::Clear { slot, source })
    }
}
