//! One `SO_REUSEPORT` listening socket per worker slot, all bound to the same address.
//!
//! The kernel groups sockets that set `SO_REUSEPORT` and bind the same address and port (under
//! the same user) into one reuseport group; each new connection goes to exactly one socket of
//! the group and waits in that socket's accept queue. The supervisor creates and keeps every
//! listener, so a worker's death closes none of them: connections already queued on a dead
//! worker's listener wait for its replacement instead of being reset.

use std::{
    io,
    net::SocketAddr,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd},
};

use nix::sys::socket::{
    bind, getsockname, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType,
    SockaddrStorage,
};

/// What can go wrong with the listen address, the group's size or its sockets, each worded as
/// the user reads it: the problem, and the fix where there is one.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "bad listen address {0:?}: expected ADDR:PORT such as 0.0.0.0:8080, [::]:8080 or :8080"
    )]
    BadAddress(String),
    #[error("cannot create a socket")]
    Socket(#[source] nix::Error),
    #[error(
        "port {} is in use on {}: stop what listens there (`ss -ltnp 'sport = :{}'`) or pass \
         another --listen",
        .0.port(),
        .0.ip(),
        .0.port()
    )]
    InUse(SocketAddr),
    #[error("not allowed to bind {0}: ports below 1024 need root or CAP_NET_BIND_SERVICE")]
    BindDenied(SocketAddr),
    #[error("cannot bind {0}: the address is not on this machine; use 0.0.0.0 or a local address")]
    NotLocal(SocketAddr),
    /// Any other refusal of bind or listen: the message quotes the kernel's.
    #[error("cannot bind {addr}: {errno}")]
    Bind { addr: SocketAddr, errno: nix::Error },
    #[error("listener has no IP address")]
    NoIpAddress,
    #[error("--backlog {0}: the accept queue length must be 0 or more (default 1024)")]
    Backlog(i32),
    #[error("--workers 0: at least one worker is needed (default: one per CPU)")]
    NoWorkers,
    #[error(
        "--workers {workers} is above the maximum of {max} slots: pass --workers {max} or fewer"
    )]
    TooManyWorkers { workers: u32, max: u32 },
    /// A socket option, or the address of a listener.
    #[error(transparent)]
    Sys(#[from] nix::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Parses `ADDR:PORT`, `[V6]:PORT`, `:PORT` or `PORT` (the last two listen on every IPv4 address).
pub fn parse_addr(s: &str) -> Result<SocketAddr> {
    let s = s.trim();
    let with_host = if let Some(port) = s.strip_prefix(':') {
        format!("0.0.0.0:{port}")
    } else if s.parse::<u16>().is_ok() {
        format!("0.0.0.0:{s}")
    } else {
        s.to_string()
    };
    with_host
        .parse()
        .map_err(|_| Error::BadAddress(s.to_owned()))
}

/// What the slots listen for: TCP connections, or UDP datagrams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Udp,
}

/// One slot's socket: a listening TCP socket or a bound UDP socket, owned by the supervisor.
#[derive(Debug)]
pub struct Listener {
    fd: OwnedFd,
    pub transport: Transport,
}

impl Listener {
    /// Stops listening for every process that holds this socket, not only this one (closing
    /// one descriptor would not while workers hold theirs): `shutdown(SHUT_RD)` on a listener
    /// runs the kernel's listen stop, which hands the queued connections to the other
    /// listeners of the group.
    pub fn stop_listening(&self) -> nix::Result<()> {
        nix::sys::socket::shutdown(self.fd.as_raw_fd(), nix::sys::socket::Shutdown::Read)
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Listener {
    pub fn local_addr(&self) -> Result<SocketAddr> {
        let addr: SockaddrStorage = getsockname(self.fd.as_raw_fd())?;
        if let Some(v4) = addr.as_sockaddr_in() {
            return Ok(SocketAddr::from((v4.ip(), v4.port())));
        }
        if let Some(v6) = addr.as_sockaddr_in6() {
            return Ok(SocketAddr::from((v6.ip(), v6.port())));
        }
        Err(Error::NoIpAddress)
    }

    /// Connections waiting in a TCP listener's accept queue (`tcpi_unacked` of a listening
    /// socket); 0 for UDP, whose queue holds datagrams, not connections.
    pub fn queued(&self) -> io::Result<u32> {
        if self.transport == Transport::Udp {
            return Ok(0);
        }
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: getsockopt fills at most `len` bytes of `info`.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&raw mut info).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(info.tcpi_unacked)
    }
}

fn new_socket(addr: SocketAddr, transport: Transport, reuseport: bool) -> Result<OwnedFd> {
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let kind = match transport {
        Transport::Tcp => SockType::Stream,
        Transport::Udp => SockType::Datagram,
    };
    let fd = socket(family, kind, SockFlag::SOCK_CLOEXEC, None).map_err(Error::Socket)?;
    // TCP: lets a restarted balancer bind while old connections sit in TIME_WAIT. Not for UDP,
    // where SO_REUSEADDR would let the probe (and anyone else) share the port.
    if transport == Transport::Tcp {
        setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    }
    if reuseport {
        setsockopt(&fd, sockopt::ReusePort, &true)?;
    }
    Ok(fd)
}

fn bind_error(addr: SocketAddr, e: nix::Error) -> Error {
    match e {
        nix::Error::EADDRINUSE => Error::InUse(addr),
        nix::Error::EACCES => Error::BindDenied(addr),
        nix::Error::EADDRNOTAVAIL => Error::NotLocal(addr),
        errno => Error::Bind { addr, errno },
    }
}

/// Creates `count` listeners on `addr` forming one reuseport group of their own.
///
/// A plain bind without `SO_REUSEPORT` comes first: it fails if anything listens on the port,
/// including another reuseport group of the same user, which our sockets would otherwise
/// silently join (and then share connections with).
/// Port 0 picks a free port for the first listener and binds the others to the same one.
pub fn bind_group(
    addr: SocketAddr,
    transport: Transport,
    count: u32,
    backlog: i32,
) -> Result<Vec<Listener>> {
    let mut addr = addr;
    if addr.port() != 0 {
        let probe = new_socket(addr, transport, false)?;
        bind(probe.as_raw_fd(), &SockaddrStorage::from(addr)).map_err(|e| bind_error(addr, e))?;
    }
    let backlog = Backlog::new(backlog)?;
    let mut group = Vec::with_capacity(count as usize);
    for _ in 0..count {
        group.push(bind_one(addr, transport, backlog)?);
        addr = group[0].local_addr()?;
    }
    Ok(group)
}

/// One more listener for an existing group, e.g. when a slot is added.
pub fn bind_one(addr: SocketAddr, transport: Transport, backlog: Backlog) -> Result<Listener> {
    let fd = new_socket(addr, transport, true)?;
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr)).map_err(|e| bind_error(addr, e))?;
    if transport == Transport::Tcp {
        // SAFETY: listen(2) on a socket this function owns; it reads nothing from memory.
        let rc = unsafe { libc::listen(fd.as_raw_fd(), backlog.0) };
        if rc != 0 {
            return Err(bind_error(addr, nix::errno::Errno::last()));
        }
    }
    Ok(Listener { fd, transport })
}

