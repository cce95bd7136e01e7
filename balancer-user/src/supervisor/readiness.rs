//! systemd's readiness protocol, the supervisor's side: each worker gets a `NOTIFY_SOCKET` of
//! its own and joins the rotation when it sends `READY=1` there, or when `--ready-timeout` runs
//! out (a worker that never heard of the protocol). During a reload, a slot's previous worker
//! stops only once its successor is ready.

use std::time::Duration;

use nix::unistd::Pid;
use tokio::sync::mpsc;

use super::events::Event;

/// Waits, on a task of its own, for the worker `pid` of `slot` to say READY=1 on `notify` (or for
/// `ready_timeout`), then sends [`Event::Ready`].
pub(super) fn wait(
    notify: Option<tokio::net::UnixDatagram>,
    pid: Pid,
    ready_timeout: Duration,
    events: mpsc::UnboundedSender<Event>,
    slot: u32,
    generation: u64,
) {
    tokio::spawn(async move {
        let said_ready = async {
            let Some(socket) = notify else {
                return std::future::pending().await;
            };
            loop {
                if let Some(true) = notify_from(&socket, pid).await {
                    return;
                }
            }
        };
        tokio::select! {
            _ = said_ready => {}
            _ = tokio::time::sleep(ready_timeout) => {}
        }
        let _ = events.send(Event::Ready { slot, generation });
    });
}

/// Binds the abstract datagram socket a worker may send READY=1 to. None if it cannot be
/// bound: the worker is then ready after --ready-timeout.
pub(super) fn socket(name: &str) -> Option<tokio::net::UnixDatagram> {
    use std::os::linux::net::SocketAddrExt as _;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).ok()?;
    let socket = std::os::unix::net::UnixDatagram::bind_addr(&addr).ok()?;
    socket.set_nonblocking(true).ok()?;
    // The kernel then attaches the sender's credentials to every datagram.
    nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::PassCred, &true).ok()?;
    tokio::net::UnixDatagram::from_std(socket).ok()
}

/// Waits for the next datagram on a worker's NOTIFY_SOCKET: Some(true) if it says READY=1 and
/// comes from `worker` itself (an abstract socket can be reached by any local process, so the
/// kernel's SCM_CREDENTIALS decide), Some(false) for any other datagram, None on an error.
async fn notify_from(socket: &tokio::net::UnixDatagram, worker: Pid) -> Option<bool> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
    use std::os::fd::AsRawFd as _;
    let mut buf = [0u8; 512];
    socket
        .async_io(tokio::io::Interest::READABLE, || {
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let mut space = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
            let msg = recvmsg::<UnixAddr>(
                socket.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_DONTWAIT,
            )
            .map_err(std::io::Error::from)?;
            let sender = msg.cmsgs().ok().and_then(|mut c| {
                c.find_map(|m| match m {
                    ControlMessageOwned::ScmCredentials(creds) => Some(creds.pid()),
                    _ => None,
                })
            });
            let text = msg.iovs().next().map(<[u8]>::to_vec).unwrap_or_default();
            Ok(sender == Some(worker.as_raw())
                && text.split(|&b| b == b'\n').any(|l| l == b"READY=1"))
        })
        .await
        .ok()
}
