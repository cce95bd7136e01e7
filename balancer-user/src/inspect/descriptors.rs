//! Which of a port's sockets a set of processes holds open, from their descriptor tables in
//! /proc, their descendants' included.
//!
//! One `readlinkat` per descriptor, relative to the open `/proc/PID/fd` directory, and nothing
//! else: a socket's link reads `socket:[INODE]`. The walk is what a reconciliation costs per
//! open connection (procfs's descriptor iterator opens, stats and closes each descriptor's
//! link as well: four system calls where one does).

use std::{collections::HashSet, os::fd::AsRawFd as _};

use nix::{dir::Dir, errno::Errno, fcntl::OFlag, sys::stat::Mode};

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
        match sockets_of(pid, open, &mut seen) {
            // A process may exit under us: what it held is then closed, and counts nothing.
            Ok(()) | Err(Errno::ENOENT) | Err(Errno::ESRCH) => {}
            Err(e) => {
                log::debug!("cannot read the descriptors of process {pid}: {e}");
                return None;
            }
        }
        todo.extend(super::children::of(pid));
    }
    Some(seen.len() as u64)
}

/// Adds to `seen` the sockets of `open` that process `pid` holds.
fn sockets_of(pid: i32, open: &HashSet<u64>, seen: &mut HashSet<u64>) -> nix::Result<()> {
    let mut dir = Dir::open(
        format!("/proc/{pid}/fd").as_str(),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let at = dir.as_raw_fd();
    for entry in dir.iter() {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_bytes().starts_with(b".") {
            continue;
        }
        let link = match nix::fcntl::readlinkat(Some(at), name) {
            Ok(link) => link,
            // A descriptor closed since the directory was read has no link left: skipped.
            Err(Errno::ENOENT) => continue,
            // Refused (the ptrace check is made on each link): unknown, which is not zero.
            Err(e) => return Err(e),
        };
        if let Some(inode) = socket_inode(link.as_encoded_bytes()) {
            if open.contains(&inode) {
                seen.insert(inode);
            }
        }
    }
    Ok(())
}

/// The inode of a descriptor's link that reads `socket:[INODE]`.
fn socket_inode(link: &[u8]) -> Option<u64> {
    let digits = link.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_socket_link_and_nothing_else() {
        assert_eq!(socket_inode(b"socket:[12345]"), Some(12345));
        assert_eq!(socket_inode(b"pipe:[12345]"), None);
        assert_eq!(socket_inode(b"/dev/null"), None);
        assert_eq!(socket_inode(b"socket:[]"), None);
    }

    #[test]
    fn finds_a_socket_this_process_holds_and_none_of_a_gone_one() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let inode = std::fs::read_link(format!("/proc/self/fd/{}", listener.as_raw_fd()))
            .ok()
            .and_then(|l| socket_inode(l.as_os_str().as_encoded_bytes()))
            .unwrap();
        let open: HashSet<u64> = [inode, 1].into();
        assert_eq!(held_by(&[std::process::id() as i32], &open), Some(1));
        assert_eq!(held_by(&[i32::MAX], &open), Some(0));
    }
}
