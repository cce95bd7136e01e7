//! The close tracker: a `sock_ops` program, attached to the supervisor's cgroup, that the
//! kernel runs on TCP events of sockets in that cgroup, which includes the connections accepted
//! from the supervisor's listeners. It gives least-loaded a load for workers that report
//! nothing: when a connection is established it looks up the slot the steering program chose
//! for it (`PENDING`), remembers it (`OPEN`, by client address and port) and asks for
//! state-change callbacks; when the server side leaves ESTABLISHED (it closed, or the
//! connection was reset) it counts the connection closed for that slot, as a reporting worker
//! would.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    bindings::{
        bpf_sock, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG,
    },
    macros::sock_ops,
    programs::SockOpsContext,
};
use balancer_common::maps::{FlowKey, TRACK_KERNEL};

use crate::{CONFIG, OPEN, PENDING, REPORTS};

const AF_INET6: u32 = 10;
// TCP states, from include/net/tcp_states.h.
const TCP_FIN_WAIT1: u32 = 4;
const TCP_CLOSE: u32 = 7;
const TCP_LAST_ACK: u32 = 9;

#[sock_ops]
pub fn closes(ctx: SockOpsContext) -> u32 {
    let Some(config) = CONFIG.get(0) else {
        return 1;
    };
    if config.tracking != TRACK_KERNEL || ctx.local_port() != config.port {
        return 1;
    }
    let op = ctx.op();
    if op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB {
        let key = flow_key(&ctx);
        let Some(&slot) = (unsafe { PENDING.get(&key) }) else {
            return 1;
        };
        let _ = PENDING.remove(&key);
        if OPEN.insert(&key, &slot, 0).is_ok() {
            let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
        }
    } else if op == BPF_SOCK_OPS_STATE_CB {
        // arg 1 is the new state. CLOSE_WAIT (the client closed first) is not a close: the
        // worker may still be writing.
        let new = ctx.arg(1);
        if new != TCP_FIN_WAIT1 && new != TCP_LAST_ACK && new != TCP_CLOSE {
            return 1;
        }
        let key = flow_key(&ctx);
        let Some(&slot) = (unsafe { OPEN.get(&key) }) else {
            return 1;
        };
        // Removed first, so that a later transition (LAST_ACK, then CLOSE) counts nothing.
        if OPEN.remove(&key).is_ok() {
            if let Some(report) = REPORTS.get_ptr_mut(slot) {
                unsafe {
                    atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
                        &raw mut (*report).closed,
                        1,
                    )
                };
            }
        }
    }
    1
}

/// The connection's client address and port, as the steering program recorded them.
fn flow_key(ctx: &SockOpsContext) -> FlowKey {
    let address = if ctx.family() == AF_INET6 {
        ctx.remote_ip6()
    } else {
        [ctx.remote_ip4(), 0, 0, 0]
    };
    // remote_port holds the port's network-order bits in its upper half.
    FlowKey {
        address: unmap_v4(address),
        port: ctx.remote_port() >> 16,
    }
}

/// The client of a connection being migrated (`bpf_sock` of the queued socket), named the same
/// way.
pub fn peer_of(sock: *mut bpf_sock) -> FlowKey {
    unsafe {
        let address = if (*sock).family == AF_INET6 {
            (*sock).dst_ip6
        } else {
            [(*sock).dst_ip4, 0, 0, 0]
        };
        // dst_port is the port in network byte order.
        FlowKey {
            address: unmap_v4(address),
            port: (*sock).dst_port as u32,
        }
    }
}

/// An IPv4 client of a dual-stack listener appears on the socket as a v4-mapped IPv6 address
/// (::ffff:a.b.c.d); the packet the steering program saw had the plain IPv4 address.
fn unmap_v4(a: [u32; 4]) -> [u32; 4] {
    // 0xffff0000 is ::ffff in the third word, read little-endian.
    if a[0] == 0 && a[1] == 0 && a[2] == 0xffff_0000 {
        [a[3], 0, 0, 0]
    } else {
        a
    }
}
