//! The alternatives `balancer` is measured against, each started the way a user would run it,
//! on loopback in the benchmark's private network namespace, with the same worker code.
//!
//! - `plain SO_REUSEPORT`: one SO_REUSEPORT listener per worker, no program attached (the
//!   kernel's hash alone);
//! - `shared queue`: every worker accepts from one listening socket (classic pre-fork);
//! - `nginx least_conn` and `haproxy leastconn`: a user-space proxy in front of one listener per
//!   worker;
//! - `node cluster`: Node's cluster module (its primary accepts and hands connections round
//!   robin), against `balancer` running the same Node server on fd 3;
//! - `balancer <policy>`.

use std::{
    net::{SocketAddr, TcpListener},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use balancer_tests::{get, listen, procfs::descendants, Balancer};

use super::localhost;

/// A running peer: where clients connect, and the processes that make up its balancing layer
/// (whose CPU time is the cost of balancing).
pub struct Peer {
    pub name: String,
    pub addr: SocketAddr,
    pub layer: Vec<i32>,
    children: Vec<Child>,
    /// Set for `balancer` itself, which the test kit starts and stops.
    balancer: Option<Balancer>,
    /// A proxy's configuration and files.
    dir: Option<PathBuf>,
}

impl Peer {
    /// The balancer of a `balancer` peer, for control requests.
    pub fn balancer(&self) -> Option<&Balancer> {
        self.balancer.as_ref()
    }

    /// Every process of this peer now: its balancing layer and its workers.
    pub fn processes(&self) -> Vec<i32> {
        let roots = self.children.iter().map(|c| c.id() as i32);
        let roots = roots.chain(self.balancer.iter().map(|b| b.child.id() as i32));
        roots.flat_map(descendants).collect()
    }

    /// Its workers: every process of the peer outside the balancing layer.
    pub fn workers(&self) -> Vec<i32> {
        let mut all = self.processes();
        all.retain(|p| !self.layer.contains(p));
        all
    }

    /// A peer of `children` (process group leaders), once it answers on `addr`.
    fn serving(
        name: &str,
        addr: SocketAddr,
        children: Vec<Child>,
        dir: Option<PathBuf>,
    ) -> Result<Peer> {
        let peer = Peer {
            name: name.into(),
            addr,
            layer: vec![],
            children,
            balancer: None,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while get(addr, "/").is_err() {
            if Instant::now() > deadline {
                bail!("{addr} does not answer");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(peer)
    }
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
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

pub struct Env<'a> {
    pub balancer: &'a Path,
    pub root: &'a Path,
    pub workers: u32,
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

/// A process of a peer: its own process group, so that its descendants can be ended with it.
fn spawn(cmd: &mut Command, missing: &str) -> Result<Child> {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .context(missing.to_string())
}

fn scratch(name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("balancer-bench-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// `balancer run` with `policy`, the built-in worker or `command`, and the shared overflow
/// queue on or off (always said: its default depends on the worker).
pub fn balancer(
    env: &Env,
    port: u16,
    policy: &str,
    overflow: bool,
    command: Option<&[&str]>,
) -> Result<Peer> {
    let addr = localhost(port);
    let mut args = vec![
        "--policy",
        policy,
        "--overflow",
        if overflow { "on" } else { "off" },
        "--metrics",
        "off",
        "--ready-timeout",
        "0.5",
    ];
    if let Some(c) = command {
        args.push("--");
        args.extend(c);
    }
    let b = Balancer::launch(&addr.to_string(), addr, env.workers, &args, true);
    let name = match (command, overflow) {
        (Some(_), false) => format!("balancer {policy} (node)"),
        (Some(_), true) => format!("balancer {policy} + overflow (node)"),
        (None, true) => format!("balancer {policy} + overflow"),
        // Only least-loaded sends anything to the queue: the others' rows need no mention.
        (None, false) if policy == "least-loaded" => format!("balancer {policy}, no overflow"),
        (None, false) => format!("balancer {policy}"),
    };
    let mut peer = Peer::serving(&name, addr, vec![], None)?;
    peer.layer = vec![b.child.id() as i32];
    peer.balancer = Some(b);
    Ok(peer)
}

/// Per-worker SO_REUSEPORT listeners with no program: the kernel's hash alone.
pub fn kernel_hash(env: &Env, port: u16) -> Result<Peer> {
    let addr = localhost(port);
    let mut children = Vec::new();
    for slot in 0..env.workers {
        let l = listen::tcp(addr, true)?;
        children.push(worker(env.balancer, &l, slot)?);
    }
    Peer::serving("plain SO_REUSEPORT (no program)", addr, children, None)
}

/// One listening socket, every worker accepting from it.
pub fn shared_queue(env: &Env, port: u16) -> Result<Peer> {
    let addr = localhost(port);
    let l = listen::tcp(addr, false)?;
    let mut children = Vec::new();
    for slot in 0..env.workers {
        children.push(worker(env.balancer, &l, slot)?);
    }
    drop(l);
    Peer::serving("shared accept queue", addr, children, None)
}

/// Workers on ports `port+1..`, one each, for a proxy in front.
fn backends(env: &Env, port: u16) -> Result<(Vec<Child>, Vec<SocketAddr>)> {
    let mut children = Vec::new();
    let mut addrs = Vec::new();
    for slot in 0..env.workers {
        let a = localhost(port + 1 + slot as u16);
        let l = listen::tcp(a, false)?;
        children.push(worker(env.balancer, &l, slot)?);
        addrs.push(a);
    }
    Ok((children, addrs))
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
    let child = spawn(
        Command::new("nginx")
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-p")
            .arg(&dir),
        "nginx not installed (apt-get install nginx-light)",
    )?;
    let pid = child.id() as i32;
    children.push(child);
    let mut peer = Peer::serving("nginx least_conn", localhost(port), children, Some(dir))?;
    // nginx forks its workers once it runs: they are there only now.
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
    let child = spawn(
        Command::new("haproxy")
            .arg("-f")
            .arg(dir.join("haproxy.cfg"))
            .arg("-db"),
        "haproxy not installed (apt-get install haproxy)",
    )?;
    let pid = child.id() as i32;
    children.push(child);
    let mut peer = Peer::serving("haproxy leastconn", localhost(port), children, Some(dir))?;
    peer.layer = vec![pid];
    Ok(peer)
}

pub fn node_cluster(env: &Env, port: u16) -> Result<Peer> {
    let child = spawn(
        Command::new("node")
            .arg(env.root.join("examples/node/cluster.js"))
            .env("PORT", port.to_string())
            .env("WORKERS", env.workers.to_string()),
        "node not found: `cargo xtask setup` installs it",
    )?;
    let pid = child.id() as i32;
    let mut peer = Peer::serving("node cluster (primary)", localhost(port), vec![child], None)?;
    peer.layer = vec![pid];
    // The first worker answers before the others have started: give them time to.
    std::thread::sleep(Duration::from_millis(500));
    Ok(peer)
}
