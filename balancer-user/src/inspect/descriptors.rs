//! Which of a port's sockets a set of processes holds open, from their descriptor tables in
//! /proc, their descendants' included.

use std::collections::HashSet;

/// How many of `open` the processes `pids` and their descendants hold, each socket once; None
/// if a live process's descriptors cannot be read (the kernel lets a process read another's
/// only if it may trace it: same account and no capability the reader lacks, or
/// CAP_SYS_PTRACE; and `/proc/PID/fd` of another account takes CAP_DAC_READ_SEARCH).
pub fn held_by(pids: &[i32], open: &HashSet<u64>) -> Option<u64> {
    let mut seen = HashSet::new();
    let mut todo: Vec<i32> = pids.to_vec();
    let mut visited = HashSet::new();
    while let Some(pid) = todo.pop() {
        if !visited.insert(pid) {
            continue;
        }
        // A process may exit under us: what it held is then closed, and counts nothing.
        let Ok(process) = procfs::process::Process::new(pid) else {
            continue;
        };
        let fds = match process.fd() {
            Ok(fds) => fds,
            Err(procfs::ProcError::NotFound(_)) => continue,
            Err(e) => {
                log::debug!("cannot read the descriptors of process {pid}: {e}");
                return None;
            }
        };
        {
            for fd in fds.flatten() {
                if let procfs::process::FDTarget::Socket(inode) = fd.target {
                    if open.contains(&inode) {
                        seen.insert(inode);
                    }
                }
            }
        }
        if let Ok(tasks) = process.tasks() {
            for task in tasks.flatten() {
                if let Ok(children) = task.children() {
                    todo.extend(children.into_iter().map(|c| c as i32));
                }
            }
        }
    }
    Some(seen.len() as u64)
}
