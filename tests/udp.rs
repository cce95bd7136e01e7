//! `balancer run --udp`: the program steers each datagram.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    time::Duration,
};

use balancer_tests::*;

fn socket_from(ip: IpAddr) -> UdpSocket {
    let s = UdpSocket::bind(SocketAddr::new(ip, 0)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Sends `msg` and returns the slot named in the answer.
fn ask(s: &UdpSocket, to: SocketAddr, msg: &str) -> u32 {
    s.send_to(msg.as_bytes(), to).unwrap();
    let mut buf = [0u8; 256];
    let (n, _) = s.recv_from(&mut buf).expect("every datagram is answered");
    let text = String::from_utf8_lossy(&buf[..n]);
    text.split_whitespace()
        .find_map(|kv| kv.strip_prefix("slot=")?.parse().ok())
        .unwrap_or_else(|| panic!("no slot in {text:?}"))
}

fn local() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}

#[test]
fn round_robin_steers_each_datagram() {
    netns();
    let b = Balancer::start(8080, 4, &["--udp", "--policy", "round-robin"]);
    // One client socket, one 4-tuple: still a new choice per datagram.
    let s = socket_from(local());
    let slots: Vec<u32> = (0..12).map(|_| ask(&s, b.addr, "hi")).collect();
    // Each CPU rotates on its own ticket: every slot gets 3, give or take one per CPU.
    let cpus = std::thread::available_parallelism().unwrap().get();
    for slot in 0..4 {
        let n = slots.iter().filter(|&&s| s == slot).count();
        assert!(n.abs_diff(3) <= cpus, "slot {slot}: {n} of 12: {slots:?}");
    }
    assert_eq!(b.status().unwrap()["program"]["selected"], 12);
    // A datagram is steered, not counted: there is no connection to hold.
    assert_eq!(b.per_slot("assigned"), [0, 0, 0, 0]);
}

#[test]
fn sticky_keeps_each_client_address_on_one_worker() {
    netns();
    let b = Balancer::start(8080, 4, &["--udp", "--policy", "sticky"]);
    let mut used = std::collections::BTreeSet::new();
    for i in 1..=16u8 {
        let s = socket_from(IpAddr::V4(Ipv4Addr::new(127, 0, 2, i)));
        let slots: Vec<u32> = (0..4).map(|_| ask(&s, b.addr, "hi")).collect();
        assert!(
            slots.iter().all(|&x| x == slots[0]),
            "client {i}: {slots:?}"
        );
        used.insert(slots[0]);
    }
    assert!(used.len() >= 3, "{used:?}");
}
