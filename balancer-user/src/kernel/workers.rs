//! `WORKERS`: worker pid to slot, the processes the taker tracker (a BTF tracepoint on
//! `tcp_rcv_space_adjust`) recognises: together they move an overflow connection's count to the
//! worker that takes it (see the program's `takes.rs`).

use aya::maps::{HashMap, MapData};

/// The `WORKERS` map.
pub struct Workers(HashMap<MapData, u32, u32>);

impl Workers {
    pub(super) fn new(map: HashMap<MapData, u32, u32>) -> Workers {
        Workers(map)
    }

    /// Records process `pid` as `slot`'s worker. A failure is logged, not returned: the worker
    /// runs either way, its overflow connections then counted on the overflow slot.
    pub fn started(&mut self, pid: u32, slot: u32) {
        if let Err(e) = self.0.insert(pid, slot, 0) {
            log::warn!("cannot record worker {pid} of slot {slot} (WORKERS): {e}");
        }
    }

    /// Forgets worker `pid` (it exited).
    pub fn exited(&mut self, pid: u32) {
        let _ = self.0.remove(&pid);
    }
}
