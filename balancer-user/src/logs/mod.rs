//! The workers' output: every line a worker writes to stdout or stderr, captured, told apart
//! by slot and pid, kept, and written on.
//!
//! Each worker's stdout and stderr are pipes the supervisor reads as fast as the worker writes
//! ([`capture`]): a worker never waits on a full pipe because whoever reads the supervisor's
//! own output is slow. A line then goes three ways:
//!
//! - into its slot's **tail**, the last [`TAIL_LINES`] lines, which `balancer logs` reads and
//!   `balancer status` quotes for a worker that exited abnormally;
//! - to **followers** (`balancer logs --follow`), through a broadcast channel: a follower too
//!   slow to keep up skips what it missed and is told how many lines;
//! - to the **sink** ([`sink`]), a thread of its own that writes the supervisor's output (each
//!   line prefixed with slot and pid, or as JSON) and the `--log-dir` files. The sink's queue is
//!   bounded: when it is full the line is dropped from that output only, and counted
//!   (`balancer_worker_log_lines_dropped_total`).
//!
//! A line longer than [`MAX_LINE`] bytes is cut into pieces of at most that length, so that one
//! runaway write cannot hold unbounded memory.

mod error;
pub mod sink;

use std::{
    collections::VecDeque,
    sync::{mpsc::SyncSender, Arc, Mutex},
};

use serde::{Deserialize, Serialize};
use tokio::{io::AsyncReadExt as _, sync::broadcast};

pub use error::{Error, Result};

/// Longest line kept whole; longer ones are cut.
pub const MAX_LINE: usize = 16 * 1024;

/// Lines kept per slot for `balancer logs` and `balancer status`.
pub const TAIL_LINES: usize = 1000;

/// Lines the sink may have queued before new ones are dropped from its output.
pub const SINK_QUEUE: usize = 16 * 1024;

/// Lines a follower may fall behind before it skips.
const FOLLOW_QUEUE: usize = 4096;

/// Which of a worker's streams a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One line of a worker's output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// Position among every line captured, from 1: lets a follower skip what the tail it read
    /// first already held.
    pub seq: u64,
    pub slot: u32,
    pub pid: u32,
    pub stream: Stream,
    pub line: String,
}

/// Per slot: lines captured and lines the sink had no room for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub lines: u64,
    pub dropped: u64,
}

#[derive(Default)]
struct Book {
    seq: u64,
    tails: Vec<VecDeque<Arc<Line>>>,
    counts: Vec<Counts>,
}

/// The store every capture writes to; cheap to clone.
#[derive(Clone)]
pub struct Logs {
    book: Arc<Mutex<Book>>,
    follow: broadcast::Sender<Arc<Line>>,
    sink: Option<SyncSender<Arc<Line>>>,
}

impl Logs {
    /// A store whose lines also go to `sink` (None: kept and followed only).
    pub fn new(sink: Option<SyncSender<Arc<Line>>>) -> Logs {
        Logs {
            book: Arc::default(),
            follow: broadcast::channel(FOLLOW_QUEUE).0,
            sink,
        }
    }

    /// Records one line of `slot`'s worker `pid`.
    pub fn record(&self, slot: u32, pid: u32, stream: Stream, line: String) {
        let line = {
            let mut book = self.book.lock().unwrap_or_else(|e| e.into_inner());
            book.seq += 1;
            let line = Arc::new(Line {
                seq: book.seq,
                slot,
                pid,
                stream,
                line,
            });
            let i = slot as usize;
            if book.tails.len() <= i {
                book.tails.resize_with(i + 1, VecDeque::new);
                book.counts.resize(i + 1, Counts::default());
            }
            let tail = &mut book.tails[i];
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line.clone());
            book.counts[i].lines += 1;
            if let Some(sink) = &self.sink {
                if sink.try_send(line.clone()).is_err() {
                    book.counts[i].dropped += 1;
                }
            }
            line
        };
        // No follower is no error.
        let _ = self.follow.send(line);
    }

    /// The last `lines` lines of `slot` (every slot if None), oldest first, and the position
    /// they reach.
    pub fn tail(&self, slot: Option<u32>, lines: usize) -> (Vec<Arc<Line>>, u64) {
        let book = self.book.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<Arc<Line>> = book
            .tails
            .iter()
            .enumerate()
            .filter(|(i, _)| slot.is_none_or(|s| s as usize == *i))
            .flat_map(|(_, t)| t.iter().cloned())
            .collect();
        out.sort_by_key(|l| l.seq);
        let skip = out.len().saturating_sub(lines);
        (out.split_off(skip), book.seq)
    }

    /// The last `lines` stderr lines of worker `pid` of `slot`.
    pub fn last_stderr(&self, slot: u32, pid: u32, lines: usize) -> Vec<String> {
        let book = self.book.lock().unwrap_or_else(|e| e.into_inner());
        let Some(tail) = book.tails.get(slot as usize) else {
            return Vec::new();
        };
        let mut out: Vec<String> = tail
            .iter()
            .rev()
            .filter(|l| l.pid == pid && l.stream == Stream::Stderr)
            .take(lines)
            .map(|l| l.line.clone())
            .collect();
        out.reverse();
        out
    }

    pub fn counts(&self, slot: u32) -> Counts {
        let book = self.book.lock().unwrap_or_else(|e| e.into_inner());
        book.counts.get(slot as usize).copied().unwrap_or_default()
    }

    /// Lines from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Line>> {
        self.follow.subscribe()
    }

    /// Forgets `slot`'s tail and counts (a slot removed by a scale down).
    pub fn forget(&self, slot: u32) {
        let mut book = self.book.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = book.tails.get_mut(slot as usize) {
            t.clear();
        }
        if let Some(c) = book.counts.get_mut(slot as usize) {
            *c = Counts::default();
        }
    }
}

