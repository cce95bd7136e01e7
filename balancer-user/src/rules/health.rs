//! Active health checks, the decision: what a run of probe results means for a worker. Pure, so
//! that the thresholds are tested apart from any probe.
//!
//! A worker in rotation leaves it at its first failed probe: a worker that answers errors
//! should get no new connection while it is looked at again. `fall` failures in a row restart
//! it; `rise` successes in a row while out of rotation put it back. A new worker starts
//! unknown and is in rotation once ready, like any worker; its first probe settles it.

/// What the supervisor knows of a worker's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum State {
    #[default]
    Unknown,
    Healthy,
    Unhealthy,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Unknown => "unknown",
            State::Healthy => "healthy",
            State::Unhealthy => "unhealthy",
        }
    }
}

/// What to do after a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    None,
    /// Take the worker out of rotation.
    Leave,
    /// Put it back.
    Rejoin,
    /// Restart it: `fall` probes failed in a row.
    Restart,
}

/// One worker's probe record.
#[derive(Clone, Copy, Debug, Default)]
pub struct Health {
    pub state: State,
    passed: u32,
    failed: u32,
}

impl Health {
    pub fn probe(&mut self, ok: bool, rise: u32, fall: u32) -> Transition {
        if ok {
            self.failed = 0;
            self.passed += 1;
            match self.state {
                State::Unhealthy if self.passed >= rise => {
                    self.state = State::Healthy;
                    Transition::Rejoin
                }
                State::Unhealthy => Transition::None,
                _ => {
                    self.state = State::Healthy;
                    Transition::None
                }
            }
        } else {
            self.passed = 0;
            self.failed += 1;
            if self.failed >= fall {
                self.failed = 0;
                return Transition::Restart;
            }
            if self.state == State::Unhealthy {
                return Transition::None;
            }
            self.state = State::Unhealthy;
            Transition::Leave
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(results: &[bool]) -> Vec<Transition> {
        let mut h = Health::default();
        results.iter().map(|&ok| h.probe(ok, 2, 3)).collect()
    }

    #[test]
    fn the_first_failure_leaves_rotation_and_fall_failures_restart() {
        use Transition::*;
        assert_eq!(
            run(&[true, false, false, false]),
            [None, Leave, None, Restart]
        );
    }

    #[test]
    fn rise_successes_rejoin_and_a_failure_in_between_starts_over() {
        use Transition::*;
        assert_eq!(
            run(&[false, true, false, true, true]),
            [Leave, None, None, None, Rejoin]
        );
    }

    #[test]
    fn a_new_worker_is_settled_by_its_first_probe() {
        let mut h = Health::default();
        assert_eq!(h.probe(true, 2, 3), Transition::None);
        assert_eq!(h.state, State::Healthy);
        let mut h = Health::default();
        assert_eq!(h.probe(false, 2, 3), Transition::Leave);
        assert_eq!(h.state, State::Unhealthy);
    }
}
