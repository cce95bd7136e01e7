//! The kernel objects: the steering program, the close tracker and their maps, one file each.
//!
//! Loading runs the verifier over the program (it proves every path terminates and every map
//! access is in bounds) and creates the maps. Attaching sets `SO_ATTACH_REUSEPORT_EBPF` on one
//! listener, which installs the program for the listener's whole `SO_REUSEPORT` group: from then
//! on the kernel asks it, for each new connection, which listener of the group gets it. The
//! program stays attached until every socket of the group is closed (or it is detached), whether
//! or not this process still holds the program's fd. The close tracker is a BTF tracepoint
//! (the kernel's type information, /sys/kernel/btf/vmlinux, describes its arguments): it stays
//! attached while this process holds its link, and the kernel detaches it at exit.
//!
//! [`steering`]: the `SK_REUSEPORT` program, attached to the listeners, and the `CONFIG` it
//! reads. [`tracker`]: the close tracker. The maps: [`sockets`] (`SOCKETS`, the listeners the
//! program chooses among), [`slots`] (`SLOTS`, each slot's state, weight and counters),
//! [`takes`]: the taker tracker and `WORKERS`, for the overflow queue.
//! [`owners`] (`OWNERS` and `LISTENERS`, each listener's slot, on the socket and by cookie),
//! [`flows`] (`FLOWS`, the few connections with a record), [`counters`] (`COUNTERS`, the window
//! in which records are honoured), [`sticky`] (`STICKY`), [`stats`] (`STATS`, the program's own
//! counters), [`seeds`] (`TICKETS` and `RANDOM`, the program's per-CPU state), [`log`] (the
//! program's log records). [`mapped`]: how `SLOTS`, `STICKY` and `COUNTERS` are shared memory.

mod counters;
mod flows;
mod log;
mod mapped;
mod owners;
mod seeds;
mod slots;
mod sockets;
mod stats;
mod steering;
mod sticky;
mod takes;
mod tracker;

use std::os::fd::AsFd;

use anyhow::{anyhow, Context as _, Result};
use aya::{
    maps::{Array, MapData, PerCpuArray, ReusePortSockArray, SkStorage},
    programs::{BtfTracePoint, SkReuseport},
    Btf, Ebpf, EbpfLoader,
};
use balancer_common::{maps as names, policy, Config, Slot, SLOT_ENTRIES};

use crate::capabilities;
pub use flows::key as flow_key;
pub use log::{forward_log, ProgramLog};
pub use mapped::Mapped;
pub use stats::ProgramStats;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/balancer"));

/// The loaded programs and their maps: everything the supervisor changes in the kernel goes
/// through it.
pub struct Steering {
    // Keeps the program's fd; dropping it does not detach the program (see the module docs).
    bpf: Ebpf,
    logger: Option<ProgramLog>,
    sockets: ReusePortSockArray<MapData>,
    config: Array<MapData, Config>,
    stats: PerCpuArray<MapData, u64>,
    owners: SkStorage<MapData, balancer_common::maps::Owner>,
    listeners: aya::maps::HashMap<MapData, u64, u32>,
    workers: aya::maps::HashMap<MapData, u32, u32>,
    flows: aya::maps::HashMap<MapData, balancer_common::maps::FlowKey, balancer_common::maps::Flow>,
    pub slots: Mapped<Slot>,
    sticky: Mapped<u64>,
    counters: Mapped<u64>,
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
                    lacking(&e).unwrap_or_else(|| anyhow!("cannot load the steering program: {e}"))
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
        let btf = Btf::from_sys_fs().map_err(|e| {
            anyhow!(
                "cannot read the kernel's type information (/sys/kernel/btf/vmlinux: {e}): \
                 the close tracker needs a kernel built with CONFIG_DEBUG_INFO_BTF=y, as every \
                 major distribution's is"
            )
        })?;
        let tracker: &mut BtfTracePoint = bpf
            .program_mut(names::CLOSES_PROGRAM)
            .context("the object file has no close tracker")?
            .try_into()?;
        tracker
            .load(names::CLOSES_TRACEPOINT, &btf)
            .map_err(|e| refused(e, "the close tracker"))?;
        let takes: &mut BtfTracePoint = bpf
            .program_mut(names::TAKES_PROGRAM)
            .context("the object file has no taker tracker")?
            .try_into()?;
        takes
            .load(names::TAKES_TRACEPOINT, &btf)
            .map_err(|e| refused(e, "the taker tracker"))?;

        let take = |bpf: &mut Ebpf, name: &str| {
            bpf.take_map(name)
                .with_context(|| format!("the object file has no map {name}"))
        };
        let sockets = ReusePortSockArray::try_from(take(&mut bpf, names::SOCKETS_MAP)?)?;
        let config = Array::try_from(take(&mut bpf, names::CONFIG_MAP)?)?;
        let stats = PerCpuArray::try_from(take(&mut bpf, names::STATS_MAP)?)?;
        let owners = SkStorage::try_from(take(&mut bpf, names::OWNERS_MAP)?)?;
        let listeners = aya::maps::HashMap::try_from(take(&mut bpf, names::LISTENERS_MAP)?)?;
        let workers = aya::maps::HashMap::try_from(take(&mut bpf, names::WORKERS_MAP)?)?;
        let flows = aya::maps::HashMap::try_from(take(&mut bpf, names::FLOWS_MAP)?)?;
        for (name, what) in [
            (names::TICKETS_MAP, "round-robin tickets"),
            (names::RANDOM_MAP, "random generators"),
        ] {
            seeds::seed(&mut PerCpuArray::try_from(take(&mut bpf, name)?)?, what)?;
        }
        let slots = mapped(&mut bpf, names::SLOTS_MAP, SLOT_ENTRIES as usize)?;
        let sticky = mapped(&mut bpf, names::STICKY_MAP, policy::STICKY_TABLE as usize)?;
        let counters = mapped(&mut bpf, names::COUNTERS_MAP, 1)?;
        Ok(Steering {
            bpf,
            logger: Some(logger),
            sockets,
            config,
            stats,
            owners,
            listeners,
            workers,
            flows,
            slots,
            sticky,
            counters,
        })
    }
}

/// Takes the array map `name` (of `len` values) out of `bpf` and maps it into memory. The
/// mapping keeps the map alive: its fd is closed on return.
fn mapped<T>(bpf: &mut Ebpf, name: &str, len: usize) -> Result<Mapped<T>> {
    match bpf.take_map(name) {
        Some(aya::maps::Map::Array(m)) => Mapped::with_len(m.fd().as_fd(), len),
        Some(_) => Err(anyhow!("map {name} is not an array")),
        None => Err(anyhow!("the object file has no map {name}")),
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
        lacking(&e).unwrap_or_else(|| anyhow!("the kernel refused {what}: {e}"))
    }
}

/// On an older kernel, the feature it lacks says more than the verifier's pages: the probes of
/// `balancer check` name it and the version that has it.
/// The kernel's own words stay available with `RUST_LOG=debug`.
fn lacking(e: &dyn std::fmt::Display) -> Option<anyhow::Error> {
    let line = crate::check::lacking()?;
    ::log::debug!("the kernel's words: {e}");
    Some(anyhow!(line))
}

fn is_permission_error(e: &aya::EbpfError) -> bool {
    let s = format!("{e:?}");
    s.contains("EPERM") || s.contains("Operation not permitted") || s.contains("PermissionDenied")
}
