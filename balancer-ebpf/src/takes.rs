//! The taker tracker: a BTF tracepoint program on `tcp_rcv_space_adjust`, which the kernel
//! fires in `recvmsg` each time a process reads from a TCP socket, in that process. It matters
//! only for connections sent to the overflow queue: such a connection was counted on the
//! overflow slot, and the worker that takes it must carry its load from then on, or the
//! program would see that worker idle while it serves it.
//!
//! The first read of a connection still marked as the overflow slot's (its `OWNERS` value,
//! inherited from the overflow listener) names the worker that took it: the reading process
//! (`WORKERS`, by thread group id, written by the supervisor). The tracker then moves the
//! connection's count from the overflow slot to the worker's and rewrites the connection's own
//! `OWNERS` value (and its `FLOWS` record, if it has one), so that its close is counted on the
//! worker's slot. A read by an unknown process leaves the count on the overflow slot, where the
//! close then takes it off.
//!
//! Not the accept itself: there is no tracepoint there, and an `fexit` on `inet_csk_accept`
//! needs the kernel's function tracer, which some hosts (hardened or virtualised) refuse. A
//! server reads the request right after it accepts, so the load moves microseconds later.

use aya_ebpf::{
    cty::c_void,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{btf_tracepoint, map},
    maps::HashMap,
    programs::BtfTracePointContext,
};
use balancer_common::{maps::OVERFLOW, MAX_SLOTS};

use crate::{
    closes,
    counting::add,
    flows::recording,
    maps::{CONFIG, FLOWS},
};

/// A worker process (thread group id) -> its slot. Written by the supervisor at each spawn and
/// exit; two entries per slot while a reload overlaps the old and the new worker.
#[map]
static WORKERS: HashMap<u32, u32> = HashMap::with_max_entries(4 * MAX_SLOTS, 0);

#[btf_tracepoint(function = "tcp_rcv_space_adjust")]
pub fn takes(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(struct sock *sk)
    taken(ctx.arg(0))
}

#[inline(always)]
fn taken(child: *mut c_void) -> i32 {
    let owner = closes::owner_of(child);
    if owner.is_null() || unsafe { (*owner).slot } != OVERFLOW {
        return 0;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(&slot) = (unsafe { WORKERS.get(tgid) }) else {
        return 0;
    };
    // The socket is locked in `recvmsg`, and the close tracker writes this value only under
    // the same lock.
    unsafe {
        (*owner).slot = slot;
        if (*owner).counted != 0 {
            add(slot, false);
            add(OVERFLOW, true);
        }
    }
    let Some(config) = CONFIG.get(0) else {
        return 0;
    };
    if recording(|| unsafe { bpf_ktime_get_ns() }) {
        if let Some(key) = closes::flow_of_socket(child as *const u8, config.port) {
            if let Some(f) = FLOWS.get_ptr_mut(key) {
                unsafe { (*f).slot = slot };
            }
        }
    }
    0
}
