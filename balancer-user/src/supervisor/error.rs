//! What can stop the supervisor from starting, or a worker from being started. Each variant
//! names what failed; a cause from another module is kept as it is, so that the line the user
//! reads is the one that module wrote.

/// A cause from a module with an error type of its own.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Binding or checking the listening sockets.
    #[error(transparent)]
    Listeners(BoxError),
    /// Loading, configuring or attaching the programs and their maps.
    #[error(transparent)]
    Kernel(BoxError),
    /// The worker command: resolving it, or its access check.
    #[error(transparent)]
    Command(BoxError),
    /// The workers' accounts.
    #[error(transparent)]
    Identity(BoxError),
    /// What the supervisor needs of its capabilities.
    #[error(transparent)]
    Capabilities(BoxError),
    /// The control socket or its directory.
    #[error(transparent)]
    Control(BoxError),
    /// The workers' log sink.
    #[error(transparent)]
    Logs(BoxError),
    /// The metrics endpoint.
    #[error(transparent)]
    Metrics(BoxError),
    /// A worker's message channel.
    #[error(transparent)]
    Channel(BoxError),
    /// Starting a worker process.
    #[error(transparent)]
    Spawn(BoxError),
    #[error("worker exited before it could be tracked")]
    Untracked,
    #[error("cannot become the subreaper of the workers (prctl PR_SET_CHILD_SUBREAPER)")]
    Subreaper(#[source] nix::Error),
    /// The event loop's runtime, its signal handlers, a socket's address.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("some workers had to be killed after --kill-timeout")]
    Killed,
}

/// `e` and its causes on one line, joined by ": ", as the binary reports an error: for the
/// control answers and log lines that carry a cause from another module, whose own `{:#}`
/// shows the first error of the chain only.
pub(super) fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let causes: Vec<String> = std::iter::successors(Some(e), |&e| e.source())
        .map(ToString::to_string)
        .collect();
    causes.join(": ")
}

impl Error {
    pub(super) fn listeners(e: impl Into<BoxError>) -> Error {
        Error::Listeners(e.into())
    }

    pub(super) fn kernel(e: impl Into<BoxError>) -> Error {
        Error::Kernel(e.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_gives_a_wrapped_error_with_its_causes() {
        let e = Error::Spawn(Box::new(crate::worker::spawn::Error::Start {
            command: "app".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOENT),
        }));
        assert_eq!(
            one_line(&e),
            "cannot start worker `app`: No such file or directory (os error 2)"
        );
    }
}
