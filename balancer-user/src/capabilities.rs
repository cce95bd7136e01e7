//! What the supervisor needs from the kernel before it starts anything.
//!
//! Loading an `SK_REUSEPORT` program and creating its maps needs `CAP_BPF` (or `CAP_SYS_ADMIN`,
//! which implies it); nothing else the supervisor does is privileged. Checking up front turns a
//! failure deep in the loader into one line that says what to grant.

use anyhow::Result;

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

/// The effective capability set of this process, from /proc/self/status.
pub fn effective() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .ok_or_else(|| anyhow::anyhow!("no CapEff line in /proc/self/status"))?;
    Ok(u64::from_str_radix(line.trim(), 16)?)
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
        anyhow::bail!(MISSING_BPF)
    }
    if !has(caps, CAP_PERFMON) {
        anyhow::bail!(MISSING_PERFMON)
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
        anyhow::bail!(
            "workers would run as root with CAP_BPF: grant CAP_SETPCAP too (`--cap-add=SETPCAP`), \
             or run them as another user with --user"
        );
    }
    Ok(())
}

/// What the supervisor still needs once the program is loaded and attached: start workers as
/// another account (SETUID, SETGID), keep CAP_BPF out of root workers (SETPCAP), signal workers
/// of another account (KILL), bind listeners for new slots on low ports (NET_BIND_SERVICE).
/// Map and program operations go through the fds it already holds and need no capability.
const KEEP: [u32; 5] = [
    5,  /* KILL */
    6,  /* SETGID */
    7,  /* SETUID */
    8,  /* SETPCAP */
    10, /* NET_BIND_SERVICE */
];

/// Lowers this process's effective and permitted sets to [`KEEP`] (what it has of them). The
/// bounding set stays: root workers still get their usual capabilities (minus BPF) at exec.
pub fn drop_to_runtime_set() -> Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget/capset with a v3 header and two data words, as capabilities(7) describes.
    unsafe {
        if libc::syscall(libc::SYS_capget, &raw mut header, data.as_mut_ptr()) != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        let keep: u64 = KEEP.iter().map(|c| 1u64 << c).sum();
        let permitted = (data[0].permitted as u64 | (data[1].permitted as u64) << 32) & keep;
        for (i, d) in data.iter_mut().enumerate() {
            let word = (permitted >> (32 * i)) as u32;
            d.effective = word;
            d.permitted = word;
            d.inheritable = 0;
        }
        if libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_bits_the_kernel_uses() {
        assert!(has(1 << 39, CAP_BPF));
        assert!(!has(1 << 38, CAP_BPF));
        assert!(effective().is_ok());
    }
}
