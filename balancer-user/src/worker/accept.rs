//! The built-in worker's accept loop: its own queue (fd 3), the shared overflow queue (fd 4),
//! and the work in hand that decides between them.
//!
//! A connection waiting in the shared queue is for whichever worker frees up first, so the
//! worker takes from it only with no work in hand: a connection taken there must not wait
//! behind this worker's current request, which is the point of the queue. Its own queue it
//! always serves: the program sends a connection there only when this worker was idle.
//!
//! With nothing open, the loop blocks its thread on an epoll instance of its own (see
//! [`super::overflow`]), so that the kernel wakes one idle worker per shared connection instead
//! of all of them; otherwise it waits through tokio.

use std::{cell::Cell, io, os::fd::AsFd as _, rc::Rc, time::Duration};

use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::sync::{watch, Notify};

use super::{
    builtin,
    overflow::{self, Overflow},
};

/// How often the loop also looks for connections whose arrival woke no one: connections moved
/// to this listener from a closing one do not wake epoll.
const SWEEP: Duration = Duration::from_millis(200);

/// The work in hand, shared by the accept loop and the connections' tasks.
#[derive(Default)]
struct Books {
    /// Connections accepted that have not begun a request yet, plus requests in flight.
    busy: Cell<usize>,
    /// Connections whose task still runs.
    open: Cell<usize>,
    /// Wakes the accept loop whenever either count falls to zero.
    settled: Notify,
}

impl Books {
    /// No work in hand: the shared queue may be served.
    fn free(&self) -> bool {
        self.busy.get() == 0
    }

    /// Nothing open either: the loop may block on its own epoll instance.
    fn idle(&self) -> bool {
        self.free() && self.open.get() == 0
    }

    fn add_busy(&self) {
        self.busy.set(self.busy.get() + 1);
    }

    fn sub_busy(&self) {
        self.busy.set(self.busy.get() - 1);
        if self.busy.get() == 0 {
            self.settled.notify_one();
        }
    }
}

/// One connection's share of the work in hand: it counts from its accept until its first
/// request ends, then again for each request in flight.
#[derive(Clone)]
struct Work {
    books: Rc<Books>,
    /// Accepted, no request begun yet: counted since the accept.
    pending: Rc<Cell<bool>>,
}

impl Work {
    /// A request begins: counted until the returned guard drops, whether its answer was
    /// written or the connection died with the answer unwritten (hyper then drops it unpolled).
    fn begin(&self) -> InFlight {
        if !self.pending.replace(false) {
            self.books.add_busy();
        }
        InFlight(self.books.clone())
    }

    fn end(&self) {
        self.books.sub_busy();
    }
}

/// A request in flight; see [`Work::begin`].
struct InFlight(Rc<Books>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.sub_busy();
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        // The connection's last handle, still pending: it closed without a request.
        if Rc::strong_count(&self.pending) == 1 && self.pending.replace(false) {
            self.end();
        }
    }
}

/// Counts a connection open for as long as its task lives, however it ends.
struct Open(Rc<Books>);

impl Drop for Open {
    fn drop(&mut self) {
        let open = &self.0.open;
        open.set(open.get() - 1);
        if open.get() == 0 {
            self.0.settled.notify_one();
        }
    }
}

/// What every connection's task shares.
struct Server {
    books: Rc<Books>,
    slot: Rc<str>,
    pid: u32,
    stop: watch::Receiver<bool>,
}

impl Server {
    /// Serves `stream` on a task of its own. `last_call`: accepted while stopping, so it gets
    /// exactly one request and no graceful shutdown (which would close it before its waiting
    /// request is even read).
    fn start(&self, stream: tokio::net::TcpStream, last_call: bool) {
        let open = Open(self.books.clone());
        self.books.open.set(self.books.open.get() + 1);
        self.books.add_busy();
        let work = Work {
            books: self.books.clone(),
            pending: Rc::new(Cell::new(true)),
        };
        let task = connection(
            stream,
            work,
            (self.slot.clone(), self.pid),
            self.stop.clone(),
            last_call,
        );
        tokio::task::spawn_local(async move {
            let _open = open;
            task.await;
        });
    }

