//! `balancer`: a supervisor that runs N workers on one port and an SK_REUSEPORT program that
//! steers each new connection to the least-loaded one.
//!
//! One module per concept, grouped by where it runs:
//!
//! - The command line: [`cli`] (the flags), [`config`] (a TOML file as flags), [`logging`].
//! - The kernel: [`kernel`] (the steering program, the close tracker and each of their maps),
//!   [`listeners`] (the reuseport group of listening sockets).
//! - The supervisor: [`supervisor`] (one event loop over a slot's lifecycle, reload, scale and
//!   stop), [`rules`] (the pure decisions it takes, each testable without a kernel: the load
//!   books, restart pacing, stalls, health verdicts, recycling, the `sticky` policy's table),
//!   [`inspect`] (what the kernel holds, read through sock_diag and /proc, for the books).
//! - The workers' output: [`logs`] (captured line by line, kept, followed, written out).
//! - Talking to the workers: [`channel`] (a message channel per worker, both ways, and
//!   `balancer send`, `signal` and `messages`).
//! - Talking to it: [`control`] (the control socket's protocol, server and client, and `status
//!   --watch`), [`metrics`] (Prometheus).
//! - The workers: [`worker`] (starting one, and the built-in demo worker), [`capabilities`]
//!   (what the supervisor needs and what workers never get), [`identity`] (the account each
//!   worker runs as).
//! - Before deploying: [`check`] (what this kernel has of what the programs use).

pub mod capabilities;
pub mod channel;
pub mod check;
pub mod cli;
pub mod config;
pub mod control;
pub mod identity;
pub mod inspect;
pub mod kernel;
pub mod listeners;
pub mod logging;
pub mod logs;
pub mod metrics;
pub mod rules;
pub mod supervisor;
pub mod version;
pub mod worker;
