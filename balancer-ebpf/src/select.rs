//! Selection: the slot the policy in force picks for a new connection, from the slots' states
//! and loads in `SLOTS`. The policies' arithmetic is `balancer_common::policy` (unit-tested on
//! the host); this file feeds it the maps: the per-CPU round-robin ticket and random state, the
//! sticky table, and each candidate slot's state, weight and load, read as the supervisor and
//! other CPUs change them.

use core::ptr::read_volatile;

use aya_ebpf::{cty::c_void, helpers::bpf_loop};
use balancer_common::{maps::load, policy, Config, Policy, SlotState};

use crate::maps::{RANDOM, SLOTS, STICKY, TICKETS};

/// Candidates offered in line, before `bpf_loop` takes the rest.
const IN_LINE: u32 = 2;

/// The slot `policy` picks for a new connection (or datagram) from `remote` (read only by the
/// sticky policy) among the `config.slots` slots.
#[inline(always)]
pub(crate) fn choose(config: &Config, policy: Policy, remote: &[u32; 4]) -> Option<u32> {
    let slots = config.slots;
    // Policies that name one slot directly; if it is not up, least-loaded chooses instead.
    match direct(policy, slots, remote).filter(|&slot| selectable(slot)) {
        Some(slot) => Some(slot),
        None => least_loaded(scan(policy, slots, random())),
    }
}

/// The slot a policy that names one directly names: round-robin's next in turn, sticky's for
/// the client; `None` under the others, which scan.
#[inline(always)]
fn direct(policy: Policy, slots: u32, remote: &[u32; 4]) -> Option<u32> {
    match policy {
        Policy::RoundRobin => TICKETS.get_ptr_mut(0).and_then(|t| unsafe {
            // Per CPU: no other CPU touches this ticket.
            *t += 1;
            policy::round_robin(*t, slots)
        }),
        Policy::Sticky => STICKY
            .get(policy::sticky_index(*remote))
            .map(|&slot| slot as u32),
        Policy::LeastLoaded | Policy::Hash | Policy::P2c | Policy::Weighted => None,
    }
}

/// The least-loaded scan of `policy` with random `seed`: two random slots under p2c, load
/// relative to weight under weighted, else the first idle slot from a random start (also where
/// round-robin's or sticky's own slot is not up).
#[inline(always)]
fn scan(policy: Policy, slots: u32, seed: u64) -> policy::Scan {
    match policy {
        Policy::P2c => policy::Scan::pair(slots, seed),
        Policy::Weighted => policy::Scan::weighted(slots, seed),
        Policy::LeastLoaded | Policy::Hash | Policy::RoundRobin | Policy::Sticky => {
            policy::Scan::first_idle(slots, seed)
        }
    }
}

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
pub(crate) fn looped(mut scan: policy::Scan) -> Option<u32> {
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

/// The `bpf_loop` body: offers candidate `i` of the scan; 1 ends the loop.
#[inline(never)]
extern "C" fn consider(i: u64, scan: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer to the scan on the caller's stack.
    offer(unsafe { &mut *(scan as *mut policy::Scan) }, i as u32) as i64
}

/// Offers candidate `i` of the scan to the policy if its slot is selectable (up); true when the
/// scan is over.
#[inline(always)]
fn offer(scan: &mut policy::Scan, i: u32) -> bool {
    let slot = scan.slot(i);
    let Some(s) = SLOTS.get_ptr(slot) else {
        return false;
    };
    // Volatile: other CPUs and user space change these under us; the compiler must not cache
    // them.
    unsafe {
        if SlotState::from_u32(read_volatile(&(*s).state)).is_selectable() {
            let load = load(read_volatile(&(*s).assigned), read_volatile(&(*s).closed));
            return scan.offer(slot, load, read_volatile(&(*s).weight));
        }
    }
    false
}

/// Whether the program may send a new connection to `slot` (it is up).
#[inline(always)]
fn selectable(slot: u32) -> bool {
    SLOTS
        .get_ptr(slot)
        .is_some_and(|s| SlotState::from_u32(unsafe { read_volatile(&(*s).state) }).is_selectable())
}

/// A slot's load (0 for an index out of range).
#[inline(always)]
pub(crate) fn load_of(slot: u32) -> u64 {
    SLOTS.get_ptr(slot).map_or(0, |s| unsafe {
        load(read_volatile(&(*s).assigned), read_volatile(&(*s).closed))
    })
}

/// The next draw of this CPU's random generator.
#[inline(always)]
pub(crate) fn random() -> u64 {
    RANDOM
        .get_ptr_mut(0)
        .map_or(0, |state| policy::next_random(unsafe { &mut *state }))
}
