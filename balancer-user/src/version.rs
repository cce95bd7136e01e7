//! What `balancer --version` says: the release, the commit it was built from, and what the
//! kernel must offer, so that a user holding a downloaded binary can tell whether it runs on
//! their hosts before trying.
//!
//! The commit comes from build.rs (`BALANCER_COMMIT`): the one `cargo xtask dist` names, or
//! `git rev-parse` of the source tree, or `unknown` when built outside git. The kernel floors
//! are those of the embedded programs (docs/deploy.md explains each).

/// `balancer -V`: the release and the commit.
pub const SHORT: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("BALANCER_COMMIT"),
    ")"
);

/// `balancer --version`: [`SHORT`], then what the embedded programs need from the kernel.
pub const LONG: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("BALANCER_COMMIT"),
    ")\n",
    "built for ",
    env!("BALANCER_TARGET"),
    ", the eBPF programs embedded\n",
    "needs: Linux 5.17+ with BTF (bpf_loop 5.17, SK_REUSEPORT select-or-migrate 5.14, \
     tp_btf and mmapable arrays 5.5), 64-bit; CAP_BPF and CAP_PERFMON"
);
