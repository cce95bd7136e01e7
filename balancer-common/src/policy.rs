//! How the program picks a slot. Plain functions over a load reader, so that the eBPF program
//! runs exactly the code the host tests exercise.
//!
//! The verifier must prove every loop here terminates: loops run to a constant bound and `break`
//! early, and nothing divides by a value that might be zero (a division by zero would leave a
//! panic path in the object, which the verifier rejects).

/// The steering policies the program knows.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// The up slot with the fewest open connections; ties broken at random.
    LeastLoaded = 0,
    /// The kernel's own 4-tuple hash over every listener, as if no program were attached.
    Hash = 1,
}

impl Policy {
    pub const ALL: [Policy; 2] = [Policy::LeastLoaded, Policy::Hash];

    pub const fn from_u32(v: u32) -> Option<Policy> {
        match v {
            0 => Some(Policy::LeastLoaded),
            1 => Some(Policy::Hash),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Policy::LeastLoaded => "least-loaded",
            Policy::Hash => "hash",
        }
    }

    pub fn from_name(name: &str) -> Option<Policy> {
        Policy::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// At most this many slots are examined per selection. Up to this many slots the choice is the
/// exact least-loaded one; beyond it, the least loaded of a window of this many consecutive slots
/// starting at a random index (a "best of d" sample), which keeps the cost of one selection flat
/// however many workers there are.
pub const SCAN_LIMIT: u32 = 32;

/// Loads above this are all treated alike; leaves 20 low bits of the sort key to the tie-break.
const LOAD_CAP: u64 = (1 << 43) - 1;
const TIE_BITS: u32 = 20;

/// A 64-bit mix (SplitMix64's output function) of `seed` and `slot`: a per-slot pseudo-random
/// number that is independent enough between slots to break ties uniformly, at the cost of two
/// multiplications instead of one helper call per slot.
#[inline(always)]
pub const fn mix(seed: u64, slot: u32) -> u64 {
    let mut z = seed.wrapping_add((slot as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Spreads one 32-bit random draw over 64 bits, so that both the window start (high bits) and
/// the tie-break (mixed per slot) are random: one helper call per selection instead of two.
#[inline(always)]
pub const fn seed(random: u32) -> u64 {
    mix(random as u64, u32::MAX)
}

/// Maps a random 32-bit value onto `0..n` without a division (Lemire's multiply-shift).
#[inline(always)]
pub const fn reduce(r: u32, n: u32) -> u32 {
    ((r as u64 * n as u64) >> 32) as u32
}

/// One least-loaded selection in progress: which slots to look at, and the best seen so far.
///
/// The program drives it from `bpf_loop` (one callback per candidate, so the verifier checks the
/// loop body once instead of once per slot); the host drives it from a plain loop in
/// [`least_loaded`]. Both run the same [`Scan::offer`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Scan {
    slots: u32,
    start: u32,
    count: u32,
    best: u32,
    seed: u64,
    best_key: u64,
}

impl Scan {
    /// Starts a selection among `0..slots` with random `seed`.
    #[inline(always)]
    pub const fn new(slots: u32, seed: u64) -> Scan {
        let slots = if slots > crate::MAX_SLOTS {
            crate::MAX_SLOTS
        } else {
            slots
        };
        let (start, count) = if slots <= SCAN_LIMIT {
            (0, slots)
        } else {
            (reduce((seed >> 32) as u32, slots), SCAN_LIMIT)
        };
        Scan {
            slots,
            start,
            count,
            best: u32::MAX,
            seed,
            best_key: u64::MAX,
        }
    }

    /// How many candidates to look at.
    #[inline(always)]
    pub const fn count(&self) -> u32 {
        self.count
    }

    /// The slot index of candidate `i` (`i < count()`): consecutive slots from a random start,
    /// wrapping at the end of the group.
    #[inline(always)]
    pub const fn slot(&self, i: u32) -> u32 {
        let slot = self.start + i;
        if slot >= self.slots {
            slot - self.slots
        } else {
            slot
        }
    }

    /// Considers `slot` with `load` open connections.
    #[inline(always)]
    pub fn offer(&mut self, slot: u32, load: u64) {
        let load = if load > LOAD_CAP { LOAD_CAP } else { load };
        // One comparison per slot: load in the high bits, tie-break in the low ones.
        let key = (load << TIE_BITS) | (mix(self.seed, slot) >> (64 - TIE_BITS));
        if key < self.best_key {
            self.best_key = key;
            self.best = slot;
        }
    }

    /// The chosen slot, if any candidate was selectable.
    #[inline(always)]
    pub const fn best(&self) -> Option<u32> {
        if self.best_key == u64::MAX {
            None
        } else {
            Some(self.best)
        }
    }
}

/// Picks the slot in `0..slots` with the smallest load, reading each candidate's load through
/// `load_of`, which answers `None` for a slot that must not be chosen (down, draining, unreadable).
/// Ties go to the candidate with the smallest per-slot random number drawn from `seed`, so equal
/// slots are chosen equally often whatever their index. Returns `None` when no candidate is
/// selectable.
pub fn least_loaded(
    slots: u32,
    seed: u64,
    mut load_of: impl FnMut(u32) -> Option<u64>,
) -> Option<u32> {
    let mut scan = Scan::new(slots, seed);
    for i in 0..scan.count() {
        let slot = scan.slot(i);
        if let Some(load) = load_of(slot) {
            scan.offer(slot, load);
        }
    }
    scan.best()
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    /// A deterministic seed source for the tests (xorshift64*).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    #[test]
    fn picks_the_smallest_load() {
        let loads = [5u64, 3, 9, 1, 4];
        for seed in 0..1000 {
            assert_eq!(least_loaded(5, seed, |s| Some(loads[s as usize])), Some(3));
        }
    }

    #[test]
    fn skips_unselectable_slots() {
        let loads = [Some(5u64), None, Some(2), None];
        for seed in 0..1000 {
            assert_eq!(least_loaded(4, seed, |s| loads[s as usize]), Some(2));
        }
        assert_eq!(least_loaded(4, 1, |_| None), None);
        assert_eq!(least_loaded(0, 1, |_| Some(0)), None);
    }

    #[test]
    fn ties_are_broken_uniformly_not_by_index() {
        // Slots 0, 3, 4 and 7 tie at the minimum; the others are busier.
        let loads = [2u64, 5, 9, 2, 2, 7, 3, 2];
        let mut rng = Rng(0x1234_5678);
        let mut hits = [0u32; 8];
        let rounds = 40_000;
        for _ in 0..rounds {
            let s = least_loaded(8, rng.next(), |s| Some(loads[s as usize])).unwrap();
            hits[s as usize] += 1;
        }
        for (slot, &h) in hits.iter().enumerate() {
            if loads[slot] == 2 {
                let share = h as f64 / rounds as f64;
                assert!(
                    (share - 0.25).abs() < 0.02,
                    "slot {slot} got {share:.3} of ties, want 0.25"
                );
            } else {
                assert_eq!(h, 0, "slot {slot} is busier than the minimum");
            }
        }
    }

    #[test]
    fn all_idle_slots_share_evenly() {
        let mut rng = Rng(99);
        let n = 32;
        let mut hits = std::vec![0u32; n];
        let rounds = 64_000;
        for _ in 0..rounds {
            hits[least_loaded(n as u32, rng.next(), |_| Some(0)).unwrap() as usize] += 1;
        }
        let even = rounds as f64 / n as f64;
        for h in hits {
            assert!((h as f64 - even).abs() / even < 0.08, "{h} vs {even}");
        }
    }

    #[test]
    fn assignments_counted_at_selection_spread_a_burst() {
        // The program adds each assignment to the chosen slot's load before the next selection:
        // a burst onto idle slots must then spread round the slots, never pile onto one.
        let mut loads = [0u64; 4];
        let mut rng = Rng(7);
        for _ in 0..64 {
            let s = least_loaded(4, rng.next(), |s| Some(loads[s as usize])).unwrap();
            loads[s as usize] += 1;
        }
        assert_eq!(loads, [16, 16, 16, 16]);
    }

    #[test]
    fn large_groups_sample_a_window_and_stay_fair() {
        let n = 1024u32;
        let mut rng = Rng(3);
        let mut hits = std::vec![0u32; n as usize];
        for _ in 0..(n * 50) {
            let seed = rng.next();
            let mut seen = 0;
            let s = least_loaded(n, seed, |_| {
                seen += 1;
                Some(0)
            })
            .unwrap();
            assert_eq!(seen, SCAN_LIMIT, "cost must not grow with the group");
            hits[s as usize] += 1;
        }
        let min = *hits.iter().min().unwrap();
        assert!(
            min > 10,
            "every slot is reachable: least hit {min} of 50 expected"
        );
    }

    #[test]
    fn large_groups_avoid_a_heavily_loaded_slot() {
        let n = 256u32;
        let mut rng = Rng(11);
        let stuck = 17u32;
        let picks: Vec<u32> = (0..20_000)
            .map(|_| {
                least_loaded(n, rng.next(), |s| Some(if s == stuck { 100 } else { 1 })).unwrap()
            })
            .collect();
        assert!(!picks.contains(&stuck));
    }

    #[test]
    fn reduce_stays_in_range() {
        for n in [1u32, 2, 3, 33, 1024] {
            for r in [0u32, 1, u32::MAX / 2, u32::MAX] {
                assert!(reduce(r, n) < n);
            }
        }
    }

    #[test]
    fn policy_names_round_trip() {
        for p in Policy::ALL {
            assert_eq!(Policy::from_name(p.name()), Some(p));
            assert_eq!(Policy::from_u32(p as u32), Some(p));
        }
        assert_eq!(Policy::from_name("fastest"), None);
    }
}
