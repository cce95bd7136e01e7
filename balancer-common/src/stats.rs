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
/// A retransmitted SYN, or the last ACK of a SYN-cookie handshake, sent to the slot its
/// connection already has, and not counted again.
pub const FOLLOWED: u32 = 7;
/// A segment that opens no connection (ACK, FIN, RST of no known connection): left to the
/// kernel, counted nowhere.
pub const NOT_A_SYN: u32 = 8;
/// A SYN on the 4-tuple of a recorded connection that ended unseen (a handshake the kernel
/// dropped, a client that gave up): a new connection, its record replaced and counted anew.
pub const STALE_FLOW: u32 = 9;
/// No slot was idle: the connection went to the overflow queue (`--overflow`).
pub const OVERFLOWED: u32 = 10;

pub const COUNT: u32 = 11;

/// Names used in metrics and status output, indexed like the counters.
pub const NAMES: [&str; COUNT as usize] = [
    "selected",
    "no_slot_up",
    "select_failed",
    "map_error",
    "hash_policy",
    "migrated",
    "refused_stopping",
    "followed",
    "not_a_syn",
    "stale_flow",
    "overflowed",
];

/// The counters that are fallbacks to the kernel's hash.
pub const FALLBACKS: core::ops::Range<usize> = 1..5;
