//! The `SK_REUSEPORT` program: the kernel runs it for every TCP segment that reaches listener
//! lookup on the balancer's port (a SYN that matches no socket, and also a retransmitted SYN
//! after the accept queue dropped the first, the last ACK of a SYN-cookie handshake, a stray
//! ACK/FIN/RST) and for every datagram of a UDP group. It names the listener, that is the worker
//! slot, that gets the segment.
//!
//! A connection is counted once, at its first pure SYN: the program adds to the chosen slot's
//! `assigned` before returning, so the next connection, on any CPU, already sees it. Nothing
//! else is written per connection: the close tracker (`closes.rs`) finds the slot of a closing
//! connection on the socket itself (`OWNERS`, inherited from its listener), and adds to its
//! `closed`.
//!
//! Only a SYN the kernel may drop needs a record: one sent to a crowded slot (a full accept
//! queue drops it, and the client's retransmission must not be counted again). Such a SYN is
//! recorded in `FLOWS` by 4-tuple, and for a while after (`RECORDING_UNTIL`) every SYN is
//! checked against the records: a retransmission goes to its slot uncounted, and the last ACK
//! of a SYN-cookie handshake follows its SYN. Outside that window a segment that is not a SYN
//! passes uncounted without a lookup.
//!
//! It fails open: whenever it cannot choose it returns `SK_PASS` with no selection and the
//! kernel's own hash picks a listener (the supervisor's reconciliation counts what it placed).
//! The one exception is a stopping supervisor, for which it refuses new connections (`SK_DROP`:
//! the client gets a reset at once instead of a place in a queue no worker will empty).
//!
//! The same program also runs when a listener of the group closes with connections queued
//! (attach type `SELECT_OR_MIGRATE`): it then moves each of them, and its count, to a live slot.
#![no_std]
#![no_main]
// The BPF target has no compare-and-swap, so `AtomicU64::fetch_add` does not exist there; the
// intrinsic lowers to the BPF atomic add instruction.
#![feature(core_intrinsics)]
#![allow(internal_features)]

use core::intrinsics::{atomic_xadd, AtomicOrdering};
use core::ptr::read_volatile;

use aya_ebpf::{
    bindings::{
        bpf_hdr_start_off::BPF_HDR_START_NET,
        sk_action::{SK_DROP, SK_PASS},
        BPF_F_MMAPABLE, BPF_NOEXIST,
    },
    cty::c_void,
    helpers::{
        bpf_get_socket_cookie, bpf_ktime_get_coarse_ns, bpf_loop, bpf_skb_load_bytes_relative,
    },
    macros::{map, sk_reuseport},
    maps::{Array, LruHashMap, PerCpuArray, ReusePortSockArray},
    programs::SkReuseportContext,
};
use aya_log_ebpf::warn;
use balancer_common::{
    maps::{
        self, load, Flow, FlowKey, FLOWS_DEFAULT, FLOW_PROBE, FLOW_SYN, RECORDING_UNTIL,
        RECORDING_WINDOW_NS,
    },
    policy, stats, Config, Policy, Slot, SlotState, MAX_SLOTS, OVERFLOW, SLOT_ENTRIES,
};

mod closes;
mod takes;

/// Slot index -> the slot's listening socket. Filled by the supervisor.
#[map]
static SOCKETS: ReusePortSockArray = ReusePortSockArray::with_max_entries(SLOT_ENTRIES, 0);

/// Slot index -> state, weight and the two load counters. Mmap-able so that the supervisor
/// reads and writes it without a system call.
#[map]
static SLOTS: Array<Slot> = Array::with_max_entries(SLOT_ENTRIES, BPF_F_MMAPABLE);

#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stats::COUNT, 0);

/// A connection -> the slot it was sent to, for the few connections that need a record: SYNs
/// sent to a crowded slot, connections moved off a closing listener, health probes. LRU: when
/// full, the oldest record goes. The supervisor may resize it before loading.
#[map]
static FLOWS: LruHashMap<FlowKey, Flow> = LruHashMap::with_max_entries(FLOWS_DEFAULT, 0);

