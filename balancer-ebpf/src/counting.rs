//! Counting: the program's own counters (`STATS`, per CPU, indexed as in
//! `balancer_common::stats`) and the slots' load counters (`SLOTS`), which every CPU, the
//! trackers and the supervisor add to; and [`FailOpen`], why the program leaves a segment to
//! the kernel's hash, each reason counted at its `STATS` index.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use balancer_common::stats;

use crate::maps::{SLOTS, STATS};

/// Why the program makes no selection and answers `SK_PASS` alone, so that the kernel's own hash
/// picks a listener: the entry point counts the reason (its value is its `STATS` index) and
/// answers, in one place.
#[repr(u32)]
#[derive(Clone, Copy)]
pub(crate) enum FailOpen {
    /// No slot was in rotation.
    NoSlot = stats::FALLBACK_NO_SLOT,
    /// The chosen slot had no socket (or a stale one).
    SelectFailed = stats::FALLBACK_SELECT_FAILED,
    /// The configuration, a record or the segment's headers could not be read.
    MapError = stats::FALLBACK_MAP_ERROR,
    /// The `hash` policy is in force: the kernel's hash chooses by request.
    HashPolicy = stats::HASH,
    /// A segment that opens no connection and belongs to no recorded one.
    NotASyn = stats::NOT_A_SYN,
}

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
