//! `balancer logs`, the supervisor's side: served on the control connection from the log store
//! itself, not through the supervisor's loop.

use tokio::io::AsyncWriteExt as _;

/// Serves one `logs` request on `stream`: the tail, then with `follow` each new line until the
/// client goes away. Slow clients skip what they missed (the count is sent as a line of their
/// slot's stream, marked).
pub async fn serve_logs(
    stream: &mut tokio::net::UnixStream,
    logs: &crate::logs::Logs,
    slot: Option<u32>,
    lines: usize,
    follow: bool,
) {
    use tokio::sync::broadcast::error::RecvError;
    // Subscribed before the tail is read, so that no line falls between the two.
    let mut new = logs.subscribe();
    let (tail, upto) = logs.tail(slot, lines);
    let mut text = String::new();
    for l in &tail {
        text.push_str(&serde_json::to_string(&**l).unwrap_or_default());
        text.push('\n');
    }
    if stream.write_all(text.as_bytes()).await.is_err() || !follow {
        return;
    }
    loop {
        let line = match new.recv().await {
            Ok(l) if l.seq <= upto || slot.is_some_and(|s| s != l.slot) => continue,
            Ok(l) => l,
            Err(RecvError::Lagged(n)) => std::sync::Arc::new(crate::logs::Line {
                seq: 0,
                slot: slot.unwrap_or(0),
                pid: 0,
                stream: crate::logs::Stream::Stderr,
                line: format!("[balancer: this reader fell behind and skipped {n} lines]"),
            }),
            Err(RecvError::Closed) => return,
        };
        let mut text = serde_json::to_string(&*line).unwrap_or_default();
        text.push('\n');
        if stream.write_all(text.as_bytes()).await.is_err() {
            return;
        }
    }
}
