//! `SLOTS`: one entry per slot, its state, weight and the two load counters (`assigned` and
//! `closed`), shared with the programs as memory (see [`super::mapped`]). The programs add to
//! the counters; of user space, only [`crate::rules::accounting`] does.

use std::sync::atomic::Ordering;

use balancer_common::{Slot, SlotState};

use super::{
    mapped::{u32_at, u64_at},
    Mapped,
};

impl Mapped<Slot> {
    pub fn state(&self, slot: u32) -> SlotState {
        let p = self.at(slot);
        SlotState::from_u32(u32_at(unsafe { &raw mut (*p).state }).load(Ordering::Acquire))
    }

    pub fn set_state(&self, slot: u32, state: SlotState) {
        let p = self.at(slot);
        u32_at(unsafe { &raw mut (*p).state }).store(state as u32, Ordering::Release);
    }

    pub fn set_weight(&self, slot: u32, weight: u32) {
        let p = self.at(slot);
        u32_at(unsafe { &raw mut (*p).weight }).store(weight, Ordering::Release);
    }

    /// Connections the program has sent to `slot` (plus upward corrections).
    pub fn assigned(&self, slot: u32) -> u64 {
        let p = self.at(slot);
        u64_at(unsafe { &raw mut (*p).assigned }).load(Ordering::Acquire)
    }

    /// Connections of `slot` that closed (plus downward corrections).
    pub fn closed(&self, slot: u32) -> u64 {
        let p = self.at(slot);
        u64_at(unsafe { &raw mut (*p).closed }).load(Ordering::Acquire)
    }

    /// Adds to `slot`'s `assigned` counter; only the accounting module corrects counts.
    pub(crate) fn add_assigned(&self, slot: u32, n: u64) {
        let p = self.at(slot);
        u64_at(unsafe { &raw mut (*p).assigned }).fetch_add(n, Ordering::AcqRel);
    }

    /// Open connections of `slot`: assigned by the program and not yet closed.
    pub fn load(&self, slot: u32) -> u64 {
        balancer_common::maps::load(self.assigned(slot), self.closed(slot))
    }

    /// Adds to `slot`'s `closed` counter; only the accounting module corrects counts.
    pub(crate) fn add_closed(&self, slot: u32, n: u64) {
        let p = self.at(slot);
        u64_at(unsafe { &raw mut (*p).closed }).fetch_add(n, Ordering::AcqRel);
    }
}
