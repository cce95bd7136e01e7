//! The alternatives `balancer` is measured against, each started the way a user would run it,
//! on loopback in the benchmark's private network namespace, with the same worker code.
//!
//! - `kernel hash`: one SO_REUSEPORT listener per worker, no program attached;
//! - `shared queue`: every worker accepts from one listening socket (classic pre-fork);
//! - `nginx least_conn` and `haproxy leastconn`: a user-space proxy in front of one listener per
//!   worker;
//! - `node cluster`: Node's cluster module (its primary accepts and hands connections round
//!   robin), against `balancer` running the same Node server on fd 3;
//! - `balancer <policy>`.

use std::{
    net::{SocketAddr, TcpListener},
    os::{
        fd::{AsRawFd as _, FromRawFd as _},
        unix::process::CommandExt as _,
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

/// A running peer: where clients connect, and the processes that make up its balancing layer
/// (whose CPU time is the cost of balancing).
pub struct Peer {
    pub name: String,
    pub addr: SocketAddr,
    pub layer: Vec<i32>,
    children: Vec<Child>,
    dir: PathBuf,
}

impl Drop for Peer {
    fn drop(&mut self) {
        for c in &mut self.children {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for c in &mut self.children {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        // Node's cluster workers and nginx workers are grandchildren: end whatever is left of
        // this peer's process groups.
        for c in &self.children {
            unsafe { libc::kill(-(c.id() as i32), libc::SIGKILL) };
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub struct Env<'a> {
    pub balancer: &'a Path,
    pub root: &'a Path,
    pub workers: u32,
}

fn listener(addr: SocketAddr, reuseport: bool) -> Result<TcpListener> {
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            bail!("socket: {}", std::io::Error::last_os_error());
        }
        let l = TcpListener::from_raw_fd(fd);
        let one: libc::c_int = 1;
        let size = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&raw const one).cast(),
            size,
        );
        if reuseport {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_REUSEPORT,
                (&raw const one).cast(),
                size,
            );
        }
        let SocketAddr::V4(v4) = addr else {
            bail!("IPv4 only")
        };
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*v4.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        if libc::bind(
            fd,
            (&raw const sin).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        ) != 0
        {
            bail!("bind {addr}: {}", std::io::Error::last_os_error());
        }
        if libc::listen(fd, 1024) != 0 {
            bail!("listen: {}", std::io::Error::last_os_error());
        }
        Ok(l)
    }
}

/// The built-in worker on `listener` as fd 3, named `slot`.
fn worker(balancer: &Path, listener: &TcpListener, slot: u32) -> Result<Child> {
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new(balancer);
    cmd.arg("worker")
        .env("LISTEN_FDS", "1")
        .env("BALANCER_SLOT", slot.to_string())
        .env_remove("LISTEN_PID")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself keeps close-on-exec: clear it by hand in that case.
            let ok = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0) == 0
            } else {
                libc::dup2(fd, 3) >= 0
            };
            if !ok {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd.spawn()?)
}

