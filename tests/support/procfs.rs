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

/// Whether the main thread of `pid` is running its own code rather than waiting in a system
/// call (`/proc/PID/syscall` says `running`, or `-1` when preempted in user space): a worker
/// inside a busy handler, not in its event loop's poll.
pub fn in_user_code(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/syscall"))
        .is_ok_and(|s| matches!(s.split_whitespace().next(), Some("running" | "-1")))
}
