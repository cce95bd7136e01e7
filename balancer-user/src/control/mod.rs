//! The control socket: a Unix stream socket, mode 0600, on which `balancer status` and
//! `balancer stop` talk to a running supervisor.
//!
//! One request per connection: a single line naming the command, at most [`MAX_REQUEST`] bytes,
//! read within [`REQUEST_TIMEOUT`]. The answer is one line of JSON. Anything else gets an error
//! line and the connection is closed; a client can neither crash nor stall the supervisor.

pub mod watch;

use std::{
    collections::BTreeMap,
    io::{BufRead as _, Write as _},
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};

pub const MAX_REQUEST: usize = 1024;
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// The directory every balancer of this user puts its control socket in, one socket per
/// service (`<name>.sock`), which is how `balancer ls` finds them: `$BALANCER_RUNTIME_DIR` if
/// set; for root `/run/balancer`; otherwise `$XDG_RUNTIME_DIR/balancer`, or `~/.balancer`. Never
/// a shared directory such as /tmp, where another user could take a name first.
pub fn runtime_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BALANCER_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        PathBuf::from(dir)
    } else if nix::unistd::geteuid().is_root() {
        PathBuf::from("/run/balancer")
    } else if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Path::new(&dir).join("balancer")
    } else {
        let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
        Path::new(&home).join(".balancer")
    }
}

/// The control socket of the service `name`.
pub fn path_for(name: &str) -> PathBuf {
    runtime_dir().join(format!("{name}.sock"))
}

/// Checks a service name: it becomes a file name and a metrics label.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        bail!(
            "bad --name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.', not starting \
             with '.'"
        );
    }
    Ok(())
}

/// A running balancer, as `balancer ls` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Service {
    pub name: String,
    pub control: PathBuf,
    pub pid: u32,
    pub listen: String,
    pub up: usize,
    pub workers: usize,
    pub policy: String,
    pub metrics: Option<String>,
}

/// Every balancer whose control socket is in [`runtime_dir`] and answers, by name.
pub fn running() -> Vec<Service> {
    let Ok(entries) = std::fs::read_dir(runtime_dir()) else {
        return Vec::new();
    };
    let mut found: Vec<Service> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sock"))
        .filter_map(|control| {
            let answer = call(&control, "status").ok()?;
            let s: Status = serde_json::from_str(&answer).ok()?;
            Some(Service {
                name: s.name.clone(),
                pid: s.pid,
                listen: s.listen.clone(),
                up: s.slots.iter().filter(|x| x.state == "up").count(),
                workers: s.slots.len(),
                policy: s.policy.clone(),
                metrics: s.metrics.clone(),
                control,
            })
        })
        .collect();
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

/// The control socket a client command talks to: `--control` if given; else the service
/// `--name` names (by name, or by its listen port); else the only balancer running.
pub fn find(control: Option<PathBuf>, name: Option<&str>) -> Result<PathBuf> {
    if let Some(path) = control {
        return Ok(path);
    }
    let dir = runtime_dir();
    if let Some(name) = name {
        let path = path_for(name);
        if path.exists() {
            return Ok(path);
        }
        let services = running();
        if let Some(s) = services
            .iter()
            .find(|s| s.listen.rsplit(':').next() == Some(name))
        {
            return Ok(s.control.clone());
        }
        let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
        bail!(
            "no balancer named {name:?} runs here (running: {}); `balancer ls` lists them",
            if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            }
        );
    }
    let services = running();
    match services.as_slice() {
        [one] => Ok(one.control.clone()),
        [] => bail!(
            "no balancer runs here (none answers in {}): start one with `balancer run`, or \
             pass --control",
            dir.display()
        ),
        many => {
            let names: Vec<&str> = many.iter().map(|s| s.name.as_str()).collect();
            bail!(
                "several balancers run here ({}): pick one with --name",
                names.join(", ")
            )
        }
    }
}

