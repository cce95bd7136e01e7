//! One worker's outgoing queue: what the supervisor has accepted for the worker and not yet
//! written to its channel.
//!
//! Bounded twice, in messages ([`MAX_QUEUED`]) and in bytes ([`MAX_QUEUED_BYTES`]): a worker that
//! never reads its channel fills the kernel's socket buffer, then this queue, and from then on
//! every further message for it is dropped and counted, at once, without waiting. Sending to
//! every worker therefore costs the same whether they read or not, and the supervisor's memory
//! stays bounded by what the queues may hold.
//!
//! A broadcast shares one copy of the message ([`Message`] is reference-counted) between every
//! worker's queue.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use tokio::sync::Notify;

/// One message as written to a channel: a line of JSON with its newline.
pub type Message = Arc<[u8]>;

/// Messages a worker's queue holds at most.
pub const MAX_QUEUED: usize = 4096;
/// Bytes a worker's queue holds at most (the sum of its messages' lengths).
pub const MAX_QUEUED_BYTES: usize = 1 << 20;

#[derive(Default)]
struct Inner {
    messages: VecDeque<Message>,
    bytes: usize,
    closed: bool,
}

/// The queue between the supervisor (which pushes) and the worker's writer task (which takes).
#[derive(Default)]
pub struct Queue {
    inner: Mutex<Inner>,
    ready: Notify,
}

impl Queue {
    /// Queues `message`; false when it does not fit (or the channel is closed): it is dropped.
    pub fn push(&self, message: Message) -> bool {
        let mut q = self.inner.lock().unwrap();
        if q.closed || q.messages.len() >= MAX_QUEUED || q.bytes + message.len() > MAX_QUEUED_BYTES
        {
            return false;
        }
        q.bytes += message.len();
        q.messages.push_back(message);
        drop(q);
        self.ready.notify_one();
        true
    }

    /// Takes queued messages, oldest first, up to about `limit` bytes (at least one), into `out`;
    /// waits while there are none. None once the queue is closed.
    pub async fn take(&self, limit: usize, out: &mut Vec<u8>) -> Option<usize> {
        loop {
            {
                let mut q = self.inner.lock().unwrap();
                if q.closed {
                    return None;
                }
                let mut n = 0;
                while let Some(m) = q.messages.front() {
                    if n > 0 && out.len() + m.len() > limit {
                        break;
                    }
                    let m = q.messages.pop_front().expect("front exists");
                    q.bytes -= m.len();
                    out.extend_from_slice(&m);
                    n += 1;
                }
                if n > 0 {
                    return Some(n);
                }
            }
            self.ready.notified().await;
        }
    }

    /// Closes the queue: what it holds is forgotten and every later push is refused.
    pub fn close(&self) {
        let mut q = self.inner.lock().unwrap();
        q.closed = true;
        q.messages.clear();
        q.bytes = 0;
        drop(q);
        self.ready.notify_one();
    }

    /// Returns once the queue is closed. Only the writer task waits on the queue.
    pub async fn closed(&self) {
        loop {
            if self.inner.lock().unwrap().closed {
                return;
            }
            self.ready.notified().await;
        }
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap().messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(n: usize) -> Message {
        vec![b'x'; n].into()
    }

    #[test]
    fn bounded_in_messages_and_in_bytes() {
        let q = Queue::default();
        assert!((0..MAX_QUEUED).all(|_| q.push(msg(2))));
        assert!(!q.push(msg(2)), "one past the message bound");
        let q = Queue::default();
        assert!(q.push(msg(MAX_QUEUED_BYTES - 10)));
        assert!(!q.push(msg(11)), "one byte past the byte bound");
        assert!(q.push(msg(10)));
    }

    #[tokio::test]
    async fn takes_in_order_within_the_limit_and_stops_when_closed() {
        let q = Queue::default();
        for m in [&b"a\n"[..], b"bb\n", b"ccc\n"] {
            assert!(q.push(m.into()));
        }
        let mut out = Vec::new();
        assert_eq!(q.take(5, &mut out).await, Some(2));
        assert_eq!(out, b"a\nbb\n");
        out.clear();
        // At least one, even over the limit.
        assert_eq!(q.take(1, &mut out).await, Some(1));
        assert_eq!(out, b"ccc\n");
        q.push(msg(3));
        q.close();
        assert!(q.is_empty());
        assert!(!q.push(msg(1)));
        assert_eq!(q.take(5, &mut out).await, None);
    }
}
