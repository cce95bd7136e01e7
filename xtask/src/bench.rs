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

struct Running {
    child: Child,
    control: PathBuf,
}

impl Running {
    fn start(bin: &Path, port: u16, workers: u32, policy: &str) -> Result<Running> {
        Running::start_with(bin, port, workers, policy, &[])
    }

    fn start_with(
        bin: &Path,
        port: u16,
        workers: u32,
        policy: &str,
        extra: &[&str],
    ) -> Result<Running> {
        let control =
            std::env::temp_dir().join(format!("balancer-bench-{}-{port}.sock", std::process::id()));
        let child = Command::new(bin)
            .args([
                "run",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--workers",
                &workers.to_string(),
            ])
            .args(["--policy", policy, "--backlog", "128", "--metrics", "off"])
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

    fn status(&self) -> Result<serde_json::Value> {
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
                        let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
                        c.set_read_timeout(Some(Duration::from_secs(10)))?;
                        c.write_all(b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")?;
                        let mut buf = Vec::new();
                        c.read_to_end(&mut buf)?;
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
fn get_slot(addr: SocketAddr, from: Option<std::net::IpAddr>) -> Result<u32> {
    let mut c = match from {
        None => TcpStream::connect_timeout(&addr, Duration::from_secs(5))?,
        Some(ip) => connect_from(ip, addr)?,
    };
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    c.write_all(b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")?;
    let mut buf = String::new();
    c.read_to_string(&mut buf)?;
    slot_in(&buf)
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
            rows.push(CostRow {
                slots,
                policy,
                runs,
                ns_per_run: ns as f64 / runs as f64,
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

pub fn run(bin: &Path, root: &Path, quick: bool) -> Result<()> {
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
         stops growing past 32 slots.\n\n",
    );
    md.push_str("| slots | policy | runs | ns per selection | vs `hash` at the same size |\n|---:|---|---:|---:|---:|\n");
    for r in &rows {
        md.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.2}x |\n",
            r.slots,
            r.policy,
            r.runs,
            r.ns_per_run,
            r.ns_per_run / base(r.slots)
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
    let json: Vec<_> = rows
        .iter()
        .map(|r| serde_json::json!({"slots": r.slots, "policy": r.policy, "runs": r.runs, "ns_per_run": r.ns_per_run}))
        .collect();
    std::fs::create_dir_all(root.join("docs"))?;
    std::fs::write(root.join("docs/benchmarks.md"), &md)?;
    std::fs::write(
        root.join("docs/benchmarks.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "machine": machine(),
            "date": today(),
            "selection_cost": json,
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