/// `balancer ls`: one line per running balancer.
pub fn render_services(services: &[Service]) -> String {
    let mut out = String::from(
        "NAME              LISTEN                  PID      WORKERS  POLICY        METRICS\n",
    );
    for s in services {
        out.push_str(&format!(
            "{:<17} {:<23} {:<8} {:<8} {:<13} {}\n",
            s.name,
            s.listen,
            s.pid,
            format!("{}/{}", s.up, s.workers),
            s.policy,
            s.metrics.as_deref().unwrap_or("off"),
        ));
    }
    out
}

/// Creates the socket's directory (0700) if missing and checks that only this user (or root)
/// can write to it. Run with the other start-up checks, before anything is created.
pub fn prepare_directory(path: &Path) -> Result<()> {
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    check_private(dir)
}

/// Refuses a directory that other users may write to: there, another user could replace the
/// socket or take its name first.
fn check_private(dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(dir).with_context(|| {
        format!(
            "cannot read the control socket's directory {}",
            dir.display()
        )
    })?;
    let me = nix::unistd::geteuid().as_raw();
    if meta.mode() & 0o022 != 0 || (meta.uid() != me && meta.uid() != 0) {
        bail!(
            "the control socket's directory {} can be written by other users: pass --control \
             with a path in a private directory (such as $XDG_RUNTIME_DIR)",
            dir.display()
        );
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    Status,
    Stop,
    /// Switch the steering policy, live.
    Policy(balancer_common::Policy),
    /// Set one slot's weight (for the weighted policy), live.
    Weight {
        slot: u32,
        weight: u32,
    },
    /// Replace every worker, slot by slot (zero downtime).
    Reload,
    /// Change the number of slots.
    Scale(u32),
    /// The workers' last lines (of one slot, or all), then with `follow` every new one: answered
    /// with one JSON [`Line`](crate::logs::Line) per line, not through the supervisor's loop.
    Logs {
        slot: Option<u32>,
        lines: usize,
        follow: bool,
    },
}

/// What the control socket accepts, for error messages.
const USAGE: &str =
    "expected `status`, `stop`, `reload`, `scale N`, `policy NAME`, `weight SLOT N` \
     or `logs [slot N] [lines K] [follow]`";

/// Largest weight accepted: keeps weighted keys far from overflow.
pub const MAX_WEIGHT: u32 = 1_000_000;

/// Parses one request line. Pure, so that it can be fuzzed on the host.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    if line.len() > MAX_REQUEST {
        return Err(format!("request longer than {MAX_REQUEST} bytes"));
    }
    let text = std::str::from_utf8(line).map_err(|_| "request is not UTF-8".to_string())?;
    let words: Vec<&str> = text.split_whitespace().collect();
    match words.as_slice() {
        ["status"] => Ok(Request::Status),
        ["stop"] => Ok(Request::Stop),
        ["reload"] => Ok(Request::Reload),
        ["scale", n] => n.parse().map(Request::Scale).map_err(|_| {
            format!(
                "bad worker count {n:?}: a number from 1 to {}",
                balancer_common::MAX_SLOTS
            )
        }),
        ["policy", name] => balancer_common::Policy::from_name(name)
            .map(Request::Policy)
            .ok_or_else(|| {
                let names: Vec<_> = balancer_common::Policy::ALL
                    .iter()
                    .map(|p| p.name())
                    .collect();
                let shown: String = name.chars().take(40).collect();
                format!(
                    "unknown policy {shown:?}: choose one of {}",
                    names.join(", ")
                )
            }),
        ["weight", slot, weight] => {
            let slot = slot
                .parse()
                .map_err(|_| format!("bad slot {slot:?}: a slot number"))?;
            let weight = weight
                .parse()
                .ok()
                .filter(|w| (1..=MAX_WEIGHT).contains(w))
                .ok_or_else(|| format!("bad weight {weight:?}: a number from 1 to {MAX_WEIGHT}"))?;
            Ok(Request::Weight { slot, weight })
        }
        ["logs", rest @ ..] => parse_logs(rest),
        [] => Err(format!("empty request: {USAGE}")),
        _ => {
            let shown: String = text.trim().chars().take(40).collect();
            Err(format!("unknown request {shown:?}: {USAGE}"))
        }
    }
}

