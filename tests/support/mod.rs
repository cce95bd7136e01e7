//! The kit of the end-to-end tests: a fresh network namespace per test ([`netns`]), a running
//! `balancer` as a child process ([`Balancer`]), and a minimal HTTP client that opens a new
//! connection per request ([`get`]), with what the tests build on them: held workers, steady
//! loads, the kernel's view of the sockets, and the command line as a user runs it.

pub mod burst;
pub mod channel;
mod ctl;
pub mod deployment;
mod hold;
mod http;
mod launch;
pub mod listen;
mod load;
mod namespace;
pub mod procfs;
mod python;
pub mod raw;
pub mod reach;
pub mod stats;
pub mod truth;
mod wait;
pub mod workload;

pub use ctl::{ctl, ctl_in_background, fails_with};
pub use hold::{
    hold, hold_on_new_connections, hold_with, one_per_slot, sent_while_blocked,
    share_while_blocked, BLOCKED_CLIENTS, HELD_OF_TWO_AT_MOST, HELD_OF_TWO_WHILE_READING_AT_MOST,
};
pub use http::{
    connect, get, get_from, histogram, request_on, reset, timed_gets, KeepAlive, Reply,
};
pub use launch::{all_idle, all_up, bin, crash_looping_slot_0, Balancer};
pub use load::{Counts, Load};
pub use namespace::netns;
pub use python::python_worker;
pub use reach::{example, reachable, worker_bin, worker_path, writable_by_workers};
pub use wait::{poll, wait_until};
