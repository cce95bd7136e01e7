//! Hand-made TCP segments: what no socket API sends on its own (a SYN whose handshake is then
//! abandoned, an ACK, FIN or RST for no connection), through a raw IPv4 socket.

use std::net::SocketAddrV4;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const ACK: u8 = 0x10;

/// A raw socket that sends whole IPv4 packets (`IPPROTO_RAW` implies `IP_HDRINCL`).
pub struct RawSender(std::os::fd::OwnedFd);

impl RawSender {
    pub fn new() -> RawSender {
        use std::os::fd::FromRawFd as _;
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        assert!(
            fd >= 0,
            "raw socket: {} (the tests need root)",
            std::io::Error::last_os_error()
        );
        RawSender(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
    }

    /// Sends one TCP segment with `flags` from `src` to `dst`.
    pub fn send(&self, src: SocketAddrV4, dst: SocketAddrV4, flags: u8, seq: u32) {
        use std::os::fd::AsRawFd as _;
        let packet = segment(src, dst, flags, seq);
        let to = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(dst.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        let n = unsafe {
            libc::sendto(
                self.0.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&raw const to).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        assert_eq!(
            n,
            packet.len() as isize,
            "sendto: {}",
            std::io::Error::last_os_error()
        );
    }
}

impl Default for RawSender {
    fn default() -> Self {
        RawSender::new()
    }
}

/// An IPv4 header and a 20-byte TCP header, checksums filled in.
fn segment(src: SocketAddrV4, dst: SocketAddrV4, flags: u8, seq: u32) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x45; // version 4, 5 words
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[8] = 64; // TTL
    p[9] = libc::IPPROTO_TCP as u8;
    p[12..16].copy_from_slice(&src.ip().octets());
    p[16..20].copy_from_slice(&dst.ip().octets());
    let ip = checksum(&p[..20], 0);
    p[10..12].copy_from_slice(&ip.to_be_bytes());
    let t = &mut p[20..];
    t[0..2].copy_from_slice(&src.port().to_be_bytes());
    t[2..4].copy_from_slice(&dst.port().to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    if flags & ACK != 0 {
        t[8..12].copy_from_slice(&1u32.to_be_bytes());
    }
    t[12] = 5 << 4; // data offset: 5 words
    t[13] = flags;
    t[14..16].copy_from_slice(&65535u16.to_be_bytes());
    // The pseudo-header: addresses, protocol, TCP length.
    let mut pseudo = 0u32;
    for pair in p[12..20].chunks(2) {
        pseudo += u16::from_be_bytes([pair[0], pair[1]]) as u32;
    }
    pseudo += libc::IPPROTO_TCP as u32 + 20;
    let tcp = checksum(&p[20..], pseudo);
    p[36..38].copy_from_slice(&tcp.to_be_bytes());
    p
}

fn checksum(bytes: &[u8], start: u32) -> u16 {
    let mut sum = start;
    for pair in bytes.chunks(2) {
        sum += u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]) as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
