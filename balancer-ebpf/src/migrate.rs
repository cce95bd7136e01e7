//! The migrate path: the kernel also runs the program when a listener of the group closes with
//! connections still queued (attach type `BPF_SK_REUSEPORT_SELECT_OR_MIGRATE`), once per
//! queued connection, so that they move to a live slot instead of being reset.

use aya_ebpf::{
    helpers::bpf_get_socket_cookie,
    programs::{SkReuseportContext, SockContext},
};
use balancer_common::{maps::Flow, policy, stats, Config, Policy};

use crate::{
    closes,
    counting::{add, count, FailOpen},
    flows::start_recording,
    maps::{FLOWS, LISTENERS, SOCKETS},
    select::{looped, random},
};

/// A socket's `state` when the handshake is over (the kernel's `TCP_ESTABLISHED`).
const TCP_ESTABLISHED: u32 = 1;

/// A queued connection (established, or still in its handshake) of a closing listener: send it
/// to the least-loaded live slot and move its count there; if nothing is live, let the kernel's
/// hash choose among the remaining listeners.
///
/// The count comes off the closing listener's slot (`LISTENERS`, by the listener's cookie) or
/// the slot a record names. An established connection keeps its old listener's slot in
/// `OWNERS`, so its move is recorded in `FLOWS` for the close tracker; a handshake in progress
/// needs no record: its socket will be created by the new listener and inherit its slot.
#[inline(never)]
pub(crate) fn migrate(
    ctx: &SkReuseportContext,
    migrating: &SockContext,
    config: &Config,
    policy: Policy,
) -> Result<(), FailOpen> {
    // Looped only: in-line candidates here lead LLVM to code the verifier rejects ("!read_ok"),
    // and this rare path has no need of them.
    let index = looped(policy::Scan::new(config.slots, random())).ok_or(FailOpen::NoSlot)?;
    if SOCKETS.select_reuseport(ctx, index).is_err() {
        return Err(FailOpen::SelectFailed);
    }
    count(stats::MIGRATED);
    if !policy.counts() {
        // Nothing was counted for it.
        return Ok(());
    }
    let key = closes::flow_of(migrating.sock);
    let previous = unsafe { FLOWS.get(key) }.copied();
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sk().sock.cast()) };
    let from = match previous {
        Some(p) => Some(p.slot),
        None => unsafe { LISTENERS.get(cookie) }.copied(),
    };
    if from == Some(index) {
        return Ok(());
    }
    let established = unsafe { (*migrating.sock).state } == TCP_ESTABLISHED;
    if established || previous.is_some() {
        let moved = Flow {
            slot: index,
            ..previous.unwrap_or_default()
        };
        if FLOWS.insert(key, moved, 0).is_err() {
            return Ok(());
        }
        start_recording();
    }
    add(index, false);
    if let Some(old) = from {
        add(old, true);
    }
    Ok(())
}
