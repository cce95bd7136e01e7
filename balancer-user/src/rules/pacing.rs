//! When the kernel is read for the [accounting](super::accounting): on a
//! `--reconcile-interval` tick, unless nothing moved since a reading that found the books true,
//! or the readings have spent their share of a core.
//!
//! A reading walks every open connection of the port (sock_diag's dump, then one `readlinkat`
//! per descriptor of each worker), so its cost grows with the connections held: a few
//! milliseconds with a few open, a third of a second at 100k. It is a safety net behind the
//! kernel's own counting, and must not cost the host more than [`SHARE`] of a core at any size:
//!
//! - **Nothing moved.** The supervisor takes a fingerprint of what a drift would change on
//!   every tick, for a few system calls: each slot's counters, accept queue and processes, and
//!   the network namespace's count of TCP sockets (a close the programs missed still takes its
//!   socket out of the kernel's tables). A tick whose fingerprint is the one of a reading that
//!   found every slot true, with no handshake under way, reads nothing; one reading every
//!   [`QUIET`] still does, in case something no fingerprint sees moved.
//! - **The share.** The readings' CPU time comes out of a budget that grows by [`SHARE`] of the
//!   time that passes, up to [`SHARE`] of [`WINDOW`]: a burst of readings at every tick while the
//!   budget lasts, and at most [`SHARE`] of a core over any longer stretch. A reading that
//!   overdraws the budget holds the next ones off until it is paid back, so at 100k open
//!   connections readings come about a minute apart, and a drift is corrected two readings
//!   later.

use std::time::Duration;

/// The share of one core the readings may take, at most, over [`WINDOW`].
pub const SHARE: f64 = 0.005;
/// The stretch of time over which the readings may gather their share into a burst.
pub const WINDOW: Duration = Duration::from_secs(300);
/// The longest time without a reading while nothing moves, budget allowing.
pub const QUIET: Duration = Duration::from_secs(30);

/// Which reconciliation ticks read the kernel.
#[derive(Debug)]
pub struct Pacing {
    tick: Duration,
    /// CPU seconds the readings may still take; below zero while a costly one is paid back.
    budget: f64,
    /// The fingerprint of the last reading, if it found the books true.
    settled_on: Option<u64>,
    /// Ticks since the last reading.
    since: u32,
}

impl Pacing {
    pub fn new(tick: Duration) -> Pacing {
        Pacing {
            tick,
            budget: cap(),
            settled_on: None,
            since: 0,
        }
    }

    /// Whether this tick, which found `fingerprint`, reads the kernel. Counts the tick.
    pub fn due(&mut self, fingerprint: u64) -> bool {
        self.budget = (self.budget + SHARE * self.tick.as_secs_f64()).min(cap());
        self.since = self.since.saturating_add(1);
        if self.budget < 0.0 {
            return false;
        }
        let quiet = self.settled_on == Some(fingerprint);
        !quiet || self.tick * self.since >= QUIET
    }

    /// A reading took `cost` of CPU.
    pub fn read(&mut self, cost: Duration) {
        self.budget -= cost.as_secs_f64();
        self.settled_on = None;
        self.since = 0;
    }

    /// The last reading, which started on a tick with `fingerprint`, found every slot true and
    /// no handshake under way.
    pub fn settled(&mut self, fingerprint: u64) {
        self.settled_on = Some(fingerprint);
    }

    /// How long ago the last reading was taken, to a tick.
    pub fn since(&self) -> Duration {
        self.tick * self.since
    }
}

/// The most CPU time the readings may gather.
fn cap() -> f64 {
    SHARE * WINDOW.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(500);

    /// Readings over `ticks` ticks that each find `fingerprint` and cost `cost`.
    fn readings(p: &mut Pacing, ticks: u32, cost: Duration, fp: impl Fn(u32) -> u64) -> u32 {
        let mut n = 0;
        for t in 0..ticks {
            let f = fp(t);
            if p.due(f) {
                p.read(cost);
                n += 1;
            }
        }
        n
    }

    #[test]
    fn cheap_readings_of_moving_books_come_every_tick() {
        let mut p = Pacing::new(TICK);
        // 2.5 ms a tick is the share exactly: it never runs out.
        let n = readings(&mut p, 10_000, Duration::from_micros(2_500), |t| t as u64);
        assert_eq!(n, 10_000);
    }

    #[test]
    fn costly_readings_stay_within_the_share_after_a_burst() {
        for ms in [6u64, 50, 350, 5_000] {
            let mut p = Pacing::new(TICK);
            let ticks = 20_000; // 10,000 s
            let cost = Duration::from_millis(ms);
            let n = readings(&mut p, ticks, cost, |t| t as u64);
            let spent = cost.as_secs_f64() * n as f64;
            let wall = TICK.as_secs_f64() * ticks as f64;
            // At most the share over the run, plus the burst gathered before it, plus one
            // reading's overdraft.
            assert!(
                spent <= SHARE * wall + cap() + cost.as_secs_f64(),
                "{ms} ms readings: {n} in {wall} s spent {spent} s"
            );
            // And no fewer than the share allows: the budget is spent, not hoarded.
            assert!(spent >= SHARE * wall, "{ms} ms: {n} readings, {spent} s");
        }
    }

    #[test]
    fn a_burst_reads_every_tick_until_the_budget_runs_out() {
        let mut p = Pacing::new(TICK);
        // 10 ms a tick against 2.5 ms earned: 7.5 ms a tick out of 1.5 s, 200 ticks.
        let n = readings(&mut p, 200, Duration::from_millis(10), |t| t as u64);
        assert_eq!(n, 200);
        let n = readings(&mut p, 40, Duration::from_millis(10), |t| t as u64);
        assert!(n <= 12, "{n} readings once the budget is spent");
    }

    #[test]
    fn nothing_moved_since_a_true_reading_reads_only_every_quiet_period() {
        let mut p = Pacing::new(TICK);
        assert!(p.due(7));
        p.read(Duration::from_millis(1));
        p.settled(7);
        let quiet_ticks = (QUIET.as_secs_f64() / TICK.as_secs_f64()) as u32;
        for _ in 1..quiet_ticks {
            assert!(!p.due(7));
        }
        assert!(p.due(7), "one reading every {QUIET:?} even so");
        p.read(Duration::from_millis(1));
        p.settled(7);
        assert!(p.due(8), "something moved");
    }

    #[test]
    fn a_reading_that_found_a_difference_is_followed_at_the_next_tick() {
        let mut p = Pacing::new(TICK);
        assert!(p.due(7));
        p.read(Duration::from_millis(1));
        assert!(
            p.due(7),
            "the difference needs a second reading to be corrected"
        );
    }
}
