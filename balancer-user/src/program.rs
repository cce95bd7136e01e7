//! The steering program, the close tracker and their maps, as loaded into the kernel.
//!
//! Loading runs the verifier over the program (it proves every path terminates and every map
//! access is in bounds) and creates the maps. Attaching sets `SO_ATTACH_REUSEPORT_EBPF` on one
//! listener, which installs the program for the listener's whole `SO_REUSEPORT` group: from then
//! on the kernel asks it, for each new connection, which listener of the group gets it. The
//! program stays attached until every socket of the group is closed (or it is detached), whether
//! or not this process still holds the program's fd. The close tracker is a raw tracepoint:
//! it stays attached while this process holds its link, and the kernel detaches it at exit.

use std::os::fd::{AsFd, AsRawFd};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    maps::{Array, MapData, PerCpuArray, ReusePortSockArray},
    programs::{RawTracePoint, SkReuseport},
    Ebpf, EbpfLoader,
};
use balancer_common::{maps as names, policy, stats, Config, Policy, Slot, SlotState};

use crate::{capabilities, shared::Mapped};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/balancer"));

/// Records the program logs with aya-log, read from its ring buffer.
pub type ProgramLog = aya_log::EbpfLogger<&'static dyn log::Log>;

/// Counters the program keeps, summed over CPUs, indexed like [`stats::NAMES`].
pub type ProgramStats = [u64; stats::COUNT as usize];

pub struct Steering {
    // Keeps the program's fd; dropping it does not detach the program (see the module docs).
    bpf: Ebpf,
    logger: Option<ProgramLog>,
    sockets: ReusePortSockArray<MapData>,
    config: Array<MapData, Config>,
    stats: PerCpuArray<MapData, u64>,
    netns: Array<MapData, u64>,
    pub slots: Mapped<Slot>,
    sticky: Mapped<u64>,
}

impl Steering {
    /// Loads both programs and creates their maps, with room for `flows` connections followed
    /// at once. Fails with a one-line hint when the process lacks the capability to do so.
    pub fn load(flows: u32) -> Result<Steering> {
        let mut bpf = EbpfLoader::new()
            .map_max_entries(names::FLOWS_MAP, flows)
            .load(OBJECT)
            .map_err(|e| {
                if is_permission_error(&e) {
                    anyhow!(capabilities::refused())
                } else {
                    anyhow!("cannot load the steering program: {e}")
                }
            })?;
        // Must be taken before the program is loaded: it owns the log map the program uses.
        let logger = aya_log::EbpfLogger::init(&mut bpf)
            .map_err(|e| anyhow!("cannot set up the program's log records: {e}"))?;

        let program: &mut SkReuseport = bpf
            .program_mut(names::PROGRAM)
            .context("the object file has no steering program")?
            .try_into()?;
        program
            .load()
            .map_err(|e| refused(e, "the steering program"))?;

        // Loaded now, attached by `track`: loading resolves the program's map references,
        // which needs every map's fd, and some are closed below once mapped into memory.
        let tracker: &mut RawTracePoint = bpf
            .program_mut(names::CLOSES_PROGRAM)
            .context("the object file has no close tracker")?
            .try_into()?;
        tracker
            .load()
            .map_err(|e| refused(e, "the close tracker"))?;

        let take = |bpf: &mut Ebpf, name: &str| {
            bpf.take_map(name)
                .with_context(|| format!("the object file has no map {name}"))
        };
        let sockets = ReusePortSockArray::try_from(take(&mut bpf, names::SOCKETS_MAP)?)?;
        let config = Array::try_from(take(&mut bpf, names::CONFIG_MAP)?)?;
        let stats = PerCpuArray::try_from(take(&mut bpf, names::STATS_MAP)?)?;
        let slots_map = match take(&mut bpf, names::SLOTS_MAP)? {
            aya::maps::Map::Array(m) => m,
            _ => bail!("map {} is not an array", names::SLOTS_MAP),
        };
        let netns = Array::try_from(take(&mut bpf, names::NETNS_MAP)?)?;
        let sticky_map = match take(&mut bpf, names::STICKY_MAP)? {
            aya::maps::Map::Array(m) => m,
            _ => bail!("map {} is not an array", names::STICKY_MAP),
        };
        let sticky = Mapped::with_len(sticky_map.fd().as_fd(), policy::STICKY_TABLE as usize)?;
        drop(sticky_map);
        let slots = Mapped::new(slots_map.fd().as_fd())?;
        // The mapping keeps the map alive; the fd is not needed any more.
        drop(slots_map);
        Ok(Steering {
            bpf,
            logger: Some(logger),
            sockets,
            config,
            stats,
            netns,
            slots,
            sticky,
        })
    }

