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

use aya_ebpf::{
    bindings::{
        sk_action::{SK_DROP, SK_PASS},
        BPF_NOEXIST,
    },
    macros::sk_reuseport,
    programs::SkReuseportContext,
};
use aya_log_ebpf::warn;
use balancer_common::{
    maps::{Flow, FLOW_SYN},
    stats, Policy, OVERFLOW,
};

use crate::{
    counting::{add, count},
    flows::{follow, probe, recorded_syn, recording_now, retransmitted, start_recording},
    maps::{CONFIG, FLOWS, SOCKETS},
    migrate::migrate,
    packet::{addresses, blank_key, tcp_segment, IPPROTO_TCP, SEGMENT_INVALID, SEGMENT_SYN},
    select::{choose, load_of},
};

mod closes;
mod counting;
mod flows;
mod maps;
mod migrate;
mod packet;
mod select;
mod takes;

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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