/// Cuts a byte stream into lines: at each `\n`, and every [`MAX_LINE`] bytes within a longer
/// one. Pure, so that the cutting is tested apart from any pipe.
#[derive(Default)]
pub struct Splitter {
    partial: Vec<u8>,
}

impl Splitter {
    /// Feeds `bytes`; calls `out` with each line completed by them.
    pub fn push(&mut self, mut bytes: &[u8], mut out: impl FnMut(String)) {
        while !bytes.is_empty() {
            let room = MAX_LINE - self.partial.len();
            let window = &bytes[..bytes.len().min(room)];
            match window.iter().position(|&b| b == b'\n') {
                Some(n) => {
                    self.partial.extend_from_slice(&window[..n]);
                    out(self.take());
                    bytes = &bytes[n + 1..];
                }
                None => {
                    self.partial.extend_from_slice(window);
                    bytes = &bytes[window.len()..];
                    if self.partial.len() == MAX_LINE {
                        out(self.take());
                    }
                }
            }
        }
    }

    /// What is left when the stream ends: a last line without its `\n`, if any.
    pub fn finish(&mut self) -> Option<String> {
        (!self.partial.is_empty()).then(|| self.take())
    }

    fn take(&mut self) -> String {
        let mut line = std::mem::take(&mut self.partial);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        String::from_utf8(line).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into())
    }
}

/// Reads one of a worker's streams until it closes (the worker exited, or closed it), as fast
/// as the worker writes.
pub async fn capture(
    logs: Logs,
    slot: u32,
    pid: u32,
    stream: Stream,
    mut pipe: impl tokio::io::AsyncRead + Unpin,
) {
    let mut splitter = Splitter::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => splitter.push(&buf[..n], |line| logs.record(slot, pid, stream, line)),
        }
    }
    if let Some(line) = splitter.finish() {
        logs.record(slot, pid, stream, line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<String> {
        let mut s = Splitter::default();
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, |l| out.push(l));
        }
        out.extend(s.finish());
        out
    }

    #[test]
    fn lines_cut_at_newlines_across_reads() {
        assert_eq!(split(&[b"one\ntw", b"o\r\nthree"]), ["one", "two", "three"]);
        assert_eq!(split(&[b"\n\n"]), ["", ""]);
    }

    #[test]
    fn an_overlong_line_is_cut_into_pieces_of_the_limit() {
        let long = vec![b'x'; MAX_LINE * 2 + 10];
        let mut input = long.clone();
        input.extend_from_slice(b"\nnext\n");
        let out = split(&[&input[..1000], &input[1000..]]);
        let lens: Vec<usize> = out.iter().map(String::len).collect();
        assert_eq!(lens, [MAX_LINE, MAX_LINE, 10, 4]);
        assert_eq!(out[3], "next");
    }

    #[test]
    fn bytes_that_are_not_utf8_are_kept_readable() {
        assert_eq!(split(&[b"a\xffb\n"]), ["a\u{fffd}b"]);
    }

    #[test]
    fn a_full_sink_drops_and_counts_while_the_tail_keeps_everything() {
        let (tx, rx) = std::sync::mpsc::sync_channel(2);
        let logs = Logs::new(Some(tx));
        for i in 0..5 {
            logs.record(1, 42, Stream::Stdout, format!("line {i}"));
        }
        assert_eq!(
            logs.counts(1),
            Counts {
                lines: 5,
                dropped: 3
            }
        );
        assert_eq!(rx.try_iter().count(), 2);
        let (tail, seq) = logs.tail(Some(1), 10);
        assert_eq!(tail.len(), 5);
        assert_eq!(seq, 5);
        assert_eq!(logs.tail(None, 2).0[0].line, "line 3");
    }

    #[test]
    fn last_stderr_is_that_worker_s_own() {
        let logs = Logs::new(None);
        logs.record(0, 1, Stream::Stderr, "old worker".into());
        logs.record(0, 2, Stream::Stdout, "out".into());
        logs.record(0, 2, Stream::Stderr, "fatal: a".into());
        logs.record(0, 2, Stream::Stderr, "fatal: b".into());
        assert_eq!(logs.last_stderr(0, 2, 5), ["fatal: a", "fatal: b"]);
        assert_eq!(logs.last_stderr(0, 2, 1), ["fatal: b"]);
    }
}
