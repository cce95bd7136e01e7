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

/// The slot the policy in force picks for a new connection (or datagram) from `remote`
/// (read only by the sticky policy).
#[inline(always)]
pub(crate) fn choose(config: &Config, remote: &[u32; 4]) -> Option<u32> {
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

#[inline(always)]
fn is_up(slot: u32) -> bool {
    SLOTS
        .get_ptr(slot)
        .is_some_and(|s| unsafe { read_volatile(&(*s).state) } == SlotState::Up as u32)
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
