//! A segment's path through the program, from the configuration to the selection: the `hash`
//! policy's early answer, the segment's kind (a pure SYN opens a connection; anything else is
//! followed or left to the kernel), the refusal while the supervisor stops, the policy's choice
//! or the overflow listener, and the record a SYN to a crowded slot leaves in `FLOWS`. A SYN
//! the program selects a slot for is counted on that slot (`assigned`) before it returns.
//!
//! The helpers of a new connection's path are inlined: a BPF-to-BPF call returns one register,
//! and a value that LLVM splits over two (an `Option` of a pair) fails verification in the
//! caller ("!read_ok"). The rare paths (a move off a closing listener, a recorded connection, a
//! failed selection, the log) are calls instead: out of line, they keep the common path's
//! machine code short, which the CPU, running it once per connection amid the whole TCP stack,
//! mostly fetches from outside its nearest caches. They answer `Result<(), FailOpen>`, which
//! fits one register.

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::{
        sk_action::{SK_DROP, SK_PASS},
        BPF_NOEXIST,
    },
    programs::SkReuseportContext,
};
use aya_log_ebpf::warn;
use balancer_common::{
    maps::{Flow, FlowKey, FLOW_SYN},
    stats, Config, Policy, OVERFLOW,
};

use crate::{
    counting::{add, count, FailOpen},
    flows::{follow, probe, recorded_syn, recording_now, retransmitted, start_recording},
    maps::{CONFIG, FLOWS, SOCKETS},
    migrate::migrate,
    packet::{addresses, blank_key, tcp_segment, Segment, IPPROTO_TCP},
    select::{choose, load_of},
};

/// The program's answer for the segment (or queued connection) of `ctx`: `SK_PASS`, after a
/// selection or for a segment deliberately left to the kernel and counted as such; `SK_DROP`
/// while the supervisor stops. An error tells why it fails open instead.
#[inline(always)]
pub(crate) fn try_balancer(ctx: &SkReuseportContext) -> Result<u32, FailOpen> {
    // The configuration is read on each side of this branch, not once before it: read before,
    // it makes the verifier walk about 94,000 instructions instead of 66,000.
    if let Some(migrating) = ctx.migrating_sk() {
        let (config, policy) = configuration()?;
        return migrate(ctx, &migrating, config, policy).map(|()| SK_PASS);
    }
    let (config, policy) = configuration()?;
    let mut blank = MaybeUninit::uninit();
    let key = blank_key(&mut blank);
    let mut seq = 0u32;
    if policy == Policy::Hash && config.stopping == 0 {
        return hashed(ctx, config, key, &mut seq);
    }
    let tcp = ctx.ip_protocol() == IPPROTO_TCP;
    // Whether this segment is checked against `FLOWS`: while records may exist, or a health
    // probe (recorded before it connects) may be on its way.
    let mut lookup = false;
    if tcp {
        let segment = tcp_segment(ctx, key, &mut seq);
        if segment == Segment::Invalid {
            return Err(FailOpen::MapError);
        }
        lookup = config.probing != 0 || recording_now();
        if lookup && !addresses(ctx, key) {
            return Err(FailOpen::MapError);
        }
        if segment != Segment::Syn {
            if lookup {
                return follow(ctx, key).map(|()| SK_PASS);
            }
            return Err(FailOpen::NotASyn);
        }
    }
    // Sticky needs the client's address; a datagram is steered one by one, nothing to follow
    // or count.
    if policy.reads_address() && !lookup && !addresses(ctx, key) {
        return Err(FailOpen::MapError);
    }
    if config.stopping != 0 {
        // Refused now (RST) rather than accepted into a queue no worker will empty.
        count(stats::REFUSED);
        return Ok(SK_DROP);
    }
    let Some(index) = chosen(config, policy, &key.remote, tcp) else {
        // No slot in rotation: a health probe still reaches the slot it checks, and a SYN
        // retransmitted after a full queue dropped it still goes to the slot that counted it.
        // Left to the kernel's hash, it would be counted nowhere and could land in the full
        // overflow queue again, and again at every retransmission.
        if lookup && retransmitted(ctx, key, seq) {
            return Ok(SK_PASS);
        }
        return Err(FailOpen::NoSlot);
    };
    let (index, load) = overflowed(config, policy, index, tcp);
    let flow = Flow {
        slot: index,
        seq,
        kind: FLOW_SYN,
    };
    let crowded = tcp && load >= config.crowded as u64;
    place(ctx, key, flow, tcp, crowded, lookup)
}

