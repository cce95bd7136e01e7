//! The load accounting: what the program steers by, and how it is kept true.
//!
//! Each slot's load is `assigned - closed`, two monotonic counters in the slot's `SLOTS` entry.
//! The kernel side writes them on the fast path: the steering program adds to `assigned` at a
//! connection's first SYN, the close tracker adds to `closed` when the server side of that
//! connection closes, and the migrate path moves a queued connection's count with it.
//!
//! The invariant: a slot's load equals the connections the kernel holds for it, that is the
//! connections waiting in its listener's accept queue plus the connections open in its
//! worker's (and its retiring predecessor's) file descriptor tables. Between two connection
//! events the fast path keeps it exactly; what the fast path cannot see (a handshake the client
//! abandoned, a connection placed by the kernel's hash while the `hash` policy or a fallback was
//! in force, a record evicted from a full `FLOWS` table) this module repairs: on a
//! `--reconcile-interval` tick when something moved ([pacing](super::pacing)) it reads the
//! kernel's truth for each slot and compares.
//!
//! A connection in its handshake is counted (its SYN was) and held by the kernel as a request
//! socket: the reading counts the young ones (no SYN-ACK retransmitted yet, so under a second
//! old) on the slot `FLOWS` names, and leaves out the older ones, handshakes a client
//! abandoned, which are the drift to correct.
//!
//! A reading still races live traffic: a connection arriving or closing while it is taken, one
//! accepted between two of its reads. So a difference counts only beyond the connections that
//! came or went while the slot was read (its counters' movement), and is corrected only when
//! two consecutive readings agree on its sign, and only by the smaller of the two: a transient
//! never survives a second reading, a real drift does. Corrections are atomic adds to one counter or the other, never
//! stores, so no concurrent increment by the programs is lost. This module is the only
//! user-space writer of the counters.

use balancer_common::Slot;

use crate::kernel::Mapped;

/// A correction of at least this many connections is logged as a warning.
const LARGE: u64 = 8;

/// What the kernel holds for one slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Truth {
    /// Connections waiting in the slot's accept queue.
    pub queued: u64,
    /// Connections open in the slot's worker processes.
    pub held: u64,
    /// Connections in their handshake (young request sockets).
    pub handshaking: u64,
}

impl Truth {
    pub fn total(self) -> u64 {
        self.queued + self.held + self.handshaking
    }
}

/// One slot's part of a reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sample {
    /// What the kernel held, and the slack: how many connections came or went (the slot's
    /// counters moved by) while it was read, each of which the reading may have caught on
    /// either side.
    Known(Truth, u64),
    /// Could not be read (a worker's descriptors): no correction, and the next reading starts
    /// afresh. Unknown is not zero.
    Unknown,
}

/// The part of a difference (`load - truth`) that no connection coming or going during the
/// reading can explain: the difference less `slack`, toward zero. Pure.
pub fn beyond_slack(difference: i64, slack: u64) -> i64 {
    let slack = slack.min(i64::MAX as u64) as i64;
    if difference > 0 {
        (difference - slack).max(0)
    } else {
        (difference + slack).min(0)
    }
}

/// The books of one slot between readings.
#[derive(Clone, Copy, Debug, Default)]
pub struct Book {
    /// `load - truth` at the previous reading, if there was one since the last correction.
    previous: Option<i64>,
    /// Connections added or removed by corrections, in total.
    pub corrections: u64,
    /// The truth at the last reading.
    pub truth: Truth,
}

/// The amount to move a slot's load by, given the difference (`load - truth`) at the previous
/// reading and now: nothing unless both readings are off in the same direction, and then the
/// smaller difference, negated. Pure, so that the rule is tested apart from any kernel.
pub fn correction(previous: Option<i64>, now: i64) -> i64 {
    match previous {
        Some(p) if p > 0 && now > 0 => -p.min(now),
        Some(p) if p < 0 && now < 0 => -p.max(now),
        _ => 0,
    }
}

/// The counted load of `slot`, signed: negative when `closed` ran ahead of `assigned`.
fn counted(slots: &Mapped<Slot>, slot: u32) -> i64 {
    slots.assigned(slot).wrapping_sub(slots.closed(slot)) as i64
}

/// The books of every slot.
#[derive(Default)]
pub struct Accounting {
    books: Vec<Book>,
}

