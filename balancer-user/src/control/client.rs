//! The client side of every command: one request, one answer (or, for `balancer logs`, a
//! stream of lines).

use std::{
    io::{BufRead as _, Write as _},
    path::Path,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

/// Sends `request` to the supervisor behind `path` and returns its one-line answer.
pub fn call(path: &Path, request: &str) -> Result<String> {
    let mut stream = std::os::unix::net::UnixStream::connect(path).with_context(|| {
        format!(
            "no balancer answers on {}: is it running? (pass --control if it uses another socket)",
            path.display()
        )
    })?;
    // A reload or a scale answers when it is done, which takes as long as the workers take to
    // get ready and to drain: wait for it. Anything else answers at once.
    let long = request.starts_with("reload") || request.starts_with("scale");
    let limit = Duration::from_secs(10);
    stream.set_read_timeout((!long).then_some(limit))?;
    writeln!(stream, "{request}")?;
    let mut answer = String::new();
    match std::io::BufReader::new(&mut stream).read_line(&mut answer) {
        Ok(0) => bail!(
            "the supervisor closed the connection without answering `{request}` (it is stopping, \
             or it exited)"
        ),
        Ok(_) => {}
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            bail!("the supervisor did not answer `{request}` within {limit:?}")
        }
        Err(e) => return Err(e).context(format!("reading the answer to `{request}`")),
    }
    let answer = answer.trim_end().to_string();
    if let Some(err) = answer.strip_prefix("error: ") {
        bail!("the supervisor refused `{request}`: {err}");
    }
    Ok(answer)
}

/// `balancer logs`: prints the lines the supervisor sends, as they come (human: prefixed with
/// slot and pid; `json`: as sent), until it closes the connection or, with `follow`, forever.
pub fn logs(path: &Path, slot: Option<u32>, lines: usize, follow: bool, json: bool) -> Result<()> {
    use std::io::IsTerminal as _;
    let mut stream = std::os::unix::net::UnixStream::connect(path).with_context(|| {
        format!(
            "no balancer answers on {}: is it running? (pass --control if it uses another socket)",
            path.display()
        )
    })?;
    let mut request = format!("logs lines {lines}");
    if let Some(s) = slot {
        request.push_str(&format!(" slot {s}"));
    }
    if follow {
        request.push_str(" follow");
    }
    writeln!(stream, "{request}")?;
    let colour = std::io::stdout().is_terminal();
    let mut out = std::io::stdout().lock();
    let mut text = String::new();
    for line in std::io::BufReader::new(stream).lines() {
        let line = line.context("reading the supervisor's answer")?;
        if let Some(err) = line.strip_prefix("error: ") {
            bail!("the supervisor refused `{request}`: {err}");
        }
        if json {
            writeln!(out, "{line}")?;
            continue;
        }
        let l: crate::logs::Line = serde_json::from_str(&line)
            .with_context(|| format!("unexpected answer line {line:?}"))?;
        text.clear();
        crate::logs::sink::human(&l, colour, &mut text);
        out.write_all(text.as_bytes())?;
    }
    Ok(())
}
