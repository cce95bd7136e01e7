//! A worker's resident memory, for recycling on `--max-memory`.

/// The resident set of process `pid`, in bytes.
pub fn resident(pid: i32) -> Option<u64> {
    let status = procfs::process::Process::new(pid).ok()?.status().ok()?;
    status.vmrss.map(|kb| kb * 1024)
}
