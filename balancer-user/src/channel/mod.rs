//! The message channel between the supervisor and each worker: what Node's cluster module gives
//! a primary (`worker.send`, `process.on('message')`, `process.send`), for any worker, without
//! the cluster module.
//!
//! # The wire
//!
//! Each worker gets one end of a Unix stream socketpair, inherited on the fd named by
//! `BALANCER_CHANNEL_FD` (4, or 5 with `--overflow`), and the same number as
//! `NODE_CHANNEL_FD`. Both directions carry newline-delimited JSON: one value per line, at most
//! [`MAX_MESSAGE`] bytes. That is exactly Node's own IPC framing in its default `json`
//! serialization (`NODE_CHANNEL_SERIALIZATION_MODE=json` is set so that an inherited setting
//! cannot change it), so an unmodified Node program receives each line as a `'message'` event
//! and its `process.send(obj)` arrives as one line; a Python, Ruby or Go worker reads and writes
//! lines on the fd.
//!
//! # Never blocked by a worker
//!
//! The supervisor writes to a worker from a task of its own, out of a bounded [`queue`]: a
//! worker that does not read fills its socket buffer, then its queue, and what does not fit is
//! dropped and counted, so `balancer send` answers at once whatever the workers do. What a
//! worker writes is taken line by line by its [`reader`], bounded in size and rate: garbage or
//! a flood cuts that worker's channel off (counted), never its connections. Messages taken are
//! kept in the [`received`] store for `balancer messages`.
//!
//! # Node's event loop
//!
//! Node keeps its event loop alive for an open channel only while the program listens for
//! `'message'` (or `'disconnect'`): a worker without a listener exits on SIGTERM, or when it
//! has nothing left to do, exactly as without a channel. One with a listener would be kept alive
//! by the channel after its servers close, so the supervisor closes its side of a worker's
//! channel when it sends the worker SIGTERM to stop it (as the cluster module's
//! `worker.kill()` disconnects first): Node then emits `'disconnect'` and lets the loop end.
//!
//! [`request`]: the requests `send`, `signal` and `messages`, parsed and written the same way by
//! the control socket and the command line; [`client`]: the commands' side.

pub mod client;
mod error;
pub mod metrics;
pub mod queue;
pub mod reader;
pub mod received;
pub mod request;

use std::{
    os::fd::OwnedFd,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc,
    },
};

use tokio::io::AsyncWriteExt as _;

pub use error::{Error, Result};
pub use queue::{Message, Queue};
pub use received::{Received, Store};

/// The largest message, either way, in bytes of compact JSON.
pub const MAX_MESSAGE: usize = 64 << 10;

/// Bytes the writer hands the kernel in one write, at most (several messages at once).
const WRITE_BATCH: usize = 64 << 10;

/// What a slot's channels counted, over every worker the slot had.
#[derive(Default, Debug)]
pub struct Counters {
    /// Messages queued for the slot's workers.
    pub sent: AtomicU64,
    /// Messages that did not fit in a worker's queue.
    pub dropped: AtomicU64,
    /// Messages the slot's workers sent.
    pub received: AtomicU64,
    /// Workers of the slot cut off from their channel (garbage or a flood).
    pub cut_off: AtomicU64,
}

/// A slot's channel in `status`: its figures over all the slot's workers, and the state of
/// the current worker's channel.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct ChannelStatus {
    /// `open`, `cut off` (the worker wrote garbage or flooded it), or `none` (no worker).
    pub state: String,
    /// Messages queued for the slot's workers by `balancer send`.
    pub sent: u64,
    /// Messages that did not fit in a worker's queue (a worker that does not read): dropped.
    pub dropped: u64,
    /// Messages waiting in the current worker's queue.
    pub queued: u64,
    /// Messages the slot's workers sent (`balancer messages`).
    pub received: u64,
    /// Workers of the slot cut off from their channel.
    pub cut_off: u64,
}

/// The environment naming the channel to a worker that finds it on `fd`.
pub fn environment(fd: i32) -> [String; 3] {
    [
        format!("BALANCER_CHANNEL_FD={fd}"),
        format!("NODE_CHANNEL_FD={fd}"),
        "NODE_CHANNEL_SERIALIZATION_MODE=json".into(),
    ]
}

/// Variables a worker never inherits from the supervisor's own environment: set for it when it
/// has a channel, absent when not.
pub const ENVIRONMENT: [&str; 3] = [
    "BALANCER_CHANNEL_FD",
    "NODE_CHANNEL_FD",
    "NODE_CHANNEL_SERIALIZATION_MODE",
];

