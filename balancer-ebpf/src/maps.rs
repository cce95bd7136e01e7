//! The steering program's maps. The supervisor creates them at load, fills `SOCKETS`, `CONFIG`,
//! `LISTENERS` and `STICKY`, seeds `TICKETS` and `RANDOM`, and shares `SLOTS`, `STICKY` and
//! `COUNTERS` with the programs as memory (`BPF_F_MMAPABLE`). The close tracker's `OWNERS` is
//! in `closes.rs`, the taker tracker's `WORKERS` in `takes.rs`. balancer-common lists every
//! name (`maps::MAP_NAMES`), and balancer-user's build fails if a static here is renamed alone.

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, ReusePortSockArray},
};
use balancer_common::{
    maps::{Flow, FlowKey, FLOWS_DEFAULT},
    policy, stats, Config, Slot, MAX_SLOTS, SLOT_ENTRIES,
};

/// Slot index -> the slot's listening socket. Filled by the supervisor.
#[map]
pub(crate) static SOCKETS: ReusePortSockArray =
    ReusePortSockArray::with_max_entries(SLOT_ENTRIES, 0);

/// Slot index -> state, weight and the two load counters. Mmap-able so that the supervisor
/// reads and writes it without a system call.
#[map]
pub(crate) static SLOTS: Array<Slot> = Array::with_max_entries(SLOT_ENTRIES, BPF_F_MMAPABLE);

#[map]
pub(crate) static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// The program's own counters (`balancer_common::stats`), per CPU.
#[map]
pub(crate) static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stats::COUNT, 0);

/// A connection -> the slot it was sent to, for the few connections that need a record: SYNs
/// sent to a crowded slot, connections moved off a closing listener, health probes. LRU: when
/// full, the oldest record goes. The supervisor may resize it before loading.
#[map]
pub(crate) static FLOWS: LruHashMap<FlowKey, Flow> = LruHashMap::with_max_entries(FLOWS_DEFAULT, 0);

/// Values shared by all CPUs, written rarely: `RECORDING_UNTIL`. Mmap-able: the supervisor
/// resets a deadline that has passed.
#[map]
pub(crate) static COUNTERS: Array<u64> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// A listener's socket cookie -> its slot, written by the supervisor: tells the migrate path
/// which slot a closing listener's connections were counted on. LRU: listeners come and go.
#[map]
pub(crate) static LISTENERS: LruHashMap<u64, u32> = LruHashMap::with_max_entries(4 * MAX_SLOTS, 0);

/// Each CPU's round-robin ticket: a shared one would be a cache line every CPU writes on every
/// selection. The supervisor starts each CPU's at a random place in the cycle, so that CPUs
/// starting together do not all pick slot 0 first.
#[map]
pub(crate) static TICKETS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Each CPU's random generator state (`policy::next_random`), seeded apart by the supervisor.
#[map]
pub(crate) static RANDOM: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Sticky table: index (from the client address) -> slot, rebuilt by the supervisor with
/// consistent hashing whenever the set of up slots changes. u64 values: an array map lays its
/// values out 8 bytes apart, and user space writes this one through a shared mapping, so a
/// value must fill its whole stride.
#[map]
pub(crate) static STICKY: Array<u64> =
    Array::with_max_entries(policy::STICKY_TABLE, BPF_F_MMAPABLE);
