//! The shared overflow queue (fd 4), as the built-in worker waits on it.
//!
//! Every worker holds the overflow listener, and a listener wakes every epoll instance that
//! watches it for each connection queued there: with N workers idle, N wake for one connection
//! and N - 1 find nothing to take, two context switches each. Watched with `EPOLLEXCLUSIVE`, the
//! kernel walks the watchers only until one whose epoll instance has a thread blocked in
//! `epoll_wait` on it: one idle worker wakes per connection, as with a listener of its own.
//!
//! The exclusive wake-up counts only a thread blocked on that very instance, not one blocked on
//! another instance that nests it (tokio's reactor): the walk then goes on to the next watcher.
//! So the worker waits in two ways:
//! - with nothing open (the common case: a worker between two short connections), its one
//!   thread blocks in `epoll_wait` on an instance of its own that watches its own listener and
//!   the shared queue ([`Overflow::wait_idle`]): that thread is the exclusive wake-up's target;
//! - with idle keep-alive connections open, it must also watch those, so it waits through
//!   tokio, on a second instance that watches only the shared queue ([`Overflow::take`]). That
//!   instance stays registered with tokio from one wait to the next (registering it for each
//!   would cost two `epoll_ctl` per keep-alive request), until the queue wakes the worker while
//!   it is busy with a request ([`Overflow::busy_wake`]): the worker then stops watching, so a
//!   busy worker is woken by the queue once, not for every connection. A worker waiting
//!   through tokio may be woken for a connection that an idle one takes.
//!
//! An instance learns that the queue is readable only from the wake-up that a connection's
//! arrival makes, and an exclusive wake-up stops at the first idle worker: the instances after
//! it never hear of that connection. So the worker that was woken takes it before anything
//! else, a new watch through tokio begins with a look at the queue itself, and an idle worker
//! looks at the queue after every wait, woken or timed out. Both instances are
//! level-triggered: one that did hear of a connection keeps reporting it while it waits.

use std::{
    cell::RefCell,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd as _, RawFd},
    rc::Rc,
    time::Duration,
};

use nix::sys::{
    epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout},
    socket::{accept4, SockFlag},
};
use tokio::io::unix::AsyncFd;

/// An epoll instance's descriptor, lent to tokio's `AsyncFd`.
struct Lent(RawFd);

impl AsRawFd for Lent {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// The overflow listener and the two epoll instances that watch it.
pub struct Overflow {
    listener: std::net::TcpListener,
    /// Own listener and the shared queue: waited on directly by an idle worker.
    idle: Epoll,
    /// `queue` as registered with tokio, while it is (declared first: dropped, and so
    /// deregistered, before `queue` closes).
    watch: RefCell<Option<Rc<AsyncFd<Lent>>>>,
    /// The shared queue alone, nested in tokio's reactor while watched.
    queue: Epoll,
}

impl Overflow {
    /// Watches `listener` (the shared queue) and `own` (this worker's listener). Must run
    /// inside the tokio runtime that serves the worker.
    pub fn new(listener: std::net::TcpListener, own: BorrowedFd<'_>) -> io::Result<Overflow> {
        listener.set_nonblocking(true)?;
        let exclusive = EpollFlags::EPOLLIN | EpollFlags::EPOLLEXCLUSIVE;
        let idle = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        idle.add(own, EpollEvent::new(EpollFlags::EPOLLIN, 0))?;
        idle.add(listener.as_fd(), EpollEvent::new(exclusive, 1))?;
        let queue = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        queue.add(listener.as_fd(), EpollEvent::new(exclusive, 1))?;
        Ok(Overflow {
            listener,
            idle,
            watch: RefCell::new(None),
            queue,
        })
    }

    /// Blocks this thread until the own listener or the shared queue has a connection, for at
    /// most `timeout`. For a worker with nothing else to watch: tokio runs nothing meanwhile.
    /// What woke it is not told: the caller looks at both queues (and a signal, which also
    /// ends the wait, at its own).
    pub fn wait_idle(&self, timeout: Duration) {
        let mut events = [EpollEvent::empty(); 2];
        let timeout = EpollTimeout::try_from(timeout).unwrap_or(EpollTimeout::NONE);
        let _ = self.idle.wait(&mut events, timeout);
    }

    /// A connection from the shared queue, waited for through tokio.
    pub async fn take(&self) -> io::Result<std::net::TcpStream> {
        let (watch, new) = self.watch()?;
        if new {
            // What is already queued first: an instance learns of a connection only through
            // the wake-up its arrival made, which an exclusive wake-up may have stopped before
            // it, and which came before this registration.
            match self.take_now() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                taken => return taken,
            }
        }
        loop {
            let mut guard = watch.readable().await?;
            // Tokio's registration is edge-triggered: its readiness is forgotten only when the
            // queue turns out empty, so a second connection already waiting is taken next time
            // without a new edge.
            if let Ok(taken) = guard.try_io(|_| self.take_now()) {
                return taken;
            }
        }
    }

    /// Resolves when the shared queue, while watched, wakes this worker: for a busy worker,
    /// which then stops watching ([`Overflow::unwatch`]). Never resolves while not watched.
    pub async fn busy_wake(&self) {
        let watch = self.watch.borrow().clone();
        match watch {
            Some(watch) => {
                let _ = watch.readable().await;
            }
            None => std::future::pending().await,
        }
    }

    /// Stops watching the queue through tokio, until the next [`Overflow::take`].
    pub fn unwatch(&self) {
        self.watch.borrow_mut().take();
    }

    /// The registration of `queue` with tokio, made if there is none; `true` if made now.
    fn watch(&self) -> io::Result<(Rc<AsyncFd<Lent>>, bool)> {
        if let Some(watch) = self.watch.borrow().as_ref() {
            return Ok((watch.clone(), false));
        }
        // SAFETY: `self.queue` owns the fd and outlives every handle of the registration:
        // `watch` is dropped before `queue`, and the futures holding a handle borrow `self`.
        let watch = unsafe { AsyncFd::register(Lent(self.queue.0.as_raw_fd())) }
            .map_err(io::Error::from)?;
        let watch = Rc::new(watch);
        *self.watch.borrow_mut() = Some(watch.clone());
        Ok((watch, true))
    }

    /// A connection from the shared queue, if one waits now; non-blocking, as tokio serves it.
    pub fn take_now(&self) -> io::Result<std::net::TcpStream> {
        accept_now(self.listener.as_fd())
    }
}

/// A connection from `listener` if one is queued now, already non-blocking and close-on-exec:
/// one system call, where std's `accept` and then `set_nonblocking` take two.
pub fn accept_now(listener: BorrowedFd<'_>) -> io::Result<std::net::TcpStream> {
    let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
    let fd = accept4(listener.as_raw_fd(), flags).map_err(io::Error::from)?;
    // SAFETY: accept4 just returned this descriptor, owned by nothing else.
    Ok(unsafe { std::net::TcpStream::from_raw_fd(fd) })
}
