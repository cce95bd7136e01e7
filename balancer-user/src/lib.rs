//! `balancer`: a supervisor that runs N workers on one port and an SK_REUSEPORT program that
//! steers each new connection to the least-loaded one.
//!
//! One module per concept: [`listeners`] (the reuseport group), [`program`] (the eBPF programs
//! and their maps), [`shared`] (the maps as shared memory), [`accounting`] (the load and how it
//! is kept true), [`process`] (starting a worker),
//! [`supervisor`] (the lifecycle), [`worker`] (the built-in worker), [`control`] (the control
//! socket), [`backoff`] (restart pacing), [`capabilities`] (privilege checks).

pub mod accounting;
pub mod backoff;
pub mod capabilities;
pub mod cli;
pub mod config;
pub mod control;
pub mod listeners;
pub mod logging;
pub mod metrics;
pub mod process;
pub mod program;
pub mod shared;
pub mod stall;
pub mod sticky;
pub mod supervisor;
pub mod watch;
pub mod worker;
