//! When to restart a worker that exited, and when to stop trying.
//!
//! Delays double from `initial` up to `max` while the worker keeps failing, and start again from
//! `initial` once a worker has run for `stable`. A command that dies within `quick` of starting
//! `give_up_after` times in a row is broken (a typo, a missing file): restarting it forever would
//! only burn CPU, so the slot stays down and says why.

use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub initial: Duration,
    pub max: Duration,
    pub stable: Duration,
    pub quick: Duration,
    pub give_up_after: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            stable: Duration::from_secs(10),
            quick: Duration::from_secs(1),
            give_up_after: 5,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    RestartAfter(Duration),
    GiveUp,
}

#[derive(Clone, Debug, Default)]
pub struct Backoff {
    policy: Policy,
    failures: u32,
    quick_failures: u32,
}

impl Backoff {
    pub fn new(policy: Policy) -> Backoff {
        Backoff {
            policy,
            failures: 0,
            quick_failures: 0,
        }
    }

    /// Records an exit after the worker ran for `ran_for` and says what to do.
    pub fn on_exit(&mut self, ran_for: Duration) -> Decision {
        if ran_for >= self.policy.stable {
            self.failures = 0;
        }
        if ran_for < self.policy.quick {
            self.quick_failures += 1;
        } else {
            self.quick_failures = 0;
        }
        if self.quick_failures >= self.policy.give_up_after {
            return Decision::GiveUp;
        }
        let shift = self.failures.min(20);
        self.failures += 1;
        let delay = self
            .policy
            .initial
            .saturating_mul(1u32 << shift)
            .min(self.policy.max);
        Decision::RestartAfter(delay)
    }

    /// Consecutive quick failures so far.
    pub fn quick_failures(&self) -> u32 {
        self.quick_failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_to_the_cap() {
        let mut b = Backoff::new(Policy {
            give_up_after: 100,
            ..Policy::default()
        });
        let delays: Vec<_> = (0..9).map(|_| b.on_exit(2000 * MS)).collect();
        let ms = |d: Decision| match d {
            Decision::RestartAfter(d) => d.as_millis(),
            Decision::GiveUp => panic!("gave up"),
        };
        assert_eq!(
            delays.into_iter().map(ms).collect::<Vec<_>>(),
            [100, 200, 400, 800, 1600, 3200, 6400, 10000, 10000]
        );
    }

    #[test]
    fn a_stable_run_resets_the_delay() {
        let mut b = Backoff::new(Policy::default());
        for _ in 0..4 {
            b.on_exit(2000 * MS);
        }
        assert_eq!(
            b.on_exit(Duration::from_secs(60)),
            Decision::RestartAfter(100 * MS)
        );
    }

    #[test]
    fn gives_up_on_a_command_that_dies_at_once() {
        let mut b = Backoff::new(Policy::default());
        let decisions: Vec<_> = (0..5).map(|_| b.on_exit(5 * MS)).collect();
        assert!(decisions[..4]
            .iter()
            .all(|d| matches!(d, Decision::RestartAfter(_))));
        assert_eq!(decisions[4], Decision::GiveUp);
        // The total wait before giving up stays short and bounded: 100+200+400+800 ms.
        let waited: Duration = decisions[..4]
            .iter()
            .map(|d| match d {
                Decision::RestartAfter(d) => *d,
                Decision::GiveUp => Duration::ZERO,
            })
            .sum();
        assert_eq!(waited, 1500 * MS);
    }

    #[test]
    fn a_slow_failure_breaks_the_quick_streak() {
        let mut b = Backoff::new(Policy::default());
        for _ in 0..4 {
            b.on_exit(5 * MS);
        }
        assert!(matches!(b.on_exit(3000 * MS), Decision::RestartAfter(_)));
        assert_eq!(b.quick_failures(), 0);
    }
}
