//! The `SK_REUSEPORT` program: the kernel runs it for each new connection (each SYN that finds
//! no existing socket) arriving on the balancer's port, and it names the listener, that is the
//! worker slot, that gets the connection.
//!
//! It reads the per-slot state and counters, lets the policy choose, counts the assignment on the
//! chosen slot before returning (so the next connection, on any CPU, already sees it), and hands
//! the choice to `bpf_sk_select_reuseport`. It fails open: whenever it cannot choose it returns
//! `SK_PASS` with no selection and the kernel's own hash picks a listener. The one exception is
//! a stopping supervisor, for which it refuses new connections (`SK_DROP`: the client gets a
//! reset at once instead of a place in a queue no worker will empty).
//!
//! The same program also runs when a listener of the group closes with connections queued
//! (attach type `SELECT_OR_MIGRATE`): it then moves each of them to a live slot. The close
//! tracker for workers that report nothing is in `closes.rs`.
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
        BPF_F_MMAPABLE,
    },
    cty::c_void,
    helpers::{bpf_get_prandom_u32, bpf_loop, bpf_skb_load_bytes_relative},
    macros::{map, sk_reuseport},
    maps::{Array, LruHashMap, PerCpuArray, ReusePortSockArray},
    programs::SkReuseportContext,
};
use aya_log_ebpf::warn;
use balancer_common::{
    maps::{load, FlowKey, ROUND_ROBIN_TICKET, TRACK_KERNEL},
    policy, stats, Config, Policy, Report, Slot, SlotState, MAX_SLOTS,
};

mod closes;

/// Slot index -> the slot's listening socket. Filled by the supervisor.
#[map]
static SOCKETS: ReusePortSockArray = ReusePortSockArray::with_max_entries(MAX_SLOTS, 0);

/// Slot index -> state, weight, connections assigned. Mmap-able so that the supervisor reads
/// and writes it without a system call.
#[map]
static SLOTS: Array<Slot> = Array::with_max_entries(MAX_SLOTS, BPF_F_MMAPABLE);

/// Slot index -> what the worker reports (connections closed). Mmap-ed by the workers.
#[map]
static REPORTS: Array<Report> = Array::with_max_entries(MAX_SLOTS, BPF_F_MMAPABLE);

#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stats::COUNT, 0);

/// Connection (client address and port) -> the slot the program sent it to, from selection
/// until the handshake completes. Only filled when the kernel tracks closes.
#[map]
static PENDING: LruHashMap<FlowKey, u32> = LruHashMap::with_max_entries(65_536, 0);

/// An established connection (by client address and port) -> its slot, until it closes.
#[map]
static OPEN: LruHashMap<FlowKey, u32> = LruHashMap::with_max_entries(262_144, 0);

/// Counters shared by all CPUs: the round-robin ticket.
#[map]
static COUNTERS: Array<u64> = Array::with_max_entries(1, 0);

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

/// A queued connection (established, or still in its handshake) of a closing listener: send it
/// to the least-loaded live slot, move its accounting there, and if nothing is live let the
/// kernel's hash choose among the remaining listeners.
fn migrate(ctx: &SkReuseportContext, migrating: &aya_ebpf::programs::SockContext) -> u32 {
    let Some(config) = CONFIG.get(0) else {
        count(stats::FALLBACK_MAP_ERROR);
        return SK_PASS;
    };
    let mut scan = policy::Scan::new(config.slots, policy::seed(unsafe { bpf_get_prandom_u32() }));
    unsafe {
        bpf_loop(
            scan.count(),
            consider as *mut c_void,
            (&raw mut scan).cast(),
            0,
        );
    }
    let Some(index) = scan.best() else {
        count(stats::FALLBACK_NO_SLOT);
        return SK_PASS;
    };
    if SOCKETS.select_reuseport(ctx, index).is_err() {
        count(stats::FALLBACK_SELECT_FAILED);
        return SK_PASS;
    }
    if let Some(slot) = SLOTS.get_ptr_mut(index) {
        unsafe {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*slot).assigned, 1)
        };
    }
    if config.tracking == TRACK_KERNEL {
        // The close tracker must count this connection's close on its new slot.
        let key = closes::peer_of(migrating.sock);
        if unsafe { PENDING.get(&key) }.is_some() {
            let _ = PENDING.insert(&key, &index, 0);
        }
        if unsafe { OPEN.get(&key) }.is_some() {
            let _ = OPEN.insert(&key, &index, 0);
        }
    }
    count(stats::MIGRATED);
    SK_PASS
}

fn is_up(slot: u32) -> bool {
    SLOTS
        .get_ptr(slot)
        .is_some_and(|s| unsafe { read_volatile(&(*s).state) } == SlotState::Up as u32)
}

