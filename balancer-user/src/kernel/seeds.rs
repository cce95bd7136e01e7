//! The program's per-CPU state, seeded at load: `TICKETS`, each CPU's round-robin ticket, and
//! `RANDOM`, each CPU's random generator state. Per CPU because a value every CPU writes on
//! every selection would be a cache line bouncing between them; seeded because every CPU's
//! copy starts at 0, and CPUs that start alike stay in step (the same round-robin slot first,
//! the same random draws).

use aya::{
    maps::{MapData, PerCpuArray, PerCpuValues},
    util::nr_cpus,
};

use super::{Error, Result};

/// Gives every CPU's copy of the one value of `map` (the program's `what`) a random start.
///
/// # Errors
///
/// [`Error::Cpus`] and [`Error::Random`] when the numbers cannot be had, [`Error::Seed`] when
/// the kernel refuses the write.
pub(super) fn seed(mut map: PerCpuArray<MapData, u64>, what: &'static str) -> Result<()> {
    let cpus = nr_cpus().map_err(|(_, e)| Error::Cpus(e))?;
    let values = (0..cpus)
        .map(|_| getrandom::u64())
        .collect::<Result<Vec<u64>, _>>()
        .map_err(Error::Random)?;
    let values = PerCpuValues::try_from(values).map_err(Error::PerCpu)?;
    map.set(0, values, 0)
        .map_err(|source| Error::Seed { what, source })
}
