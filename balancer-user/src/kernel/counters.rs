//! `COUNTERS`: values the programs share across CPUs and write rarely, shared as memory (see
//! [`super::mapped`]). One so far, `RECORDING_UNTIL`: the deadline of the window in which
//! `FLOWS` may hold records, which the steering program pushes forward whenever it records a
//! SYN, and before which the programs look connections up there.
//!
//! Outside a window the deadline is 0, and the programs then test it without reading the
//! clock: that read is a helper call, which would otherwise be paid on every SYN. The
//! supervisor is the one to reset a deadline once it has passed
//! ([`Counters::close_passed_window`]); until it does, the programs read the clock and find the
//! window closed, so a late reset only costs time, never a wrong answer.

use std::sync::atomic::Ordering;

use balancer_common::maps::{window_passed, RECORDING_UNTIL};
use nix::{
    sys::time::TimeValLike as _,
    time::{clock_gettime, ClockId},
};

use super::{mapped::u64_at, Mapped};

/// The `COUNTERS` map, mapped.
pub struct Counters(Mapped<u64>);

impl Counters {
    pub(super) fn new(mapped: Mapped<u64>) -> Counters {
        Counters(mapped)
    }

    /// Resets the recording window's deadline to 0 if it has passed; true if this call did.
    /// A compare-and-swap: a program that pushed the deadline forward meanwhile keeps its new
    /// window.
    pub fn close_passed_window(&self) -> bool {
        let until = u64_at(self.0.at(RECORDING_UNTIL));
        let Ok(now) = clock_gettime(ClockId::CLOCK_MONOTONIC_COARSE) else {
            return false;
        };
        let now = now.num_nanoseconds() as u64;
        let seen = until.load(Ordering::Relaxed);
        window_passed(seen, now)
            && until
                .compare_exchange(seen, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Whether a recording window is open (or has passed and is not reset yet).
    pub fn recording(&self) -> bool {
        u64_at(self.0.at(RECORDING_UNTIL)).load(Ordering::Relaxed) != 0
    }
}