/// The client's address from the packet's IP header, as four words (IPv4 in the first).
fn client_address(ctx: &SkReuseportContext) -> Option<[u32; 4]> {
    let mut address = [0u32; 4];
    // eth_protocol is in network byte order: htons(ETH_P_IP) is 0x0008 on this little-endian
    // target, htons(ETH_P_IPV6) 0xdd86.
    let (offset, len) = match ctx.eth_protocol() {
        0x0008 => (12, 4), // IPv4 source address
        0xdd86 => (8, 16), // IPv6 source address
        _ => return None,
    };
    let rc = unsafe {
        bpf_skb_load_bytes_relative(
            ctx.md as *const c_void,
            offset,
            (&raw mut address).cast(),
            len,
            BPF_HDR_START_NET,
        )
    };
    (rc == 0).then_some(address)
}

const IPPROTO_TCP: u32 = 6;

/// The connection this SYN opens, named as the close tracker will see it.
fn flow_key(ctx: &SkReuseportContext) -> Option<FlowKey> {
    let address = client_address(ctx)?;
    // `data` starts at the TCP header; its first two bytes are the source port. The bounds
    // check against data_end is what lets the verifier accept the read.
    let data = ctx.data();
    if data + 2 > ctx.data_end() {
        return None;
    }
    let port = unsafe { *(data as *const u16) } as u32;
    Some(FlowKey { address, port })
}

/// The `bpf_loop` body: offers candidate `i` of the scan to the policy if its slot is up.
#[inline(never)]
extern "C" fn consider(i: u64, scan: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer to the scan on the caller's stack.
    let scan = unsafe { &mut *(scan as *mut policy::Scan) };
    let slot = scan.slot(i as u32);
    let (Some(s), Some(r)) = (SLOTS.get_ptr(slot), REPORTS.get_ptr(slot)) else {
        return 0;
    };
    // Volatile: user space changes these under us; the compiler must not cache them.
    unsafe {
        if read_volatile(&(*s).state) == SlotState::Up as u32 {
            let load = load(read_volatile(&(*s).assigned), read_volatile(&(*r).closed));
            scan.offer(slot, load, read_volatile(&(*s).weight));
        }
    }
    0 // continue the loop
}

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
    if config.stopping != 0 {
        // Refused now (RST) rather than accepted into a queue no worker will empty.
        count(stats::REFUSED);
        return SK_DROP;
    }
    if config.policy == Policy::Hash as u32 {
        count(stats::HASH);
        return SK_PASS;
    }

    let seed = policy::seed(unsafe { bpf_get_prandom_u32() });
    let slots = config.slots;
    let policy = config.policy;
    // Policies that name one slot directly; if it is not up, least-loaded chooses instead.
    let direct = if policy == Policy::RoundRobin as u32 {
        COUNTERS.get_ptr_mut(ROUND_ROBIN_TICKET).and_then(|t| {
            // SeqCst, not Relaxed: LLVM lowers a relaxed add to the legacy BPF XADD, which
            // returns nothing, even when the old value is used; SeqCst gives atomic_fetch_add.
            let ticket = unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(t, 1) };
            policy::round_robin(ticket, slots)
        })
    } else if policy == Policy::Sticky as u32 {
        client_address(&ctx)
            .and_then(|address| STICKY.get(policy::sticky_index(address)))
            .map(|&slot| slot as u32)
    } else {
        None
    };
    let chosen = match direct.filter(|&slot| is_up(slot)) {
        Some(slot) => Some(slot),
        None => {
            let mut scan = if policy == Policy::P2c as u32 {
                policy::Scan::pair(slots, seed)
            } else if policy == Policy::Weighted as u32 {
                policy::Scan::weighted(slots, seed)
            } else {
                policy::Scan::new(slots, seed)
            };
            // bpf_loop, not a Rust loop: the verifier checks `consider` once, whatever the
            // number of slots, where a plain loop would be walked (and its branches
            // multiplied) once per iteration.
            unsafe {
                bpf_loop(
                    scan.count(),
                    consider as *mut c_void,
                    (&raw mut scan).cast(),
                    0,
                );
            }
            scan.best()
        }
    };
    let Some(index) = chosen else {
        count(stats::FALLBACK_NO_SLOT);
        return SK_PASS;
    };

    if let Err(err) = SOCKETS.select_reuseport(&ctx, index) {
        // The supervisor marks a slot up only after its socket is in SOCKETS, so this is rare
        // enough to log.
        warn!(
            &ctx,
            "slot {} has no usable socket ({}): kernel hash used", index, err
        );
        count(stats::FALLBACK_SELECT_FAILED);
        return SK_PASS;
    }
    if config.tracking == TRACK_KERNEL && ctx.ip_protocol() == IPPROTO_TCP {
        if let Some(key) = flow_key(&ctx) {
            // Best effort: if the table is full the LRU entry goes, and that connection's
            // close is not counted (see docs/architecture.md).
            let _ = PENDING.insert(&key, &index, 0);
        }
    }
    if let Some(slot) = SLOTS.get_ptr_mut(index) {
        unsafe {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*slot).assigned, 1)
        };
    }
    count(stats::SELECTED);
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
