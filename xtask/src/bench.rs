//! `cargo xtask bench`: measurements, side by side in one run, written to docs/benchmarks.md.
//!
//! Selection cost: the kernel's own accounting of the program (`kernel.bpf_stats_enabled=1`:
//! total run time and run count), with 2, 64 and 1024 worker slots, for `least-loaded` and for
//! `hash` (the program returns at once: the fixed cost of running any program). Everything runs
//! in a private network namespace on loopback.

use std::{
    io::{BufRead as _, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Moves this process (still single-threaded) into a new network namespace with loopback up.
fn private_netns() -> Result<()> {
    unsafe {
        if libc::unshare(libc::CLONE_NEWNET) != 0 {
            bail!(
                "unshare(CLONE_NEWNET): {} (the benchmark needs root)",
                std::io::Error::last_os_error()
            );
        }
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        let mut req: libc::ifreq = std::mem::zeroed();
        for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *d = *s as libc::c_char;
        }
        req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        let rc = libc::ioctl(fd, libc::SIOCSIFFLAGS, &req);
        libc::close(fd);
        if rc != 0 {
            bail!("cannot bring lo up: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

pub(crate) struct Running {
    child: Child,
    pub(crate) control: PathBuf,
}

impl Running {
    fn start(bin: &Path, port: u16, workers: u32, policy: &str) -> Result<Running> {
        Running::start_with(bin, port, workers, policy, &[])
    }

    pub(crate) fn start_with(
        bin: &Path,
        port: u16,
        workers: u32,
        policy: &str,
        extra: &[&str],
    ) -> Result<Running> {
        // A private directory: the balancer refuses a control socket where others may write.
        let dir = std::env::temp_dir().join(format!("balancer-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        let control = dir.join(format!("{port}.sock"));
        let child = Command::new(bin)
            .args([
                "run",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--workers",
                &workers.to_string(),
            ])
            .args(["--policy", policy, "--metrics", "off"])
            .args(if extra.contains(&"--backlog") {
                &[][..]
            } else {
                &["--backlog", "128"][..]
            })
            .args(extra)
            .arg("--control")
            .arg(&control)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let r = Running { child, control };
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if let Ok(s) = r.status() {
                let slots = s["slots"]
                    .as_array()
                    .map_or(0, |a| a.iter().filter(|x| x["state"] == "up").count());
                if slots == workers as usize {
                    return Ok(r);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("balancer with {workers} workers did not come up")
    }

    pub(crate) fn status(&self) -> Result<serde_json::Value> {
        let mut s = std::os::unix::net::UnixStream::connect(&self.control)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"status\n")?;
        let mut line = String::new();
        std::io::BufReader::new(s).read_line(&mut line)?;
        Ok(serde_json::from_str(&line)?)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// `count` requests, each on a new connection, from `threads` clients.
fn drive(addr: SocketAddr, count: usize, threads: usize) -> Result<Duration> {
    let start = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let hs: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(move || -> Result<()> {
                    for _ in 0..count / threads {
                        request(addr, "/")?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap()?;
        }
        Ok(())
    })?;
    Ok(start.elapsed())
}

/// One request on a new connection from source address `from`; returns the slot that answered.
pub fn get_slot(addr: SocketAddr, from: Option<std::net::IpAddr>) -> Result<u32> {
    let c = match from {
        None => TcpStream::connect_timeout(&addr, Duration::from_secs(10))?,
        Some(ip) => connect_from(ip, addr)?,
    };
    slot_in(&exchange(c, "/")?)
}

/// One request on a new connection to `addr`: the whole reply.
fn request(addr: SocketAddr, path: &str) -> Result<String> {
    exchange(
        TcpStream::connect_timeout(&addr, Duration::from_secs(10))?,
        path,
    )
}

/// Sends one request on `c`, asking the server to close, and reads the whole reply.
fn exchange(mut c: TcpStream, path: &str) -> Result<String> {
    c.set_read_timeout(Some(Duration::from_secs(30)))?;
    c.write_all(format!("GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut reply = String::new();
    c.read_to_string(&mut reply)?;
    Ok(reply)
}

fn slot_in(reply: &str) -> Result<u32> {
    reply
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("slot=")?.parse().ok())
        .with_context(|| format!("no slot in reply {reply:?}"))
}

fn connect_from(ip: std::net::IpAddr, addr: SocketAddr) -> Result<TcpStream> {
    use std::os::fd::FromRawFd as _;
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            bail!("socket: {}", std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let (std::net::IpAddr::V4(src), SocketAddr::V4(dst)) = (ip, addr) else {
            bail!("IPv4 only")
        };
        let sin = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(ip).to_be(),
            },
            sin_zero: [0; 8],
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let local = sin(src, 0);
        if libc::bind(fd, (&raw const local).cast(), len) != 0 {
            bail!("bind {src}: {}", std::io::Error::last_os_error());
        }
        let remote = sin(*dst.ip(), dst.port());
        if libc::connect(fd, (&raw const remote).cast(), len) != 0 {
            bail!("connect: {}", std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}

pub struct PolicyRow {
    pub policy: &'static str,
    pub counts: Vec<u64>,
    pub cv: f64,
    pub busy_share: f64,
    pub during_block: usize,
}

/// 2,000 connections from 4 concurrent clients (from 64 client addresses), then one worker held
/// for 2 s while 32 clients open new connections.
fn policy_row(bin: &Path, port: u16, policy: &'static str, extra: &[&str]) -> Result<PolicyRow> {
    let workers = 4;
    let _running = Running::start_with(bin, port, workers, policy, extra)?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let client = |i: usize| {
        Some(std::net::IpAddr::V4(std::net::Ipv4Addr::new(
            127,
            0,
            3,
            (i % 64) as u8 + 1,
        )))
    };
    let counts = std::thread::scope(|s| -> Result<Vec<u64>> {
        let hs: Vec<_> = (0..4)
            .map(|t| {
                s.spawn(move || -> Result<Vec<u64>> {
                    let mut c = vec![0u64; workers as usize];
                    for i in 0..500 {
                        c[get_slot(addr, client(t * 500 + i))? as usize] += 1;
                    }
                    Ok(c)
                })
            })
            .collect();
        let mut total = vec![0u64; workers as usize];
        for h in hs {
            for (t, c) in total.iter_mut().zip(h.join().unwrap()?) {
                *t += c;
            }
        }
        Ok(total)
    })?;
    let mean = counts.iter().sum::<u64>() as f64 / counts.len() as f64;
    let var = counts
        .iter()
        .map(|&c| (c as f64 - mean).powi(2))
        .sum::<f64>()
        / counts.len() as f64;

    // Hold one worker: a keep-alive connection learns its slot, then asks for 2 s of work.
    let mut holder = TcpStream::connect(addr)?;
    holder.set_read_timeout(Some(Duration::from_secs(10)))?;
    holder.write_all(b"GET / HTTP/1.1\r\nHost: b\r\n\r\n")?;
    let mut buf = [0u8; 512];
    let n = holder.read(&mut buf)?;
    let busy = slot_in(&String::from_utf8_lossy(&buf[..n]))?;
    holder.write_all(b"GET /work?ms=2000 HTTP/1.1\r\nHost: b\r\n\r\n")?;
    std::thread::sleep(Duration::from_millis(50));
    let begin = Instant::now();
    let block = Duration::from_millis(1900);
    let results = std::thread::scope(|s| -> Result<Vec<u32>> {
        let hs: Vec<_> = (0..32)
            .map(|t| {
                s.spawn(move || -> Result<Vec<u32>> {
                    let mut out = Vec::new();
                    let mut i = 0;
                    while begin.elapsed() < block && out.len() < 300 {
                        let started = begin.elapsed();
                        let slot = get_slot(addr, client(t * 300 + i))?;
                        i += 1;
                        if started < block {
                            out.push(slot);
                        }
                    }
                    Ok(out)
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in hs {
            all.extend(h.join().unwrap()?);
        }
        Ok(all)
    })?;
    let _ = holder.read(&mut buf);
    let to_busy = results.iter().filter(|&&s| s == busy).count();
    Ok(PolicyRow {
        policy,
        cv: var.sqrt() / mean,
        counts,
        busy_share: to_busy as f64 / results.len().max(1) as f64,
        during_block: results.len(),
    })
}

pub struct CostRow {
    pub slots: u32,
    pub policy: &'static str,
    pub runs: u64,
    pub ns_per_run: f64,
    /// Close-tracker time per connection (all its runs, both ends of each loopback connection).
    pub tracker_ns_per_connection: f64,
    pub tracker_runs_per_connection: f64,
}

fn selection_cost(bin: &Path, quick: bool) -> Result<Vec<CostRow>> {
    let requests = if quick { 4_000 } else { 20_000 };
    let mut rows = Vec::new();
    let mut port = 8080;
    for slots in [2u32, 64, 1024] {
        for policy in ["least-loaded", "hash"] {
            port += 1;
            eprintln!("bench: selection cost, {slots} slots, {policy}");
            let b = Running::start(bin, port, slots, policy)?;
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
            drive(addr, 500, 4)?; // warm-up
            let before = b.status()?;
            drive(addr, requests, 4)?;
            let after = b.status()?;
            let d = |k: &str| {
                after["program"][k].as_u64().unwrap_or(0)
                    - before["program"][k].as_u64().unwrap_or(0)
            };
            let (ns, runs) = (d("run_time_ns"), d("run_count"));
            if runs == 0 {
                bail!("the kernel counted no runs: is kernel.bpf_stats_enabled on?");
            }
            let connections = requests as f64;
            rows.push(CostRow {
                slots,
                policy,
                runs,
                ns_per_run: ns as f64 / runs as f64,
                tracker_ns_per_connection: d("tracker_run_time_ns") as f64 / connections,
                tracker_runs_per_connection: d("tracker_run_count") as f64 / connections,
            });
        }
    }
    Ok(rows)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cores} cores ({cpu}), Linux {}", kernel.trim())
}

/// Runs everything and writes benchmarks.md, benchmarks.json and the plots into `out`.
pub fn run(bin: &Path, root: &Path, quick: bool, out: &Path) -> Result<()> {
    private_netns()?;
    let old =
        std::fs::read_to_string(STATS_SYSCTL).context("cannot read kernel.bpf_stats_enabled")?;
    std::fs::write(STATS_SYSCTL, "1").context("cannot enable kernel.bpf_stats_enabled")?;
    let rows = selection_cost(bin, quick);
    let _ = std::fs::write(STATS_SYSCTL, old.trim());
    let rows = rows?;
    let mut policies = Vec::new();
    for (i, (policy, extra)) in [
        ("least-loaded", &[][..]),
        ("p2c", &[][..]),
        ("round-robin", &[][..]),
        ("weighted", &["--weights", "3,1,1,1"][..]),
        ("sticky", &[][..]),
        ("hash", &[][..]),
    ]
    .into_iter()
    .enumerate()
    {
        eprintln!("bench: distribution and busy worker, {policy}");
        policies.push(policy_row(bin, 9000 + i as u16, policy, extra)?);
    }

    let base = |slots: u32| {
        rows.iter()
            .find(|r| r.slots == slots && r.policy == "hash")
            .map_or(1.0, |r| r.ns_per_run)
    };
    let mut md = String::new();
    md.push_str("# Benchmarks\n\n");
    md.push_str(&format!(
        "Written by `cargo xtask bench{}` on {} (UTC date {}). Machine: {}.\n\n",
        if quick { " --quick" } else { "" },
        "a machine of the project's CI kind",
        today(),
        machine()
    ));
    md.push_str("## Cost of one selection\n\n");
    md.push_str(
        "The kernel's own accounting of the program (`kernel.bpf_stats_enabled=1`): run time / run \
         count over the measured requests, one new connection each, 4 client threads, built-in workers. \
         `hash` runs the same program, which returns at once: the fixed cost of running a program at \
         all. At most 32 slots are examined per selection (a random window beyond 32 slots), so the cost \
         stops growing past 32 slots. A least-loaded selection also records the connection in the flow \
         table (one LRU hash insert), which the close tracker removes at the close. The close tracker \
         runs on every TCP state change on the host; its column is its total time divided by the \
         connections, both ends of each loopback connection included (a remote client's end would not \
         count). Under `hash` nothing is recorded, so the tracker only filters.\n\n",
    );
    md.push_str("| slots | policy | runs | ns per selection | vs `hash` at the same size | close tracker ns per connection (runs) |\n|---:|---|---:|---:|---:|---:|\n");
    for r in &rows {
        md.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.2}x | {:.0} ({:.1}) |\n",
            r.slots,
            r.policy,
            r.runs,
            r.ns_per_run,
            r.ns_per_run / base(r.slots),
            r.tracker_ns_per_connection,
            r.tracker_runs_per_connection
        ));
    }
    md.push_str(
        "\n## Distribution by policy\n\n\
         4 built-in workers. *Counts*: 2,000 new connections from 4 concurrent clients, each \
         connection from one of 64 client addresses (127.0.3.x), per worker, and their coefficient \
         of variation. *Busy worker*: one worker's event loop is held for 2 s \
         (`/work?ms=2000` on a keep-alive connection) while 32 clients open new connections; the \
         share of those connections sent to the held worker, and how many were served in the \
         1.9 s window (a client stuck behind the held worker opens no more). `weighted` runs with \
         weights 3,1,1,1.\n\n\
         | policy | counts per worker | CV | busy worker's share | connections in the window |\n\
         |---|---|---:|---:|---:|\n",
    );
    for p in &policies {
        md.push_str(&format!(
            "| {} | {:?} | {:.3} | {:.3} | {} |\n",
            p.policy, p.counts, p.cv, p.busy_share, p.during_block
        ));
    }
    eprintln!("bench: drift soak");
    let drift = crate::drift::soak(bin, quick)?;
    md.push_str(&crate::drift::markdown(&drift));
    let peers = peers(bin, root, quick)?;
    md.push_str(&peers_markdown(&peers));
    md.push_str("\n![Latency CDF per peer](bench-latency-cdf.png)\n\n![Per-worker distribution](bench-distribution.png)\n");
    md.push_str(&format!(
        "\nReproduce: `cargo xtask bench{}` (root; it installs nothing itself: nginx-light, haproxy, \
         node and matplotlib come from `cargo xtask setup`).\n",
        if quick { " --quick" } else { "" }
    ));
    std::fs::create_dir_all(out)?;
    plots(&peers, out)?;
    let json: Vec<_> = rows
        .iter()
        .map(|r| serde_json::json!({"slots": r.slots, "policy": r.policy, "runs": r.runs, "ns_per_run": r.ns_per_run,
            "tracker_ns_per_connection": r.tracker_ns_per_connection, "tracker_runs_per_connection": r.tracker_runs_per_connection}))
        .collect();
    std::fs::write(out.join("benchmarks.md"), &md)?;
    std::fs::write(
        out.join("benchmarks.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "machine": machine(),
            "date": today(),
            "selection_cost": json,
            "peers": peers.iter().map(|p| serde_json::json!({
                "peer": p.name, "new_conn_rps": p.new_conn_rps, "keepalive_rps": p.keepalive_rps,
                "layer_cpu": p.layer_cpu, "counts": p.counts,
                "p50_ms": percentile(&p.latencies_ms, 0.5), "p99_ms": percentile(&p.latencies_ms, 0.99),
                "p999_ms": percentile(&p.latencies_ms, 0.999), "max_ms": p.latencies_ms.last(),
                "stuck_share": p.stuck_share, "stuck_p99_ms": p.stuck_p99_ms,
            })).collect::<Vec<_>>(),
            "drift": {
                "seconds": drift.seconds, "requests": drift.requests, "failed": drift.failed,
                "max_error": drift.max_error, "p99_error": drift.p99_error,
                "corrections": drift.corrections, "converge_ms": drift.converge_ms,
                "faults": drift.faults.iter().map(|(k, n)| serde_json::json!({"fault": k, "count": n})).collect::<Vec<_>>(),
            },
            "policies": policies.iter().map(|p| serde_json::json!({
                "policy": p.policy, "counts": p.counts, "cv": p.cv,
                "busy_share": p.busy_share, "connections_during_block": p.during_block,
            })).collect::<Vec<_>>(),
        }))?,
    )?;
    print!("{md}");
    Ok(())
}

fn today() -> String {
    let out = Command::new("date").args(["-u", "+%Y-%m-%d"]).output().ok();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Results of one peer across the workloads.
pub struct PeerResult {
    pub name: String,
    pub new_conn_rps: f64,
    pub keepalive_rps: f64,
    pub layer_cpu: f64,
    pub counts: Vec<u64>,
    pub latencies_ms: Vec<f64>,
    pub stuck_share: f64,
    pub stuck_p99_ms: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Closed loop: `clients` threads, a new connection per request (or one keep-alive connection
/// each), for `dur`. Returns requests/s and answers per slot.
fn closed_loop(
    addr: SocketAddr,
    clients: usize,
    dur: Duration,
    keepalive: bool,
    slots: usize,
) -> Result<(f64, Vec<u64>)> {
    let begin = Instant::now();
    let per = std::thread::scope(|s| -> Result<Vec<Vec<u64>>> {
        let hs: Vec<_> = (0..clients)
            .map(|_| {
                s.spawn(move || -> Result<Vec<u64>> {
                    let mut c = vec![0u64; slots];
                    let mut ka: Option<TcpStream> = None;
                    while begin.elapsed() < dur {
                        let slot = if keepalive {
                            let stream = match ka.as_mut() {
                                Some(s) => s,
                                None => {
                                    let s = TcpStream::connect(addr)?;
                                    s.set_nodelay(true)?;
                                    s.set_read_timeout(Some(Duration::from_secs(10)))?;
                                    ka.insert(s)
                                }
                            };
                            match keepalive_get(stream) {
                                Ok(slot) => slot,
                                Err(_) => {
                                    ka = None;
                                    continue;
                                }
                            }
                        } else {
                            get_slot(addr, None)?
                        };
                        if let Some(x) = c.get_mut(slot as usize) {
                            *x += 1;
                        }
                    }
                    Ok(c)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })?;
    let mut total = vec![0u64; slots];
    for c in per {
        for (t, x) in total.iter_mut().zip(c) {
            *t += x;
        }
    }
    let n: u64 = total.iter().sum();
    Ok((n as f64 / begin.elapsed().as_secs_f64(), total))
}

fn keepalive_get(stream: &mut TcpStream) -> Result<u32> {
    stream.write_all(b"GET / HTTP/1.1\r\nHost: b\r\n\r\n")?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            bail!("closed");
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return slot_in(&text);
            }
        }
    }
}

/// Open loop at `rate` requests/s for `dur`, a new connection each: mostly 1 ms requests, 5%
/// of 50-200 ms. Latency counts from the moment each request was due, so a client held up by
/// a slow answer does not hide the wait of the requests behind it (coordinated omission).
fn open_loop(addr: SocketAddr, rate: f64, dur: Duration, route: &str) -> Result<Vec<f64>> {
    let senders = 96usize;
    let total = (rate * dur.as_secs_f64()) as usize;
    let begin = Instant::now() + Duration::from_millis(50);
    let mut all = std::thread::scope(|s| -> Result<Vec<f64>> {
        let hs: Vec<_> = (0..senders)
            .map(|k| {
                s.spawn(move || -> Result<Vec<f64>> {
                    let mut out = Vec::new();
                    let mut i = k;
                    while i < total {
                        let due = begin + Duration::from_secs_f64(i as f64 / rate);
                        let now = Instant::now();
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                        // A fixed pseudo-random mix: request i is slow when its hash says so.
                        let h = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40;
                        let ms = if h % 100 < 5 { 50 + h % 151 } else { 1 };
                        request(addr, &format!("{route}{ms}"))?;
                        out.push(due.elapsed().as_secs_f64() * 1000.0);
                        i += senders;
                    }
                    Ok(out)
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in hs {
            all.extend(h.join().unwrap()?);
        }
        Ok(all)
    })?;
    all.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Ok(all)
}

/// One worker held for 2 s in the middle of an open-loop run: the share of the connections due
/// during the hold that it answered, and the run's p99.
fn stuck_worker(addr: SocketAddr, rate: f64, route: &str) -> Result<(f64, f64)> {
    let dur = Duration::from_secs(4);
    let total = (rate * dur.as_secs_f64()) as usize;
    let begin = Instant::now() + Duration::from_millis(50);
    let hold_at = Duration::from_secs(1);
    let hold_for = Duration::from_secs(2);
    std::thread::scope(|s| -> Result<(f64, f64)> {
        let holder = s.spawn(move || -> Result<u32> {
            std::thread::sleep((begin + hold_at).saturating_duration_since(Instant::now()));
            slot_in(&request(addr, &format!("{route}2000"))?)
        });
        let senders = 96usize;
        let hs: Vec<_> = (0..senders)
            .map(|k| {
                s.spawn(move || -> Result<Vec<(Duration, f64, u32)>> {
                    let mut out = Vec::new();
                    let mut i = k;
                    while i < total {
                        let offset = Duration::from_secs_f64(i as f64 / rate);
                        let due = begin + offset;
                        let now = Instant::now();
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                        let reply = request(addr, &format!("{route}1"))?;
                        out.push((
                            offset,
                            due.elapsed().as_secs_f64() * 1000.0,
                            slot_in(&reply)?,
                        ));
                        i += senders;
                    }
                    Ok(out)
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in hs {
            all.extend(h.join().unwrap()?);
        }
        let stuck = holder.join().unwrap()?;
        let window: Vec<_> = all
            .iter()
            .filter(|(o, _, _)| *o >= hold_at && *o < hold_at + hold_for)
            .collect();
        let share = window.iter().filter(|(_, _, s)| *s == stuck).count() as f64
            / window.len().max(1) as f64;
        let mut lat: Vec<f64> = all.iter().map(|(_, l, _)| *l).collect();
        lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
        Ok((share, percentile(&lat, 0.99)))
    })
}

fn measure(
    peer: &crate::peers::Peer,
    quick: bool,
    route: &str,
    rate: f64,
    slots: usize,
) -> Result<PeerResult> {
    let started = Instant::now();
    eprintln!("bench: {}", peer.name);
    let dur = if quick {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(5)
    };
    let cpu0 = crate::peers::cpu_seconds(&peer.layer);
    let t0 = Instant::now();
    let (new_conn_rps, counts) = closed_loop(peer.addr, 16, dur, false, slots)?;
    let layer_cpu = (crate::peers::cpu_seconds(&peer.layer) - cpu0) / t0.elapsed().as_secs_f64();
    let (keepalive_rps, _) = closed_loop(peer.addr, 16, dur, true, slots)?;
    let latencies_ms = open_loop(peer.addr, rate, dur * 2, route)?;
    let (stuck_share, stuck_p99_ms) = stuck_worker(peer.addr, rate, route)?;
    eprintln!("bench: {} measured in {:.1?}", peer.name, started.elapsed());
    Ok(PeerResult {
        name: peer.name.clone(),
        new_conn_rps,
        keepalive_rps,
        layer_cpu,
        counts,
        latencies_ms,
        stuck_share,
        stuck_p99_ms,
    })
}

/// Every peer, side by side, with the built-in worker (and the Node pair with the Node server).
pub fn peers(bin: &Path, root: &Path, quick: bool) -> Result<Vec<PeerResult>> {
    let env = crate::peers::Env {
        balancer: bin,
        root,
        workers: 4,
    };
    // 4 single-threaded workers, mean service ~7 ms (95% 1 ms, 5% 50-200 ms): 300/s is ~50%
    // of their capacity on this machine.
    let rate = 300.0;
    let mut out = Vec::new();
    let route = "/work?ms=";
    for (i, policy) in ["least-loaded", "p2c", "round-robin"]
        .into_iter()
        .enumerate()
    {
        let p = crate::peers::balancer(&env, 9100 + i as u16 * 10, policy, None)?;
        out.push(measure(&p, quick, route, rate, 4)?);
    }
    let p = crate::peers::kernel_hash(&env, 9150)?;
    out.push(measure(&p, quick, route, rate, 4)?);
    drop(p);
    let p = crate::peers::shared_queue(&env, 9160)?;
    out.push(measure(&p, quick, route, rate, 4)?);
    drop(p);
    let p = crate::peers::nginx(&env, 9170)?;
    out.push(measure(&p, quick, route, rate, 4)?);
    drop(p);
    let p = crate::peers::haproxy(&env, 9180)?;
    out.push(measure(&p, quick, route, rate, 4)?);
    drop(p);
    // Node: the same server script under the cluster module and under balancer.
    let node = root.join("examples/node/server.js");
    let node = node.to_str().context("path")?;
    let p = crate::peers::node_cluster(&env, 9190)?;
    out.push(measure(&p, quick, "/block?ms=", rate / 3.0, 4)?);
    drop(p);
    let p = crate::peers::balancer(&env, 9200, "least-loaded", Some(&["node", node]))?;
    out.push(measure(&p, quick, "/block?ms=", rate / 3.0, 4)?);
    Ok(out)
}

pub fn peers_markdown(results: &[PeerResult]) -> String {
    let best = |f: &dyn Fn(&PeerResult) -> f64, max: bool| {
        results
            .iter()
            .map(f)
            .fold(if max { f64::MIN } else { f64::MAX }, |a, b| {
                if max {
                    a.max(b)
                } else {
                    a.min(b)
                }
            })
    };
    let mut md = String::new();
    md.push_str("\n## Against the alternatives\n\n");
    md.push_str(
        "4 single-threaded built-in workers behind each peer (the Node pair: 4 Node.js processes of \
         the same server, `/block` busy loops instead of sleeps, a third of the rate). \
         *new conn/s*: 16 clients, a new connection per trivial request; *keep-alive/s*: 16 \
         clients, one connection each. *layer CPU*: CPU time of the balancing layer (nginx, \
         haproxy, the Node primary, the balancer supervisor; the kernel's time in the program is \
         in the selection-cost table) per second of wall time. *p50/p99/p99.9/max*: open loop, a \
         new connection per request at a fixed rate (300/s; 100/s for Node), 95% 1 ms requests \
         and 5% of 50-200 ms, latency counted from when each request was due. *stuck worker*: one \
         worker held for 2 s mid-run; its share of the connections due in that window, and the \
         run's p99. Ratios in brackets are to the best peer of the column.\n\n",
    );
    md.push_str("| peer | new conn/s | keep-alive/s | layer CPU | p50 ms | p99 ms | p99.9 ms | max ms | stuck worker's share | p99 with stuck worker | per-worker counts (CV) |\n");
    md.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    let b_rps = best(&|r| r.new_conn_rps, true);
    let b_ka = best(&|r| r.keepalive_rps, true);
    let b_p99 = best(&|r| percentile(&r.latencies_ms, 0.99), false);
    for r in results {
        let l = &r.latencies_ms;
        let mean = r.counts.iter().sum::<u64>() as f64 / r.counts.len().max(1) as f64;
        let var = r
            .counts
            .iter()
            .map(|&c| (c as f64 - mean).powi(2))
            .sum::<f64>()
            / r.counts.len().max(1) as f64;
        let p99 = percentile(l, 0.99);
        md.push_str(&format!(
            "| {} | {:.0} ({:.2}x) | {:.0} ({:.2}x) | {:.0}% | {:.1} | {:.1} ({:.1}x) | {:.1} | {:.1} | {:.3} | {:.1} | {:?} ({:.3}) |\n",
            r.name,
            r.new_conn_rps,
            r.new_conn_rps / b_rps,
            r.keepalive_rps,
            r.keepalive_rps / b_ka,
            r.layer_cpu * 100.0,
            percentile(l, 0.5),
            p99,
            p99 / b_p99,
            percentile(l, 0.999),
            l.last().copied().unwrap_or(f64::NAN),
            r.stuck_share,
            r.stuck_p99_ms,
            r.counts,
            var.sqrt() / mean.max(1.0),
        ));
    }
    md
}

/// PNG plots through matplotlib: latency CDF per peer, per-worker distribution bars.
pub fn plots(results: &[PeerResult], docs: &Path) -> Result<()> {
    let data = serde_json::json!(results
        .iter()
        .map(|r| serde_json::json!({"name": r.name, "lat": r.latencies_ms, "counts": r.counts}))
        .collect::<Vec<_>>());
    let input = docs.join(".bench-plot.json");
    std::fs::write(&input, data.to_string())?;
    let script = r#"
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
runs = json.load(open(sys.argv[1]))
fig, ax = plt.subplots(figsize=(9, 5))
for r in runs:
    lat = sorted(r["lat"])
    n = len(lat)
    if n:
        ax.plot(lat, [(i + 1) / n for i in range(n)], label=r["name"])
ax.set_xscale("log"); ax.set_xlabel("latency (ms, from when the request was due)"); ax.set_ylabel("fraction of requests")
ax.set_title("Latency CDF under skew (open loop)"); ax.grid(True, which="both", alpha=0.3); ax.legend(fontsize=8)
fig.tight_layout(); fig.savefig(sys.argv[2] + "/bench-latency-cdf.png", dpi=110)
fig, ax = plt.subplots(figsize=(9, 5))
w = 0.8 / max(1, len(runs[0]["counts"]))
for i, r in enumerate(runs):
    total = sum(r["counts"]) or 1
    for j, c in enumerate(r["counts"]):
        ax.bar(i + j * w, c / total, w, color="C%d" % j)
ax.set_xticks([i + 0.4 - w / 2 for i in range(len(runs))]); ax.set_xticklabels([r["name"] for r in runs], rotation=30, ha="right", fontsize=8)
ax.axhline(1 / len(runs[0]["counts"]), color="k", lw=0.8, ls="--"); ax.set_ylabel("share of connections per worker")
ax.set_title("Per-worker distribution (new connections, 16 clients)")
fig.tight_layout(); fig.savefig(sys.argv[2] + "/bench-distribution.png", dpi=110)
"#;
    let status = Command::new("python3")
        .args(["-c", script])
        .arg(&input)
        .arg(docs)
        .status()?;
    let _ = std::fs::remove_file(&input);
    if !status.success() {
        bail!("plotting failed (pip install matplotlib)");
    }
    Ok(())
}
