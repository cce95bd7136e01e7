//! `STATS`: a per-CPU array of the program's own counters (selections, fallbacks, followed
//! segments...), per CPU so that counting never bounces a cache line between CPUs; summed here.

use balancer_common::stats;

use super::Steering;

/// Counters the program keeps, summed over CPUs, indexed like [`stats::NAMES`].
pub type ProgramStats = [u64; stats::COUNT as usize];

impl Steering {
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
}
