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
    /// Power of two random choices: the less loaded of two random slots. Constant cost at any
    /// group size, and no herding onto one idle slot when many selections race.
    P2c = 2,
    /// Each slot in turn. Each CPU keeps its own ticket: every CPU's share cycles exactly, and
    /// the totals differ by at most one per CPU.
    RoundRobin = 3,
    /// Least loaded relative to each slot's weight; idle slots share in proportion to weight.
    Weighted = 4,
    /// The same client address always lands on the same slot (consistent hashing).
    Sticky = 5,
}

impl Policy {
    pub const ALL: [Policy; 6] = [
        Policy::LeastLoaded,
        Policy::Hash,
        Policy::P2c,
        Policy::RoundRobin,
        Policy::Weighted,
        Policy::Sticky,
    ];

    /// The policy a `Config::policy` value names; `None` for a value no policy has.
    #[inline(always)]
    pub const fn from_u32(v: u32) -> Option<Policy> {
        match v {
            0 => Some(Policy::LeastLoaded),
            1 => Some(Policy::Hash),
            2 => Some(Policy::P2c),
            3 => Some(Policy::RoundRobin),
            4 => Some(Policy::Weighted),
            5 => Some(Policy::Sticky),
            _ => None,
        }
    }

    /// Whether the program counts a connection on its slot when it opens it (and the close
    /// tracker at its close): every policy but `hash`, under which the kernel's hash places
    /// connections and the reconciliation counts them.
    #[inline(always)]
    pub const fn counts(self) -> bool {
        match self {
            Policy::Hash => false,
            Policy::LeastLoaded
            | Policy::P2c
            | Policy::RoundRobin
            | Policy::Weighted
            | Policy::Sticky => true,
        }
    }

    /// Whether the policy sends a connection to the overflow listener (`--overflow`) when no
    /// slot is idle, or none is in rotation: least-loaded only.
    #[inline(always)]
    pub const fn overflows(self) -> bool {
        match self {
            Policy::LeastLoaded => true,
            Policy::Hash | Policy::P2c | Policy::RoundRobin | Policy::Weighted | Policy::Sticky => {
                false
            }
        }
    }

    /// Whether the policy reads the client's address to choose: sticky only.
    #[inline(always)]
    pub const fn reads_address(self) -> bool {
        match self {
            Policy::Sticky => true,
            Policy::LeastLoaded
            | Policy::Hash
            | Policy::P2c
            | Policy::RoundRobin
            | Policy::Weighted => false,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Policy::LeastLoaded => "least-loaded",
            Policy::Hash => "hash",
            Policy::P2c => "p2c",
            Policy::RoundRobin => "round-robin",
            Policy::Weighted => "weighted",
            Policy::Sticky => "sticky",
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

/// The next number of a SplitMix64 generator whose state is `state`: the program's source of
/// randomness, one state per CPU (seeded apart by the supervisor). A helper call
/// (`bpf_get_prandom_u32`) costs more than the rest of a selection's arithmetic on CPUs whose
/// kernels guard every return (AMD's Safe RET); this is a few multiplications on a value no
/// other CPU touches.
#[inline(always)]
pub const fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    mix(*state, u32::MAX)
}

/// Maps a random 32-bit value onto `0..n` without a division (Lemire's multiply-shift).
#[inline(always)]
pub const fn reduce(r: u32, n: u32) -> u32 {
    ((r as u64 * n as u64) >> 32) as u32
}

/// One selection in progress: which slots to look at, and the best seen so far.
///
/// The program drives it from `bpf_loop` (one callback per candidate, so the verifier checks the
/// loop body once instead of once per slot); the host drives it from a plain loop in
/// [`least_loaded`]. Both run the same [`Scan::offer`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Scan {
    slots: u32,
    start: u32,
    step: u32,
    count: u32,
    best: u32,
    weighted: u32,
    stop_at_idle: u32,
    seed: u64,
    best_key: u64,
}

impl Scan {
    /// Least-loaded among `0..slots` with random `seed`: every slot up to [`SCAN_LIMIT`] of
    /// them, else a window of [`SCAN_LIMIT`] consecutive slots from a random start.
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
            step: 1,
            count,
            best: u32::MAX,
            weighted: 0,
            stop_at_idle: 0,
            seed,
            best_key: u64::MAX,
        }
    }

    /// Least-loaded that stops at the first idle slot from a random start: an idle slot is as
    /// good as any other (no slot has less than nothing), so a lightly loaded group costs one
    /// or two candidates instead of all of them. Among idle slots the choice is not exactly
    /// uniform: one that follows a run of busy slots is reached from more starts.
    #[inline(always)]
    pub const fn first_idle(slots: u32, seed: u64) -> Scan {
        let mut scan = Scan::new(slots, seed);
        if scan.slots > 1 {
            scan.start = reduce((seed >> 32) as u32, scan.slots);
        }
        scan.stop_at_idle = 1;
        scan
    }

    /// Like [`Scan::new`], comparing load relative to weight (see [`Scan::offer`]).
    #[inline(always)]
    pub const fn weighted(slots: u32, seed: u64) -> Scan {
        let mut scan = Scan::new(slots, seed);
        scan.weighted = 1;
        scan
    }

    /// Power of two choices: two distinct random slots.
    #[inline(always)]
    pub const fn pair(slots: u32, seed: u64) -> Scan {
        let mut scan = Scan::new(slots, seed);
        if scan.slots >= 2 {
            let a = reduce((seed >> 32) as u32, scan.slots);
            let b = reduce(seed as u32, scan.slots - 1);
            let b = if b >= a { b + 1 } else { b };
            scan.start = a;
            scan.step = if b > a { b - a } else { b + scan.slots - a };
            scan.count = 2;
        }
        scan
    }

    /// How many candidates to look at.
    #[inline(always)]
    pub const fn count(&self) -> u32 {
        self.count
    }

    /// The slot index of candidate `i` (`i < count()`): `start + i * step`, wrapping at the end
    /// of the group (one subtraction suffices: both terms are below `slots`).
    #[inline(always)]
    pub const fn slot(&self, i: u32) -> u32 {
        let slot = self.start + i * self.step;
        if slot >= self.slots {
            slot - self.slots
        } else {
            slot
        }
    }

    /// Considers `slot` with `load` open connections and relative capacity `weight`.
    ///
    /// Unweighted: the key is the load in the high bits and a per-slot random number in the low
    /// ones, so one comparison both ranks and breaks ties uniformly.
    ///
    /// Weighted: the key is `(load + E) / weight` with `E` an exponential random variable (in
    /// load units). When all slots are idle, the smallest of independent `E_i / w_i` falls on
    /// slot `i` with probability `w_i / sum(w)`: traffic splits in proportion to weight; under
    /// load the ratio load/weight dominates, as in weighted least-connections.
    ///
    /// True when the scan is over: an idle slot under [`Scan::first_idle`].
    #[inline(always)]
    pub fn offer(&mut self, slot: u32, load: u64, weight: u32) -> bool {
        let random = mix(self.seed, slot);
        let key = if self.weighted != 0 {
            let load = if load > WEIGHTED_LOAD_CAP {
                WEIGHTED_LOAD_CAP
            } else {
                load
            };
            let weight = if weight == 0 { 1 } else { weight as u64 };
            (load * LOAD_UNIT + exponential(random)) / weight
        } else {
            let load = if load > LOAD_CAP { LOAD_CAP } else { load };
            (load << TIE_BITS) | (random >> (64 - TIE_BITS))
        };
        if key < self.best_key {
            self.best_key = key;
            self.best = slot;
        }
        self.stop_at_idle != 0 && load == 0
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

    /// Drops the first `n` candidates, offered already: candidate 0 is then the old
    /// candidate `n`. The program offers the first few in line and leaves the rest to
    /// `bpf_loop`.
    #[inline(always)]
    pub const fn skip(&mut self, n: u32) {
        if n >= self.count {
            self.count = 0;
        } else {
            self.start = self.slot(n);
            self.count -= n;
        }
    }
}

