//! The client side of every command: one request, one answer ([`call`]), or a stream of answer
//! lines until the supervisor closes the connection ([`stream`]: `balancer logs` and
//! `balancer messages`).

use std::{
    io::{BufRead as _, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use super::{Answer, Error, Request, Result};

/// How long an answer that is not [long](Request::is_long) may take.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

fn connect(path: &Path, request: &Request) -> Result<UnixStream> {
    let mut stream = UnixStream::connect(path).map_err(|source| Error::NotRunning {
        path: path.to_owned(),
        source,
    })?;
    writeln!(stream, "{request}")?;
    Ok(stream)
}

/// Sends `request` to the supervisor behind `path` and returns its one-line answer's JSON.
pub fn call(path: &Path, request: &Request) -> Result<String> {
    let mut stream = connect(path, request)?;
    // A reload or a scale answers when it is done: wait for it. Anything else answers at once.
    stream.set_read_timeout((!request.is_long()).then_some(ANSWER_WITHIN))?;
    let mut line = String::new();
    match std::io::BufReader::new(&mut stream).read_line(&mut line) {
        Ok(0) => return Err(Error::Closed(request.clone())),
        Ok(_) => {}
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            return Err(Error::Timeout {
                request: request.clone(),
                limit: ANSWER_WITHIN,
            })
        }
        Err(source) => {
            return Err(Error::ReadAnswer {
                request: request.clone(),
                source,
            })
        }
    }
    refused(request, Answer::parse(&line))
}

fn refused(request: &Request, answer: Answer) -> Result<String> {
    answer.into_result().map_err(|reason| Error::Refused {
        request: request.clone(),
        reason,
    })
}

/// Sends `request` and hands each line of the answer to `each` as it comes, until the
/// supervisor closes the connection (with `follow`, never).
pub fn stream(
    path: &Path,
    request: &Request,
    mut each: impl FnMut(&str) -> Result<()>,
) -> Result<()> {
    let stream = connect(path, request)?;
    for line in std::io::BufReader::new(stream).lines() {
        let line = line.map_err(Error::ReadStream)?;
        each(&refused(request, Answer::parse(&line))?)?;
    }
    Ok(())
}

/// Reads one streamed line as the JSON of a `T`.
pub fn decode<T: serde::de::DeserializeOwned>(line: &str) -> Result<T> {
    serde_json::from_str(line).map_err(|source| Error::Unexpected {
        line: line.to_owned(),
        source,
    })
}

/// `balancer logs`: prints the lines the supervisor sends, as they come (human: prefixed with
/// slot and pid; `json`: as sent), until it closes the connection or, with `follow`, forever.
pub fn logs(path: &Path, slot: Option<u32>, lines: usize, follow: bool, json: bool) -> Result<()> {
    use std::io::IsTerminal as _;
    let request = Request::Logs {
        slot,
        lines,
        follow,
    };
    let colour = std::io::stdout().is_terminal();
    let mut out = std::io::stdout().lock();
    let mut text = String::new();
    stream(path, &request, |line| {
        if json {
            writeln!(out, "{line}")?;
            return Ok(());
        }
        text.clear();
        crate::logs::sink::human(&decode(line)?, colour, &mut text);
        Ok(out.write_all(text.as_bytes())?)
    })
}
