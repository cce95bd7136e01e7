//! A burst of new connections, all started at once, each given a deadline as a patient client
//! would: how many were answered, and how long the slowest took. A connection that a queue
//! dropped is retried by the kernel's SYN retransmissions (1 s, 3 s, 7 s, 15 s after the
//! first), so the slowest answer tells how many rounds the burst needed.

use std::{
    net::{SocketAddr, TcpStream},
    sync::{Arc, Barrier},
    thread,
    time::{Duration, Instant},
};

use crate::{request_on, Reply};

/// What a burst got back.
#[derive(Debug)]
pub struct Burst {
    /// Connections answered with 200 within the deadline.
    pub answered: usize,
    /// The longest time to an answer, over the answered ones.
    pub slowest: Duration,
}

/// `n` requests for `path`, each on its own connection, released together; each gets
/// `deadline` for its connect and answer together.
pub fn burst(addr: SocketAddr, n: usize, path: &str, deadline: Duration) -> Burst {
    let start = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let (start, path) = (start.clone(), path.to_string());
            // Small stacks: a burst of thousands of threads.
            thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || {
                    start.wait();
                    let t = Instant::now();
                    one(addr, &path, deadline).map(|r| (r, t.elapsed()))
                })
                .expect("a thread for the burst")
        })
        .collect();
    let mut answered = 0;
    let mut slowest = Duration::ZERO;
    for t in threads {
        if let Some((reply, took)) = t.join().unwrap() {
            if reply.status == 200 {
                answered += 1;
                slowest = slowest.max(took);
            }
        }
    }
    Burst { answered, slowest }
}

fn one(addr: SocketAddr, path: &str, deadline: Duration) -> Option<Reply> {
    let t = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, deadline).ok()?;
    let left = deadline.checked_sub(t.elapsed())?;
    s.set_read_timeout(Some(left)).ok()?;
    s.set_write_timeout(Some(left)).ok()?;
    s.set_nodelay(true).ok()?;
    request_on(&mut s, path).ok()
}
