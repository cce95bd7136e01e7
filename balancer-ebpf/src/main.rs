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
//!
//! The parts, one concern a file: `maps` (the steering program's maps), `steer` (a segment's
//! path, from the configuration to the selection), `select` (the policies' choice over the
//! slots), `packet` (the segment's headers), `flows` (the records in `FLOWS` and the segments
//! that follow them), `migrate` (a closing listener's queued connections), `counting` (the
//! program's counters, the slots' load counters, and why it fails open). The close tracker
//! (`closes`) and the taker tracker (`takes`) are programs of their own in the same object.
#![no_std]
#![no_main]
// The BPF target has no compare-and-swap, so `AtomicU64::fetch_add` does not exist there; the
// intrinsic lowers to the BPF atomic add instruction.
#![feature(core_intrinsics)]
#![allow(internal_features)]

use aya_ebpf::{bindings::sk_action::SK_PASS, macros::sk_reuseport, programs::SkReuseportContext};

use crate::counting::count;

mod closes;
mod counting;
mod flows;
mod maps;
mod migrate;
mod packet;
mod select;
mod steer;
mod takes;

// `migrate`: the kernel also runs the program when a listener closes with connections still
// queued (BPF_SK_REUSEPORT_SELECT_OR_MIGRATE), so that they move to a live slot instead of
// being reset.
//
// Whenever the program cannot choose it answers here, in one place: `SK_PASS` with no selection
// (the kernel's hash picks a listener), the reason counted in `STATS`.
#[sk_reuseport(migrate)]
pub fn balancer(ctx: SkReuseportContext) -> u32 {
    match steer::try_balancer(&ctx) {
        Ok(action) => action,
        Err(reason) => {
            count(reason as u32);
            SK_PASS
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