/// One connection of load in the units of [`exponential`]: 2^16 / ln 2.
const LOAD_UNIT: u64 = 94_548;
/// Keeps `load * LOAD_UNIT` far from overflow.
const WEIGHTED_LOAD_CAP: u64 = 1 << 30;

/// An Exp(1) random variable from 64 random bits, in units of 1/65536 of a bit of log2, that
/// is `-log2(u) * 65536` for `u` uniform in (0, 1]. Integer only (the verifier allows no floats):
/// the integer part of log2 from the leading zeros, the fraction from the next 16 bits
/// (Mitchell's approximation, within 0.09 of a bit).
#[inline(always)]
pub const fn exponential(random: u64) -> u64 {
    let x = random | 1;
    let lz = x.leading_zeros() as u64;
    // x = 2^(63 - lz) * (1 + f), f in [0, 1): its top 16 bits after the leading one.
    let fraction = ((x << lz) << 1) >> 48;
    // -log2(x / 2^64) = 64 - (63 - lz) - f = (lz + 1) - f
    ((lz + 1) << 16) - fraction
}

/// Round-robin: the slot for the `ticket`-th selection.
#[inline(always)]
pub const fn round_robin(ticket: u64, slots: u32) -> Option<u32> {
    if slots == 0 {
        None
    } else {
        Some((ticket % slots as u64) as u32)
    }
}

/// Size of the sticky lookup table: a prime well above 64 entries per slot for the largest
/// group, so that each slot owns close to `1/N` of the table.
pub const STICKY_TABLE: u32 = 65_537;

/// The sticky table index of a client address (IPv4 as one word, IPv6 folded from four).
#[inline(always)]
pub const fn sticky_index(address: [u32; 4]) -> u32 {
    let folded = (address[0] as u64) << 32 | address[1] as u64;
    let folded = folded ^ mix(address[2] as u64, address[3]);
    (mix(folded, 0x5354) % STICKY_TABLE as u64) as u32
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
    let mut scan = Scan::first_idle(slots, seed);
    for i in 0..scan.count() {
        let slot = scan.slot(i);
        if let Some(load) = load_of(slot) {
            if scan.offer(slot, load, 1) {
                break;
            }
        }
    }
    scan.best()
}

#[cfg(test)]
mod tests;
