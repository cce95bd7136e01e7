//! Recycling: a worker whose resident memory passed `--max-memory`, or that was sent
//! `--max-requests` new connections (plus up to `--max-requests-jitter` more, drawn per worker
//! so that workers started together do not all recycle together), is replaced the way a reload
//! replaces it: its successor starts on the same listener and is ready before the old worker
//! gets SIGTERM and finishes what it holds. Nothing queued or in flight is lost.
//!
//! The program sees connections, not the requests inside them: a request is counted per new
//! connection, exact for clients that close after each request, a lower bound under keep-alive.

use std::time::{Duration, Instant};

use super::{Inbox, Supervisor};

/// How often workers' memory is read (a /proc read per worker).
const MEMORY_EVERY: Duration = Duration::from_secs(1);

/// After a failed recycle (the successor never got ready), the slot is left alone this long.
const AFTER_FAILURE: Duration = Duration::from_secs(30);

/// When to recycle.
#[derive(Clone, Copy, Debug, Default)]
pub struct Limits {
    /// Resident set, in bytes.
    pub max_memory: Option<u64>,
    pub max_requests: Option<u64>,
    pub jitter: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Memory,
    Requests,
}

impl Reason {
    pub fn name(self) -> &'static str {
        match self {
            Reason::Memory => "memory",
            Reason::Requests => "requests",
        }
    }
}

/// A worker's request budget: the limit plus a jitter in `0..=jitter`, drawn from `seed` (the
/// worker's pid and start time), so that workers started together recycle apart. Pure.
pub fn budget(limits: &Limits, seed: u64) -> Option<u64> {
    let max = limits.max_requests?;
    // SplitMix64's finaliser: a fixed, well-spread function of the seed.
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    Some(max + z % (limits.jitter + 1))
}

/// The resident set of process `pid`, in bytes.
pub fn resident(pid: i32) -> Option<u64> {
    let status = procfs::process::Process::new(pid).ok()?.status().ok()?;
    status.vmrss.map(|kb| kb * 1024)
}

impl Supervisor {
    /// The first slot whose worker is due for recycling, if any; reads memory at most once a
    /// second.
    pub(super) fn due_recycle(&mut self) -> Option<(u32, Reason)> {
        let limits = self.opts.recycle;
        if limits.max_memory.is_none() && limits.max_requests.is_none() {
            return None;
        }
        let now = Instant::now();
        let read_memory =
            limits.max_memory.is_some() && self.memory_read.is_none_or(|t| now - t >= MEMORY_EVERY);
        if read_memory {
            self.memory_read = Some(now);
        }
        for (i, s) in self.slots.iter_mut().enumerate() {
            let Some(pid) = s.pid else { continue };
            if read_memory {
                s.memory = resident(pid.as_raw());
            }
            // Only a worker that is ready and serving; not twice while one is under way.
            if s.ready != s.generation || s.retiring.is_some() || s.recycle_after > now {
                continue;
            }
            if let (Some(max), Some(rss)) = (limits.max_memory, s.memory) {
                if rss > max {
                    return Some((i as u32, Reason::Memory));
                }
            }
            if let Some(budget) = s.request_budget {
                let served = self.steering.slots.assigned(i as u32) - s.assigned_at_start;
                if served >= budget {
                    return Some((i as u32, Reason::Requests));
                }
            }
        }
        None
    }

    /// Replaces `slot`'s worker (see the module docs).
    pub(super) async fn recycle(&mut self, slot: u32, reason: Reason, inbox: &mut Inbox) {
        let s = &self.slots[slot as usize];
        let old = s.pid;
        let detail = match reason {
            Reason::Memory => format!(
                "resident memory {} MiB over --max-memory {} MiB",
                s.memory.unwrap_or(0) >> 20,
                self.opts.recycle.max_memory.unwrap_or(0) >> 20
            ),
            Reason::Requests => format!(
                "{} requests, its budget",
                self.steering.slots.assigned(slot) - s.assigned_at_start
            ),
        };
        log::info!(
            "slot {slot}: recycling worker {} for its {}: {detail}",
            old.map_or(0, |p| p.as_raw()),
            reason.name()
        );
        match self.replace(&[slot], inbox).await {
            Ok(()) => {
                let s = &mut self.slots[slot as usize];
                match reason {
                    Reason::Memory => s.recycled_memory += 1,
                    Reason::Requests => s.recycled_requests += 1,
                }
            }
            Err(e) => {
                log::warn!("slot {slot}: recycling failed: {e}; trying again in {AFTER_FAILURE:?}");
                if let Some(s) = self.slots.get_mut(slot as usize) {
                    s.recycle_after = Instant::now() + AFTER_FAILURE;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_spread_over_the_jitter_and_stay_within_it() {
        let limits = Limits {
            max_requests: Some(1000),
            jitter: 100,
            ..Limits::default()
        };
        let budgets: Vec<u64> = (0..200)
            .map(|seed| budget(&limits, seed).unwrap())
            .collect();
        assert!(budgets.iter().all(|b| (1000..=1100).contains(b)));
        let distinct: std::collections::HashSet<_> = budgets.iter().collect();
        assert!(distinct.len() > 50, "{} distinct budgets", distinct.len());
        let none = Limits {
            max_requests: Some(7),
            ..Limits::default()
        };
        assert_eq!(budget(&none, 12345), Some(7));
        assert_eq!(budget(&Limits::default(), 1), None);
    }
}