    /// The program's log records, to be drained into this process's log whenever its fd is
    /// readable.
    pub fn take_log(&mut self) -> Option<ProgramLog> {
        self.logger.take()
    }

    /// Puts `listener` in `slot` of the socket array. The socket must already be listening.
    pub fn insert(&mut self, slot: u32, listener: &impl AsRawFd) -> Result<()> {
        self.sockets
            .set(slot, listener, 0)
            .with_context(|| format!("cannot put the listener of slot {slot} in the socket array"))
    }

    /// Takes `slot` out of the socket array (its socket then leaves the group's choices).
    pub fn remove(&mut self, slot: u32) -> Result<()> {
        self.sockets
            .clear_index(&slot)
            .with_context(|| format!("cannot clear slot {slot}"))
    }

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

    /// From now on the program refuses new connections (the supervisor is stopping).
    pub fn refuse_new(&mut self) -> Result<()> {
        let mut config = self.config.get(&0, 0).unwrap_or_default();
        config.stopping = 1;
        self.config
            .set(0, config, 0)
            .context("cannot write the program's configuration")
    }

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

    pub fn policy(&self) -> Policy {
        self.config
            .get(&0, 0)
            .ok()
            .and_then(|c| Policy::from_u32(c.policy))
            .unwrap_or(Policy::LeastLoaded)
    }

    /// The program's own counters, summed over CPUs.
    pub fn stats(&self) -> ProgramStats {
        let mut out = [0u64; stats::COUNT as usize];
        for (i, v) in out.iter_mut().enumerate() {
            if let Ok(per_cpu) = self.stats.get(&(i as u32), 0) {
                *v = per_cpu.iter().sum();
            }
        }
        out
    }

    /// Open connections of `slot`: assigned by the program and not yet closed.
    pub fn load_of(&self, slot: u32) -> u64 {
        balancer_common::maps::load(self.slots.assigned(slot), self.slots.closed(slot))
    }

    pub fn set_state(&self, slot: u32, state: SlotState) {
        self.slots.set_state(slot, state);
    }

    /// Rebuilds the sticky table for the slots now up among `0..slots`.
    pub fn refresh_sticky(&self, slots: u32) {
        let up: Vec<u32> = (0..slots)
            .filter(|&s| self.slots.state(s) == SlotState::Up)
            .collect();
        self.sticky
            .store_all(crate::sticky::table(&up).into_iter().map(u64::from));
    }

    /// (run time in ns, run count) the kernel measured for the steering program while
    /// `kernel.bpf_stats_enabled` was on; zeros otherwise.
    pub fn run_stats(&self) -> (u64, u64) {
        let program: Option<&SkReuseport> = self
            .bpf
            .program(names::PROGRAM)
            .and_then(|p| p.try_into().ok());
        run_stats(program.and_then(|p| p.info().ok()))
    }

    /// The same for the close tracker, which runs on every TCP state change on the host.
    pub fn tracker_run_stats(&self) -> (u64, u64) {
        let program: Option<&RawTracePoint> = self
            .bpf
            .program(names::CLOSES_PROGRAM)
            .and_then(|p| p.try_into().ok());
        run_stats(program.and_then(|p| p.info().ok()))
    }
}

fn run_stats(info: Option<aya::programs::ProgramInfo>) -> (u64, u64) {
    info.map_or((0, 0), |i| (i.run_time().as_nanos() as u64, i.run_count()))
}

/// The error for a program the kernel would not load: the capability hint when it is a
/// permission refusal, the verifier's words otherwise.
fn refused(e: aya::programs::ProgramError, what: &str) -> anyhow::Error {
    if e.to_string().contains("Operation not permitted") {
        anyhow!(capabilities::refused())
    } else {
        anyhow!("the kernel refused {what}: {e}")
    }
}

fn is_permission_error(e: &aya::EbpfError) -> bool {
    let s = format!("{e:?}");
    s.contains("EPERM") || s.contains("Operation not permitted") || s.contains("PermissionDenied")
}

/// Copies the program's records into the supervisor's log as they arrive.
pub async fn forward_log(log: ProgramLog) {
    // SAFETY: the logger owns its ring buffer fd for as long as the AsyncFd lives.
    let Ok(mut fd) = (unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(log, tokio::io::Interest::READABLE)
    }) else {
        return;
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
