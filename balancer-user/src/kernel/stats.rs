//! `STATS`: a per-CPU array of the program's own counters (selections, fallbacks, followed
//! segments...), per CPU so that counting never bounces a cache line between CPUs; summed here.

use aya::maps::{MapData, PerCpuArray};
use balancer_common::stats;

/// Counters the program keeps, summed over CPUs, indexed like [`stats::NAMES`].
pub type ProgramStats = [u64; stats::COUNT as usize];

/// The `STATS` map.
pub struct Stats(PerCpuArray<MapData, u64>);

impl Stats {
    pub(super) fn new(map: PerCpuArray<MapData, u64>) -> Stats {
        Stats(map)
    }

    /// The program's own counters, summed over CPUs; a counter that cannot be read reads 0.
    pub fn get(&self) -> ProgramStats {
        let mut out = [0u64; stats::COUNT as usize];
        for (i, v) in out.iter_mut().enumerate() {
            if let Ok(per_cpu) = self.0.get(&(i as u32), 0) {
                *v = per_cpu.iter().sum();
            }
        }
        out
    }
}
