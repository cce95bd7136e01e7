//! `OWNERS`: a socket storage map (`BPF_MAP_TYPE_SK_STORAGE`, created with `BPF_F_CLONE`). The
//! supervisor stores each listener's slot on the listener; the kernel copies the value to every
//! connection socket the listener creates, and the close tracker reads it there when the
//! connection closes. `LISTENERS`: the same slot by the listener's socket cookie, for the
//! program's migrate path, which is handed the closing listener but cannot read its storage.

use std::os::fd::{AsFd, AsRawFd};

use anyhow::{Context as _, Result};
use balancer_common::{maps::Owner, Policy};

use super::Steering;

impl Steering {
    /// Marks `listener` as `slot`'s: its connections are counted on `slot` when they close
    /// (unless the `hash` policy is in force, under which the program counts nothing when they
    /// open).
    pub(super) fn own(&mut self, slot: u32, listener: &(impl AsRawFd + AsFd)) -> Result<()> {
        let counted = self.policy() != Policy::Hash;
        self.own_as(slot, listener, counted)
    }

    /// [`Steering::own`] with the policy's answer given: one configuration read for a whole
    /// group.
    fn own_as(&mut self, slot: u32, listener: &(impl AsRawFd + AsFd), counted: bool) -> Result<()> {
        let owner = Owner {
            slot,
            counted: counted as u32,
        };
        self.owners
            .insert(listener, owner, 0)
            .with_context(|| format!("cannot mark the listener of slot {slot} (OWNERS)"))?;
        let cookie = cookie(listener)
            .with_context(|| format!("cannot read the cookie of slot {slot}'s listener"))?;
        self.listeners
            .insert(cookie, slot, 0)
            .with_context(|| format!("cannot record the listener of slot {slot} (LISTENERS)"))
    }

    /// After a policy change: marks every listener again, so that connections opened from now
    /// on are counted at their close exactly when they were counted at their SYN.
    pub fn recount<'a, L: AsRawFd + AsFd + 'a>(
        &mut self,
        listeners: impl IntoIterator<Item = (u32, &'a L)>,
    ) -> Result<()> {
        let counted = self.policy() != Policy::Hash;
        for (slot, listener) in listeners {
            self.own_as(slot, listener, counted)?;
        }
        Ok(())
    }
}

/// The kernel's identifier of a socket (`SO_COOKIE`), which the program reads with
/// `bpf_get_socket_cookie`.
fn cookie(socket: &impl AsRawFd) -> std::io::Result<u64> {
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(cookie)
    } else {
        Err(std::io::Error::last_os_error())
    }
}
