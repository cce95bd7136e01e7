//! Following recorded connections in `FLOWS`: the window in which records are honoured
//! (`RECORDING_UNTIL` in `COUNTERS`), and the segments that go where a record says instead of
//! where the policy would send them: a health probe's SYN, a SYN retransmitted after a full
//! accept queue dropped the first, the last ACK of a SYN-cookie handshake. None of them is
//! counted again; a recorded SYN whose slot lost its listener moves, with its count, to the
//! new choice.

use core::ptr::read_volatile;

use aya_ebpf::{helpers::bpf_ktime_get_coarse_ns, programs::SkReuseportContext};
use balancer_common::{
    maps::{self, Flow, FlowKey, FLOW_PROBE, RECORDING_UNTIL, RECORDING_WINDOW_NS},
    stats, OVERFLOW,
};

use crate::{
    counting::{add, count, FailOpen},
    maps::{COUNTERS, FLOWS, SOCKETS},
};

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
pub(crate) fn recording_now() -> bool {
    recording(|| unsafe { bpf_ktime_get_coarse_ns() })
}

/// Opens (or extends) the window in which `FLOWS` is honoured.
#[inline(always)]
pub(crate) fn start_recording() {
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

/// A segment other than a SYN: if it belongs to a recorded connection (the handshake's last
/// ACK under SYN cookies), it goes to that connection's slot, which issued the cookie; anything
/// else (stray ACK, FIN, RST) passes to the kernel. Nothing is counted on a slot either way.
#[inline(never)]
pub(crate) fn follow(ctx: &SkReuseportContext, key: &FlowKey) -> Result<(), FailOpen> {
    match unsafe { FLOWS.get(key) } {
        Some(f) if SOCKETS.select_reuseport(ctx, f.slot).is_ok() => {
            count(stats::FOLLOWED);
            Ok(())
        }
        Some(_) => Err(FailOpen::SelectFailed),
        None => Err(FailOpen::NotASyn),
    }
}

/// A health probe's SYN: the supervisor recorded its connection (and counted it) before
/// connecting. Sends it to that slot; false if it is none.
#[inline(never)]
pub(crate) fn probe(ctx: &SkReuseportContext, key: &FlowKey) -> bool {
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
pub(crate) fn retransmitted(ctx: &SkReuseportContext, key: &FlowKey, seq: u32) -> bool {
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
pub(crate) fn recorded_syn(
    ctx: &SkReuseportContext,
    key: &FlowKey,
    new: Flow,
) -> Result<(), FailOpen> {
    let old = (unsafe { FLOWS.get(key) })
        .copied()
        .ok_or(FailOpen::MapError)?;
    let same = old.kind == FLOW_PROBE || old.seq == new.seq;
    // A retransmission of a SYN that the overflow queue dropped goes where a new connection
    // would now: to a worker that is idle, or whose own queue it may wait in when the shared
    // one is still full. Its count moves with it.
    let leaves_overflow = old.slot == OVERFLOW && new.slot != OVERFLOW;
    if same && !leaves_overflow && SOCKETS.select_reuseport(ctx, old.slot).is_ok() {
        count(stats::FOLLOWED);
        return Ok(());
    }
    let moved = Flow {
        kind: old.kind,
        ..new
    };
    if SOCKETS.select_reuseport(ctx, new.slot).is_err() || FLOWS.insert(key, moved, 0).is_err() {
        return Err(FailOpen::SelectFailed);
    }
    start_recording();
    if same {
        add(old.slot, true);
        count(stats::SELECTED);
    } else {
        count(stats::STALE_FLOW);
    }
    add(new.slot, false);
    Ok(())
}
