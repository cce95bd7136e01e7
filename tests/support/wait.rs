//! Waiting for a condition: polled, bounded in time, and failing the test with what it waited
//! for.

use std::time::{Duration, Instant};

/// Polls `cond` until it holds; panics after `within`, naming `what`.
pub fn wait_until(within: Duration, what: &str, cond: impl Fn() -> bool) {
    if poll(within, Duration::from_millis(5), cond, |&held| held).is_err() {
        panic!("{what}: not within {within:?}");
    }
}

/// Reads `probe` every `every` until `cond` holds on what it read: `Ok` with that reading, or
/// `Err` with the last one once `within` has passed, for the caller to show in its failure.
pub fn poll<T>(
    within: Duration,
    every: Duration,
    probe: impl Fn() -> T,
    cond: impl Fn(&T) -> bool,
) -> Result<T, T> {
    let deadline = Instant::now() + within;
    loop {
        let seen = probe();
        if cond(&seen) {
            return Ok(seen);
        }
        if Instant::now() >= deadline {
            return Err(seen);
        }
        std::thread::sleep(every);
    }
}