impl Accounting {
    pub fn book(&self, slot: u32) -> Book {
        self.books.get(slot as usize).copied().unwrap_or_default()
    }

    /// Whether the last reading found every slot true (no difference waiting for a second
    /// reading to confirm it).
    pub fn settled(&self) -> bool {
        self.books.iter().all(|b| b.previous.is_none())
    }

    /// Gives `slot` a zero load and fresh books: a slot that joins (scale up) or leaves (scale
    /// down) starts from nothing, whatever its index counted before.
    pub fn reset(&mut self, slots: &Mapped<Slot>, slot: u32) {
        adjust(slots, slot, -counted(slots, slot));
        if let Some(b) = self.books.get_mut(slot as usize) {
            *b = Book::default();
        }
    }

    /// Compares each slot's load with its sample of a reading (indexed by slot) and corrects
    /// what two readings agree on. Returns the corrections made, as (slot, amount).
    pub fn reconcile(&mut self, slots: &Mapped<Slot>, truth: &[Sample]) -> Vec<(u32, i64)> {
        self.books.resize_with(truth.len(), Book::default);
        let mut made = Vec::new();
        for (i, (book, t)) in self.books.iter_mut().zip(truth).enumerate() {
            let slot = i as u32;
            let (t, slack) = match t {
                Sample::Known(t, slack) => (t, *slack),
                Sample::Unknown => {
                    book.previous = None;
                    continue;
                }
            };
            let now = beyond_slack(counted(slots, slot) - t.total() as i64, slack);
            book.truth = *t;
            let amount = correction(book.previous, now);
            if amount == 0 {
                book.previous = (now != 0).then_some(now);
                continue;
            }
            adjust(slots, slot, amount);
            book.previous = None;
            book.corrections += amount.unsigned_abs();
            made.push((slot, amount));
            if amount.unsigned_abs() >= LARGE {
                log::warn!(
                    "slot {slot}: load corrected by {amount:+} to match the kernel ({} queued, {} open)",
                    t.queued,
                    t.held
                );
            } else {
                log::debug!("slot {slot}: load corrected by {amount:+}");
            }
        }
        made
    }
}

impl Accounting {
    /// Counts a health probe's connection, recorded by the supervisor before it connects.
    pub fn probe_opened(&self, slots: &Mapped<Slot>, slot: u32) {
        adjust(slots, slot, 1);
    }

    /// Counts its close, when the supervisor removed its record (the close tracker did not).
    pub fn probe_closed(&self, slots: &Mapped<Slot>, slot: u32) {
        adjust(slots, slot, -1);
    }
}

/// Moves `slot`'s load by `amount` with an atomic add to one of its counters.
fn adjust(slots: &Mapped<Slot>, slot: u32, amount: i64) {
    if amount > 0 {
        slots.add_assigned(slot, amount as u64);
    } else if amount < 0 {
        slots.add_closed(slot, amount.unsigned_abs());
    }
}

#[cfg(test)]
mod tests {
    use super::correction;

    #[test]
    fn a_single_reading_corrects_nothing() {
        assert_eq!(correction(None, 5), 0);
        assert_eq!(correction(None, -5), 0);
    }

    #[test]
    fn two_readings_off_the_same_way_correct_the_smaller_difference() {
        assert_eq!(correction(Some(3), 5), -3, "too high: remove what both saw");
        assert_eq!(correction(Some(7), 2), -2);
        assert_eq!(correction(Some(-4), -1), 1, "too low: add what both saw");
        assert_eq!(correction(Some(-1), -6), 1);
    }

    #[test]
    fn traffic_during_a_reading_explains_that_much_of_a_difference() {
        use super::beyond_slack;
        assert_eq!(beyond_slack(5, 0), 5);
        assert_eq!(beyond_slack(5, 2), 3);
        assert_eq!(beyond_slack(2, 5), 0, "all of it may be traffic");
        assert_eq!(beyond_slack(-7, 3), -4);
        assert_eq!(beyond_slack(-1, 1), 0);
        assert_eq!(beyond_slack(50, u64::MAX), 0);
    }

    #[test]
    fn readings_that_disagree_correct_nothing() {
        // One connection in its handshake at one reading, one just accepted at the next.
        assert_eq!(correction(Some(1), -1), 0);
        assert_eq!(correction(Some(-2), 3), 0);
        assert_eq!(correction(Some(4), 0), 0);
    }
}
