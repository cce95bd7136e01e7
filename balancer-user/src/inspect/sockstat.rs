//! How many TCP sockets this network namespace has in the kernel's tables, from
//! `/proc/net/sockstat` (IPv4) or `sockstat6` (IPv6): one read, whatever the number. A
//! connection that opens or closes changes it, so the reconciliation takes it as a sign that
//! something may have moved, for far less than a reading of every socket.

use std::net::SocketAddr;

/// TCP sockets in use in this thread's network namespace, of the family of the listeners'
/// address `local` (an IPv6 listener's IPv4 clients are IPv6 sockets too); None if the file
/// could not be read.
pub fn tcp_in_use(local: SocketAddr) -> Option<u64> {
    match local {
        SocketAddr::V4(_) => in_use("/proc/net/sockstat", "TCP:"),
        SocketAddr::V6(_) => in_use("/proc/net/sockstat6", "TCP6:"),
    }
}

fn in_use(path: &str, label: &str) -> Option<u64> {
    parse(&std::fs::read_to_string(path).ok()?, label)
}

/// The `inuse` figure of the line that starts with `label`, as in `TCP: inuse 3 orphan 0 ...`.
fn parse(text: &str, label: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(label))?;
    let mut words = line.split_whitespace().skip(1);
    while let Some(word) = words.next() {
        if word == "inuse" {
            return words.next()?.parse().ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_in_use_figure_of_its_line() {
        let text =
            "sockets: used 8\nTCP: inuse 12 orphan 0 tw 3 alloc 14 mem 1\nUDP: inuse 2 mem 0\n";
        assert_eq!(parse(text, "TCP:"), Some(12));
        assert_eq!(parse(text, "UDP:"), Some(2));
        assert_eq!(parse("TCP6: inuse 4\n", "TCP6:"), Some(4));
        assert_eq!(parse(text, "TCP6:"), None);
    }

    #[test]
    fn a_listener_shows_in_the_count() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(tcp_in_use(listener.local_addr().unwrap()).unwrap() >= 1);
    }
}
