//! What the supervisor needs from the kernel before it starts anything.
//!
//! Loading an `SK_REUSEPORT` program and creating its maps needs `CAP_BPF` (or `CAP_SYS_ADMIN`,
//! which implies it); nothing else the supervisor does is privileged. Checking up front turns a
//! failure deep in the loader into one line that says what to grant.

use caps::{errors::CapsError, CapSet, Capability};

/// What the supervisor lacks of its capabilities, each worded as the user reads it: the
/// capability and how to grant it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}", MISSING_BPF)]
    MissingBpf,
    #[error("{}", MISSING_PERFMON)]
    MissingPerfmon,
    #[error(
        "workers would run as root with CAP_BPF: grant CAP_SETPCAP too (`--cap-add=SETPCAP`), \
         or run them as another user with --user"
    )]
    WorkerIsolation,
    /// Reading or changing this thread's sets.
    #[error(transparent)]
    Caps(#[from] CapsError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

const CAP_SETPCAP: u32 = 8;
const CAP_PERFMON: u32 = 38;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

pub const MISSING_BPF: &str = "missing capability CAP_BPF, needed to load the steering program: \
     run as root, or grant it with `setcap cap_bpf,cap_perfmon+ep <path to balancer>`, \
     or `--cap-add=BPF` for a container";

pub const MISSING_PERFMON: &str = "missing capability CAP_PERFMON, which the kernel's verifier \
     requires for the steering program: run as root, or grant it with \
     `setcap cap_bpf,cap_perfmon+ep <path to balancer>`, or `--cap-add=PERFMON` for a container";

pub const BLOCKED: &str = "the kernel refused the bpf() system call although CAP_BPF is held: a \
     seccomp profile or security module blocks it; for podman or docker pass \
     `--security-opt seccomp=unconfined` (or a profile that allows bpf), see docs/deploy.md";

/// The effective capability set of this thread, as a mask of capability numbers.
pub fn effective() -> Result<u64> {
    Ok(mask(&caps::read(None, CapSet::Effective)?))
}

fn mask(set: &caps::CapsHashSet) -> u64 {
    set.iter().map(|c| 1u64 << c.index()).sum()
}

pub fn has(set: u64, cap: u32) -> bool {
    set & (1 << cap) != 0
}

/// Fails with [`MISSING_BPF`] or [`MISSING_PERFMON`] unless this process may load the
/// program: CAP_BPF to load, CAP_PERFMON because the verifier accepts some of the program's
/// stack use only from callers allowed to see kernel pointers (CAP_SYS_ADMIN implies both).
pub fn require_bpf() -> Result<()> {
    let caps = effective()?;
    if has(caps, CAP_SYS_ADMIN) {
        return Ok(());
    }
    if !has(caps, CAP_BPF) {
        return Err(Error::MissingBpf);
    }
    if !has(caps, CAP_PERFMON) {
        return Err(Error::MissingPerfmon);
    }
    Ok(())
}

/// The message for a load refused with EPERM: missing capabilities, or something else (seccomp)
/// when the capabilities are there.
pub fn refused() -> &'static str {
    match effective() {
        Ok(caps) if has(caps, CAP_BPF) || has(caps, CAP_SYS_ADMIN) => BLOCKED,
        _ => MISSING_BPF,
    }
}

/// Workers that run as root get every capability in the bounding set back at exec. The
/// supervisor removes CAP_BPF (and CAP_SYS_ADMIN) from a worker's bounding set before exec, which
/// needs CAP_SETPCAP; without it, a root worker would keep CAP_BPF. Refuses that case up front.
pub fn require_worker_isolation(workers_as_root: bool) -> Result<()> {
    if !workers_as_root {
        return Ok(());
    }
    let caps = effective()?;
    let dangerous = has(caps, CAP_BPF) || has(caps, CAP_SYS_ADMIN);
    if dangerous && !has(caps, CAP_SETPCAP) {
        return Err(Error::WorkerIsolation);
    }
    Ok(())
}

