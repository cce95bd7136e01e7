//! What the processes of a run used: CPU time and context switches, read before and after.
//!
//! A peer's processes are read from /proc: CPU time from /proc/PID/stat (utime + stime, which
//! keeps what exited threads used), context switches from every live thread's status
//! (voluntary + involuntary; the kernel keeps none for a process as a whole). The client is
//! this process, read through `getrusage(RUSAGE_SELF)`, which keeps what its client threads used
//! after they are gone.

use std::ops::Sub;

/// CPU seconds and context switches so far, of one process or a set of them.
#[derive(Clone, Copy, Default, Debug)]
pub struct Usage {
    /// User + system.
    pub cpu_seconds: f64,
    pub user_seconds: f64,
    pub switches: u64,
}

impl Sub for Usage {
    type Output = Usage;
    fn sub(self, before: Usage) -> Usage {
        Usage {
            cpu_seconds: self.cpu_seconds - before.cpu_seconds,
            user_seconds: self.user_seconds - before.user_seconds,
            switches: self.switches.saturating_sub(before.switches),
        }
    }
}

impl std::iter::Sum for Usage {
    fn sum<I: Iterator<Item = Usage>>(iter: I) -> Usage {
        iter.fold(Usage::default(), |a, b| Usage {
            cpu_seconds: a.cpu_seconds + b.cpu_seconds,
            user_seconds: a.user_seconds + b.user_seconds,
            switches: a.switches + b.switches,
        })
    }
}

/// What `pids` used so far; a process that is gone counts nothing.
pub fn of(pids: &[i32]) -> Usage {
    pids.iter().map(|&p| one(p).unwrap_or_default()).sum()
}

fn one(pid: i32) -> Option<Usage> {
    let process = procfs::process::Process::new(pid).ok()?;
    let stat = process.stat().ok()?;
    let switches = process
        .tasks()
        .ok()?
        .filter_map(|t| t.ok()?.status().ok())
        .map(|s| s.voluntary_ctxt_switches.unwrap_or(0) + s.nonvoluntary_ctxt_switches.unwrap_or(0))
        .sum();
    let tick = procfs::ticks_per_second() as f64;
    Some(Usage {
        cpu_seconds: (stat.utime + stat.stime) as f64 / tick,
        user_seconds: stat.utime as f64 / tick,
        switches,
    })
}

/// What this process (the client) used so far, its exited threads included.
pub fn own() -> Usage {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return Usage::default();
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Usage {
        cpu_seconds: secs(u.ru_utime) + secs(u.ru_stime),
        user_seconds: secs(u.ru_utime),
        switches: (u.ru_nvcsw + u.ru_nivcsw) as u64,
    }
}
