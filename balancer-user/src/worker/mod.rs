//! The worker side: how a worker process is started, with its slot's listener as fd 3 and no
//! privilege ([`spawn`]), and the built-in demo worker ([`builtin`], `balancer worker`).

pub mod builtin;
pub mod spawn;
