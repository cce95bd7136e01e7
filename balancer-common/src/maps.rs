//! Value layouts of the maps the program and the supervisor share.
//!
//! A slot's load is the difference of two monotonic counters kept side by side in its [`Slot`]:
//! the steering program adds to [`Slot::assigned`] when the first SYN of a connection is sent to
//! the slot, the close tracker adds to [`Slot::closed`] when the server side of that connection
//! closes. Neither is ever decremented, so a lost race costs at most a momentarily stale reading.
//! The supervisor's reconciliation (balancer-user's `rules::accounting`) compares the difference
//! with what the kernel holds for the slot and adds to one counter or the other when they part.

/// Room in every per-slot map. A `u16`-sized reuseport group holds at most 65535 sockets; 1024
/// workers per port is far beyond any host and keeps a full map scan bounded.
pub const MAX_SLOTS: u32 = 1024;

/// The overflow listener's index in `SOCKETS` and `SLOTS`, past every worker slot: the queue
/// every worker also accepts from when it has nothing else to do, where the program sends a
/// connection when no worker is idle (`--overflow`).
pub const OVERFLOW: u32 = MAX_SLOTS;

/// Entries of the per-slot maps: every worker slot and the overflow listener.
pub const SLOT_ENTRIES: u32 = MAX_SLOTS + 1;

/// Entries of the `FLOWS` table: the few connections that need a record (a SYN sent to a
/// crowded slot, a connection moved off a closing listener, a health probe). Past this many at
/// once the least recently used entry goes; the reconciliation then puts the slot's count right.
pub const FLOWS_DEFAULT: u32 = 262_144;

/// Names of the maps and programs in the object file, shared so that a rename breaks the build,
/// not the load: balancer-user's build script fails when the object it built holds a map or
/// program that [`MAP_NAMES`] or [`PROGRAM_NAMES`] does not list, or lacks one they list.
pub const SOCKETS_MAP: &str = "SOCKETS";
pub const SLOTS_MAP: &str = "SLOTS";
pub const CONFIG_MAP: &str = "CONFIG";
pub const STATS_MAP: &str = "STATS";
pub const COUNTERS_MAP: &str = "COUNTERS";
pub const FLOWS_MAP: &str = "FLOWS";
pub const OWNERS_MAP: &str = "OWNERS";
pub const TICKETS_MAP: &str = "TICKETS";
pub const RANDOM_MAP: &str = "RANDOM";
pub const LISTENERS_MAP: &str = "LISTENERS";
pub const WORKERS_MAP: &str = "WORKERS";
pub const STICKY_MAP: &str = "STICKY";
/// The program's log records: defined by aya-log-ebpf, read by aya-log.
pub const LOG_MAP: &str = "AYA_LOGS";
pub const PROGRAM: &str = "balancer";
pub const CLOSES_PROGRAM: &str = "closes";
/// The tracepoint the close tracker attaches to: every TCP state change of every socket.
pub const CLOSES_TRACEPOINT: &str = "inet_sock_set_state";
pub const TAKES_PROGRAM: &str = "takes";
/// The tracepoint the taker tracker attaches to: a process reading from a TCP socket.
pub const TAKES_TRACEPOINT: &str = "tcp_rcv_space_adjust";

/// Every map of the object file.
pub const MAP_NAMES: &[&str] = &[
    SOCKETS_MAP,
    SLOTS_MAP,
    CONFIG_MAP,
    STATS_MAP,
    COUNTERS_MAP,
    FLOWS_MAP,
    OWNERS_MAP,
    TICKETS_MAP,
    RANDOM_MAP,
    LISTENERS_MAP,
    WORKERS_MAP,
    STICKY_MAP,
    LOG_MAP,
];

/// Every program of the object file.
pub const PROGRAM_NAMES: &[&str] = &[PROGRAM, CLOSES_PROGRAM, TAKES_PROGRAM];

/// The tracepoint programs and the tracepoint each attaches to, which their section names.
pub const TRACEPOINTS: &[(&str, &str)] = &[
    (CLOSES_PROGRAM, CLOSES_TRACEPOINT),
    (TAKES_PROGRAM, TAKES_TRACEPOINT),
];

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
    /// Failing its health checks: never selected until it passes again.
    Unhealthy = 4,
}

