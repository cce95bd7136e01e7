//! The three programs of the object file, kept by the [`Ebpf`] that loaded them: the steering
//! program (`SK_REUSEPORT`), the close tracker and the taker tracker (BTF tracepoints).
//!
//! The steering program, attached to one listener, serves the listener's whole `SO_REUSEPORT`
//! group: for each segment that would open a connection the kernel asks it which listener
//! gets it. The trackers stay attached while this process holds their links, which the
//! [`Ebpf`] keeps until exit (the kernel detaches them then).

use std::os::fd::AsFd;

use aya::{
    programs::{BtfTracePoint, ProgramInfo, SkReuseport},
    Btf, Ebpf,
};
use balancer_common::maps as names;

use super::{Error, Result};

/// A BTF tracepoint program of the object file.
struct Tracepoint {
    program: &'static str,
    tracepoint: &'static str,
    /// How messages name it.
    what: &'static str,
}

/// Counts the closes of this balancer's connections: those whose socket inherited a value in
/// `OWNERS` from one of its listeners.
const CLOSES: Tracepoint = Tracepoint {
    program: names::CLOSES_PROGRAM,
    tracepoint: names::CLOSES_TRACEPOINT,
    what: "close tracker",
};

/// Moves an overflow connection's count to the worker that takes it (see `WORKERS`).
const TAKES: Tracepoint = Tracepoint {
    program: names::TAKES_PROGRAM,
    tracepoint: names::TAKES_TRACEPOINT,
    what: "taker tracker",
};

/// The loaded programs.
pub struct Programs(Ebpf);

impl Programs {
    /// Runs the verifier over the three programs of `bpf`, attaching none: loading resolves
    /// the programs' map references, which needs every map's fd, so it comes before the maps
    /// are taken (and some of their fds closed).
    ///
    /// # Errors
    ///
    /// [`Error::Refused`] (or the [`Error::PermissionDenied`] and [`Error::Lacking`] hints) when
    /// the kernel refuses a program, [`Error::Btf`] without the kernel's type information.
    pub(super) fn load(bpf: &mut Ebpf) -> Result<()> {
        steering_mut(bpf)?
            .load()
            .map_err(|e| Error::refused("steering program", e))?;
        let btf = Btf::from_sys_fs().map_err(Error::Btf)?;
        for t in [CLOSES, TAKES] {
            tracepoint_mut(bpf, &t)?
                .load(t.tracepoint, &btf)
                .map_err(|e| Error::refused(t.what, e))?;
        }
        Ok(())
    }

    /// Keeps `bpf`, whose programs [`Programs::load`] loaded.
    pub(super) fn new(bpf: Ebpf) -> Programs {
        Programs(bpf)
    }

    /// Installs the steering program on the reuseport group `listener` belongs to.
    ///
    /// # Errors
    ///
    /// [`Error::Attach`] when the kernel refuses `SO_ATTACH_REUSEPORT_EBPF`.
    pub fn attach(&self, listener: impl AsFd) -> Result<()> {
        let program: &SkReuseport = self
            .0
            .program(names::PROGRAM)
            .ok_or(Error::NoProgram("steering program"))?
            .try_into()
            .map_err(Error::ProgramType)?;
        program.attach(listener).map_err(Error::Attach)
    }

    /// Starts the close tracker.
    ///
    /// # Errors
    ///
    /// [`Error::AttachTracepoint`] when the kernel refuses the link.
    pub fn track_closes(&mut self) -> Result<()> {
        self.attach_tracepoint(&CLOSES)
    }

    /// Starts the taker tracker.
    ///
    /// # Errors
    ///
    /// [`Error::AttachTracepoint`] when the kernel refuses the link.
    pub fn track_takes(&mut self) -> Result<()> {
        self.attach_tracepoint(&TAKES)
    }

    fn attach_tracepoint(&mut self, t: &Tracepoint) -> Result<()> {
        // The link belongs to the program, which `self` keeps until this process exits.
        tracepoint_mut(&mut self.0, t)?
            .attach()
            .map_err(|source| Error::AttachTracepoint {
                what: t.what,
                tracepoint: t.tracepoint,
                source,
            })?;
        Ok(())
    }

    /// (run time in ns, run count) the kernel measured for the steering program while
    /// `kernel.bpf_stats_enabled` was on; zeros otherwise.
    pub fn run_stats(&self) -> (u64, u64) {
        let program: Option<&SkReuseport> = self
            .0
            .program(names::PROGRAM)
            .and_then(|p| p.try_into().ok());
        run_stats(program.and_then(|p| p.info().ok()))
    }

    /// The same for the close tracker, which runs on every TCP state change on the host.
    pub fn tracker_run_stats(&self) -> (u64, u64) {
        let program: Option<&BtfTracePoint> = self
            .0
            .program(CLOSES.program)
            .and_then(|p| p.try_into().ok());
        run_stats(program.and_then(|p| p.info().ok()))
    }
}

fn steering_mut(bpf: &mut Ebpf) -> Result<&mut SkReuseport> {
    bpf.program_mut(names::PROGRAM)
        .ok_or(Error::NoProgram("steering program"))?
        .try_into()
        .map_err(Error::ProgramType)
}

fn tracepoint_mut<'a>(bpf: &'a mut Ebpf, t: &Tracepoint) -> Result<&'a mut BtfTracePoint> {
    bpf.program_mut(t.program)
        .ok_or(Error::NoProgram(t.what))?
        .try_into()
        .map_err(Error::ProgramType)
}

fn run_stats(info: Option<ProgramInfo>) -> (u64, u64) {
    info.map_or((0, 0), |i| (i.run_time().as_nanos() as u64, i.run_count()))
}
