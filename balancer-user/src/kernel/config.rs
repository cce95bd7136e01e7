//! `CONFIG`: the one-entry array the three programs read their settings from (the policy, the
//! slot count, the port, the stopping flag...; see [`balancer_common::Config`]), written only by
//! the supervisor.

use aya::maps::{Array, MapData};
use balancer_common::{Config as Values, Policy};

use super::{Error, Result};

/// The `CONFIG` map.
pub struct Config(Array<MapData, Values>);

impl Config {
    pub(super) fn new(map: Array<MapData, Values>) -> Config {
        Config(map)
    }

    /// The settings the programs read now; the defaults (all zero) if the map cannot be read.
    pub fn get(&self) -> Values {
        self.0.get(&0, 0).unwrap_or_default()
    }

    /// Changes some settings, keeping the others as they are: the programs see the whole
    /// entry replaced at once.
    ///
    /// # Errors
    ///
    /// [`Error::Configure`] when the kernel refuses the write.
    pub fn update(&mut self, change: impl FnOnce(&mut Values)) -> Result<()> {
        let mut values = self.get();
        change(&mut values);
        self.0.set(0, values, 0).map_err(Error::Configure)
    }

    /// The policy in force; least-loaded, an all-zero entry's, if the map cannot be read. A
    /// number no policy has (the supervisor never writes one) also reads as least-loaded here,
    /// where the program fails open on it.
    pub fn policy(&self) -> Policy {
        Policy::from_u32(self.get().policy).unwrap_or(Policy::LeastLoaded)
    }
}

/// The load from which a slot's SYNs are recorded (`crowded`): half the backlog, where a full
/// accept queue may drop them. With `net.ipv4.tcp_syncookies=2` every handshake is a SYN
/// cookie, completed by its last ACK on whatever listener that ACK reaches, so every SYN is
/// recorded (0) for the ACK to follow it.
pub(super) fn crowded(backlog: u32) -> u32 {
    let always_cookies =
        std::fs::read_to_string("/proc/sys/net/ipv4/tcp_syncookies").is_ok_and(|s| s.trim() == "2");
    if always_cookies {
        0
    } else {
        (backlog / 2).max(1)
    }
}