impl SlotState {
    /// The state a `Slot::state` value names; a value no state has reads as `Down`.
    #[inline(always)]
    pub const fn from_u32(v: u32) -> SlotState {
        match v {
            1 => SlotState::Up,
            2 => SlotState::Draining,
            3 => SlotState::Stalled,
            4 => SlotState::Unhealthy,
            _ => SlotState::Down,
        }
    }

    /// Whether the program may send a new connection to a slot in this state. Exhaustive, so
    /// that a new state must be placed on one side or the other.
    #[inline(always)]
    pub const fn is_selectable(self) -> bool {
        match self {
            SlotState::Up => true,
            SlotState::Down | SlotState::Draining | SlotState::Stalled | SlotState::Unhealthy => {
                false
            }
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            SlotState::Down => "down",
            SlotState::Up => "up",
            SlotState::Draining => "draining",
            SlotState::Stalled => "stalled",
            SlotState::Unhealthy => "unhealthy",
        }
    }
}

/// One entry of the `SLOTS` map: written by the supervisor (state, weight), the steering
/// program (assigned), the close tracker (closed) and the reconciliation (either counter). Sized
/// to a cache line so that two CPUs steering to neighbouring slots do not bounce one line
/// between them; both counters share the line, so a scan reads one line per slot.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default)]
pub struct Slot {
    /// A [`SlotState`] as `u32`.
    pub state: u32,
    /// Relative capacity; 0 is treated as 1.
    pub weight: u32,
    /// Connections sent to this slot since the map was created (plus upward corrections).
    pub assigned: u64,
    /// Connections of this slot that closed (plus downward corrections).
    pub closed: u64,
    _reserved: [u64; 5],
}

impl Slot {
    pub const fn new(state: SlotState, weight: u32) -> Slot {
        Slot {
            state: state as u32,
            weight,
            assigned: 0,
            closed: 0,
            _reserved: [0; 5],
        }
    }
}

/// The single entry of the `CONFIG` map, written by the supervisor.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Config {
    /// Slots in use: the program looks at indices `0..slots`.
    pub slots: u32,
    /// A [`crate::Policy`] as `u32`.
    pub policy: u32,
    /// The port the slots serve, in host byte order: the close tracker names a reset
    /// connection by it (the kernel has zeroed the socket's own port by then).
    pub port: u32,
    /// Non-zero while the supervisor stops: new connections are refused (RST) instead of
    /// being queued on listeners that are about to close.
    pub stopping: u32,
    /// A slot holding this many connections or more may be dropping SYNs (its accept queue
    /// could be full): a SYN sent there is recorded in `FLOWS`, so that its retransmission is
    /// not counted twice. Half the listeners' backlog.
    pub crowded: u32,
    /// Non-zero while health checks run: the supervisor records each probe's connection in
    /// `FLOWS` before it connects, and the program sends it to that slot under every policy
    /// (the `hash` policy looks it up only then).
    pub probing: u32,
    /// Non-zero when the overflow listener is in `SOCKETS` at [`OVERFLOW`] and the workers
    /// accept from it: the connections its accept queue takes before it drops SYNs (its
    /// backlog). Least-loaded sends a connection there when no slot is idle and the queue has
    /// room, that is while the connections counted on it are fewer: past that a SYN sent there
    /// would be dropped (or answered with a cookie), and waits better in a worker's own queue.
    pub overflow: u32,
}

/// A TCP connection as the steering program sees it in the SYN's headers and the close tracker
/// and the migrate path see it on the socket. Addresses as in the packet (network byte order;
/// IPv4 in the first word, the rest zero, also for an IPv4 client of a dual-stack listener);
/// `ports` is the TCP header's first word: the client's port in the low half, the server's in
/// the high half, both in network byte order. The local side is part of the key so that two
/// addresses of one host serving the same client port stay apart.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub remote: [u32; 4],
    pub local: [u32; 4],
    pub ports: u32,
}

/// What `FLOWS` holds for a connection: its slot and how it was recorded.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    pub slot: u32,
    /// The SYN's sequence number (its initial sequence number, in network byte order): a SYN
    /// that carries it again is a retransmission, one with another is a new connection on a
    /// stale record.
    pub seq: u32,
    /// [`FLOW_SYN`] or [`FLOW_PROBE`].
    pub kind: u32,
}

