//! The close tracker: a raw tracepoint program on `inet_sock_set_state`. It stays attached
//! while this process holds its link (the kernel detaches it at exit), and counts the closes of
//! this balancer's connections only: it learns this network namespace from a calibration
//! listener when it starts.

use std::os::fd::AsRawFd;

use anyhow::{Context as _, Result};
use aya::programs::RawTracePoint;
use balancer_common::maps as names;

use super::Steering;

impl Steering {
    /// Starts the close tracker for connections on `port`: attaches it to the
    /// `inet_sock_set_state` tracepoint, then shows it a socket of this network namespace (a
    /// listener on a port of its own, closed at once) so that it can tell this namespace's
    /// sockets from those of every other namespace on the host.
    pub fn track(&mut self, port: u16) -> Result<()> {
        let program: &mut RawTracePoint = self
            .bpf
            .program_mut(names::CLOSES_PROGRAM)
            .context("the object file has no close tracker")?
            .try_into()?;
        // The link belongs to the program, which `self.bpf` keeps until this process exits.
        program.attach(names::CLOSES_TRACEPOINT).with_context(|| {
            format!(
                "cannot attach the close tracker to the {} tracepoint",
                names::CLOSES_TRACEPOINT
            )
        })?;

        use nix::sys::socket::{self as sock, AddressFamily, SockFlag, SockType, SockaddrIn};
        let calibration = sock::socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .context("cannot open the close tracker's calibration socket")?;
        sock::bind(calibration.as_raw_fd(), &SockaddrIn::new(0, 0, 0, 0, 0))
            .context("cannot bind the close tracker's calibration socket")?;
        let calibration_port = sock::getsockname::<SockaddrIn>(calibration.as_raw_fd())?.port();
        let mut config = self.config.get(&0, 0).unwrap_or_default();
        config.port = port as u32;
        config.calibrate_port = calibration_port as u32;
        self.config
            .set(0, config, 0)
            .context("cannot write the program's configuration")?;
        // The tracker runs inside listen(), on this thread, before it returns.
        sock::listen(&calibration, sock::Backlog::new(1)?)
            .context("cannot listen on the close tracker's calibration socket")?;
        drop(calibration);
        let learned = self.netns.get(&0, 0).unwrap_or(0) != 0;
        config.calibrate_port = 0;
        self.config
            .set(0, config, 0)
            .context("cannot write the program's configuration")?;
        anyhow::ensure!(
            learned,
            "the close tracker saw no event from this network namespace (is the \
             {} tracepoint available on this kernel?)",
            names::CLOSES_TRACEPOINT
        );
        Ok(())
    }

    /// The same for the close tracker, which runs on every TCP state change on the host.
    pub fn tracker_run_stats(&self) -> (u64, u64) {
        let program: Option<&RawTracePoint> = self
            .bpf
            .program(names::CLOSES_PROGRAM)
            .and_then(|p| p.try_into().ok());
        super::run_stats(program.and_then(|p| p.info().ok()))
    }
}
