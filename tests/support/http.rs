//! A minimal HTTP/1.1 client for the built-in worker: one request per new connection (what a
//! browser or `curl` does), or a keep-alive connection that stays on one worker.
//!
//! Hand-written rather than a crate's client on purpose: the tests count connections, so each
//! request must open (or keep) exactly the connection the test means, with no pool between.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

/// A parsed reply of the built-in worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub slot: u32,
    pub pid: u32,
}

fn parse_reply(raw: &str) -> Result<Reply> {
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status line in {raw:?}"))?;
    let body = raw.split("\r\n\r\n").nth(1).unwrap_or("");
    let field = |name: &str| -> Option<u32> {
        body.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
    };
    Ok(Reply {
        status,
        slot: field("slot").with_context(|| format!("no slot in {body:?}"))?,
        pid: field("pid").unwrap_or(0),
    })
}

/// Opens a connection (bounded in time), for requests sent later.
pub fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    // Requests go out as one segment, at once: no Nagle delay behind a first partial write.
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(s)
}

/// Sends one request on `stream` and reads the whole reply (the server closes after it).
pub fn request_on(stream: &mut TcpStream, path: &str) -> Result<Reply> {
    stream.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    parse_reply(&raw)
}

/// One request on a new connection from source address `from` (any 127.x.y.z is local).
pub fn get_from(from: std::net::IpAddr, addr: SocketAddr, path: &str) -> Result<Reply> {
    use nix::sys::socket::{
        bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrStorage,
    };
    use std::os::fd::AsRawFd as _;
    let family = if from.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    bind(
        fd.as_raw_fd(),
        &SockaddrStorage::from(SocketAddr::new(from, 0)),
    )?;
    connect(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    let mut stream = TcpStream::from(fd);
    stream.set_read_timeout(Some(Duration::from_secs(15)))?;
    stream.set_nodelay(true)?;
    request_on(&mut stream, path)
}

/// One request on a new connection: what a browser or `curl` does.
pub fn get(addr: SocketAddr, path: &str) -> Result<Reply> {
    request_on(&mut connect(addr)?, path)
}

/// A keep-alive connection that stays on one worker: tells which slot it reached.
pub struct KeepAlive {
    pub(crate) stream: TcpStream,
    pub slot: u32,
}

impl KeepAlive {
    pub fn open(addr: SocketAddr) -> Result<KeepAlive> {
        let mut stream = connect(addr)?;
        let reply = keepalive_request(&mut stream, "/")?;
        Ok(KeepAlive {
            stream,
            slot: reply.slot,
        })
    }

    /// Connects and sends nothing: a connection that may wait in a queue, its slot unknown
    /// (`u32::MAX`).
    pub fn open_unanswered(addr: SocketAddr) -> Result<KeepAlive> {
        Ok(KeepAlive {
            stream: connect(addr)?,
            slot: u32::MAX,
        })
    }

    /// Sends a request without waiting for the reply (e.g. `/work?ms=N` to hold the worker).
    pub fn send(&mut self, path: &str) -> Result<()> {
        self.stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())?;
        Ok(())
    }

    /// Sends a last request, asking the server to close the connection after its reply.
    pub fn send_last(&mut self, path: &str) -> Result<()> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        self.stream.write_all(req.as_bytes())?;
        Ok(())
    }

    /// Reads one reply to an earlier [`KeepAlive::send`].
    pub fn read_reply(&mut self) -> Result<Reply> {
        read_one(&mut self.stream)
    }
}

fn keepalive_request(stream: &mut TcpStream, path: &str) -> Result<Reply> {
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())?;
    read_one(stream)
}

/// Reads one HTTP/1.1 reply with a Content-Length body.
fn read_one(stream: &mut TcpStream) -> Result<Reply> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed before the reply was complete");
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(head_end) = text.find("\r\n\r\n") {
            let len: usize = text[..head_end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if buf.len() >= head_end + 4 + len {
                return parse_reply(&text);
            }
        }
    }
}

/// `n` requests for `path`, each on a new connection, from threads started together: each
/// reply with the time it took. Every one must be answered.
pub fn timed_gets(addr: SocketAddr, n: usize, path: &str) -> Vec<(Reply, Duration)> {
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let path = path.to_string();
            std::thread::spawn(move || {
                let t = Instant::now();
                let r = get(addr, &path).unwrap();
                (r, t.elapsed())
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

/// Resets a connection (RST instead of FIN) when dropped: SO_LINGER with a zero timeout.
pub fn reset(stream: TcpStream) {
    use std::os::fd::AsRawFd as _;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(stream);
}

/// Counts of replies per slot.
pub fn histogram(replies: &[Reply], slots: usize) -> Vec<usize> {
    let mut h = vec![0; slots];
    for r in replies {
        h[r.slot as usize] += 1;
    }
    h
}
