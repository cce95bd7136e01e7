//! The close tracker: a BTF tracepoint program on `inet_sock_set_state`, which the kernel runs
//! on every TCP state change of every socket on the host, in every network namespace. It needs
//! no cgroup (CAP_BPF and CAP_PERFMON, which the steering program already needs), so it works
//! on a plain host, under `ip netns exec`, `unshare -n` and in containers alike.
//!
//! It tells the balancer's connections from every other socket on the host by `OWNERS`, a
//! socket storage map: the supervisor stores each listener's slot on the listener, and the
//! kernel copies the value to every connection socket the listener creates (`BPF_F_CLONE`). A
//! socket without one is not ours; that lookup is a pointer walk on the socket, no hashing,
//! and nothing is written per connection when it opens.
//!
//! When the server side of a connection closes (it enters FIN_WAIT1 or LAST_ACK, or CLOSE on a
//! reset or an abort) the tracker adds one to its slot's `closed`, and clears the connection's
//! own `counted` flag so that no later transition counts it again. CLOSE_WAIT (the client
//! closed first) is not a close: the worker may still be writing.
//!
//! `FLOWS` holds the few connections whose slot is not their listener's (moved off a closing
//! listener) or that were counted some other way (health probes, SYNs recorded while a slot was
//! crowded). The tracker looks there only while the program says records may exist
//! (`RECORDING_UNTIL`) or health checks run; a record names the slot to count and is removed.

use core::{
    intrinsics::{atomic_xadd, AtomicOrdering},
    ptr,
};

use aya_ebpf::{
    bindings::{bpf_map_type::BPF_MAP_TYPE_SK_STORAGE, bpf_sock, BPF_F_CLONE, BPF_F_NO_PREALLOC},
    cty::c_void,
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_sk_storage_get},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use balancer_common::maps::{FlowKey, Owner};

use crate::{
    flows::recording,
    maps::{CONFIG, FLOWS, SLOTS},
};

/// The layout of a BTF map definition (what libbpf's `__uint`/`__type` macros declare): the
/// loader reads each property from the type of its field. aya-ebpf's own `SkStorage` fixes the
/// flags without `BPF_F_CLONE`, which is the point of this map.
#[repr(C)]
pub struct Owners {
    r#type: *const [i32; BPF_MAP_TYPE_SK_STORAGE as usize],
    key: *const i32,
    value: *const Owner,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; (BPF_F_NO_PREALLOC | BPF_F_CLONE) as usize],
}

// SAFETY: the fields are never read; the loader replaces the definition with a map.
unsafe impl Sync for Owners {}

/// Listener (and, by inheritance, connection) -> its slot; see the module docs.
#[unsafe(link_section = ".maps")]
#[unsafe(export_name = "OWNERS")]
pub static OWNERS: Owners = Owners {
    r#type: ptr::null(),
    key: ptr::null(),
    value: ptr::null(),
    max_entries: ptr::null(),
    map_flags: ptr::null(),
};

const AF_INET6: u16 = 10;
// TCP states, from include/net/tcp_states.h.
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_RECV: i32 = 3;
const TCP_FIN_WAIT1: i32 = 4;
const TCP_CLOSE: i32 = 7;
const TCP_CLOSE_WAIT: i32 = 8;
const TCP_LAST_ACK: i32 = 9;

// `struct sock_common`: the head below has been in place since Linux 2.6; the IPv6 addresses
// follow the network namespace pointer on 64-bit kernels built with network namespaces.
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

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn closes(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(const struct sock *sk, const int oldstate, const int newstate). The state test
    // comes first: it discards most events before anything else is read.
    let new: i32 = ctx.arg(2);
    let wanted = match new {
        TCP_FIN_WAIT1 | TCP_LAST_ACK => true,
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
    let sk: *mut c_void = ctx.arg(0);
    let owner = owner_of(sk);
    if owner.is_null() {
        return 0;
    }
    // The socket is locked through a state change: no other CPU runs this for it meanwhile.
    let mut slot = unsafe {
        let counted = (*owner).counted != 0;
        (*owner).counted = 0;
        counted.then_some((*owner).slot)
    };
    let Some(config) = CONFIG.get(0) else {
        return 0;
    };
    // The precise clock: tracing programs may not read the coarse one, which the program uses
    // to write the deadline (both are CLOCK_MONOTONIC; they differ by at most a tick).
    if config.probing != 0 || recording(|| unsafe { bpf_ktime_get_ns() }) {
        if let Some(key) = flow_of_socket(sk as *const u8, config.port) {
            if let Some(f) = unsafe { FLOWS.get(key) }.copied() {
                if FLOWS.remove(key).is_ok() {
                    slot = Some(f.slot);
                }
            }
        }
    }
    if let Some(s) = slot.and_then(|slot| SLOTS.get_ptr_mut(slot)) {
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*s).closed, 1) };
    }
    0
}

/// The `OWNERS` value on socket `sk`, or null: only sockets that inherited a value from one of
/// our listeners have one (no F_CREATE).
#[inline(always)]
pub(crate) fn owner_of(sk: *mut c_void) -> *mut Owner {
    // SAFETY: the kernel checks `sk` against its type information.
    unsafe {
        bpf_sk_storage_get(
            (&raw const OWNERS).cast_mut().cast(),
            sk,
            ptr::null_mut(),
            0,
        )
    }
    .cast()
}

/// The connection `sk` belongs to, named as the steering program named it from the SYN.
#[inline(always)]
pub(crate) fn flow_of_socket(sk: *const u8, port: u32) -> Option<FlowKey> {
    let head = unsafe { bpf_probe_read_kernel(sk as *const Head) }.ok()?;
    // Entering CLOSE, a socket has already given its port back (`inet_put_port` zeroes
    // `skc_num` before the state changes): a reset connection arrives here with port 0.
    let local_port = if head.num == 0 { port as u16 } else { head.num };
    let (remote, local) = if head.family == AF_INET6 {
        let v6 =
            unsafe { bpf_probe_read_kernel(sk.add(SKC_V6_DADDR) as *const [[u32; 4]; 2]) }.ok()?;
        (unmap_v4(v6[0]), unmap_v4(v6[1]))
    } else {
        ([head.daddr, 0, 0, 0], [head.rcv_saddr, 0, 0, 0])
    };
    Some(FlowKey {
        remote,
        local,
        ports: head.dport as u32 | (local_port.to_be() as u32) << 16,
    })
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
