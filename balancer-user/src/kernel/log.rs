//! The program's log records (aya-log), read from their ring buffer into this process's log.

/// Records the program logs with aya-log, read from its ring buffer.
pub type ProgramLog = aya_log::EbpfLogger<&'static dyn log::Log>;

/// Copies the program's records into the supervisor's log as they arrive.
pub async fn forward_log(log: ProgramLog) {
    // SAFETY: the logger owns its ring buffer fd for as long as the AsyncFd lives.
    let Ok(mut fd) = (unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(log, tokio::io::Interest::READABLE)
    }) else {
        return;
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
