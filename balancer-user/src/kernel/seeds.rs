//! The program's per-CPU state, seeded at load: `TICKETS`, each CPU's round-robin ticket, and
//! `RANDOM`, each CPU's random generator state. Per CPU because a value every CPU writes on
//! every selection would be a cache line bouncing between them; seeded because every CPU's
//! copy starts at 0, and CPUs that start alike stay in step (the same round-robin slot first,
//! the same random draws).

use anyhow::{anyhow, Context as _, Result};
use aya::{
    maps::{MapData, PerCpuArray, PerCpuValues},
    util::nr_cpus,
};

/// Gives every CPU's copy of the one value of `map` a random start.
pub(super) fn seed(map: &mut PerCpuArray<MapData, u64>, what: &str) -> Result<()> {
    let cpus = nr_cpus()
        .map_err(|(_, e)| e)
        .context("cannot count the possible CPUs")?;
    let values = (0..cpus)
        .map(|_| getrandom::u64())
        .collect::<Result<Vec<u64>, _>>()
        .map_err(|e| anyhow!("cannot read random numbers from the kernel: {e}"))?;
    map.set(0, PerCpuValues::try_from(values)?, 0)
        .with_context(|| format!("cannot seed the program's {what}"))
}