/// Recorded by the program at the connection's SYN.
pub const FLOW_SYN: u32 = 0;
/// Recorded by the supervisor before a health probe connects: its SYN is not known yet.
pub const FLOW_PROBE: u32 = 1;

/// Index in `COUNTERS` of the time (`bpf_ktime_get_coarse_ns`) until which `FLOWS` may hold
/// records: the program and the close tracker look there only before it. 0 when no window is
/// open: the supervisor resets a deadline that has passed ([`window_passed`]), so that outside
/// a window the programs read this value and not the clock.
pub const RECORDING_UNTIL: u32 = 0;

/// Whether the window that ends at `until` (a `RECORDING_UNTIL` value) is open at `now`: the
/// programs' test, which reads the clock only when a window was opened.
#[inline(always)]
pub fn recording(until: u64, now: impl FnOnce() -> u64) -> bool {
    until != 0 && now() < until
}

/// Whether the supervisor may close the window that ends at `until`: it was opened and its
/// deadline has passed at `now` (CLOCK_MONOTONIC_COARSE, the clock the program writes it by).
#[inline(always)]
pub const fn window_passed(until: u64, now: u64) -> bool {
    until != 0 && now >= until
}

/// How long `FLOWS` is looked at after the last record was written: longer than a client
/// retransmits a SYN (Linux's default 6 retries take 127 s) and than a SYN-cookie handshake
/// takes to complete.
pub const RECORDING_WINDOW_NS: u64 = 150_000_000_000;

/// What `OWNERS` holds for each listener, and what every connection the listener accepts
/// inherits: the map is created with `BPF_F_CLONE`, so the kernel copies a listener's value
/// to each new connection socket it creates.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    /// The listener's slot.
    pub slot: u32,
    /// Non-zero when the steering program counted the connection in the slot's `assigned`
    /// (under every policy but `hash`): its close is then counted in `closed`, once (the close
    /// tracker clears the flag on the connection's own copy).
    pub counted: u32,
}

/// The load of a slot from its two counters. Wrapping subtraction then a sign check: a reading
/// taken between a close and the matching assignment on another CPU (or just after a downward
/// correction) may see `closed` ahead of `assigned` for an instant.
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
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::Flow {}
    unsafe impl aya::Pod for super::Owner {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_is_open_until_its_deadline_and_the_clock_is_read_only_when_one_was_opened() {
        let never = || -> u64 { panic!("the clock was read with no window open") };
        assert!(!recording(0, never));
        assert!(recording(100, || 99));
        assert!(!recording(100, || 100));
        // The supervisor closes exactly the windows the programs no longer honour.
        for (until, now) in [(0, 5), (100, 99), (100, 100), (100, 101)] {
            assert_eq!(
                window_passed(until, now),
                until != 0 && !recording(until, || now)
            );
        }
    }

    #[test]
    fn layouts_are_what_the_program_expects() {
        assert_eq!(core::mem::size_of::<Slot>(), 64);
        assert_eq!(core::mem::offset_of!(Slot, assigned), 8);
        assert_eq!(core::mem::offset_of!(Slot, closed), 16);
        assert_eq!(core::mem::size_of::<Config>(), 28);
        assert_eq!(core::mem::size_of::<FlowKey>(), 36);
        assert_eq!(core::mem::size_of::<Flow>(), 12);
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
            SlotState::Unhealthy,
        ] {
            assert_eq!(SlotState::from_u32(s as u32), s);
            assert_eq!(s.is_selectable(), s == SlotState::Up, "{s:?}");
        }
        assert_eq!(SlotState::from_u32(77), SlotState::Down);
        assert!(!SlotState::from_u32(77).is_selectable());
    }

    #[test]
    fn every_name_is_listed_once() {
        for list in [MAP_NAMES, PROGRAM_NAMES] {
            for (i, a) in list.iter().enumerate() {
                assert!(!list[i + 1..].contains(a), "{a} listed twice");
            }
        }
        for (program, _) in TRACEPOINTS {
            assert!(PROGRAM_NAMES.contains(program), "{program}");
        }
    }
}
