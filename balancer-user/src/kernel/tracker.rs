//! The close tracker: a BTF tracepoint program on `inet_sock_set_state`. It stays attached
//! while this process holds its link (the kernel detaches it at exit), and counts the closes of
//! this balancer's connections only: those whose socket inherited a value in `OWNERS` from one
//! of this balancer's listeners.

use anyhow::{Context as _, Result};
use aya::programs::BtfTracePoint;
use balancer_common::maps as names;

use super::Steering;

impl Steering {
    /// Starts the close tracker for connections on `port`, whose listeners have `backlog`
    /// places in their accept queues.
    pub fn track(&mut self, port: u16, backlog: u32) -> Result<()> {
        let mut config = self.config.get(&0, 0).unwrap_or_default();
        config.port = port as u32;
        config.crowded = crowded(backlog);
        self.config
            .set(0, config, 0)
            .context("cannot write the program's configuration")?;
        let program: &mut BtfTracePoint = self
            .bpf
            .program_mut(names::CLOSES_PROGRAM)
            .context("the object file has no close tracker")?
            .try_into()?;
        // The link belongs to the program, which `self.bpf` keeps until this process exits.
        program.attach().with_context(|| {
            format!(
                "cannot attach the close tracker to the {} tracepoint",
                names::CLOSES_TRACEPOINT
            )
        })?;
        Ok(())
    }

    /// The same for the close tracker, which runs on every TCP state change on the host.
    pub fn tracker_run_stats(&self) -> (u64, u64) {
        let program: Option<&BtfTracePoint> = self
            .bpf
            .program(names::CLOSES_PROGRAM)
            .and_then(|p| p.try_into().ok());
        super::run_stats(program.and_then(|p| p.info().ok()))
    }
}

/// The load from which a slot's SYNs are recorded: half the backlog, where a full accept queue
/// may drop them. With `net.ipv4.tcp_syncookies=2` every handshake is a SYN cookie, completed
/// by its last ACK on whatever listener that ACK reaches, so every SYN is recorded (0) for the
/// ACK to follow it.
fn crowded(backlog: u32) -> u32 {
    let always_cookies =
        std::fs::read_to_string("/proc/sys/net/ipv4/tcp_syncookies").is_ok_and(|s| s.trim() == "2");
    if always_cookies {
        0
    } else {
        (backlog / 2).max(1)
    }
}
