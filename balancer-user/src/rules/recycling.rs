//! When a worker is due for recycling: its resident memory passed `--max-memory`, or it was
//! sent its request budget, `--max-requests` plus up to `--max-requests-jitter` more, drawn per
//! worker so that workers started together do not all recycle together.

/// When to recycle.
#[derive(Clone, Copy, Debug, Default)]
pub struct Limits {
    /// Resident set, in bytes.
    pub max_memory: Option<u64>,
    pub max_requests: Option<u64>,
    pub jitter: u64,
}

impl Limits {
    /// Whether any limit is set at all.
    pub fn any(&self) -> bool {
        self.max_memory.is_some() || self.max_requests.is_some()
    }
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
/// worker's pid and start time), so that workers started together recycle apart.
pub fn budget(limits: &Limits, seed: u64) -> Option<u64> {
    let max = limits.max_requests?;
    // SplitMix64's finaliser: a fixed, well-spread function of the seed.
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    Some(max + z % (limits.jitter + 1))
}

/// Whether a serving worker is due, given its resident memory (if read) and the requests it
/// was sent against its budget: memory is looked at first.
pub fn due(
    limits: &Limits,
    memory: Option<u64>,
    served: u64,
    budget: Option<u64>,
) -> Option<Reason> {
    if let (Some(max), Some(rss)) = (limits.max_memory, memory) {
        if rss > max {
            return Some(Reason::Memory);
        }
    }
    budget.filter(|&b| served >= b).map(|_| Reason::Requests)
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

    #[test]
    fn memory_over_the_limit_comes_before_the_budget() {
        let limits = Limits {
            max_memory: Some(100),
            max_requests: Some(10),
            jitter: 0,
        };
        assert_eq!(due(&limits, Some(101), 10, Some(10)), Some(Reason::Memory));
        assert_eq!(
            due(&limits, Some(100), 10, Some(10)),
            Some(Reason::Requests)
        );
        assert_eq!(due(&limits, None, 9, Some(10)), None);
        assert_eq!(due(&Limits::default(), Some(1 << 40), 1 << 40, None), None);
    }
}
