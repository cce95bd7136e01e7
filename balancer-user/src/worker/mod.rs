//! The worker side: what a worker runs and as whom ([`command`]), how its process is started,
//! with its slot's listener as fd 3 and no privilege ([`spawn`]), and the built-in demo worker
//! ([`builtin`], `balancer worker`) with its accept loop ([`accept`]) and how it waits on the
//! shared overflow queue ([`overflow`]).

mod accept;
pub mod builtin;
pub mod command;
mod overflow;
pub mod spawn;
