//! The kernel objects: the programs and their maps, one type a file.
//!
//! Loading runs the verifier over the programs (it proves every path terminates and every map
//! access is in bounds) and creates the maps. Attaching sets `SO_ATTACH_REUSEPORT_EBPF` on one
//! listener, which installs the steering program for the listener's whole `SO_REUSEPORT`
//! group: from then on the kernel asks it, for each new connection, which listener of the group
//! gets it. The program stays attached until every socket of the group is closed (or it is
//! detached), whether or not this process still holds the program's fd. The close and taker
//! trackers are BTF tracepoints (the kernel's type information, /sys/kernel/btf/vmlinux,
//! describes their arguments): they stay attached while this process holds their links, and
//! the kernel detaches them at exit.
//!
//! [`Steering`] holds them all, one part per object: [`Programs`], the three programs;
//! [`Config`] (`CONFIG`, what the programs read their settings from); [`Sockets`] (`SOCKETS`,
//! the listeners the program chooses among); [`Owners`] (`OWNERS` and `LISTENERS`, each
//! listener's slot, on the socket and by cookie); [`Flows`] (`FLOWS`, the few connections
//! with a record); [`Workers`] (`WORKERS`, for the taker tracker); [`Stats`] (`STATS`, the
//! program's own counters). `SLOTS` (each slot's state, weight and counters, [`slots`]),
//! [`Sticky`] (`STICKY`) and [`Counters`] (`COUNTERS`, the window in which records are
//! honoured) are shared memory ([`Mapped`]). [`seeds`]: `TICKETS` and `RANDOM`, the program's
//! per-CPU state, seeded at load. [`log`]: the program's log records. Every failure is an
//! [`Error`].

mod config;
mod counters;
mod error;
mod flows;
mod log;
mod mapped;
mod owners;
mod programs;
mod seeds;
mod slots;
mod sockets;
mod stats;
mod steering;
mod sticky;
mod workers;

pub use config::Config;
pub use counters::Counters;
pub use error::{Error, Result};
pub use flows::{key as flow_key, Flows};
pub use log::{forward_log, ProgramLog};
pub use mapped::Mapped;
pub use owners::Owners;
pub use programs::Programs;
pub use sockets::Sockets;
pub use stats::{ProgramStats, Stats};
pub use steering::Steering;
pub use sticky::Sticky;
pub use workers::Workers;
