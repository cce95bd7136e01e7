//! Idle keep-alive connections held open: each opened from one of 16 loopback addresses
//! (127.0.4.x: one address has too few ports for 100k connections to one destination), one
//! request answered on it, then left open with nothing more to say, as a browser's idle
//! connection is. The worker counts it as open but not busy, and so does the supervisor's
//! reconciliation, which walks it with every other socket.

use std::{
    io::{BufRead as _, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    process::{Child, Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

use super::client::connect_from;

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n";
/// Threads opening connections at once.
const OPENERS: usize = 8;

/// Connections one process holds: well under the hard RLIMIT_NOFILE of a machine where it
/// cannot be raised (no CAP_SYS_RESOURCE), as the workers' must be too.
pub const PER_PROCESS: usize = 15_000;

/// The connections held to one address, by child processes (`xtask hold`) of
/// [`PER_PROCESS`] connections at most.
pub struct Held {
    to: SocketAddrV4,
    held: usize,
    holders: Vec<Child>,
}

impl Held {
    pub fn new(to: SocketAddr) -> Result<Held> {
        let SocketAddr::V4(to) = to else {
            bail!("idle connections are opened over IPv4 only");
        };
        Ok(Held {
            to,
            held: 0,
            holders: Vec::new(),
        })
    }

    pub fn len(&self) -> usize {
        self.held
    }

    /// Opens connections until `total` are held.
    pub fn grow_to(&mut self, total: usize) -> Result<()> {
        while self.held < total {
            let count = (total - self.held).min(PER_PROCESS);
            let mut child = Command::new(std::env::current_exe()?)
                .args(["hold", &self.to.to_string(), &count.to_string()])
                .arg(self.held.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .context("cannot start a holder of idle connections")?;
            let mut line = String::new();
            let stdout = child.stdout.take().context("holder stdout")?;
            std::io::BufReader::new(stdout).read_line(&mut line)?;
            self.holders.push(child);
            if line.trim() != "held" {
                bail!("a holder of idle connections failed: {}", line.trim());
            }
            self.held += count;
        }
        Ok(())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        for c in &mut self.holders {
            // Its stdin closes with it: the holder exits and its connections close.
            drop(c.stdin.take());
            let _ = c.wait();
        }
    }
}

/// `xtask hold TO COUNT FIRST`: opens `count` idle connections to `to` (sources from the
/// `first`-th on), says `held` on stdout, and keeps them until stdin closes.
pub fn hold(to: SocketAddrV4, count: usize, first: usize) -> Result<()> {
    allow_fds(count as u64 + 64)?;
    let streams = open_all(to, count, first);
    match &streams {
        Ok(_) => println!("held"),
        Err(e) => println!("{e:#}"),
    }
    std::io::stdout().flush()?;
    let mut rest = Vec::new();
    std::io::stdin().read_to_end(&mut rest)?;
    drop(streams);
    Ok(())
}

fn open_all(to: SocketAddrV4, count: usize, first: usize) -> Result<Vec<TcpStream>> {
    let opened: Vec<Vec<TcpStream>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..OPENERS)
            .map(|t| {
                s.spawn(move || {
                    (0..count)
                        .filter(|i| i % OPENERS == t)
                        .map(|i| open(source(first + i), to))
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("an opening thread panicked"))
            .collect::<Result<_>>()
    })?;
    Ok(opened.into_iter().flatten().collect())
}

fn source(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 4, (i % 16) as u8 + 1)
}

/// One connection from `from`, its first request answered.
fn open(from: Ipv4Addr, to: SocketAddrV4) -> Result<TcpStream> {
    let mut s = connect_from(from, to).with_context(|| format!("connect from {from}"))?;
    s.write_all(REQUEST)?;
    let mut reply = Vec::with_capacity(256);
    let mut buf = [0u8; 512];
    while !complete(&reply) {
        let n = s.read(&mut buf)?;
        if n == 0 {
            bail!("{to} closed an idle connection before answering");
        }
        reply.extend_from_slice(&buf[..n]);
    }
    Ok(s)
}

/// Whether `reply` holds a whole answer: its headers and the body they announce.
fn complete(reply: &[u8]) -> bool {
    let Some(end) = reply.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let headers = String::from_utf8_lossy(&reply[..end]).to_ascii_lowercase();
    let length = headers
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    reply.len() >= end + 4 + length
}

/// Lets this process hold `fds` descriptors, as far as its hard limit allows (raising that needs
/// CAP_SYS_RESOURCE, which a container may lack).
fn allow_fds(fds: u64) -> Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit");
    }
    if limit.rlim_cur >= fds {
        return Ok(());
    }
    limit.rlim_cur = fds.min(limit.rlim_max);
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("cannot raise RLIMIT_NOFILE");
    }
    Ok(())
}
