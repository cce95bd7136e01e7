//! What the workers sent the supervisor, kept for `balancer messages`.
//!
//! The last [`KEPT`] messages of all slots, each attributed to its slot and pid, and a broadcast
//! of every new one for `balancer messages --follow`. Like the log store, it is read from the
//! control connections themselves, never through the supervisor's loop, and a slow reader
//! skips what it missed rather than holding anything back.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use serde::{Deserialize, Serialize};
use tokio::{io::AsyncWriteExt as _, sync::broadcast};

/// Messages kept for `balancer messages`.
pub const KEPT: usize = 1000;
/// Messages a `--follow` reader may fall behind by before it skips.
const FOLLOW_BACKLOG: usize = 1024;

/// One message from a worker, as `balancer messages --json` prints it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Received {
    pub seq: u64,
    pub slot: u32,
    pub pid: u32,
    /// The JSON value the worker sent.
    pub message: serde_json::Value,
}

struct Inner {
    last: VecDeque<Arc<Received>>,
    seq: u64,
}

/// The store, shared by every worker's reader and every `messages` connection.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Mutex<Inner>>,
    new: broadcast::Sender<Arc<Received>>,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            inner: Arc::new(Mutex::new(Inner {
                last: VecDeque::with_capacity(KEPT),
                seq: 0,
            })),
            new: broadcast::channel(FOLLOW_BACKLOG).0,
        }
    }
}

impl Store {
    /// Keeps one message (already checked to be JSON) from worker `pid` of `slot`.
    pub fn add(&self, slot: u32, pid: u32, line: &[u8]) {
        let message = serde_json::from_slice(line).unwrap_or(serde_json::Value::Null);
        let mut inner = self.inner.lock().unwrap();
        inner.seq += 1;
        let r = Arc::new(Received {
            seq: inner.seq,
            slot,
            pid,
            message,
        });
        if inner.last.len() == KEPT {
            inner.last.pop_front();
        }
        inner.last.push_back(r.clone());
        drop(inner);
        let _ = self.new.send(r);
    }

    /// The kept messages (of one slot, or all), oldest first, and the last sequence number.
    pub fn tail(&self, slot: Option<u32>) -> (Vec<Arc<Received>>, u64) {
        let inner = self.inner.lock().unwrap();
        let kept = inner
            .last
            .iter()
            .filter(|r| slot.is_none_or(|s| r.slot == s));
        (kept.cloned().collect(), inner.seq)
    }
}

/// Serves one `messages` request on `stream`: the kept messages, then with `follow` each new
/// one until the client goes away.
pub async fn serve(
    stream: &mut tokio::net::UnixStream,
    store: &Store,
    slot: Option<u32>,
    follow: bool,
) {
    use broadcast::error::RecvError;
    // Subscribed before the tail is read, so that no message falls between the two.
    let mut new = store.new.subscribe();
    let (tail, upto) = store.tail(slot);
    let mut text = String::new();
    for r in &tail {
        text.push_str(&serde_json::to_string(&**r).unwrap_or_default());
        text.push('\n');
    }
    if stream.write_all(text.as_bytes()).await.is_err() || !follow {
        return;
    }
    loop {
        let r = match new.recv().await {
            Ok(r) if r.seq <= upto || slot.is_some_and(|s| s != r.slot) => continue,
            Ok(r) => r,
            Err(RecvError::Lagged(n)) => Arc::new(Received {
                seq: 0,
                slot: slot.unwrap_or(0),
                pid: 0,
                message: format!("[balancer: this reader fell behind and skipped {n} messages]")
                    .into(),
            }),
            Err(RecvError::Closed) => return,
        };
        let mut text = serde_json::to_string(&*r).unwrap_or_default();
        text.push('\n');
        if stream.write_all(text.as_bytes()).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_messages_by_slot() {
        let s = Store::default();
        for i in 0..KEPT + 5 {
            s.add((i % 2) as u32, 100, format!("{{\"n\":{i}}}").as_bytes());
        }
        let (all, upto) = s.tail(None);
        assert_eq!(all.len(), KEPT);
        assert_eq!(upto, (KEPT + 5) as u64);
        assert_eq!(all[0].message["n"], 5);
        let (odd, _) = s.tail(Some(1));
        assert!(odd.iter().all(|r| r.slot == 1));
        assert_eq!(odd.len(), KEPT / 2);
    }
}
