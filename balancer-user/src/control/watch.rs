//! `balancer status --watch`: a live view of the slots, refreshed once a second.
//!
//! On a terminal it redraws in place, with a bar per slot scaled to the busiest slot and the
//! connections per second each slot received since the previous refresh. Piped, it prints one
//! plain table per refresh, so that `balancer status --watch | tee log` stays readable.

use std::{
    io::{IsTerminal as _, Write as _},
    path::Path,
    time::{Duration, Instant},
};

use crate::control::{self, Error, Request, Result, Status};

const BAR: usize = 30;

/// Renders one frame: `previous` (with its time) gives the per-second rates.
pub fn frame(status: &Status, previous: Option<(&Status, Duration)>) -> String {
    let max_load = status
        .slots
        .iter()
        .map(|s| s.load)
        .max()
        .unwrap_or(0)
        .max(1);
    let mut out = format!(
        "balancer pid {} on {}, policy {}\n",
        status.pid, status.listen, status.policy
    );
    out.push_str("SLOT  STATE     PID      LOAD  QUEUED  CONN/S  LOAD BAR\n");
    for s in &status.slots {
        let rate = previous
            .and_then(|(p, dt)| {
                let before = p.slots.iter().find(|x| x.slot == s.slot)?;
                Some(s.assigned.saturating_sub(before.assigned) as f64 / dt.as_secs_f64().max(1e-3))
            })
            .map_or("-".to_string(), |r| format!("{r:.0}"));
        let filled = (s.load as usize * BAR).div_ceil(max_load as usize).min(BAR);
        out.push_str(&format!(
            "{:<5} {:<9} {:<8} {:>4}  {:>6}  {:>6}  {}{}\n",
            s.slot,
            s.state,
            s.pid.map_or("-".into(), |p| p.to_string()),
            s.load,
            s.queued,
            rate,
            "#".repeat(filled),
            ".".repeat(BAR - filled)
        ));
    }
    out
}

/// Redraws until interrupted; a closed stdout (`| head`) ends it quietly.
pub fn run(path: &Path) -> Result<()> {
    match watch(path) {
        Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

fn watch(path: &Path) -> Result<()> {
    let tty = std::io::stdout().is_terminal();
    let mut previous: Option<(Status, Instant)> = None;
    loop {
        let answer = control::call(path, &Request::Status)?;
        let status: Status = serde_json::from_str(&answer).map_err(Error::BadStatus)?;
        let now = Instant::now();
        let text = frame(&status, previous.as_ref().map(|(s, t)| (s, now - *t)));
        let mut out = std::io::stdout().lock();
        if tty {
            // Home the cursor and clear the screen: a full redraw, no flicker of partial lines.
            write!(out, "\x1b[H\x1b[2J{text}")?;
        } else {
            writeln!(out, "{text}")?;
        }
        out.flush()?;
        previous = Some((status, now));
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{SlotStatus, State};

    fn status(assigned: [u64; 2], load: [u64; 2]) -> Status {
        Status {
            name: "8080".into(),
            metrics: None,
            pid: 1,
            listen: "127.0.0.1:8080".into(),
            policy: "least-loaded".into(),
            command: "w".into(),
            overflow: None,
            program: Default::default(),
            reconciliation: Default::default(),
            slots: (0..2)
                .map(|i| SlotStatus {
                    slot: i as u32,
                    state: State::Up,
                    pid: Some(10 + i as u32),
                    load: load[i],
                    assigned: assigned[i],
                    open: 0,
                    handshaking: 0,
                    corrections: 0,
                    closed: 0,
                    queued: 0,
                    restarts: 0,
                    stalls: 0,
                    uptime_seconds: None,
                    last_exit: None,
                    last_exit_code: None,
                    last_exit_signal: None,
                    last_stderr: Vec::new(),
                    log_lines: 0,
                    recycled_memory: 0,
                    recycled_requests: 0,
                    memory_bytes: None,
                    health: None,
                    probe_seconds: None,
                    health_failures: 0,
                    health_restarts: 0,
                    log_dropped: 0,
                    channel: None,
                })
                .collect(),
        }
    }

    #[test]
    fn bars_scale_to_the_busiest_slot_and_rates_use_the_interval() {
        let before = status([100, 100], [0, 0]);
        let now = status([300, 150], [10, 5]);
        let f = frame(&now, Some((&before, Duration::from_secs(2))));
        let lines: Vec<&str> = f.lines().collect();
        assert!(lines[2].contains(&"#".repeat(BAR)), "{f}");
        assert!(
            lines[3].contains(&format!("{}{}", "#".repeat(BAR / 2), ".".repeat(BAR / 2))),
            "{f}"
        );
        assert!(lines[2].contains("   100  "), "200 connections in 2 s: {f}");
        assert!(lines[3].contains("    25  "), "50 connections in 2 s: {f}");
    }
}