/// Values shared by all CPUs, written rarely: `RECORDING_UNTIL`. Mmap-able: the supervisor
/// resets a deadline that has passed.
#[map]
static COUNTERS: Array<u64> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// A listener's socket cookie -> its slot, written by the supervisor: tells the migrate path
/// which slot a closing listener's connections were counted on. LRU: listeners come and go.
#[map]
static LISTENERS: LruHashMap<u64, u32> = LruHashMap::with_max_entries(4 * MAX_SLOTS, 0);

/// Each CPU's round-robin ticket: a shared one would be a cache line every CPU writes on every
/// selection. The supervisor starts each CPU's at a random place in the cycle, so that CPUs
/// starting together do not all pick slot 0 first.
#[map]
static TICKETS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Each CPU's random generator state (`policy::next_random`), seeded apart by the supervisor.
#[map]
static RANDOM: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Sticky table: index (from the client address) -> slot, rebuilt by the supervisor with
/// consistent hashing whenever the set of up slots changes. u64 values: an array map lays its
/// values out 8 bytes apart, and user space writes this one through a shared mapping, so a
/// value must fill its whole stride.
#[map]
static STICKY: Array<u64> = Array::with_max_entries(policy::STICKY_TABLE, BPF_F_MMAPABLE);

#[inline(always)]
fn count(index: u32) {
    // Per-CPU: no other CPU writes this value, so a plain add is race-free.
    if let Some(c) = STATS.get_ptr_mut(index) {
        unsafe { *c += 1 };
    }
}

/// Adds one to a slot's `assigned` (`closed: false`) or `closed` counter. Atomic: every CPU
/// and the supervisor add to the same counters.
#[inline(always)]
pub(crate) fn add(slot: u32, closed: bool) {
    if let Some(s) = SLOTS.get_ptr_mut(slot) {
        unsafe {
            let counter = if closed {
                &raw mut (*s).closed
            } else {
                &raw mut (*s).assigned
            };
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, 1);
        }
    }
}

/// Candidates offered in line, before `bpf_loop` takes the rest.
const IN_LINE: u32 = 2;

/// The least-loaded up slot among `0..slots` (or a window of them, see `policy::SCAN_LIMIT`).
#[inline(always)]
fn least_loaded(mut scan: policy::Scan) -> Option<u32> {
    // The first candidates in line: a `bpf_loop` callback is a BPF-to-BPF call per candidate,
    // which costs about as much as the rest of a selection on CPUs that guard every return
    // (AMD's Safe RET). Two cover a pair, and most often find an idle slot in a larger group.
    let mut i = 0;
    while i < IN_LINE {
        if i < scan.count() && offer(&mut scan, i) {
            return scan.best();
        }
        i += 1;
    }
    scan.skip(IN_LINE);
    looped(scan)
}

/// The least-loaded up slot of the whole scan, every candidate by `bpf_loop`: not a Rust loop,
/// which the verifier would walk (and its branches multiply) once per iteration, where it checks
/// `consider` once whatever the number of slots.
#[inline(always)]
fn looped(mut scan: policy::Scan) -> Option<u32> {
    if scan.count() > 0 {
        unsafe {
            bpf_loop(
                scan.count(),
                consider as *mut c_void,
                (&raw mut scan).cast(),
                0,
            );
        }
    }
    scan.best()
}

/// Whether `FLOWS` may hold records the program or the close tracker must honour at `now()`
/// (monotonic ns): a record was written less than `RECORDING_WINDOW_NS` before. The clock is
/// read only while a window is open: a helper call, it would cost about as much as the rest of
/// a selection.
#[inline(always)]
pub(crate) fn recording(now: impl FnOnce() -> u64) -> bool {
    COUNTERS
        .get(RECORDING_UNTIL)
        .is_some_and(|&until| maps::recording(until, now))
}

