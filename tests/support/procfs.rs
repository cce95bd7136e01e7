//! What /proc tells about processes (through the procfs crate): CPU time used, and the tree
//! below a process.

/// CPU seconds (user + system) used so far by `pids`; a process that is gone counts 0.
pub fn cpu_seconds(pids: &[i32]) -> f64 {
    let tick = procfs::ticks_per_second() as f64;
    pids.iter()
        .filter_map(|&p| procfs::process::Process::new(p).ok()?.stat().ok())
        .map(|s| (s.utime + s.stime) as f64 / tick)
        .sum()
}

/// `pid` and every process below it, parents before children.
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        if let Ok(task) = procfs::process::Process::new(p).and_then(|p| p.task_main_thread()) {
            if let Ok(kids) = task.children() {
                out.extend(kids.into_iter().map(|k| k as i32));
            }
        }
        i += 1;
    }
    out
}

/// The TCP sockets of this thread's network namespace (each test unshares its own, on its
/// thread: `/proc/self/net` would show the main thread's) whose local port is `port`.
fn sockets_on(port: u16) -> Vec<procfs::net::TcpNetEntry> {
    // An unreadable table must fail the test: read as empty, every wait on it would pass.
    let task = format!("/proc/self/task/{}", nix::unistd::gettid());
    let me = procfs::process::Process::new_with_root(task.clone().into())
        .unwrap_or_else(|e| panic!("{task}: {e}"));
    let v4 = me.tcp().unwrap_or_else(|e| panic!("{task}/net/tcp: {e}"));
    let v6 = me.tcp6().unwrap_or_else(|e| panic!("{task}/net/tcp6: {e}"));
    v4.into_iter()
        .chain(v6)
        .filter(|e| e.local_address.port() == port)
        .collect()
}

/// Whether the server on `port` has accepted every connection made to it and read everything
/// sent on them: its listeners' accept queues and its connections' receive queues are empty.
/// A single-threaded worker that read a request holding its loop is then truly held.
pub fn all_read(port: u16) -> bool {
    sockets_on(port).iter().all(|e| e.rx_queue == 0)
}

/// Whether the server side of the connection from `client` has read everything sent on it.
pub fn read_by_server(port: u16, client: std::net::SocketAddr) -> bool {
    sockets_on(port)
        .iter()
        .any(|e| e.remote_address == client && e.rx_queue == 0)
}

/// Whether the main thread of `pid` is running its own code rather than waiting in a system
/// call (`/proc/PID/syscall` says `running`, or `-1` when preempted in user space): a worker
/// inside a busy handler, not in its event loop's poll.
pub fn in_user_code(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/syscall"))
        .is_ok_and(|s| matches!(s.split_whitespace().next(), Some("running" | "-1")))
}
