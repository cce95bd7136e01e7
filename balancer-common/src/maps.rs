//! Value layouts of the maps the program reads and the supervisor and workers write.
//!
//! Load accounting is split in two monotonic counters so that no party ever decrements what
//! another party increments: the program adds to [`Slot::assigned`] when it sends a connection
//! to a slot, the worker holding that slot adds to [`Report::closed`] when one of its connections
//! closes. The load of a slot is their difference. Counters only grow, so a lost race costs at
//! most a momentarily stale reading, never a permanent drift.

/// Room in every per-slot map. A `u16`-sized reuseport group holds at most 65535 sockets; 1024
/// workers per port is far beyond any host and keeps a full map scan bounded.
pub const MAX_SLOTS: u32 = 1024;

/// Names of the maps in the object file, shared so that a rename breaks the build, not the load.
pub const SOCKETS_MAP: &str = "SOCKETS";
pub const SLOTS_MAP: &str = "SLOTS";
pub const REPORTS_MAP: &str = "REPORTS";
pub const CONFIG_MAP: &str = "CONFIG";
pub const STATS_MAP: &str = "STATS";
pub const COUNTERS_MAP: &str = "COUNTERS";
pub const PENDING_MAP: &str = "PENDING";
pub const OPEN_MAP: &str = "OPEN";
pub const CLOSES_PROGRAM: &str = "closes";
pub const STICKY_MAP: &str = "STICKY";
pub const PROGRAM: &str = "balancer";

/// Whether the program may send new connections to a slot.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotState {
    /// No worker, or its worker exited: never selected.
    Down = 0,
    /// A worker is serving: selectable.
    Up = 1,
    /// Finishing what it has, taking nothing new: never selected.
    Draining = 2,
    /// Alive, but not accepting: never selected until it accepts again.
    Stalled = 3,
}

impl SlotState {
    pub const fn from_u32(v: u32) -> SlotState {
        match v {
            1 => SlotState::Up,
            2 => SlotState::Draining,
            3 => SlotState::Stalled,
            _ => SlotState::Down,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            SlotState::Down => "down",
            SlotState::Up => "up",
            SlotState::Draining => "draining",
            SlotState::Stalled => "stalled",
        }
    }
}

/// One entry of the `SLOTS` map: written by the supervisor (state, weight) and the program
/// (assigned). Sized to a cache line so that two CPUs steering to neighbouring slots do not
/// bounce one line between them.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default)]
pub struct Slot {
    /// A [`SlotState`] as `u32`.
    pub state: u32,
    /// Relative capacity; 0 is treated as 1.
    pub weight: u32,
    /// Connections the program has sent to this slot since the map was created.
    pub assigned: u64,
    _reserved: [u64; 6],
}

impl Slot {
    pub const fn new(state: SlotState, weight: u32) -> Slot {
        Slot {
            state: state as u32,
            weight,
            assigned: 0,
            _reserved: [0; 6],
        }
    }
}

/// One entry of the `REPORTS` map: written by the worker of the slot through a shared mapping
/// (`BPF_F_MMAPABLE`), one atomic add per event and no system call. Kept apart from [`Slot`] so
/// that a worker holding this map cannot change which slots are up.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default)]
pub struct Report {
    /// Connections of this slot that have closed.
    pub closed: u64,
    /// Connections the worker has accepted; lets the supervisor settle the books of a worker
    /// that died with connections open (`accepted - closed` of its own lifetime).
    pub accepted: u64,
    _reserved: [u64; 6],
}

/// The single entry of the `CONFIG` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Config {
    /// Slots in use: the program looks at indices `0..slots`.
    pub slots: u32,
    /// A [`crate::Policy`] as `u32`.
    pub policy: u32,
    /// Who reports closed connections: [`TRACK_WORKER`] or [`TRACK_KERNEL`].
    pub tracking: u32,
    /// The port the slots serve, in host byte order (the close tracker ignores other ports).
    pub port: u32,
    /// Non-zero while the supervisor stops: new connections are refused (RST) instead of
    /// being queued on listeners that are about to close.
    pub stopping: u32,
}

/// Workers report their closes through `REPORTS` (the built-in worker does).
pub const TRACK_WORKER: u32 = 0;
/// The kernel reports closes: the steering program remembers which slot each new connection
/// went to, and a `sock_ops` program counts the connection closed when its state leaves
/// ESTABLISHED on the server's side. For workers that report nothing.
pub const TRACK_KERNEL: u32 = 1;

/// A connection as both programs can name it: the client's address (IPv4 in the first word,
/// as in the packet) and the client's TCP port (its network-order bits).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowKey {
    pub address: [u32; 4],
    pub port: u32,
}

/// Index of the round-robin ticket counter in `COUNTERS`.
pub const ROUND_ROBIN_TICKET: u32 = 0;

/// The load of a slot from its two counters. Wrapping subtraction then a sign check: a reading
/// taken between a worker's close and the program's matching add (or after the supervisor
/// settled a dead worker's books) may see `closed` ahead of `assigned` for an instant.
#[inline(always)]
pub const fn load(assigned: u64, closed: u64) -> u64 {
    let d = assigned.wrapping_sub(closed);
    if (d as i64) < 0 {
        0
    } else {
        d
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers; every bit pattern is valid.
    unsafe impl aya::Pod for super::Slot {}
    unsafe impl aya::Pod for super::Report {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::FlowKey {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_what_the_program_expects() {
        assert_eq!(core::mem::size_of::<Slot>(), 64);
        assert_eq!(core::mem::size_of::<Report>(), 64);
        assert_eq!(core::mem::size_of::<Config>(), 20);
        assert_eq!(core::mem::size_of::<FlowKey>(), 20);
    }

    #[test]
    fn load_never_underflows() {
        assert_eq!(load(10, 3), 7);
        assert_eq!(load(3, 3), 0);
        assert_eq!(load(3, 4), 0);
        assert_eq!(
            load(u64::MAX, 0),
            0,
            "a wrapped difference is treated as a transient"
        );
    }

    #[test]
    fn state_round_trips() {
        for s in [
            SlotState::Down,
            SlotState::Up,
            SlotState::Draining,
            SlotState::Stalled,
        ] {
            assert_eq!(SlotState::from_u32(s as u32), s);
        }
        assert_eq!(SlotState::from_u32(77), SlotState::Down);
    }
}