/// `recording` for the program, by the coarse clock: a tick's precision is plenty for a window
/// of minutes, at a fraction of the precise clock's cost.
#[inline(always)]
fn recording_now() -> bool {
    recording(|| unsafe { bpf_ktime_get_coarse_ns() })
}

/// The next draw of this CPU's random generator.
#[inline(always)]
fn random() -> u64 {
    RANDOM
        .get_ptr_mut(0)
        .map_or(0, |state| policy::next_random(unsafe { &mut *state }))
}

/// Opens (or extends) the window in which `FLOWS` is honoured.
#[inline(always)]
fn start_recording() {
    if let Some(until) = COUNTERS.get_ptr_mut(RECORDING_UNTIL) {
        let deadline = unsafe { bpf_ktime_get_coarse_ns() } + RECORDING_WINDOW_NS;
        // Written at most once a millisecond: under a flood of crowded SYNs every CPU would
        // otherwise write this shared line on every SYN.
        unsafe {
            if read_volatile(until) + 1_000_000 < deadline {
                *until = deadline;
            }
        }
    }
}

/// A queued connection (established, or still in its handshake) of a closing listener: send it
/// to the least-loaded live slot and move its count there; if nothing is live, let the kernel's
/// hash choose among the remaining listeners.
///
/// The count comes off the closing listener's slot (`LISTENERS`, by the listener's cookie) or
/// the slot a record names. An established connection keeps its old listener's slot in
/// `OWNERS`, so its move is recorded in `FLOWS` for the close tracker; a handshake in progress
/// needs no record: its socket will be created by the new listener and inherit its slot.
#[inline(never)]
fn migrate(ctx: &SkReuseportContext, migrating: &aya_ebpf::programs::SockContext) -> u32 {
    let Some(config) = CONFIG.get(0) else {
        count(stats::FALLBACK_MAP_ERROR);
        return SK_PASS;
    };
    // Looped only: in-line candidates here lead LLVM to code the verifier rejects ("!read_ok"),
    // and this rare path has no need of them.
    let Some(index) = looped(policy::Scan::new(config.slots, random())) else {
        count(stats::FALLBACK_NO_SLOT);
        return SK_PASS;
    };
    if SOCKETS.select_reuseport(ctx, index).is_err() {
        count(stats::FALLBACK_SELECT_FAILED);
        return SK_PASS;
    }
    count(stats::MIGRATED);
    if config.policy == Policy::Hash as u32 {
        // Nothing was counted for it.
        return SK_PASS;
    }
    let key = closes::flow_of(migrating.sock);
    let previous = unsafe { FLOWS.get(key) }.copied();
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sk().sock.cast()) };
    let from = match previous {
        Some(p) => Some(p.slot),
        None => unsafe { LISTENERS.get(cookie) }.copied(),
    };
    if from == Some(index) {
        return SK_PASS;
    }
    let established = unsafe { (*migrating.sock).state } == TCP_ESTABLISHED;
    if established || previous.is_some() {
        let moved = Flow {
            slot: index,
            ..previous.unwrap_or_default()
        };
        if FLOWS.insert(key, moved, 0).is_err() {
            return SK_PASS;
        }
        start_recording();
    }
    add(index, false);
    if let Some(old) = from {
        add(old, true);
    }
    SK_PASS
}

#[inline(always)]
fn is_up(slot: u32) -> bool {
    SLOTS
        .get_ptr(slot)
        .is_some_and(|s| unsafe { read_volatile(&(*s).state) } == SlotState::Up as u32)
}

/// A slot's load (0 for an index out of range).
#[inline(always)]
fn load_of(slot: u32) -> u64 {
    SLOTS.get_ptr(slot).map_or(0, |s| unsafe {
        load(read_volatile(&(*s).assigned), read_volatile(&(*s).closed))
    })
}