/// `CONFIG` and the policy it names, decoded once: the program matches a [`Policy`], not its
/// number, so that a new policy must be placed in every match. A value no policy has cannot
/// come from the supervisor; it reads as a configuration that cannot be read.
#[inline(always)]
fn configuration() -> Result<(&'static Config, Policy), FailOpen> {
    let config = CONFIG.get(0).ok_or(FailOpen::MapError)?;
    let policy = Policy::from_u32(config.policy).ok_or(FailOpen::MapError)?;
    Ok((config, policy))
}

/// The `hash` policy: the kernel's own choice, by request, at the fixed cost of running a
/// program. Only a health probe is steered, to the slot it checks.
#[inline(always)]
fn hashed(
    ctx: &SkReuseportContext,
    config: &Config,
    key: &mut FlowKey,
    seq: &mut u32,
) -> Result<u32, FailOpen> {
    // A health probe goes to the slot it checks, whatever the policy.
    if config.probing != 0
        && ctx.ip_protocol() == IPPROTO_TCP
        && tcp_segment(ctx, key, seq) == Segment::Syn
        && addresses(ctx, key)
        && probe(ctx, key)
    {
        return Ok(SK_PASS);
    }
    // Nothing is followed or counted (a SYN-cookie ACK validates on any listener of the group),
    // and the reconciliation counts what the hash placed.
    Err(FailOpen::HashPolicy)
}

/// The slot `policy` chooses for a connection from `remote`, else, with no worker in rotation
/// (all stalled, or unhealthy), the overflow listener (least-loaded only) while its queue has
/// room: it is where a
/// connection waits for the first of them to come back. The kernel's hash could pick the full
/// overflow listener, and pick it again for every retransmission.
#[inline(always)]
fn chosen(config: &Config, policy: Policy, remote: &[u32; 4], tcp: bool) -> Option<u32> {
    choose(config, policy, remote).or_else(|| {
        (tcp && policy.overflows()
            && config.overflow != 0
            && load_of(OVERFLOW) < config.overflow as u64)
            .then_some(OVERFLOW)
    })
}

/// `index` and its load (0 for a datagram), or, under least-loaded, the overflow listener and
/// its load when `index` holds work. Rather than queue behind some worker's current request, a connection waits in
/// the queue that every worker takes from when it frees up, while it has room. A full one
/// would drop the SYN, and every retransmission of a burst would come back to it, while the
/// workers' own queues, which they empty at once, stood empty.
#[inline(always)]
fn overflowed(config: &Config, policy: Policy, index: u32, tcp: bool) -> (u32, u64) {
    let load = if tcp { load_of(index) } else { 0 };
    if config.overflow != 0 && load > 0 && policy.overflows() {
        let waiting = load_of(OVERFLOW);
        if waiting < config.overflow as u64 {
            count(stats::OVERFLOWED);
            return (OVERFLOW, waiting);
        }
    }
    (index, load)
}

/// Sends the SYN (or datagram) to `flow.slot` and counts it there. A SYN is recorded when the
/// kernel may drop it (`crowded`: the slot's queue may be full), and checked against the
/// records while they may exist (`lookup`): BPF_NOEXIST tells a new connection from a recorded
/// one in one map operation instead of a lookup and then an insert.
#[inline(always)]
fn place(
    ctx: &SkReuseportContext,
    key: &mut FlowKey,
    flow: Flow,
    tcp: bool,
    crowded: bool,
    lookup: bool,
) -> Result<u32, FailOpen> {
    if crowded && !lookup && !addresses(ctx, key) {
        return Err(FailOpen::MapError);
    }
    let recorded = (crowded || lookup) && FLOWS.insert(*key, flow, BPF_NOEXIST as u64).is_ok();
    if (crowded || lookup) && !recorded {
        return recorded_syn(ctx, key, flow).map(|()| SK_PASS);
    }
    if crowded {
        start_recording();
    }
    if let Err(err) = SOCKETS.select_reuseport(ctx, flow.slot) {
        no_socket(ctx, flow.slot, err);
        if recorded {
            let _ = FLOWS.remove(*key);
        }
        return Err(FailOpen::SelectFailed);
    }
    if tcp {
        add(flow.slot, false);
    }
    count(stats::SELECTED);
    Ok(SK_PASS)
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
