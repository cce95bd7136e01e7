//! What can go wrong setting up a worker's message channel on the supervisor's side.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create a worker's message channel")]
    Create(#[source] io::Error),
    /// Making the supervisor's end non-blocking, or handing it to the event loop.
    #[error(transparent)]
    Io(#[from] io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
