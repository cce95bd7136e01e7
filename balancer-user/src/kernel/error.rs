//! What can go wrong with the kernel objects, each variant worded as the user reads it.
//!
//! Where a message already quotes the kernel's error (a load or a verifier refusal), the error
//! is kept in the variant but not given as its source: the one-line report, which joins an
//! error's sources, would otherwise say it twice.

use std::io;

use aya::{maps::MapError, programs::ProgramError, BtfError, EbpfError};

/// A failure to load, attach or write one of the kernel objects.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel refused with EPERM (or, creating the maps, EACCES): a missing capability, or
    /// a seccomp profile when the capabilities are held. The message is the fix.
    #[error("{hint}")]
    PermissionDenied {
        hint: &'static str,
        refusal: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The kernel lacks a feature the programs use: one line naming it and the version that
    /// has it (see [`crate::check::lacking`]).
    #[error("{line}")]
    Lacking {
        line: String,
        refusal: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot load the steering program: {0}")]
    Load(EbpfError),
    #[error("cannot set up the program's log records: {0}")]
    Log(aya_log::Error),
    #[error("the kernel refused the {what}: {kernel}")]
    Refused {
        what: &'static str,
        kernel: ProgramError,
    },
    #[error(
        "cannot read the kernel's type information (/sys/kernel/btf/vmlinux: {0}): the close \
         tracker needs a kernel built with CONFIG_DEBUG_INFO_BTF=y, as every major \
         distribution's is"
    )]
    Btf(BtfError),
    #[error("the object file has no {0}")]
    NoProgram(&'static str),
    #[error("the object file has no map {0}")]
    NoMap(&'static str),
    #[error("map {0} is not an array")]
    NotArray(&'static str),
    /// A program or map of another type than the object file should hold.
    #[error(transparent)]
    ProgramType(ProgramError),
    #[error(transparent)]
    MapType(MapError),
    #[error("cannot map the load map into memory (was it created with BPF_F_MMAPABLE?)")]
    Mmap(#[source] nix::Error),
    #[error("cannot count the possible CPUs")]
    Cpus(#[source] io::Error),
    #[error("cannot read random numbers from the kernel: {0}")]
    Random(getrandom::Error),
    #[error(transparent)]
    PerCpu(io::Error),
    #[error("cannot seed the program's {what}")]
    Seed {
        what: &'static str,
        #[source]
        source: MapError,
    },
    #[error("cannot attach the steering program to the listeners (SO_ATTACH_REUSEPORT_EBPF)")]
    Attach(#[source] ProgramError),
    #[error("cannot attach the {what} to the {tracepoint} tracepoint")]
    AttachTracepoint {
        what: &'static str,
        tracepoint: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("cannot write the program's configuration")]
    Configure(#[source] MapError),
    #[error("cannot put the listener of slot {slot} in the socket array")]
    Insert {
        slot: u32,
        #[source]
        source: MapError,
    },
    #[error("cannot clear slot {slot}")]
    Clear {
        slot: u32,
        #[source]
        source: MapError,
    },
    #[error("cannot mark the listener of slot {slot} (OWNERS)")]
    Mark {
        slot: u32,
        #[source]
        source: MapError,
    },
    #[error("cannot read the cookie of slot {slot}'s listener")]
    Cookie {
        slot: u32,
        #[source]
        source: io::Error,
    },
    #[error("cannot record the listener of slot {slot} (LISTENERS)")]
    Listener {
        slot: u32,
        #[source]
        source: MapError,
    },
    #[error("cannot record a health probe's connection")]
    RecordFlow(#[source] MapError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The error for an object file the kernel would not take (its maps, mostly).
    pub(super) fn load(e: EbpfError) -> Error {
        // Creating a map without the capability is EPERM on some kernels and EACCES on others.
        if errno(&e).is_some_and(|n| n == libc::EPERM || n == libc::EACCES) {
            return Error::denied(e.into());
        }
        match lacking(&e) {
            Some(line) => Error::Lacking {
                line,
                refusal: e.into(),
            },
            None => Error::Load(e),
        }
    }

    /// The error for a program the kernel would not load: the capability hint when it is a
    /// permission refusal, the verifier's words otherwise.
    pub(super) fn refused(what: &'static str, e: ProgramError) -> Error {
        // Not EACCES: from BPF_PROG_LOAD, that is the verifier saying no.
        if errno(&e) == Some(libc::EPERM) {
            return Error::denied(e.into());
        }
        match lacking(&e) {
            Some(line) => Error::Lacking {
                line,
                refusal: e.into(),
            },
            None => Error::Refused { what, kernel: e },
        }
    }

    fn denied(refusal: Box<dyn std::error::Error + Send + Sync>) -> Error {
        Error::PermissionDenied {
            hint: crate::capabilities::refused(),
            refusal,
        }
    }
}

/// On an older kernel, the feature it lacks says more than the verifier's pages: the probes of
/// `balancer check` name it and the version that has it. The kernel's own words stay available
/// with `RUST_LOG=debug`.
fn lacking(refusal: &dyn std::fmt::Display) -> Option<String> {
    let line = crate::check::lacking()?;
    ::log::debug!("the kernel's words: {refusal}");
    Some(line)
}

/// The errno of the first system call error among `e` and its sources: aya keeps the kernel's
/// answer as an [`io::Error`] at the end of the chain.
fn errno(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    std::iter::successors(Some(e), |&e| e.source())
        .find_map(|e| e.downcast_ref::<io::Error>())
        .and_then(io::Error::raw_os_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_error(code: i32) -> ProgramError {
        ProgramError::LoadError {
            io_error: io::Error::from_raw_os_error(code),
            verifier_log: aya_obj::VerifierLog::new(String::new()),
        }
    }

    #[test]
    fn the_errno_is_read_from_the_end_of_the_chain() {
        let e = EbpfError::MapError(MapError::CreateError {
            name: "SLOTS".into(),
            io_error: io::Error::from_raw_os_error(libc::EACCES),
        });
        assert_eq!(errno(&e), Some(libc::EACCES));
        assert_eq!(errno(&load_error(libc::EPERM)), Some(libc::EPERM));
        assert_eq!(errno(&ProgramError::NotLoaded), None);
    }

    #[test]
    fn a_verifier_refusal_is_not_a_permission_refusal() {
        // EACCES from BPF_PROG_LOAD is the verifier saying no, whatever the capabilities.
        let e = Error::refused("steering program", load_error(libc::EACCES));
        assert!(!matches!(e, Error::PermissionDenied { .. }), "{e}");
        let e = Error::refused("steering program", load_error(libc::EPERM));
        assert!(matches!(e, Error::PermissionDenied { .. }), "{e}");
    }
}
