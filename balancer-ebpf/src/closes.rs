//! The close tracker: a raw tracepoint program on `inet_sock_set_state`, which the kernel runs
//! on every TCP state change of every socket on the host, in every network namespace. It needs
//! no cgroup (CAP_BPF and CAP_PERFMON, which the steering program already needs), so it works
//! on a plain host, under `ip netns exec`, `unshare -n` and in containers alike.
//!
//! When the server side of a recorded connection closes (it enters FIN_WAIT1 or LAST_ACK, or
//! CLOSE on a reset or an abort) the tracker removes the connection from `FLOWS` and adds one to
//! its slot's `closed`. CLOSE_WAIT (the client closed first) is not a close: the worker may still
//! be writing.
//!
//! Raw tracepoint arguments are the kernel's own: a `struct sock *` and two states, with no
//! field offsets resolved at load time. The tracker reads `struct sock_common`'s head (the
//! addresses, ports and family, in place since Linux 2.6) and three fields behind it (the
//! network namespace at 48 and the IPv6 addresses at 56 and 72, on 64-bit kernels built with
//! network namespaces and IPv6), with `bpf_probe_read_kernel`. Events of other namespaces are
//! told apart by the namespace pointer, learned from the supervisor's calibration listener.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    bindings::bpf_sock,
    helpers::bpf_probe_read_kernel,
    macros::{map, raw_tracepoint},
    maps::Array,
    programs::RawTracePointContext,
};
use balancer_common::maps::FlowKey;

use crate::{CONFIG, FLOWS, SLOTS};

/// The network namespace (its `struct net` address) the balancer's sockets live in, learned
/// when the supervisor's calibration socket starts listening; 0 until then.
#[map]
static NETNS: Array<u64> = Array::with_max_entries(1, 0);

const AF_INET6: u16 = 10;
// TCP states, from include/net/tcp_states.h.
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_RECV: i32 = 3;
const TCP_FIN_WAIT1: i32 = 4;
const TCP_CLOSE: i32 = 7;
const TCP_LISTEN: i32 = 10;
const TCP_CLOSE_WAIT: i32 = 8;
const TCP_LAST_ACK: i32 = 9;

const SKC_NET: usize = 48;
const SKC_V6_DADDR: usize = 56;

/// The first 20 bytes of `struct sock_common`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Head {
    daddr: u32,
    rcv_saddr: u32,
    _hash: u32,
    /// The remote port, network byte order.
    dport: u16,
    /// The local port, host byte order.
    num: u16,
    family: u16,
    _state: u8,
    _bits: u8,
}

#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn closes(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(const struct sock *sk, const int oldstate, const int newstate). The state test
    // comes first: it discards most events before any memory is read.
    let new: i32 = ctx.arg(2);
    let wanted = match new {
        TCP_FIN_WAIT1 | TCP_LAST_ACK | TCP_LISTEN => true,
        // A socket that closed the ordinary way was counted when it left ESTABLISHED or
        // CLOSE_WAIT; CLOSE only matters straight from those (a reset, an abort).
        TCP_CLOSE => matches!(
            ctx.arg::<i32>(1),
            TCP_ESTABLISHED | TCP_SYN_RECV | TCP_CLOSE_WAIT
        ),
        _ => false,
    };
    if !wanted {
        return 0;
    }
    let Some(config) = CONFIG.get(0) else {
        return 0;
    };
    if new == TCP_LISTEN && config.calibrate_port == 0 {
        return 0;
    }
    let sk: *const u8 = ctx.arg(0);
    let Ok(head) = (unsafe { bpf_probe_read_kernel(sk as *const Head) }) else {
        return 0;
    };
    if new == TCP_LISTEN {
        if head.num as u32 == config.calibrate_port {
            if let (Ok(net), Some(n)) = (
                unsafe { bpf_probe_read_kernel(sk.add(SKC_NET) as *const u64) },
                NETNS.get_ptr_mut(0),
            ) {
                unsafe { *n = net };
            }
        }
        return 0;
    }
    // Entering CLOSE, a socket has already given its port back (`inet_put_port` zeroes
    // `skc_num` before the state changes): a reset connection arrives here with port 0. Its
    // record, keyed by the whole 4-tuple, still tells whether it is one of ours.
    let local_port = if head.num == 0 && new == TCP_CLOSE {
        config.port as u16
    } else {
        head.num
    };
    if local_port as u32 != config.port {
        return 0;
    }
    let Ok(net) = (unsafe { bpf_probe_read_kernel(sk.add(SKC_NET) as *const u64) }) else {
        return 0;
    };
    if NETNS.get(0).is_none_or(|&n| n == 0 || n != net) {
        return 0;
    }
    let (remote, local) = if head.family == AF_INET6 {
        let Ok(v6) =
            (unsafe { bpf_probe_read_kernel(sk.add(SKC_V6_DADDR) as *const [[u32; 4]; 2]) })
        else {
            return 0;
        };
        (unmap_v4(v6[0]), unmap_v4(v6[1]))
    } else {
        ([head.daddr, 0, 0, 0], [head.rcv_saddr, 0, 0, 0])
    };
    let key = FlowKey {
        remote,
        local,
        ports: head.dport as u32 | (local_port.to_be() as u32) << 16,
    };
    let Some(slot) = (unsafe { FLOWS.get(key) }).map(|f| f.slot) else {
        return 0;
    };
    // Removed first: of the transitions that follow (FIN_WAIT1, then CLOSE), only the one
    // that removes the record counts.
    if FLOWS.remove(key).is_ok() {
        if let Some(s) = SLOTS.get_ptr_mut(slot) {
            unsafe {
                atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*s).closed, 1)
            };
        }
    }
    0
}

/// The connection a queued socket of a closing listener belongs to (`bpf_sock` of the request
/// or established socket being migrated), named as the steering program named it.
pub fn flow_of(sock: *mut bpf_sock) -> FlowKey {
    unsafe {
        let (remote, local) = if (*sock).family == AF_INET6 as u32 {
            (unmap_v4((*sock).dst_ip6), unmap_v4((*sock).src_ip6))
        } else {
            ([(*sock).dst_ip4, 0, 0, 0], [(*sock).src_ip4, 0, 0, 0])
        };
        // dst_port is in network byte order, src_port (the local port) in host byte order.
        FlowKey {
            remote,
            local,
            ports: (*sock).dst_port as u32 | ((((*sock).src_port as u16).to_be() as u32) << 16),
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