fn scratch(name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("balancer-bench-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn wait_serving(addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if crate::bench::get_slot(addr, None).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{addr} does not answer");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn balancer(env: &Env, port: u16, policy: &str, command: Option<&[&str]>) -> Result<Peer> {
    let dir = scratch(&format!("b{port}"))?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let mut cmd = Command::new(env.balancer);
    cmd.args([
        "run",
        "--listen",
        &addr.to_string(),
        "--workers",
        &env.workers.to_string(),
    ])
    .args([
        "--policy",
        policy,
        "--metrics",
        "off",
        "--ready-timeout",
        "0.5",
    ])
    .arg("--control")
    .arg(dir.join("control.sock"))
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .process_group(0);
    if let Some(c) = command {
        cmd.arg("--").args(c);
    }
    let child = cmd.spawn()?;
    let pid = child.id() as i32;
    let name = match command {
        None => format!("balancer {policy}"),
        Some(_) => format!("balancer {policy} (node)"),
    };
    let peer = Peer {
        name,
        addr,
        layer: vec![pid],
        children: vec![child],
        dir,
    };
    wait_serving(addr)?;
    std::thread::sleep(Duration::from_millis(600)); // every slot ready
    Ok(peer)
}

/// Per-worker SO_REUSEPORT listeners with no program: the kernel's hash alone.
pub fn kernel_hash(env: &Env, port: u16) -> Result<Peer> {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let mut children = Vec::new();
    for slot in 0..env.workers {
        let l = listener(addr, true)?;
        children.push(worker(env.balancer, &l, slot)?);
    }
    let peer = Peer {
        name: "kernel hash (no program)".into(),
        addr,
        layer: vec![],
        children,
        dir: scratch("hash")?,
    };
    wait_serving(addr)?;
    Ok(peer)
}

/// One listening socket, every worker accepting from it.
pub fn shared_queue(env: &Env, port: u16) -> Result<Peer> {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let l = listener(addr, false)?;
    let mut children = Vec::new();
    for slot in 0..env.workers {
        children.push(worker(env.balancer, &l, slot)?);
    }
    drop(l);
    let peer = Peer {
        name: "shared accept queue".into(),
        addr,
        layer: vec![],
        children,
        dir: scratch("shared")?,
    };
    wait_serving(addr)?;
    Ok(peer)
}

/// Workers on ports `port+1..`, one each, for a proxy in front.
fn backends(env: &Env, port: u16) -> Result<(Vec<Child>, Vec<SocketAddr>)> {
    let mut children = Vec::new();
    let mut addrs = Vec::new();
    for slot in 0..env.workers {
        let a: SocketAddr = format!("127.0.0.1:{}", port + 1 + slot as u16).parse()?;
        let l = listener(a, false)?;
        children.push(worker(env.balancer, &l, slot)?);
        addrs.push(a);
    }
    Ok((children, addrs))
}

fn descendants(pid: i32) -> Vec<i32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        if let Ok(kids) = std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")) {
            out.extend(
                kids.split_whitespace()
                    .filter_map(|k| k.parse::<i32>().ok()),
            );
        }
        i += 1;
    }
    out
}

pub fn nginx(env: &Env, port: u16) -> Result<Peer> {
    let dir = scratch("nginx")?;
    let (mut children, addrs) = backends(env, port)?;
    let servers: String = addrs.iter().map(|a| format!("    server {a};\n")).collect();
    let conf = format!(
        "worker_processes auto;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         events {{ worker_connections 8192; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         upstream workers {{\n    least_conn;\n    zone workers 64k;\n{servers}  }}\n\
         server {{\n    listen 127.0.0.1:{port};\n    location / {{ proxy_pass http://workers; }}\n  }}\n}}\n",
        d = dir.display()
    );
    std::fs::write(dir.join("nginx.conf"), conf)?;
    let child = Command::new("nginx")
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-p")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .context("nginx not installed (apt-get install nginx-light)")?;
    let pid = child.id() as i32;
    children.push(child);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let mut peer = Peer {
        name: "nginx least_conn".into(),
        addr,
        layer: vec![],
        children,
        dir,
    };
    wait_serving(addr)?;
    peer.layer = descendants(pid);
    Ok(peer)
}

pub fn haproxy(env: &Env, port: u16) -> Result<Peer> {
    let dir = scratch("haproxy")?;
    let (mut children, addrs) = backends(env, port)?;
    let servers: String = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("  server w{i} {a}\n"))
        .collect();
    let conf = format!(
        "global\n  maxconn 8000\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
         frontend f\n  bind 127.0.0.1:{port}\n  default_backend b\nbackend b\n  balance leastconn\n{servers}"
    );
    std::fs::write(dir.join("haproxy.cfg"), conf)?;
    let child = Command::new("haproxy")
        .arg("-f")
        .arg(dir.join("haproxy.cfg"))
        .arg("-db")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .context("haproxy not installed (apt-get install haproxy)")?;
    let pid = child.id() as i32;
    children.push(child);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let peer = Peer {
        name: "haproxy leastconn".into(),
        addr,
        layer: vec![pid],
        children,
        dir,
    };
    wait_serving(addr)?;
    Ok(peer)
}

pub fn node_cluster(env: &Env, port: u16) -> Result<Peer> {
    let child = Command::new("node")
        .arg(env.root.join("examples/node/cluster.js"))
        .env("PORT", port.to_string())
        .env("WORKERS", env.workers.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .context("node not installed")?;
    let pid = child.id() as i32;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let peer = Peer {
        name: "node cluster (primary)".into(),
        addr,
        layer: vec![pid],
        children: vec![child],
        dir: scratch("node")?,
    };
    wait_serving(addr)?;
    std::thread::sleep(Duration::from_millis(500));
    Ok(peer)
}

/// CPU seconds (user + system) used so far by `pids`.
pub fn cpu_seconds(pids: &[i32]) -> f64 {
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|s| {
            let rest = s.rsplit_once(')')?.1.to_string();
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / tick)
        })
        .sum()
}