const IPPROTO_TCP: u32 = 6;
const TCP_ESTABLISHED: u32 = 1;
const TCP_FLAG_SYN: u8 = 0x02;
/// ACK, RST and FIN: a SYN carrying any of them opens no connection.
const TCP_FLAGS_NOT_OPENING: u8 = 0x10 | 0x04 | 0x01;

/// Reads the packet's remote and local addresses from its IP header into `key` (four words
/// each, IPv4 in the first). False if the packet is neither IPv4 nor IPv6.
///
/// Out-parameters, not an `Option` of the addresses: LLVM spills an undefined register on the
/// `None` path of a large `Option`, which the verifier rejects ("!read_ok").
#[inline(always)]
fn addresses(ctx: &SkReuseportContext, key: &mut FlowKey) -> bool {
    // The source and destination addresses are adjacent in both headers, so one load reads
    // both. eth_protocol is in network byte order: htons(ETH_P_IP) is 0x0008 on this
    // little-endian target, htons(ETH_P_IPV6) 0xdd86. A constant length in each call: the
    // verifier checks the helper's size argument.
    let eth = ctx.eth_protocol();
    if eth == 0x0008 {
        let mut a = [0u32; 2];
        let rc = unsafe {
            bpf_skb_load_bytes_relative(
                ctx.md as *const c_void,
                12,
                (&raw mut a).cast(),
                8,
                BPF_HDR_START_NET,
            )
        };
        key.remote[0] = a[0];
        key.local[0] = a[1];
        rc == 0
    } else if eth == 0xdd86 {
        let rc = unsafe {
            bpf_skb_load_bytes_relative(
                ctx.md as *const c_void,
                8,
                (&raw mut key.remote).cast(),
                16,
                BPF_HDR_START_NET,
            ) | bpf_skb_load_bytes_relative(
                ctx.md as *const c_void,
                24,
                (&raw mut key.local).cast(),
                16,
                BPF_HDR_START_NET,
            )
        };
        rc == 0
    } else {
        false
    }
}

