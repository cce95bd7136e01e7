//! `OWNERS`: a socket storage map (`BPF_MAP_TYPE_SK_STORAGE`, created with `BPF_F_CLONE`). The
//! supervisor stores each listener's slot on the listener; the kernel copies the value to every
//! connection socket the listener creates, and the close tracker reads it there when the
//! connection closes. `LISTENERS`: the same slot by the listener's socket cookie, for the
//! program's migrate path, which is handed the closing listener but cannot read its storage.

use std::os::fd::{AsFd, AsRawFd};

use aya::maps::{HashMap, MapData, SkStorage};
use balancer_common::maps::Owner;

use super::{Error, Result};

/// The `OWNERS` and `LISTENERS` maps: written together, always with the same slot.
pub struct Owners {
    owners: SkStorage<MapData, Owner>,
    listeners: HashMap<MapData, u64, u32>,
}

impl Owners {
    pub(super) fn new(
        owners: SkStorage<MapData, Owner>,
        listeners: HashMap<MapData, u64, u32>,
    ) -> Owners {
        Owners { owners, listeners }
    }

    /// Marks `listener` as `slot`'s: its connections are counted on `slot` when they close if
    /// `counted` (false under the `hash` policy, under which the program counts nothing when
    /// they open).
    ///
    /// # Errors
    ///
    /// [`Error::Mark`], [`Error::Cookie`] or [`Error::Listener`], for the step that failed.
    pub fn own(
        &mut self,
        slot: u32,
        listener: &(impl AsRawFd + AsFd),
        counted: bool,
    ) -> Result<()> {
        let owner = Owner {
            slot,
            counted: counted as u32,
        };
        self.owners
            .insert(listener, owner, 0)
            .map_err(|source| Error::Mark { slot, source })?;
        let cookie = cookie(listener).map_err(|source| Error::Cookie { slot, source })?;
        self.listeners
            .insert(cookie, slot, 0)
            .map_err(|source| Error::Listener { slot, source })
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
