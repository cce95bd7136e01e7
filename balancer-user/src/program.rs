//! The steering program and its maps, as loaded into the kernel.
//!
//! Loading runs the verifier over the program (it proves every path terminates and every map
//! access is in bounds) and creates the maps. Attaching sets `SO_ATTACH_REUSEPORT_EBPF` on one
//! listener, which installs the program for the listener's whole `SO_REUSEPORT` group: from then
//! on the kernel asks it, for each new connection, which listener of the group gets it. The
//! program stays attached until every socket of the group is closed (or it is detached), whether
//! or not this process still holds the program's fd.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::programs::{links::CgroupAttachMode, SockOps};
use aya::{
    maps::{Array, MapData, PerCpuArray, ReusePortSockArray},
    programs::SkReuseport,
    Ebpf, EbpfLoader,
};
use balancer_common::{
    maps::{self as names, TRACK_KERNEL},
    policy, stats, Config, Policy, Report, Slot, SlotState,
};

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
    reports_map: MapData,
    pub slots: Mapped<Slot>,
    pub reports: Mapped<Report>,
    sticky: Mapped<u64>,
}

impl Steering {
    /// Loads the program and creates its maps. Fails with a one-line hint when the process lacks
    /// the capability to do so.
    pub fn load() -> Result<Steering> {
        let mut bpf = EbpfLoader::new().load(OBJECT).map_err(|e| {
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
        program.load().map_err(|e| {
            if e.to_string().contains("Operation not permitted") {
                anyhow!(capabilities::refused())
            } else {
                anyhow!("the kernel refused the steering program: {e}")
            }
        })?;

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
        let reports_map = match take(&mut bpf, names::REPORTS_MAP)? {
            aya::maps::Map::Array(m) => m,
            _ => bail!("map {} is not an array", names::REPORTS_MAP),
        };
        let sticky_map = match take(&mut bpf, names::STICKY_MAP)? {
            aya::maps::Map::Array(m) => m,
            _ => bail!("map {} is not an array", names::STICKY_MAP),
        };
        let sticky = Mapped::with_len(sticky_map.fd().as_fd(), policy::STICKY_TABLE as usize)?;
        drop(sticky_map);
        let slots = Mapped::new(slots_map.fd().as_fd())?;
        let reports = Mapped::new(reports_map.fd().as_fd())?;
        // The mapping keeps the map alive; the fd is not needed any more.
        drop(slots_map);
        Ok(Steering {
            bpf,
            logger: Some(logger),
            sockets,
            config,
            stats,
            reports_map,
            slots,
            reports,
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

    /// Chooses who reports closes for connections on `port`. With [`TRACK_KERNEL`], loads the
    /// close tracker and attaches it to this process's cgroup (v2), whose sockets include every
    /// connection accepted from the listeners; it stays attached while this process lives.
    pub fn track(&mut self, port: u16, tracking: u32) -> Result<()> {
        if tracking == TRACK_KERNEL {
            let cgroup = own_cgroup()?;
            let dir = std::fs::File::open(&cgroup)
                .with_context(|| format!("cannot open cgroup {}", cgroup.display()))?;
            let program: &mut SockOps = self
                .bpf
                .program_mut(names::CLOSES_PROGRAM)
                .context("the object file has no close tracker")?
                .try_into()?;
            program
                .load()
                .map_err(|e| anyhow!("the kernel refused the close tracker: {e}"))?;
            // A bpf_link (flags 0: links always coexist with other programs on the cgroup).
            // The link belongs to the program, which `self.bpf` keeps until this process exits;
            // the kernel then detaches it.
            program
                .attach(dir, CgroupAttachMode::Single)
                .with_context(|| {
                    format!(
                        "cannot attach the close tracker to cgroup {}",
                        cgroup.display()
                    )
                })?;
        }
        let mut config = self.config.get(&0, 0).unwrap_or_default();
        config.port = port as u32;
        config.tracking = tracking;
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

    /// The fd workers receive to report closes: the `REPORTS` map and nothing else.
    pub fn reports_fd(&self) -> BorrowedFd<'_> {
        self.reports_map.fd().as_fd()
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

    /// Open connections of `slot`: assigned by the program and not yet reported closed.
    pub fn load_of(&self, slot: u32) -> u64 {
        balancer_common::maps::load(self.slots.assigned(slot), self.reports.closed(slot))
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

    /// (run time in ns, run count) the kernel measured for the program while
    /// `kernel.bpf_stats_enabled` was on; zeros otherwise.
    pub fn run_stats(&self) -> (u64, u64) {
        let program: Option<&SkReuseport> = self
            .bpf
            .program(names::PROGRAM)
            .and_then(|p| p.try_into().ok());
        match program.and_then(|p| p.info().ok()) {
            Some(info) => (info.run_time().as_nanos() as u64, info.run_count()),
            None => (0, 0),
        }
    }
}

fn is_permission_error(e: &aya::EbpfError) -> bool {
    let s = format!("{e:?}");
    s.contains("EPERM") || s.contains("Operation not permitted") || s.contains("PermissionDenied")
}

/// This process's cgroup in the v2 hierarchy: where cgroup2 is mounted (from mountinfo) joined
/// with the path in /proc/self/cgroup's `0::` line.
fn own_cgroup() -> Result<std::path::PathBuf> {
    let hint = "kernel close tracking needs a cgroup v2 hierarchy; pass --load-from worker if the \
                workers report their own closes";
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mount = mounts
        .lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| left.split_whitespace().nth(4).map(str::to_string))?
        })
        .with_context(|| format!("no cgroup2 mount: {hint}"))?;
    let own = std::fs::read_to_string("/proc/self/cgroup")?;
    let path = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .with_context(|| format!("not in a cgroup v2 hierarchy: {hint}"))?;
    Ok(std::path::Path::new(&mount).join(path.trim_start_matches('/')))
}
