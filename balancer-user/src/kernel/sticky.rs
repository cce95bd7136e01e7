//! `STICKY`: the table the `sticky` policy looks a client's address up in, shared as memory
//! (see [`super::mapped`]) and rebuilt over the slots up whenever one joins or leaves (the
//! table itself is [`crate::rules::maglev`]'s).

use std::sync::atomic::Ordering;

use balancer_common::{Slot, SlotState};

use super::{mapped::u64_at, Mapped};

/// The `STICKY` map, mapped.
pub struct Sticky(Mapped<u64>);

impl Sticky {
    pub(super) fn new(mapped: Mapped<u64>) -> Sticky {
        Sticky(mapped)
    }

    /// Rebuilds the table for the slots now up among `0..count`. One atomic store per entry:
    /// a reader sees each entry either old or new, never torn.
    pub fn refresh(&self, slots: &Mapped<Slot>, count: u32) {
        let up: Vec<u32> = (0..count)
            .filter(|&s| slots.state(s) == SlotState::Up)
            .collect();
        let table = crate::rules::maglev::table(&up);
        for (i, v) in table.into_iter().enumerate().take(self.0.len()) {
            u64_at(self.0.at(i as u32)).store(u64::from(v), Ordering::Relaxed);
        }
    }
}