/// Zeroes `key` in place and hands it out, word by word: `FlowKey::default()`, or zeroing a
/// value and moving it into place, compiles to a call of the object's `memset`, a BPF-to-BPF
/// call on every run of the program.
#[inline(always)]
fn blank_key(key: &mut core::mem::MaybeUninit<FlowKey>) -> &mut FlowKey {
    let words = key.as_mut_ptr().cast::<u32>();
    for i in 0..core::mem::size_of::<FlowKey>() / 4 {
        // Volatile: plain stores would be merged back into the `memset` call.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
    // SAFETY: every byte written above (the key is a whole number of u32 words, no padding).
    unsafe { key.assume_init_mut() }
}

const SEGMENT_INVALID: u32 = 0;
const SEGMENT_SYN: u32 = 1;
const SEGMENT_OTHER: u32 = 2;

/// Reads a TCP segment's ports into `key` and its sequence number into `seq` (the addresses
/// only when a record is looked up: see [`addresses`]); tells whether the segment is a pure SYN
/// (`SEGMENT_SYN`), another segment, or unreadable.
#[inline(always)]
fn tcp_segment(ctx: &SkReuseportContext, key: &mut FlowKey, seq: &mut u32) -> u32 {
    // `data` starts at the TCP header: ports in its first word, flags at byte 13. The bounds
    // check against data_end is what lets the verifier accept the reads.
    let data = ctx.data();
    if data + 14 > ctx.data_end() {
        return SEGMENT_INVALID;
    }
    let flags = unsafe { *((data + 13) as *const u8) };
    key.ports = unsafe { *(data as *const u32) };
    *seq = unsafe { *((data + 4) as *const u32) };
    if flags & TCP_FLAG_SYN != 0 && flags & TCP_FLAGS_NOT_OPENING == 0 {
        SEGMENT_SYN
    } else {
        SEGMENT_OTHER
    }
}

/// The `bpf_loop` body: offers candidate `i` of the scan; 1 ends the loop.
#[inline(never)]
extern "C" fn consider(i: u64, scan: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer to the scan on the caller's stack.
    offer(unsafe { &mut *(scan as *mut policy::Scan) }, i as u32) as i64
}

/// Offers candidate `i` of the scan to the policy if its slot is up; true when the scan is over.
#[inline(always)]
fn offer(scan: &mut policy::Scan, i: u32) -> bool {
    let slot = scan.slot(i);
    let Some(s) = SLOTS.get_ptr(slot) else {
        return false;
    };
    // Volatile: other CPUs and user space change these under us; the compiler must not cache
    // them.
    unsafe {
        if read_volatile(&(*s).state) == SlotState::Up as u32 {
            let load = load(read_volatile(&(*s).assigned), read_volatile(&(*s).closed));
            return scan.offer(slot, load, read_volatile(&(*s).weight));
        }
    }
    false
}

/// The slot the policy in force picks for a new connection (or datagram) from `remote`
/// (read only by the sticky policy).
#[inline(always)]
fn choose(config: &Config, remote: &[u32; 4]) -> Option<u32> {
    let slots = config.slots;
    let policy = config.policy;
    // Policies that name one slot directly; if it is not up, least-loaded chooses instead.
    let direct = if policy == Policy::RoundRobin as u32 {
        TICKETS.get_ptr_mut(0).and_then(|t| unsafe {
            // Per CPU: no other CPU touches this ticket.
            *t += 1;
            policy::round_robin(*t, slots)
        })
    } else if policy == Policy::Sticky as u32 {
        STICKY
            .get(policy::sticky_index(*remote))
            .map(|&slot| slot as u32)
    } else {
        None
    };
    match direct.filter(|&slot| is_up(slot)) {
        Some(slot) => Some(slot),
        None => least_loaded({
            let seed = random();
            if policy == Policy::P2c as u32 {
                policy::Scan::pair(slots, seed)
            } else if policy == Policy::Weighted as u32 {
                policy::Scan::weighted(slots, seed)
            } else {
                policy::Scan::first_idle(slots, seed)
            }
        }),
    }
}

// The helpers of a new connection's path are inlined: a BPF-to-BPF call returns one register,
// and a value that LLVM splits over two (an `Option` of a pair) fails verification in the
// caller ("!read_ok"). The rare paths (a move off a closing listener, a recorded connection, a
// failed selection, the log) are calls instead: out of line, they keep the common path's
// machine code short, which the CPU, running it once per connection amid the whole TCP stack,
// mostly fetches from outside its nearest caches.
//
// `migrate`: the kernel also runs the program when a listener closes with connections still
// queued (BPF_SK_REUSEPORT_SELECT_OR_MIGRATE), so that they move to a live slot instead of
// being reset.
#[sk_reuseport(migrate)]
pub fn balancer(ctx: SkReuseportContext) -> u32 {
    if let Some(migrating) = ctx.migrating_sk() {
        return migrate(&ctx, &migrating);
    }
    let Some(config) = CONFIG.get(0) else {
        count(stats::FALLBACK_MAP_ERROR);
        return SK_PASS;
    };
    let mut blank = core::mem::MaybeUninit::uninit();
    let key = blank_key(&mut blank);
    let mut seq = 0u32;
    if config.policy == Policy::Hash as u32 && config.stopping == 0 {
        // A health probe goes to the slot it checks, whatever the policy.
        if config.probing != 0
            && ctx.ip_protocol() == IPPROTO_TCP
            && tcp_segment(&ctx, key, &mut seq) == SEGMENT_SYN
            && addresses(&ctx, key)
            && probe(&ctx, key)
        {
            return SK_PASS;
        }
        // The kernel's own choice, by request, at the fixed cost of running a program: nothing
        // is followed or counted (a SYN-cookie ACK validates on any listener of the group),
        // and the reconciliation counts what the hash placed.
        count(stats::HASH);
        return SK_PASS;
    }
    let tcp = ctx.ip_protocol() == IPPROTO_TCP;
    // Whether this segment is checked against `FLOWS`: while records may exist, or a health
    // probe (recorded before it connects) may be on its way.
    let mut lookup = false;
    if tcp {
        let segment = tcp_segment(&ctx, key, &mut seq);
        if segment == SEGMENT_INVALID {
            count(stats::FALLBACK_MAP_ERROR);
            return SK_PASS;
        }
        lookup = config.probing != 0 || recording_now();
        if lookup && !addresses(&ctx, key) {
            count(stats::FALLBACK_MAP_ERROR);
            return SK_PASS;
        }
        if segment != SEGMENT_SYN {
            if lookup {
                return follow(&ctx, key);
            }
            count(stats::NOT_A_SYN);
            return SK_PASS;
        }
    }
    // Sticky needs the client's address; a datagram is steered one by one, nothing to follow
    // or count.
    if config.policy == Policy::Sticky as u32 && !lookup && !addresses(&ctx, key) {
        count(stats::FALLBACK_MAP_ERROR);
        return SK_PASS;
    }

    if config.stopping != 0 {
        // Refused now (RST) rather than accepted into a queue no worker will empty.
        count(stats::REFUSED);
        return SK_DROP;
    }
    // No worker in rotation (all stalled, or unhealthy): the shared queue, if it has room,
    // is where a connection waits for the first of them to come back. The kernel's hash could
    // pick the full overflow listener, and pick it again for every retransmission.
    let chosen = choose(config, &key.remote).or_else(|| {
        (tcp && config.policy == Policy::LeastLoaded as u32
            && config.overflow != 0
            && load_of(OVERFLOW) < config.overflow as u64)
            .then_some(OVERFLOW)
    });
    let Some(mut index) = chosen else {
        // No slot in rotation: a health probe still reaches the slot it checks, and a SYN
        // retransmitted after a full queue dropped it still goes to the slot that counted it.
        // Left to the kernel's hash, it would be counted nowhere and could land in the full
        // overflow queue again, and again at every retransmission.
        if lookup && retransmitted(&ctx, key, seq) {
            return SK_PASS;
        }
        count(stats::FALLBACK_NO_SLOT);
        return SK_PASS;
    };
    let mut load = if tcp { load_of(index) } else { 0 };
    // No slot idle (the least loaded holds work): rather than queue behind some worker's
    // current request, wait in the queue that every worker takes from when it frees up, while
    // it has room. A full one would drop the SYN, and every retransmission of a burst would
    // come back to it, while the workers' own queues, which they empty at once, stood empty.
    if config.overflow != 0 && load > 0 && config.policy == Policy::LeastLoaded as u32 {
        let waiting = load_of(OVERFLOW);
        if waiting < config.overflow as u64 {
            index = OVERFLOW;
            load = waiting;
            count(stats::OVERFLOWED);
        }
    }
    // A SYN is recorded when the kernel may drop it (the slot is crowded), and checked against
    // the records while they may exist: BPF_NOEXIST tells a new connection from a recorded one
    // in one map operation instead of a lookup and then an insert.
    let flow = Flow {
        slot: index,
        seq,
        kind: FLOW_SYN,
    };
    let crowded = tcp && load >= config.crowded as u64;
    if crowded && !lookup && !addresses(&ctx, key) {
        count(stats::FALLBACK_MAP_ERROR);
        return SK_PASS;
    }
    let recorded = (crowded || lookup) && FLOWS.insert(*key, flow, BPF_NOEXIST as u64).is_ok();
    if (crowded || lookup) && !recorded {
        return recorded_syn(&ctx, key, flow);
    }
    if crowded {
        start_recording();
    }
    if let Err(err) = SOCKETS.select_reuseport(&ctx, index) {
        no_socket(&ctx, index, err);
        if recorded {
            let _ = FLOWS.remove(*key);
        }
        count(stats::FALLBACK_SELECT_FAILED);
        return SK_PASS;
    }
    if tcp {
        add(index, false);
    }
    count(stats::SELECTED);
    SK_PASS
}

/// The supervisor marks a slot up only after its socket is in SOCKETS, so a failed selection is
/// rare enough to log.
#[inline(never)]
fn no_socket(ctx: &SkReuseportContext, index: u32, err: i64) {
    warn!(
        ctx,
        "slot {} has no usable socket ({}): kernel hash used", index, err
    );
}

/// A segment other than a SYN: if it belongs to a recorded connection (the handshake's last
/// ACK under SYN cookies), it goes to that connection's slot, which issued the cookie; anything
/// else (stray ACK, FIN, RST) passes to the kernel. Nothing is counted either way.
#[inline(never)]
fn follow(ctx: &SkReuseportContext, key: &FlowKey) -> u32 {
    match unsafe { FLOWS.get(key) } {
        Some(f) if SOCKETS.select_reuseport(ctx, f.slot).is_ok() => count(stats::FOLLOWED),
        Some(_) => count(stats::FALLBACK_SELECT_FAILED),
        None => count(stats::NOT_A_SYN),
    }
    SK_PASS
}

/// A health probe's SYN: the supervisor recorded its connection (and counted it) before
/// connecting. Sends it to that slot; false if it is none.
#[inline(never)]
fn probe(ctx: &SkReuseportContext, key: &FlowKey) -> bool {
    match unsafe { FLOWS.get(key) } {
        Some(f) if f.kind == FLOW_PROBE && SOCKETS.select_reuseport(ctx, f.slot).is_ok() => {
            count(stats::FOLLOWED);
            true
        }
        _ => false,
    }
}

/// A SYN already recorded and counted: a health probe's, or a retransmission of one (same
/// sequence number). Sends it to its recorded slot; false if it is neither.
#[inline(never)]
fn retransmitted(ctx: &SkReuseportContext, key: &FlowKey, seq: u32) -> bool {
    match unsafe { FLOWS.get(key) } {
        Some(f)
            if (f.kind == FLOW_PROBE || f.seq == seq)
                && SOCKETS.select_reuseport(ctx, f.slot).is_ok() =>
        {
            count(stats::FOLLOWED);
            true
        }
        _ => false,
    }
}

/// A SYN whose 4-tuple is recorded already. With the recorded sequence number (or on a health
/// probe's record) it is the same connection's SYN again, retransmitted after a full queue
/// dropped the first: it goes to the slot already chosen with no new count, or, if that slot
/// has no listener any more, to the new choice, and the count moves with it. With another
/// sequence number it is a new connection on the 4-tuple of one that ended unseen (a handshake
/// the kernel dropped, which no state change reports): the stale record is replaced and the
/// connection counted on the new choice; the reconciliation keeps the books of the old one.
#[inline(never)]
fn recorded_syn(ctx: &SkReuseportContext, key: &FlowKey, new: Flow) -> u32 {
    let Some(old) = (unsafe { FLOWS.get(key) }).copied() else {
        count(stats::FALLBACK_MAP_ERROR);
        return SK_PASS;
    };
    let same = old.kind == FLOW_PROBE || old.seq == new.seq;
    // A retransmission of a SYN that the overflow queue dropped goes where a new connection
    // would now: to a worker that is idle, or whose own queue it may wait in when the shared
    // one is still full. Its count moves with it.
    let leaves_overflow = old.slot == OVERFLOW && new.slot != OVERFLOW;
    if same && !leaves_overflow && SOCKETS.select_reuseport(ctx, old.slot).is_ok() {
        count(stats::FOLLOWED);
        return SK_PASS;
    }
    let moved = Flow {
        kind: old.kind,
        ..new
    };
    if SOCKETS.select_reuseport(ctx, new.slot).is_err() || FLOWS.insert(key, moved, 0).is_err() {
        count(stats::FALLBACK_SELECT_FAILED);
        return SK_PASS;
    }
    start_recording();
    if same {
        add(old.slot, true);
        count(stats::SELECTED);
    } else {
        count(stats::STALE_FLOW);
    }
    add(new.slot, false);
    SK_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
