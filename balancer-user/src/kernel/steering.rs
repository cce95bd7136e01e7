//! [`Steering`]: the loaded programs and their maps, each part the type of its own file.
//! Everything the supervisor changes in the kernel goes through it.

use std::os::fd::{AsFd, AsRawFd};

use aya::{
    maps::{Map, MapError, PerCpuArray},
    Ebpf, EbpfLoader,
};
use balancer_common::{
    maps as names, policy, FlowKey, Policy, Slot, SlotState, OVERFLOW, SLOT_ENTRIES,
};

use super::{
    config, seeds, Config, Counters, Error, Flows, Mapped, Owners, ProgramLog, ProgramStats,
    Programs, Result, Sockets, Stats, Sticky, Workers,
};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/balancer"));

/// The loaded programs and their maps.
pub struct Steering {
    // Keeps the programs' fds; dropping them does not detach the steering program (see the
    // module docs).
    programs: Programs,
    logger: Option<ProgramLog>,
    config: Config,
    sockets: Sockets,
    owners: Owners,
    flows: Flows,
    workers: Workers,
    stats: Stats,
    pub slots: Mapped<Slot>,
    sticky: Sticky,
    counters: Counters,
}

impl Steering {
    /// Loads the three programs and creates their maps, with room for `flows` connections
    /// followed at once. Nothing is attached yet.
    ///
    /// # Errors
    ///
    /// [`Error::PermissionDenied`] with a one-line hint when the process lacks the capability,
    /// [`Error::Lacking`] naming the feature an older kernel lacks, and otherwise the kernel's
    /// refusal ([`Error::Load`], [`Error::Refused`]).
    ///
    /// # Minimum kernel version
    ///
    /// 5.17 (`bpf_loop`); `balancer check` lists each feature and the version that has it.
    pub fn load(flows: u32) -> Result<Steering> {
        let mut bpf = EbpfLoader::new()
            .map_max_entries(names::FLOWS_MAP, flows)
            .load(OBJECT)
            .map_err(Error::load)?;
        // Must be taken before the program is loaded: it owns the log map the program uses.
        let logger = aya_log::EbpfLogger::init(&mut bpf).map_err(Error::Log)?;
        Programs::load(&mut bpf)?;
        Steering::with_maps_of(bpf, logger)
    }

    /// Takes every map out of `bpf`, whose programs are loaded: the arrays shared as memory
    /// are mapped (and their fds closed), the per-CPU state is seeded and let go (the programs
    /// keep it alive).
    fn with_maps_of(mut bpf: Ebpf, logger: ProgramLog) -> Result<Steering> {
        for (name, what) in [
            (names::TICKETS_MAP, "round-robin tickets"),
            (names::RANDOM_MAP, "random generators"),
        ] {
            seeds::seed(take::<PerCpuArray<_, u64>>(&mut bpf, name)?, what)?;
        }
        Ok(Steering {
            logger: Some(logger),
            config: Config::new(take(&mut bpf, names::CONFIG_MAP)?),
            sockets: Sockets::new(take(&mut bpf, names::SOCKETS_MAP)?),
            owners: Owners::new(
                take(&mut bpf, names::OWNERS_MAP)?,
                take(&mut bpf, names::LISTENERS_MAP)?,
            ),
            flows: Flows::new(take(&mut bpf, names::FLOWS_MAP)?),
            workers: Workers::new(take(&mut bpf, names::WORKERS_MAP)?),
            stats: Stats::new(take(&mut bpf, names::STATS_MAP)?),
            slots: mapped(&mut bpf, names::SLOTS_MAP, SLOT_ENTRIES as usize)?,
            sticky: Sticky::new(mapped(
                &mut bpf,
                names::STICKY_MAP,
                policy::STICKY_TABLE as usize,
            )?),
            counters: Counters::new(mapped(&mut bpf, names::COUNTERS_MAP, 1)?),
            // Last: the maps above are taken out of it first.
            programs: Programs::new(bpf),
        })
    }
}

/// The map `name` of the loaded object, as the map type `T`.
fn take<T: TryFrom<Map, Error = MapError>>(bpf: &mut Ebpf, name: &'static str) -> Result<T> {
    let map = bpf.take_map(name).ok_or(Error::NoMap(name))?;
    T::try_from(map).map_err(Error::MapType)
}

/// The array map `name` (of `len` values) of the loaded object, mapped into memory.
fn mapped<T>(bpf: &mut Ebpf, name: &'static str, len: usize) -> Result<Mapped<T>> {
    Mapped::new(bpf.take_map(name).ok_or(Error::NoMap(name))?, name, len)
}

/// What the supervisor asks of the programs, each passed on to the part it is about.
impl Steering {
    /// Installs the steering program on the reuseport group `listener` belongs to.
    pub fn attach(&self, listener: impl AsFd) -> Result<()> {
        self.programs.attach(listener)
    }

    /// Writes the slot count and the policy into `CONFIG`, the rest as it was.
    pub fn configure(&mut self, slots: u32, policy: Policy) -> Result<()> {
        self.config.update(|c| {
            c.slots = slots;
            c.policy = policy as u32;
        })
    }

