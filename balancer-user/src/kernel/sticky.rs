//! `STICKY`: the table the `sticky` policy looks a client's address up in, rebuilt over the
//! slots up whenever one joins or leaves (the table itself is [`crate::sticky`]'s).

use std::sync::atomic::{AtomicU64, Ordering};

use balancer_common::SlotState;

use super::{Mapped, Steering};

impl Mapped<u64> {
    /// Overwrites the whole array, one atomic store per entry: a reader sees each entry either
    /// old or new, never torn.
    pub fn store_all(&self, values: impl IntoIterator<Item = u64>) {
        for (i, v) in values.into_iter().enumerate().take(self.len) {
            // SAFETY: in bounds, 8-byte aligned.
            unsafe { AtomicU64::from_ptr(self.ptr.as_ptr().add(i)) }.store(v, Ordering::Relaxed);
        }
    }
}

impl Steering {
    /// Rebuilds the sticky table for the slots now up among `0..slots`.
    pub fn refresh_sticky(&self, slots: u32) {
        let up: Vec<u32> = (0..slots)
            .filter(|&s| self.slots.state(s) == SlotState::Up)
            .collect();
        self.sticky
            .store_all(crate::sticky::table(&up).into_iter().map(u64::from));
    }
}