fn parse_logs(words: &[&str]) -> Result<Request, String> {
    let (mut slot, mut lines, mut follow) = (None, 50, false);
    let mut words = words.iter();
    while let Some(&w) = words.next() {
        match w {
            "follow" => follow = true,
            "slot" | "lines" => {
                let n: u32 = words
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| format!("`logs {w}` needs a number"))?;
                if w == "slot" {
                    slot = Some(n);
                } else {
                    lines = n as usize;
                }
            }
            _ => {
                let shown: String = w.chars().take(40).collect();
                return Err(format!("unknown `logs` option {shown:?}: {USAGE}"));
            }
        }
    }
    Ok(Request::Logs {
        slot,
        lines,
        follow,
    })
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SlotStatus {
    pub slot: u32,
    pub state: String,
    pub pid: Option<u32>,
    /// Connections assigned and not yet closed.
    pub load: u64,
    /// Connections the program sent to this slot (plus upward corrections).
    pub assigned: u64,
    /// Connections of this slot that closed (plus downward corrections).
    pub closed: u64,
    /// Connections waiting in the slot's accept queue.
    pub queued: u32,
    /// Connections open in the slot's worker processes, at the last reconciliation.
    #[serde(default)]
    pub open: u64,
    /// Connections the reconciliation added to or removed from the load, in total.
    #[serde(default)]
    pub corrections: u64,
    pub restarts: u64,
    /// Times the slot's worker was found stalled.
    #[serde(default)]
    pub stalls: u64,
    pub uptime_seconds: Option<f64>,
    pub last_exit: Option<String>,
    /// Exit code of the last worker exit, if it exited (rather than was killed).
    pub last_exit_code: Option<i32>,
    /// Signal that killed the last worker, if one did.
    pub last_exit_signal: Option<i32>,
    /// The last lines the last worker wrote to stderr, if it exited abnormally.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_stderr: Vec<String>,
    /// Workers of the slot replaced for their memory (`--max-memory`).
    #[serde(default)]
    pub recycled_memory: u64,
    /// Workers of the slot replaced for the requests they served (`--max-requests`).
    #[serde(default)]
    pub recycled_requests: u64,
    /// The worker's resident memory at the last reading (read while `--max-memory` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// The worker's health from its probes (`unknown`, `healthy`, `unhealthy`), with
    /// `--health-check`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// How long the last probe took, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_seconds: Option<f64>,
    /// Probes of the slot's workers that failed.
    #[serde(default)]
    pub health_failures: u64,
    /// Workers of the slot restarted for failing `--health-fall` probes in a row.
    #[serde(default)]
    pub health_restarts: u64,
    /// Lines of output the slot's workers wrote.
    #[serde(default)]
    pub log_lines: u64,
    /// Lines the log thread had no room for (its output was read too slowly): missing from the
    /// supervisor's output and the log files, still in `balancer logs`.
    #[serde(default)]
    pub log_dropped: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// The service's name (`--name`, or its listen port).
    #[serde(default)]
    pub name: String,
    /// Where /metrics is served, if it is.
    #[serde(default)]
    pub metrics: Option<String>,
    pub pid: u32,
    pub listen: String,
    pub policy: String,
    pub command: String,
    pub slots: Vec<SlotStatus>,
    /// The program's counters by name: selected, no_slot_up, ...
    pub program: BTreeMap<String, u64>,
}

/// Binds the control socket with mode 0600. A socket file left by a supervisor that died is
/// replaced; one that still answers belongs to a running supervisor and is an error.
pub fn bind(path: &Path) -> Result<tokio::net::UnixListener> {
    prepare_directory(path)?;
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "control socket {} is in use by another running balancer: stop it (`balancer stop --control {}`) or pass another --control",
                path.display(),
                path.display()
            );
        }
        std::fs::remove_file(path).with_context(|| {
            format!("cannot remove the stale control socket {}", path.display())
        })?;
    }
    // The umask makes the socket 0600 from its creation: no window in which others may connect.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let listener = tokio::net::UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener =
        listener.with_context(|| format!("cannot create the control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Reads one request from `stream`, bounded in size and time.
pub async fn read_request(stream: &mut tokio::net::UnixStream) -> Result<Request, String> {
    let mut reader = tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(
        stream,
        MAX_REQUEST as u64 + 1,
    ));
    let mut line = Vec::new();
    match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_until(b'\n', &mut line)).await {
        Err(_) => Err("request timed out".into()),
        Ok(Err(e)) => Err(format!("cannot read request: {e}")),
        Ok(Ok(_)) => parse_request(&line),
    }
}

