//! Built for the host only so that `balancer` can name this crate as a build dependency (and be
//! rebuilt when it changes); the program itself is `src/main.rs`, built for the BPF target.
#![no_std]