/// The accept queue length asked of `listen(2)`; the kernel caps it at `net.core.somaxconn`.
///
/// Not nix's `Backlog`, which refuses anything from the C library's `SOMAXCONN` up: 4096 with
/// glibc, but 128 with musl, which would make the static release binary refuse the default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backlog(i32);

impl Backlog {
    pub fn new(n: i32) -> Result<Backlog> {
        if n < 0 {
            return Err(Error::Backlog(n));
        }
        Ok(Backlog(n))
    }
}

/// Refuses group sizes the maps cannot hold.
pub fn check_count(workers: u32) -> Result<()> {
    let max = balancer_common::MAX_SLOTS;
    if workers == 0 {
        return Err(Error::NoWorkers);
    }
    if workers > max {
        return Err(Error::TooManyWorkers { workers, max });
    }
    Ok(())
}

/// Waits after a failed accept on the supervisor's own sockets (control, metrics). The usual
/// cause, running out of descriptors (EMFILE), leaves the connection queued, so the listener
/// stays readable and an immediate retry would fail again at once: a loop that retried would
/// spin on a CPU. The pause lets connections finish and free descriptors.
pub async fn after_accept_error(what: &str, e: &io::Error) {
    log::warn!("{what}: accept failed ({e}); retrying in 100 ms");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
}

/// The accept queue length the kernel gives a listener asked for `backlog`: it caps the request
/// at `net.core.somaxconn` (of the current network namespace).
pub fn effective_backlog(backlog: i32) -> u32 {
    let cap = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(4096);
    (backlog.max(0) as u32).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_users_write() {
        assert_eq!(
            parse_addr(":8080").unwrap(),
            "0.0.0.0:8080".parse().unwrap()
        );
        assert_eq!(parse_addr("8080").unwrap(), "0.0.0.0:8080".parse().unwrap());
        assert_eq!(
            parse_addr("127.0.0.1:9").unwrap(),
            "127.0.0.1:9".parse().unwrap()
        );
        assert_eq!(parse_addr("[::1]:80").unwrap(), "[::1]:80".parse().unwrap());
        let e = parse_addr("localhost").unwrap_err().to_string();
        assert!(e.contains("bad listen address"), "{e}");
        assert!(parse_addr("1.2.3.4:99999").is_err());
    }

    #[test]
    fn a_backlog_above_the_c_librarys_somaxconn_is_the_kernels_to_cap() {
        let group = bind_group("127.0.0.1:0".parse().unwrap(), Transport::Tcp, 1, 65_535).unwrap();
        assert_eq!(group.len(), 1);
        let e = Backlog::new(-1).unwrap_err().to_string();
        assert!(e.contains("--backlog -1"), "{e}");
    }

    #[test]
    fn worker_counts_are_bounded() {
        assert!(check_count(0)
            .unwrap_err()
            .to_string()
            .contains("at least one"));
        assert!(check_count(1025)
            .unwrap_err()
            .to_string()
            .contains("maximum of 1024"));
        assert!(check_count(1024).is_ok());
    }

    #[test]
    fn a_group_shares_one_port_and_refuses_a_second_group() {
        for t in [Transport::Tcp, Transport::Udp] {
            let group = bind_group("127.0.0.1:0".parse().unwrap(), t, 2, 16).unwrap();
            let port = group[0].local_addr().unwrap().port();
            assert_eq!(group[1].local_addr().unwrap().port(), port);
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let e = bind_group(addr, t, 2, 16).unwrap_err().to_string();
            assert!(e.contains("in use"), "{e}");
        }
    }
}
