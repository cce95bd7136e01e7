//! What the balancer's eBPF program and its supervisor agree on.
//!
//! The program and the supervisor share array maps whose value layouts are defined here
//! (`#[repr(C)]`, fixed sizes), plus the decision logic of the steering policies, which is plain
//! `no_std` Rust so that the very code the program runs is unit-tested on the host.
#![no_std]

pub mod maps;
pub mod policy;
pub mod stats;

pub use maps::{Config, FlowKey, Slot, SlotState, MAX_SLOTS, OVERFLOW, SLOT_ENTRIES};
pub use policy::Policy;