    /// Serves what the shared queue gave. `Closed` once the supervisor closed the queue (it is
    /// stopping): nothing more comes.
    fn took(&self, taken: io::Result<std::net::TcpStream>) -> Took {
        let stream = taken.and_then(tokio::net::TcpStream::from_std);
        match stream {
            Ok(stream) => {
                self.start(stream, false);
                Took::One
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Took::Nothing,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Took::Closed,
            Err(e) => {
                log::warn!("accept from the overflow queue failed: {e}");
                Took::Failed
            }
        }
    }
}

/// What a look at the shared queue found.
#[derive(PartialEq, Eq)]
enum Took {
    One,
    Nothing,
    Closed,
    /// Out of fds or memory: back off instead of spinning on the error.
    Failed,
}

/// One connection, from its accept to its close (or to the worker's stop).
async fn connection(
    stream: tokio::net::TcpStream,
    work: Work,
    (slot, pid): (Rc<str>, u32),
    mut stop: watch::Receiver<bool>,
    last_call: bool,
) {
    let _ = stream.set_nodelay(true);
    // Requests begun on this connection: a stop must not close a connection whose first
    // request is waiting unread in the socket (hyper counts it as idle).
    let begun = Rc::new(Cell::new(0u32));
    let seen = begun.clone();
    let service = service_fn(move |req| {
        seen.set(seen.get() + 1);
        let in_flight = work.begin();
        let answer = builtin::handle(req, slot.clone(), pid);
        async move {
            let answer = answer.await;
            drop(in_flight);
            answer
        }
    });
    let conn = http1::Builder::new()
        .keep_alive(!last_call)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    if last_call {
        let _ = conn.await;
        return;
    }
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = stop.wait_for(|s| *s) => {}
    }
    // Stopping. A connection that has not begun a request yet gets to begin one (its bytes are
    // normally already here); then hyper finishes what is in flight and closes. A client that
    // sends nothing is cut off after a second.
    let first = async {
        while begun.get() == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = tokio::time::timeout(Duration::from_secs(1), first) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// Serves `listener` (and the shared queue, if given) until SIGTERM, then finishes what it
/// holds.
pub(super) async fn serve(
    listener: std::net::TcpListener,
    overflow: Option<std::net::TcpListener>,
    slot: Rc<str>,
) -> io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let mut overflow = overflow
        .map(|o| Overflow::new(o, listener.as_fd()))
        .transpose()?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    builtin::notify_ready();
    let (stop_tx, stop_rx) = watch::channel(false);
    let server = Server {
        books: Rc::default(),
        slot,
        pid: std::process::id(),
        stop: stop_rx,
    };
    let mut sweep = tokio::time::interval(SWEEP);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        if let Some(queue) = overflow.as_ref().filter(|_| server.books.idle()) {
            if idle_turn(&server, &listener, queue) == Took::Closed {
                overflow = None;
            }
            // Let the connections just started run, and a SIGTERM be seen, before the next
            // wait blocks the thread again.
            tokio::task::yield_now().await;
            if stopping(&mut term) {
                break;
            }
            continue;
        }
        // Biased: this worker's own queue before the shared one, and a stop before both.
        tokio::select! {
            biased;
            _ = term.recv() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => server.start(stream, false),
                Err(e) => {
                    log::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            taken = async { overflow.as_ref().expect("guarded").take().await },
                if server.books.free() && overflow.is_some() => {
                match server.took(taken) {
                    Took::Closed => overflow = None,
                    Took::Failed => tokio::time::sleep(Duration::from_millis(10)).await,
                    Took::One | Took::Nothing => {}
                }
            }
            // Woken by the shared queue while busy: stop watching it until free again.
            _ = async { overflow.as_ref().expect("guarded").busy_wake().await },
                if !server.books.free() && overflow.is_some() => {
                if let Some(queue) = &overflow {
                    queue.unwatch();
                }
            }
            // The work in hand is done, or the last connection closed: look at the shared
            // queue again, or wait as an idle worker.
            _ = server.books.settled.notified(), if overflow.is_some() => {}
            _ = sweep.tick() => {
                while let Ok(stream) = accept_now(&listener) {
                    server.start(stream, false);
                }
            }
        }
    }
    finish(&server, &listener, stop_tx).await;
    Ok(())
}

/// One wait of an idle worker: blocks the thread until its own listener or the shared queue
/// has a connection (at most [`SWEEP`]), then takes what it finds.
///
/// The shared queue first: an exclusive wake-up stops at this worker, and the workers after it
/// never hear of that connection (epoll learns of a readiness only through wake-ups), so the
/// worker that was woken must take it, or it waits for whoever next looks. A connection in
/// this worker's own queue waits for it whatever it does.
fn idle_turn(server: &Server, listener: &tokio::net::TcpListener, queue: &Overflow) -> Took {
    queue.wait_idle(SWEEP);
    let took = match server.took(queue.take_now()) {
        Took::Failed => {
            std::thread::sleep(Duration::from_millis(10));
            Took::Failed
        }
        took => took,
    };
    while let Ok(stream) = accept_now(listener) {
        server.start(stream, false);
    }
    took
}

/// Whether a SIGTERM came, without waiting for one.
fn stopping(term: &mut tokio::signal::unix::Signal) -> bool {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    term.poll_recv(&mut cx).is_ready()
}

/// Stopping: serves what already waits in the worker's own queue, finishes what is in flight
/// (idle keep-alive connections close at once). The supervisor's kill timeout bounds it. The
/// shared queue is not this worker's to empty: the other workers serve it, and a stopping
/// supervisor moves what it holds to the workers' own queues first.
async fn finish(server: &Server, listener: &tokio::net::TcpListener, stop: watch::Sender<bool>) {
    while let Ok(stream) = accept_now(listener) {
        server.start(stream, true);
    }
    let _ = stop.send(true);
    while server.books.open.get() > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A non-blocking accept: a connection if one is queued now. It also finds connections whose
/// arrival woke no one (connections migrated from a closed listener do not wake epoll).
fn accept_now(listener: &tokio::net::TcpListener) -> io::Result<tokio::net::TcpStream> {
    overflow::accept_now(listener.as_fd()).and_then(tokio::net::TcpStream::from_std)
}