pub async fn reply(stream: &mut tokio::net::UnixStream, body: &str) {
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, async {
        stream.write_all(body.as_bytes()).await?;
        stream.write_all(b"\n").await
    })
    .await;
}

/// Sends `request` to the supervisor behind `path` and returns its one-line answer.
pub fn call(path: &Path, request: &str) -> Result<String> {
    let mut stream = std::os::unix::net::UnixStream::connect(path).with_context(|| {
        format!(
            "no balancer answers on {}: is it running? (pass --control if it uses another socket)",
            path.display()
        )
    })?;
    // A reload or a scale answers when it is done, which takes as long as the workers take to
    // get ready and to drain: wait for it. Anything else answers at once.
    let long = request.starts_with("reload") || request.starts_with("scale");
    let limit = Duration::from_secs(10);
    stream.set_read_timeout((!long).then_some(limit))?;
    writeln!(stream, "{request}")?;
    let mut answer = String::new();
    match std::io::BufReader::new(&mut stream).read_line(&mut answer) {
        Ok(0) => bail!(
            "the supervisor closed the connection without answering `{request}` (it is stopping, \
             or it exited)"
        ),
        Ok(_) => {}
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            bail!("the supervisor did not answer `{request}` within {limit:?}")
        }
        Err(e) => return Err(e).context(format!("reading the answer to `{request}`")),
    }
    let answer = answer.trim_end().to_string();
    if let Some(err) = answer.strip_prefix("error: ") {
        bail!("the supervisor refused `{request}`: {err}");
    }
    Ok(answer)
}

/// `balancer logs`: prints the lines the supervisor sends, as they come (human: prefixed with
/// slot and pid; `json`: as sent), until it closes the connection or, with `follow`, forever.
pub fn logs(path: &Path, slot: Option<u32>, lines: usize, follow: bool, json: bool) -> Result<()> {
    use std::io::IsTerminal as _;
    let mut stream = std::os::unix::net::UnixStream::connect(path).with_context(|| {
        format!(
            "no balancer answers on {}: is it running? (pass --control if it uses another socket)",
            path.display()
        )
    })?;
    let mut request = format!("logs lines {lines}");
    if let Some(s) = slot {
        request.push_str(&format!(" slot {s}"));
    }
    if follow {
        request.push_str(" follow");
    }
    writeln!(stream, "{request}")?;
    let colour = std::io::stdout().is_terminal();
    let mut out = std::io::stdout().lock();
    for line in std::io::BufReader::new(stream).lines() {
        let line = line.context("reading the supervisor's answer")?;
        if let Some(err) = line.strip_prefix("error: ") {
            bail!("the supervisor refused `{request}`: {err}");
        }
        if json {
            writeln!(out, "{line}")?;
            continue;
        }
        let l: crate::logs::Line = serde_json::from_str(&line)
            .with_context(|| format!("unexpected answer line {line:?}"))?;
        if colour {
            writeln!(
                out,
                "\x1b[{}mslot {} pid {}\x1b[0m | {}",
                31 + l.slot % 6,
                l.slot,
                l.pid,
                l.line
            )?;
        } else {
            writeln!(out, "slot {} pid {} | {}", l.slot, l.pid, l.line)?;
        }
    }
    Ok(())
}

