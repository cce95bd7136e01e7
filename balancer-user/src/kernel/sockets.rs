//! `SOCKETS`: a `REUSEPORT_SOCKARRAY` map, slot index to listener. The program's choice is an
//! index into it (`bpf_sk_select_reuseport`); the kernel drops a socket from it when the socket
//! closes.

use std::os::fd::{AsFd, AsRawFd};

use anyhow::{Context as _, Result};

use super::Steering;

impl Steering {
    /// Puts `listener` in `slot` of the socket array and marks it as the slot's (`OWNERS`).
    /// The socket must already be listening.
    pub fn insert(&mut self, slot: u32, listener: &(impl AsRawFd + AsFd)) -> Result<()> {
        self.own(slot, listener)?;
        self.sockets
            .set(slot, listener, 0)
            .with_context(|| format!("cannot put the listener of slot {slot} in the socket array"))
    }

    /// Takes `slot` out of the socket array (its socket then leaves the group's choices).
    pub fn remove(&mut self, slot: u32) -> Result<()> {
        self.sockets
            .clear_index(&slot)
            .with_context(|| format!("cannot clear slot {slot}"))
    }
}