    /// Starts the close tracker for connections on `port`, whose listeners have `backlog`
    /// places in their accept queues.
    pub fn track(&mut self, port: u16, backlog: u32) -> Result<()> {
        self.config.update(|c| {
            c.port = port as u32;
            c.crowded = config::crowded(backlog);
        })?;
        self.programs.track_closes()
    }

    /// Puts the overflow listener, whose accept queue holds `room` connections, in the group's
    /// choices (`OVERFLOW`) and starts the taker tracker: from now on least-loaded sends a
    /// connection there when no slot is idle and the queue has room.
    pub fn enable_overflow(&mut self, listener: &(impl AsRawFd + AsFd), room: u32) -> Result<()> {
        self.insert(OVERFLOW, listener)?;
        self.programs.track_takes()?;
        self.config.update(|c| c.overflow = room.max(1))
    }

    /// Tells the program whether health probes are recorded (see [`Steering::record_flow`]).
    pub fn set_probing(&mut self, on: bool) -> Result<()> {
        self.config.update(|c| c.probing = on as u32)
    }

    /// From now on the program refuses new connections (the supervisor is stopping).
    pub fn refuse_new(&mut self) -> Result<()> {
        self.config.update(|c| c.stopping = 1)
    }

    /// The policy in force.
    pub fn policy(&self) -> Policy {
        self.config.policy()
    }

    /// Puts `listener` in `slot` of the socket array and marks it as the slot's (`OWNERS`).
    /// The socket must already be listening.
    pub fn insert(&mut self, slot: u32, listener: &(impl AsRawFd + AsFd)) -> Result<()> {
        self.owners.own(slot, listener, self.counted())?;
        self.sockets.set(slot, listener)
    }

    /// Takes `slot` out of the socket array (its socket then leaves the group's choices).
    pub fn remove(&mut self, slot: u32) -> Result<()> {
        self.sockets.clear(slot)
    }

    /// After a policy change: marks every listener again, so that connections opened from now
    /// on are counted at their close exactly when they were counted at their SYN.
    pub fn recount<'a, L: AsRawFd + AsFd + 'a>(
        &mut self,
        listeners: impl IntoIterator<Item = (u32, &'a L)>,
    ) -> Result<()> {
        // One configuration read for the whole group.
        let counted = self.counted();
        for (slot, listener) in listeners {
            self.owners.own(slot, listener, counted)?;
        }
        Ok(())
    }

    /// Whether a listener's connections are counted at their close: not under the `hash`
    /// policy, under which the program counts nothing when they open.
    fn counted(&self) -> bool {
        self.policy().counts()
    }

    /// Records `key` as a connection of `slot` (a health probe about to connect).
    pub fn record_flow(&mut self, key: FlowKey, slot: u32) -> Result<()> {
        self.flows.record(key, slot)
    }

    /// The slot `key`'s connection was sent to, if it is recorded.
    pub fn flow_slot(&self, key: &FlowKey) -> Option<u32> {
        self.flows.slot(key)
    }

    /// Removes `key`'s record; true if this call removed it (and so must count its close).
    pub fn forget_flow(&mut self, key: &FlowKey) -> bool {
        self.flows.forget(key)
    }

    /// Tells the taker tracker that process `pid` is `slot`'s worker.
    pub fn worker_started(&mut self, pid: u32, slot: u32) {
        self.workers.started(pid, slot);
    }

    /// Forgets worker `pid` (it exited).
    pub fn worker_exited(&mut self, pid: u32) {
        self.workers.exited(pid);
    }

    /// Open connections of `slot`: assigned by the program and not yet closed.
    pub fn load_of(&self, slot: u32) -> u64 {
        self.slots.load(slot)
    }

    pub fn set_state(&self, slot: u32, state: SlotState) {
        self.slots.set_state(slot, state);
    }

    /// Rebuilds the sticky table for the slots now up among `0..slots`.
    pub fn refresh_sticky(&self, slots: u32) {
        self.sticky.refresh(&self.slots, slots);
    }

    /// See [`Counters::close_passed_window`].
    pub fn close_passed_window(&self) -> bool {
        self.counters.close_passed_window()
    }

    /// Whether a recording window is open (or has passed and is not reset yet).
    pub fn recording(&self) -> bool {
        self.counters.recording()
    }

    /// The program's own counters, summed over CPUs.
    pub fn stats(&self) -> ProgramStats {
        self.stats.get()
    }

    /// See [`Programs::run_stats`].
    pub fn run_stats(&self) -> (u64, u64) {
        self.programs.run_stats()
    }

    /// See [`Programs::tracker_run_stats`].
    pub fn tracker_run_stats(&self) -> (u64, u64) {
        self.programs.tracker_run_stats()
    }

    /// The program's log records, to be drained into this process's log whenever its fd is
    /// readable (see [`super::forward_log`]); None once taken.
    pub fn take_log(&mut self) -> Option<ProgramLog> {
        self.logger.take()
    }
}
