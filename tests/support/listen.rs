//! Listening sockets made by hand, for servers started without `balancer`: a worker handed a
//! listener on fd 3, one SO_REUSEPORT group per port, or backends behind a proxy.

use std::{
    net::{SocketAddr, TcpListener},
    os::fd::AsRawFd as _,
};

use anyhow::{Context as _, Result};
use nix::sys::socket::{
    bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
    SockaddrStorage,
};

/// A TCP listener on `addr` (backlog 1024). With `reuseport`, further listeners may bind the
/// same address: the kernel then spreads connections over them by its hash.
pub fn tcp(addr: SocketAddr, reuseport: bool) -> Result<TcpListener> {
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    if reuseport {
        // Before bind: the kernel admits a socket to a group only if it asked at bind time.
        setsockopt(&fd, sockopt::ReusePort, &true)?;
    }
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr)).with_context(|| format!("bind {addr}"))?;
    listen(&fd, Backlog::new(1024)?)?;
    Ok(TcpListener::from(fd))
}
