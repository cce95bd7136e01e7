//! Reading the segment the kernel asks about: its TCP flags, ports and sequence number from the
//! TCP header (`ctx.data()` points at it), its addresses from the IP header by helper, into the
//! `FlowKey` that names the connection in `FLOWS`. The addresses are read only when a record is
//! looked up or written, or the sticky policy needs them.

use aya_ebpf::{
    bindings::bpf_hdr_start_off::BPF_HDR_START_NET, cty::c_void,
    helpers::bpf_skb_load_bytes_relative, programs::SkReuseportContext,
};
use balancer_common::maps::FlowKey;

pub(crate) const IPPROTO_TCP: u32 = 6;
const TCP_FLAG_SYN: u8 = 0x02;
/// ACK, RST and FIN: a SYN carrying any of them opens no connection.
const TCP_FLAGS_NOT_OPENING: u8 = 0x10 | 0x04 | 0x01;

/// Reads the packet's remote and local addresses from its IP header into `key` (four words
/// each, IPv4 in the first). False if the packet is neither IPv4 nor IPv6.
///
/// Out-parameters, not an `Option` of the addresses: LLVM spills an undefined register on the
/// `None` path of a large `Option`, which the verifier rejects ("!read_ok").
#[inline(always)]
pub(crate) fn addresses(ctx: &SkReuseportContext, key: &mut FlowKey) -> bool {
    // The source and destination addresses are adjacent in both headers, so one load reads
    // both. eth_protocol is in network byte order: htons(ETH_P_IP) is 0x0008 on this
    // little-endian target, htons(ETH_P_IPV6) 0xdd86. A constant length in each call: the
    // verifier checks the helper's size argument.
    let eth = ctx.eth_protocol();
    if eth == 0x0008 {
        let mut a = [0u32; 2];
        let rc = unsafe {
            bpf_skb_load_bytes_relative(
                ctx.md as *const c_void,
                12,
                (&raw mut a).cast(),
                8,
                BPF_HDR_START_NET,
            )
        };
        key.remote[0] = a[0];
        key.local[0] = a[1];
        rc == 0
    } else if eth == 0xdd86 {
        let rc = unsafe {
            bpf_skb_load_bytes_relative(
                ctx.md as *const c_void,
                8,
                (&raw mut key.remote).cast(),
                16,
                BPF_HDR_START_NET,
            ) | bpf_skb_load_bytes_relative(
                ctx.md as *const c_void,
                24,
                (&raw mut key.local).cast(),
                16,
                BPF_HDR_START_NET,
            )
        };
        rc == 0
    } else {
        false
    }
}

/// Zeroes `key` in place and hands it out, word by word: `FlowKey::default()`, or zeroing a
/// value and moving it into place, compiles to a call of the object's `memset`, a BPF-to-BPF
/// call on every run of the program.
#[inline(always)]
pub(crate) fn blank_key(key: &mut core::mem::MaybeUninit<FlowKey>) -> &mut FlowKey {
    let words = key.as_mut_ptr().cast::<u32>();
    for i in 0..core::mem::size_of::<FlowKey>() / 4 {
        // Volatile: plain stores would be merged back into the `memset` call.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
    // SAFETY: every byte written above (the key is a whole number of u32 words, no padding).
    unsafe { key.assume_init_mut() }
}

/// What a TCP segment is to the program.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Segment {
    /// Too short to hold a TCP header.
    Invalid,
    /// A pure SYN: it opens a connection.
    Syn,
    /// Anything else: an ACK, FIN or RST, or a SYN carrying one of them.
    Other,
}

/// Reads a TCP segment's ports into `key` and its sequence number into `seq` (the addresses
/// only when a record is looked up: see [`addresses`]); tells what the segment is.
#[inline(always)]
pub(crate) fn tcp_segment(ctx: &SkReuseportContext, key: &mut FlowKey, seq: &mut u32) -> Segment {
    // `data` starts at the TCP header: ports in its first word, flags at byte 13. The bounds
    // check against data_end is what lets the verifier accept the reads.
    let data = ctx.data();
    if data + 14 > ctx.data_end() {
        return Segment::Invalid;
    }
    let flags = unsafe { *((data + 13) as *const u8) };
    key.ports = unsafe { *(data as *const u32) };
    *seq = unsafe { *((data + 4) as *const u32) };
    if flags & TCP_FLAG_SYN != 0 && flags & TCP_FLAGS_NOT_OPENING == 0 {
        Segment::Syn
    } else {
        Segment::Other
    }
}
