//! Indices of the per-CPU `STATS` counters the program keeps. The supervisor sums them over
//! CPUs; the program never contends on a shared line for them.

/// A connection sent to the slot the policy chose.
pub const SELECTED: u32 = 0;
/// No slot was up: the kernel's hash chose.
pub const FALLBACK_NO_SLOT: u32 = 1;
/// The chosen slot had no socket (or a stale one): the kernel's hash chose.
pub const FALLBACK_SELECT_FAILED: u32 = 2;
/// The configuration could not be read: the kernel's hash chose.
pub const FALLBACK_MAP_ERROR: u32 = 3;
/// The `hash` policy is in force: the kernel's hash chose, by request.
pub const HASH: u32 = 4;
/// A queued connection of a closing listener moved to the slot the policy chose.
pub const MIGRATED: u32 = 5;
/// Refused while the supervisor stops.
pub const REFUSED: u32 = 6;

pub const COUNT: u32 = 7;

/// Names used in metrics and status output, indexed like the counters.
pub const NAMES: [&str; COUNT as usize] = [
    "selected",
    "no_slot_up",
    "select_failed",
    "map_error",
    "hash_policy",
    "migrated",
    "refused_stopping",
];

/// The counters that are fallbacks to the kernel's hash.
pub const FALLBACKS: core::ops::Range<usize> = 1..5;
