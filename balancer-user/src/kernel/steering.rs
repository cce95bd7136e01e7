//! The steering program: an `SK_REUSEPORT` program. Attaching it sets
//! `SO_ATTACH_REUSEPORT_EBPF` on one listener, which installs it for the listener's whole
//! `SO_REUSEPORT` group: from then on the kernel runs it for each segment that would open a
//! connection and lets it choose the listener. It reads its policy, the slot count and the
//! stopping flag from `CONFIG`, which these methods write.

use std::os::fd::{AsFd, AsRawFd};

use anyhow::{Context as _, Result};
use aya::programs::SkReuseport;
use balancer_common::{maps as names, Policy, OVERFLOW};

use super::Steering;

impl Steering {
    /// Installs the program on the reuseport group `listener` belongs to.
    pub fn attach(&self, listener: impl AsFd) -> Result<()> {
        let program: &SkReuseport = self
            .bpf
            .program(names::PROGRAM)
            .context("steering program missing")?
            .try_into()?;
        program.attach(listener).context(
            "cannot attach the steering program to the listeners (SO_ATTACH_REUSEPORT_EBPF)",
        )
    }

    /// Writes the configuration both programs read; `port` and `tracking` stay as set by
    /// [`Steering::track`] (or their defaults: workers report, port 0).
    pub fn configure(&mut self, slots: u32, policy: Policy) -> Result<()> {
        let mut config = self.config.get(&0, 0).unwrap_or_default();
        config.slots = slots;
        config.policy = policy as u32;
        self.config
            .set(0, config, 0)
            .context("cannot write the program's configuration")
    }

    /// Puts the overflow listener, whose accept queue holds `room` connections, in the group's
    /// choices (`OVERFLOW`): from now on least-loaded sends a connection there when no slot is
    /// idle and the queue has room.
    pub fn enable_overflow(&mut self, listener: &(impl AsRawFd + AsFd), room: u32) -> Result<()> {
        self.insert(OVERFLOW, listener)?;
        self.track_takes()?;
        let mut config = self.config.get(&0, 0).unwrap_or_default();
        config.overflow = room.max(1);
        self.config
            .set(0, config, 0)
            .context("cannot write the program's configuration")
    }

    /// From now on the program refuses new connections (the supervisor is stopping).
    pub fn refuse_new(&mut self) -> Result<()> {
        let mut config = self.config.get(&0, 0).unwrap_or_default();
        config.stopping = 1;
        self.config
            .set(0, config, 0)
            .context("cannot write the program's configuration")
    }

    pub fn policy(&self) -> Policy {
        self.config
            .get(&0, 0)
            .ok()
            .and_then(|c| Policy::from_u32(c.policy))
            .unwrap_or(Policy::LeastLoaded)
    }

    /// (run time in ns, run count) the kernel measured for the steering program while
    /// `kernel.bpf_stats_enabled` was on; zeros otherwise.
    pub fn run_stats(&self) -> (u64, u64) {
        let program: Option<&SkReuseport> = self
            .bpf
            .program(names::PROGRAM)
            .and_then(|p| p.try_into().ok());
        super::run_stats(program.and_then(|p| p.info().ok()))
    }
}