/// A socketpair made before a worker starts: the worker's end goes to the spawn, the
/// supervisor's becomes a [`Link`] once the worker's pid is known.
pub struct Pair {
    pub worker: OwnedFd,
    supervisor: std::os::unix::net::UnixStream,
}

impl Pair {
    pub fn new() -> Result<Pair> {
        // Both ends close-on-exec: the spawn duplicates the worker's end onto its fd number,
        // which clears the flag on that copy only.
        let (supervisor, worker) = std::os::unix::net::UnixStream::pair().map_err(Error::Create)?;
        supervisor.set_nonblocking(true)?;
        Ok(Pair {
            worker: worker.into(),
            supervisor,
        })
    }
}

/// What is told about one worker's channel when it starts.
pub struct Peer {
    pub slot: u32,
    pub pid: u32,
    pub counters: Arc<Counters>,
    pub store: Store,
    /// Called when the worker sends `"ready"` (Node: `process.send('ready')`).
    pub on_ready: Box<dyn Fn() + Send + Sync>,
}

/// The supervisor's side of one running worker's channel. Dropping it closes the channel.
pub struct Link {
    queue: Arc<Queue>,
    counters: Arc<Counters>,
    cut_off: Arc<AtomicBool>,
    reader: tokio::task::JoinHandle<()>,
}

impl Link {
    /// Starts the writer and reader tasks on the supervisor's end of `pair`.
    pub fn start(pair: Pair, peer: Peer) -> Result<Link> {
        let stream = tokio::net::UnixStream::from_std(pair.supervisor)?;
        // The worker holds its own copy now.
        drop(pair.worker);
        let (read, write) = stream.into_split();
        let queue = Arc::new(Queue::default());
        let cut_off = Arc::new(AtomicBool::new(false));
        let counters = peer.counters.clone();
        tokio::spawn(write_out(queue.clone(), write));
        let reader = tokio::spawn(read_in(read, peer, queue.clone(), cut_off.clone()));
        Ok(Link {
            queue,
            counters,
            cut_off,
            reader,
        })
    }

    /// Queues `message` for the worker; false (counted as dropped) when it does not fit.
    pub fn push(&self, message: Message) -> bool {
        let took = self.queue.push(message);
        let counter = if took {
            &self.counters.sent
        } else {
            &self.counters.dropped
        };
        counter.fetch_add(1, Relaxed);
        took
    }

    /// Closes the supervisor's sending side: the worker reads the end of its channel (Node:
    /// `'disconnect'`), and what was still queued for it is forgotten.
    pub fn hang_up(&self) {
        self.queue.close();
    }

    /// Whether the worker was cut off for garbage or a flood.
    pub fn is_cut_off(&self) -> bool {
        self.cut_off.load(Relaxed)
    }

    /// Messages waiting to be written to the worker.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.queue.close();
        self.reader.abort();
    }
}

/// The writer task: the queue's messages to the socket, several per write, until the queue is
/// closed or the worker's end is gone. Dropping the write half shuts the socket down for writing.
async fn write_out(queue: Arc<Queue>, mut socket: tokio::net::unix::OwnedWriteHalf) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    while queue.take(WRITE_BATCH, &mut batch).await.is_some() {
        // A worker that does not read blocks this write; a hang-up or a cut-off must not wait
        // for it.
        tokio::select! {
            written = socket.write_all(&batch) => if written.is_err() {
                queue.close();
                return;
            },
            () = queue.closed() => return,
        }
        batch.clear();
    }
}

/// The reader task: each message to the store (and `"ready"` to the readiness protocol), until
/// the worker's end closes or the worker is cut off.
async fn read_in(
    socket: tokio::net::unix::OwnedReadHalf,
    peer: Peer,
    queue: Arc<Queue>,
    cut_off: Arc<AtomicBool>,
) {
    let end = reader::read(socket, |line| {
        peer.counters.received.fetch_add(1, Relaxed);
        if line == b"\"ready\"" {
            (peer.on_ready)();
        }
        peer.store.add(peer.slot, peer.pid, line);
    })
    .await;
    if let reader::End::CutOff(reason) = end {
        peer.counters.cut_off.fetch_add(1, Relaxed);
        cut_off.store(true, Relaxed);
        // The writer ends too, and with both halves gone the socket closes.
        queue.close();
        log::warn!(
            "slot {}: worker {} {reason}: its message channel is closed; it keeps serving",
            peer.slot,
            peer.pid
        );
    }
}