/// Serves one `logs` request on `stream`: the tail, then with `follow` each new line until the
/// client goes away. Slow clients skip what they missed (the count is sent as a line of their
/// slot's stream, marked).
pub async fn serve_logs(
    stream: &mut tokio::net::UnixStream,
    logs: &crate::logs::Logs,
    slot: Option<u32>,
    lines: usize,
    follow: bool,
) {
    use tokio::sync::broadcast::error::RecvError;
    // Subscribed before the tail is read, so that no line falls between the two.
    let mut new = logs.subscribe();
    let (tail, upto) = logs.tail(slot, lines);
    let mut text = String::new();
    for l in &tail {
        text.push_str(&serde_json::to_string(&**l).unwrap_or_default());
        text.push('\n');
    }
    if stream.write_all(text.as_bytes()).await.is_err() || !follow {
        return;
    }
    loop {
        let line = match new.recv().await {
            Ok(l) if l.seq <= upto || slot.is_some_and(|s| s != l.slot) => continue,
            Ok(l) => l,
            Err(RecvError::Lagged(n)) => std::sync::Arc::new(crate::logs::Line {
                seq: 0,
                slot: slot.unwrap_or(0),
                pid: 0,
                stream: crate::logs::Stream::Stderr,
                line: format!("[balancer: this reader fell behind and skipped {n} lines]"),
            }),
            Err(RecvError::Closed) => return,
        };
        let mut text = serde_json::to_string(&*line).unwrap_or_default();
        text.push('\n');
        if stream.write_all(text.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// A plain table of `status`, for people.
pub fn render(status: &Status) -> String {
    let mut out = format!(
        "balancer pid {} on {}, policy {}, worker `{}`\n",
        status.pid, status.listen, status.policy, status.command
    );
    out.push_str(
        "SLOT  STATE     PID      LOAD  QUEUED  OPEN  ASSIGNED  CORRECTED  RESTARTS  UPTIME   LAST EXIT\n",
    );
    for s in &status.slots {
        out.push_str(&format!(
            "{:<5} {:<9} {:<8} {:>4}  {:>6}  {:>4}  {:>8}  {:>9}  {:>8}  {:<8} {}\n",
            s.slot,
            s.state,
            s.pid.map_or("-".into(), |p| p.to_string()),
            s.load,
            s.queued,
            s.open,
            s.assigned,
            s.corrections,
            s.restarts,
            s.uptime_seconds.map_or("-".into(), |u| format!("{u:.0}s")),
            s.last_exit.as_deref().unwrap_or("-"),
        ));
    }
    for s in status.slots.iter().filter(|s| !s.last_stderr.is_empty()) {
        out.push_str(&format!(
            "slot {} last exit ({}), its last stderr lines:\n",
            s.slot,
            s.last_exit.as_deref().unwrap_or("-")
        ));
        for line in &s.last_stderr {
            out.push_str(&format!("  | {line}\n"));
        }
    }
    let program: Vec<String> = status
        .program
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    out.push_str(&format!("program: {}\n", program.join(" ")));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_requests() {
        assert_eq!(parse_request(b"status\n"), Ok(Request::Status));
        assert_eq!(parse_request(b"  stop  "), Ok(Request::Stop));
        assert_eq!(
            parse_request(b"policy p2c\n"),
            Ok(Request::Policy(balancer_common::Policy::P2c))
        );
        assert_eq!(
            parse_request(b"weight 2 5"),
            Ok(Request::Weight { slot: 2, weight: 5 })
        );
        assert!(parse_request(b"policy fastest")
            .unwrap_err()
            .contains("unknown policy"));
        assert!(parse_request(b"weight 2 0")
            .unwrap_err()
            .contains("bad weight"));
        assert!(parse_request(b"weight x 1")
            .unwrap_err()
            .contains("bad slot"));
    }

    #[test]
    fn rejects_everything_else_with_a_reason() {
        assert!(parse_request(b"").unwrap_err().contains("empty"));
        assert!(parse_request(b"\xff\xfe").unwrap_err().contains("UTF-8"));
        assert!(parse_request(b"reboot")
            .unwrap_err()
            .contains("unknown request"));
        assert!(parse_request(&[b'a'; 5000]).unwrap_err().contains("longer"));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap stand-in for a fuzzer: every short byte string, and long random ones.
        let mut x = 0x9e3779b97f4a7c15u64;
        for len in 0..2048usize {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = parse_request(&bytes);
        }
    }
}
