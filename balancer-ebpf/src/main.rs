//! The `SK_REUSEPORT` program: the kernel runs it for each new connection (each SYN that finds
//! no existing socket) arriving on the balancer's port, and it names the listener, that is the
//! worker slot, that gets the connection.
//!
//! It reads the per-slot state and counters, lets the policy choose, counts the assignment on the
//! chosen slot before returning (so the next connection, on any CPU, already sees it), and hands
//! the choice to `bpf_sk_select_reuseport`. It fails open: whenever it cannot choose it returns
//! `SK_PASS` with no selection and the kernel's own hash picks a listener.
#![no_std]
#![no_main]
// The BPF target has no compare-and-swap, so `AtomicU64::fetch_add` does not exist there; the
// intrinsic lowers to the BPF atomic add instruction.
#![feature(core_intrinsics)]
#![allow(internal_features)]

use core::intrinsics::{atomic_xadd, AtomicOrdering};
use core::ptr::read_volatile;

use aya_ebpf::{
    bindings::{sk_action::SK_PASS, BPF_F_MMAPABLE},
    cty::c_void,
    helpers::{bpf_get_prandom_u32, bpf_loop},
    macros::{map, sk_reuseport},
    maps::{Array, PerCpuArray, ReusePortSockArray},
    programs::SkReuseportContext,
};
use aya_log_ebpf::warn;
use balancer_common::{
    maps::load, policy, stats, Config, Policy, Report, Slot, SlotState, MAX_SLOTS,
};

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

#[inline(always)]
fn count(index: u32) {
    // Per-CPU: no other CPU writes this value, so a plain add is race-free.
    if let Some(c) = STATS.get_ptr_mut(index) {
        unsafe { *c += 1 };
    }
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
            scan.offer(
                slot,
                load(read_volatile(&(*s).assigned), read_volatile(&(*r).closed)),
            );
        }
    }
    0 // continue the loop
}

#[sk_reuseport]
pub fn balancer(ctx: SkReuseportContext) -> u32 {
    let Some(config) = CONFIG.get(0) else {
        count(stats::FALLBACK_MAP_ERROR);
        return SK_PASS;
    };
    if config.policy == Policy::Hash as u32 {
        count(stats::HASH);
        return SK_PASS;
    }

    let mut scan = policy::Scan::new(config.slots, policy::seed(unsafe { bpf_get_prandom_u32() }));
    // bpf_loop, not a Rust loop: the verifier checks `consider` once, whatever the number of
    // slots, where an unrolled or bounded loop would be walked (and its branches multiplied)
    // once per iteration.
    unsafe {
        bpf_loop(
            scan.count(),
            consider as *mut c_void,
            (&raw mut scan).cast(),
            0,
        );
    }
    let chosen = scan.best();
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
