//! Telling a stalled worker from a busy one.
//!
//! A worker is stalled when connections wait in its accept queue and it has accepted none of
//! them for the stall timeout: alive, but its event loop is stuck. The supervisor samples each
//! slot a few times a second: the number of connections the program sent to the slot and the
//! length of its accept queue. What arrived minus what the queue grew by is what the worker
//! accepted, whatever the worker is and whether or not it reports anything.

use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    None,
    /// Queue non-empty and nothing accepted for the whole timeout.
    Stalled,
    /// Accepted again.
    Recovered,
}

#[derive(Clone, Debug, Default)]
pub struct StallWatch {
    previous: Option<(u64, u32)>,
    waiting_since: Option<Instant>,
    stalled: bool,
}

impl StallWatch {
    pub fn is_stalled(&self) -> bool {
        self.stalled
    }

    /// Forgets the history (a new worker took the slot).
    pub fn reset(&mut self) {
        *self = StallWatch::default();
    }

    /// One sample: `assigned` connections so far, `queued` waiting now.
    pub fn sample(
        &mut self,
        assigned: u64,
        queued: u32,
        now: Instant,
        timeout: Duration,
    ) -> Transition {
        let (accepted, shrank) = match self.previous {
            Some((a, q)) => (
                assigned.saturating_sub(a) as i64 - (queued as i64 - q as i64),
                queued < q,
            ),
            None => (0, false),
        };
        self.previous = Some((assigned, queued));
        // One connection's worth is noise: a connection counted as assigned at its SYN may
        // reach the queue only after the sample, and then looks accepted one sample later.
        if queued == 0 || shrank || accepted > 1 {
            self.waiting_since = None;
            if self.stalled {
                self.stalled = false;
                return Transition::Recovered;
            }
            return Transition::None;
        }
        let since = *self.waiting_since.get_or_insert(now);
        if !self.stalled && now.duration_since(since) >= timeout {
            self.stalled = true;
            return Transition::Stalled;
        }
        Transition::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(1);

    fn at(ms: u64, base: Instant) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn a_queue_that_never_shrinks_is_a_stall_after_the_timeout() {
        let base = Instant::now();
        let mut w = StallWatch::default();
        assert_eq!(w.sample(10, 3, at(0, base), T), Transition::None);
        assert_eq!(
            w.sample(12, 5, at(500, base), T),
            Transition::None,
            "2 arrived, queue +2: none accepted"
        );
        assert_eq!(w.sample(12, 5, at(999, base), T), Transition::None);
        assert_eq!(w.sample(12, 5, at(1000, base), T), Transition::Stalled);
        assert!(w.is_stalled());
        assert_eq!(
            w.sample(12, 5, at(3000, base), T),
            Transition::None,
            "reported once"
        );
        assert_eq!(
            w.sample(12, 4, at(3100, base), T),
            Transition::Recovered,
            "one accepted"
        );
        assert!(!w.is_stalled());
    }

    #[test]
    fn a_busy_worker_that_keeps_accepting_is_not_stalled() {
        let base = Instant::now();
        let mut w = StallWatch::default();
        // 10 arrive per sample, the queue grows by 8: 2 accepted each time.
        for i in 0..40 {
            let t = w.sample(10 * i, (8 * i) as u32, at(100 * i, base), T);
            assert_eq!(t, Transition::None, "sample {i}");
        }
    }

    #[test]
    fn an_empty_queue_is_never_a_stall() {
        let base = Instant::now();
        let mut w = StallWatch::default();
        for i in 0..50 {
            assert_eq!(w.sample(0, 0, at(100 * i, base), T), Transition::None);
        }
    }
}