/// What the supervisor still needs once the program is loaded and attached: start workers as
/// another account (SETUID, SETGID), keep every capability out of root workers (SETPCAP),
/// signal workers of another account (KILL), bind listeners for new slots on low ports
/// (NET_BIND_SERVICE), read the descriptor tables of workers of another account to reconcile
/// their loads (SYS_PTRACE for the links, DAC_READ_SEARCH for the `/proc/PID/fd` directory, which
/// is its owner's, mode 0500; workers of its own account, which hold no capability, need
/// neither). Map and program operations go through the fds it already holds and need no
/// capability.
const KEEP: [Capability; 7] = [
    Capability::CAP_DAC_READ_SEARCH,
    Capability::CAP_KILL,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_PTRACE,
];

/// capget/capset's header and data, version 3 (two data words: capabilities 0-31, 32-63), by
/// hand for [`clear_inheritable`]: the caps crate allocates, which a forked child of a
/// multi-threaded parent must not.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// This process's sets, or -1 with errno set. Raw system calls only.
fn capget(header: &mut CapHeader, data: &mut [CapData; 2]) -> libc::c_long {
    // SAFETY: a v3 header and two data words, as capabilities(7) describes.
    unsafe {
        libc::syscall(
            libc::SYS_capget,
            header as *mut CapHeader,
            data.as_mut_ptr(),
        )
    }
}

fn capset(header: &mut CapHeader, data: &[CapData; 2]) -> libc::c_long {
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_capset, header as *mut CapHeader, data.as_ptr()) }
}

/// Empties this process's inheritable set, keeping the rest. Only raw system calls: it runs in
/// a forked child before exec. Returns capset's result (0, or -1 with errno set).
pub fn clear_inheritable() -> libc::c_long {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    let rc = capget(&mut header, &mut data);
    if rc != 0 {
        return rc;
    }
    data[0].inheritable = 0;
    data[1].inheritable = 0;
    capset(&mut header, &data)
}

/// Lowers this thread's effective and permitted sets to [`KEEP`] (what it has of them) and
/// empties its inheritable set.
pub fn drop_to_runtime_set() -> Result<()> {
    let keep: caps::CapsHashSet = caps::read(None, CapSet::Permitted)?
        .into_iter()
        .filter(|c| KEEP.contains(c))
        .collect();
    caps::clear(None, CapSet::Inheritable)?;
    // Effective first: it must stay within the permitted set at every step.
    caps::set(None, CapSet::Effective, &keep)?;
    caps::set(None, CapSet::Permitted, &keep)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A set of /proc/thread-self/status, as a mask.
    fn thread_set(name: &str) -> u64 {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
    }

    #[test]
    fn reads_the_bits_the_kernel_uses() {
        assert!(has(1 << 39, CAP_BPF));
        assert!(!has(1 << 38, CAP_BPF));
        assert_eq!(effective().unwrap(), thread_set("CapEff:"));
    }

    // Capabilities belong to threads: each test changes those of a thread of its own.
    #[test]
    fn the_runtime_set_keeps_exactly_what_it_lists() {
        std::thread::spawn(|| {
            let before = thread_set("CapPrm:");
            drop_to_runtime_set().unwrap();
            let keep: u64 = KEEP.iter().map(|c| 1u64 << c.index()).sum();
            assert_eq!(thread_set("CapPrm:"), before & keep);
            assert_eq!(thread_set("CapEff:"), before & keep);
            assert_eq!(thread_set("CapInh:"), 0);
            assert_eq!(thread_set("CapEff:") & (1 << CAP_BPF), 0, "CAP_BPF is gone");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn clearing_the_inheritable_set_keeps_the_rest() {
        std::thread::spawn(|| {
            let effective = thread_set("CapEff:");
            assert_eq!(clear_inheritable(), 0);
            assert_eq!(thread_set("CapInh:"), 0);
            assert_eq!(thread_set("CapEff:"), effective);
        })
        .join()
        .unwrap();
    }
}
