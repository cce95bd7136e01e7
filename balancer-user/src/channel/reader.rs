//! What a worker writes on its channel, taken line by line.
//!
//! Each line must be one JSON value of at most [`MAX_MESSAGE`] bytes, and a worker may write at
//! most [`Budget`]'s rate of them. A worker that breaks either rule (garbage, a line that never
//! ends, a flood) is cut off: the supervisor closes its end of that worker's channel and says why
//! once. The supervisor never holds more than one line per worker while reading, so no worker can
//! grow its memory; the worker's connections are not touched.

use std::time::Instant;

use tokio::io::AsyncReadExt as _;

use super::MAX_MESSAGE;

/// Messages a worker may write in a burst, and each second after that.
pub const BURST: f64 = 2000.0;
pub const PER_SECOND: f64 = 1000.0;

/// Why reading a worker's channel ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The worker closed its end (it exited) or the supervisor closed its own.
    Closed,
    /// The worker broke the rules: the reason, for the log and `status`.
    CutOff(String),
}

/// A token bucket: [`BURST`] messages at once, then [`PER_SECOND`].
pub struct Budget {
    tokens: f64,
    at: Instant,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            tokens: BURST,
            at: Instant::now(),
        }
    }
}

impl Budget {
    /// Spends one message at `now`; false when the worker is over its rate.
    pub fn spend(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * PER_SECOND).min(BURST);
        self.at = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// Splits what arrives into lines and checks each. Pure, so that it is tested without sockets.
#[derive(Default)]
pub struct Lines {
    pending: Vec<u8>,
    budget: Budget,
}

impl Lines {
    /// Takes `bytes` just read, handing each complete, valid message (without its newline) to
    /// `each`; Err with the reason the worker is cut off.
    pub fn feed(&mut self, bytes: &[u8], mut each: impl FnMut(&[u8])) -> Result<(), String> {
        let mut rest = bytes;
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            let (line, tail) = rest.split_at(i);
            rest = &tail[1..];
            if self.pending.len() + line.len() > MAX_MESSAGE {
                return Err(too_long());
            }
            let joined;
            let line = if self.pending.is_empty() {
                line
            } else {
                self.pending.extend_from_slice(line);
                joined = std::mem::take(&mut self.pending);
                &joined[..]
            };
            self.one(line, &mut each)?;
        }
        if self.pending.len() + rest.len() > MAX_MESSAGE {
            return Err(too_long());
        }
        self.pending.extend_from_slice(rest);
        Ok(())
    }

    fn one(&mut self, line: &[u8], each: &mut impl FnMut(&[u8])) -> Result<(), String> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        if serde_json::from_slice::<serde::de::IgnoredAny>(line).is_err() {
            let shown: String = String::from_utf8_lossy(line).chars().take(40).collect();
            return Err(format!("wrote a line that is not JSON ({shown:?})"));
        }
        if !self.budget.spend(Instant::now()) {
            return Err(format!(
                "flooded its channel (more than {PER_SECOND} messages a second)"
            ));
        }
        each(line);
        Ok(())
    }
}

fn too_long() -> String {
    format!("wrote a line longer than {} KiB", MAX_MESSAGE >> 10)
}

/// Reads `stream` until it closes or the worker is cut off, handing each message to `each`.
pub async fn read(mut stream: tokio::net::unix::OwnedReadHalf, mut each: impl FnMut(&[u8])) -> End {
    let mut lines = Lines::default();
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return End::Closed,
            Ok(n) => n,
        };
        if let Err(reason) = lines.feed(&buf[..n], &mut each) {
            return End::CutOff(reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn feed(lines: &mut Lines, bytes: &[u8]) -> (Vec<String>, Result<(), String>) {
        let mut got = Vec::new();
        let r = lines.feed(bytes, |m| got.push(String::from_utf8_lossy(m).into_owned()));
        (got, r)
    }

    #[test]
    fn splits_lines_across_reads() {
        let mut l = Lines::default();
        let (got, r) = feed(&mut l, b"{\"a\":1}\n\"rea");
        assert_eq!((got, r), (vec!["{\"a\":1}".to_string()], Ok(())));
        let (got, r) = feed(&mut l, b"dy\"\r\n\n[1,2]\n");
        assert_eq!(r, Ok(()));
        assert_eq!(got, ["\"ready\"", "[1,2]"]);
    }

    #[test]
    fn cuts_off_garbage_and_endless_lines() {
        let mut l = Lines::default();
        assert!(feed(&mut l, b"hello\n").1.unwrap_err().contains("not JSON"));
        let mut l = Lines::default();
        let long = vec![b'1'; MAX_MESSAGE + 1];
        assert!(feed(&mut l, &long)
            .1
            .unwrap_err()
            .contains("longer than 64 KiB"));
        let mut l = Lines::default();
        let exact = vec![b'1'; MAX_MESSAGE];
        assert_eq!(feed(&mut l, &exact).1, Ok(()));
        assert_eq!(feed(&mut l, b"\n").0.len(), 1);
    }

    #[test]
    fn a_flood_runs_out_of_budget() {
        let mut b = Budget::default();
        let t = Instant::now();
        assert!((0..BURST as usize).all(|_| b.spend(t)));
        assert!(!b.spend(t));
        assert!(
            b.spend(t + Duration::from_millis(10)),
            "refills at its rate"
        );
    }
}
