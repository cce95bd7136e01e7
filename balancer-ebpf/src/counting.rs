//! Counting: the program's own counters (`STATS`, per CPU, indexed as in
//! `balancer_common::stats`) and the slots' load counters (`SLOTS`), which every CPU, the
//! trackers and the supervisor add to.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use crate::maps::{SLOTS, STATS};

/// Adds one to the program's counter `index` (a `balancer_common::stats` index).
#[inline(always)]
pub(crate) fn count(index: u32) {
    // Per-CPU: no other CPU writes this value, so a plain add is race-free.
    if let Some(c) = STATS.get_ptr_mut(index) {
        unsafe { *c += 1 };
    }
}

/// Adds one to a slot's `assigned` (`closed: false`) or `closed` counter. Atomic: every CPU
/// and the supervisor add to the same counters.
#[inline(always)]
pub(crate) fn add(slot: u32, closed: bool) {
    if let Some(s) = SLOTS.get_ptr_mut(slot) {
        unsafe {
            let counter = if closed {
                &raw mut (*s).closed
            } else {
                &raw mut (*s).assigned
            };
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, 1);
        }
    }
}
