//! `FLOWS`: an LRU hash, connection (4-tuple) to slot, for the few connections that need a
//! record: the steering program records a SYN sent to a crowded slot (so that its
//! retransmission is not counted twice) and a connection it moves off a closing listener; the
//! close tracker counts a recorded connection's close on the record's slot and removes it.
//!
//! User space writes it for one thing: a health probe's connection is recorded before the
//! probe connects, so that the program sends the probe to the slot it checks under every
//! policy. It reads it to tell which slot a connection still in its handshake belongs to.

use std::net::{IpAddr, SocketAddr};

use aya::maps::{HashMap, MapData};
use balancer_common::maps::{Flow, FlowKey, FLOW_PROBE};

use super::{Error, Result};

/// The key the program builds from a SYN from `client` to `server`: addresses as in the
/// packet (IPv4 in the first word), ports as the TCP header's first word.
pub fn key(client: SocketAddr, server: SocketAddr) -> FlowKey {
    let words = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => [u32::from_ne_bytes(v4.octets()), 0, 0, 0],
        IpAddr::V6(v6) => {
            let b = v6.octets();
            std::array::from_fn(|i| {
                u32::from_ne_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
            })
        }
    };
    let (c, s) = (client.port().to_be_bytes(), server.port().to_be_bytes());
    FlowKey {
        remote: words(client.ip()),
        local: words(server.ip()),
        ports: u32::from_ne_bytes([c[0], c[1], s[0], s[1]]),
    }
}

/// The `FLOWS` map.
pub struct Flows(HashMap<MapData, FlowKey, Flow>);

impl Flows {
    pub(super) fn new(map: HashMap<MapData, FlowKey, Flow>) -> Flows {
        Flows(map)
    }

    /// Records `key` as a connection of `slot` (a health probe about to connect).
    ///
    /// # Errors
    ///
    /// [`Error::RecordFlow`] when the kernel refuses the insert.
    pub fn record(&mut self, key: FlowKey, slot: u32) -> Result<()> {
        let flow = Flow {
            slot,
            seq: 0,
            kind: FLOW_PROBE,
        };
        self.0.insert(key, flow, 0).map_err(Error::RecordFlow)
    }

    /// The slot `key`'s connection was sent to, if it is recorded.
    pub fn slot(&self, key: &FlowKey) -> Option<u32> {
        self.0.get(key, 0).ok().map(|f| f.slot)
    }

    /// Removes `key`'s record; true if this call removed it (and so must count its close).
    pub fn forget(&mut self, key: &FlowKey) -> bool {
        self.0.remove(key).is_ok()
    }
}
