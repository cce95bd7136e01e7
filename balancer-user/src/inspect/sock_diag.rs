//! The port's TCP sockets, as sock_diag lists them: the accepted ones a worker may hold open
//! and the young handshakes.

use std::{collections::HashSet, net::SocketAddr};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, InetResponseHeader, SocketId, StateFlags, Timer},
    SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket};

/// TCP_SYN_RECV, as sock_diag reports a request socket.
const TCP_SYN_RECV: u8 = 3;

/// What sock_diag shows of a port in one dump.
#[derive(Debug, Default)]
pub struct Sockets {
    /// The inodes of accepted sockets a worker may hold open and the close tracker has not
    /// counted closed: ESTABLISHED and CLOSE_WAIT.
    pub open: HashSet<u64>,
    /// Young handshakes (request sockets that have not retransmitted their SYN-ACK), as
    /// (client, server).
    pub handshakes: Vec<(SocketAddr, SocketAddr)>,
}

impl Sockets {
    /// Files one socket of the port.
    fn add(&mut self, h: &InetResponseHeader) {
        if h.state == TCP_SYN_RECV {
            let young = !matches!(h.timer, Some(Timer::Retransmit(_, n)) if n > 0);
            if young {
                let id = &h.socket_id;
                self.handshakes.push((
                    (id.destination_address, id.destination_port).into(),
                    (id.source_address, id.source_port).into(),
                ));
            }
        } else if h.inode != 0 {
            self.open.insert(h.inode as u64);
        }
    }
}

/// This network namespace's TCP sockets on the listeners' local address `local` (see
/// [`Sockets`]). Asked of sock_diag with the states and the port as a filter, and of the
/// listeners' family alone (an IPv6 listener's IPv4 clients are IPv6 sockets too), so that the
/// kernel copies out nothing else: the hash table it walks is the host's, every namespace's
/// sockets and every TIME_WAIT among them.
pub fn open_sockets(local: SocketAddr) -> std::io::Result<Sockets> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&netlink_sys::SocketAddr::new(0, 0))?;
    let mut found = Sockets::default();
    let (family, mut id) = match local {
        SocketAddr::V4(_) => (AF_INET, SocketId::new_v4()),
        SocketAddr::V6(_) => (AF_INET6, SocketId::new_v6()),
    };
    id.source_port = local.port();
    ask(&socket, family, id)?;
    read_dump(&socket, local.port(), &mut found)?;
    Ok(found)
}

/// Asks for a dump of `family`'s TCP sockets in the states [`Sockets`] keeps.
fn ask(socket: &Socket, family: u8, id: SocketId) -> std::io::Result<()> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            // SYN_RECV asks for request sockets too (TCP_NEW_SYN_RECV).
            states: StateFlags::ESTABLISHED | StateFlags::CLOSE_WAIT | StateFlags::SYN_RECV,
            socket_id: id,
        })
        .into(),
    );
    request.finalize();
    let mut buf = vec![0; request.buffer_len()];
    request.serialize(&mut buf);
    socket.send(&buf, 0)?;
    Ok(())
}

/// Reads the answer to [`ask`] to its end, filing the sockets on local `port` into `found`.
fn read_dump(socket: &Socket, port: u16, found: &mut Sockets) -> std::io::Result<()> {
    let mut answer = vec![0u8; 1 << 16];
    loop {
        let size = socket.recv(&mut &mut answer[..], 0)?;
        let mut offset = 0;
        while offset < size {
            let message = NetlinkMessage::<SockDiagMessage>::deserialize(&answer[offset..size])
                .map_err(|e| std::io::Error::other(format!("sock_diag answer: {e}")))?;
            match message.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r))
                    if r.header.socket_id.source_port == port =>
                {
                    found.add(&r.header)
                }
                NetlinkPayload::Done(_) => return Ok(()),
                // No TCP sock_diag (tcp_diag not loaded and not loadable): nothing was read,
                // which must not pass for "no connection open".
                NetlinkPayload::Error(e) => {
                    return Err(std::io::Error::other(format!(
                        "sock_diag cannot list TCP sockets (is the tcp_diag module loaded?): {e}"
                    )))
                }
                _ => {}
            }
            if message.header.length == 0 {
                break;
            }
            offset += message.header.length as usize;
        }
    }
}
