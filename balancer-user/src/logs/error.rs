//! What can stop the workers' log sink from starting, each worded as the user reads it.

use std::{io, path::PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--log-max-size {0}: give at least 4096 bytes")]
    MaxSize(u64),
    #[error("cannot create the log directory {}", .dir.display())]
    CreateDirectory {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot write in the log directory {}: pass --log-dir with a directory this user may \
         write",
        .dir.display()
    )]
    WriteDirectory {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the log thread")]
    Thread(#[source] io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
