//! Each kernel feature the balancer uses, asked of the kernel by loading something small that
//! needs it: a two-instruction program, a one-entry map, a type looked up in the kernel's BTF.
//!
//! Version numbers say nothing reliable: distributions backport BPF features into older
//! kernels (RHEL 9's 5.14 has helpers from 6.x) and leave others out by configuration. So every
//! probe asks the running kernel directly, the way libbpf's `libbpf_probe_*` functions do, and
//! the version beside each feature in [`FEATURES`] is only where mainline Linux gained it, for
//! the message that tells a user what to run instead.
//!
//! aya's own probes ([`aya::sys::is_program_supported`], [`aya::sys::is_helper_supported`],
//! [`aya::sys::is_map_supported`]) cover program types, helpers and map types. What they do
//! not ask (a map flag, an expected attach type, a tp_btf program on a given tracepoint and the
//! helpers it may call) is asked here with a raw `bpf()` call whose attribute prefix is laid
//! out below.

use std::{ffi::CString, os::fd::FromRawFd as _};

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{is_helper_supported, is_map_supported, is_program_supported, BpfHelper},
};
use Probe::*;

/// What a probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Yes,
    No,
    /// The probe itself failed (no permission, a syscall error): nothing is known.
    Unknown(String),
}

/// One kernel feature the balancer relies on.
pub struct Feature {
    /// How the feature is named to a user, e.g. "bpf_loop helper".
    pub name: &'static str,
    /// The mainline Linux version that brought it.
    pub since: &'static str,
    /// What in the balancer needs it.
    pub used_for: &'static str,
    probe: Probe,
}

/// How a feature is asked of the kernel.
#[derive(Clone, Copy)]
enum Probe {
    /// A program type, by aya's probe.
    Program(ProgramType),
    /// A map type, by aya's probe.
    Map(MapType),
    /// A helper as the steering program calls it: from an SK_REUSEPORT program.
    Helper(BpfHelper),
    /// A tp_btf program on a tracepoint, calling a helper if one is given (see [`tracing`]).
    Tracing(&'static str, Option<BpfHelper>),
    /// The kernel's type information (see [`btf`]).
    Btf,
    /// A probe of its own, for what the kinds above do not ask.
    Own(fn() -> Found),
}

impl Feature {
    const fn new(
        name: &'static str,
        since: &'static str,
        used_for: &'static str,
        probe: Probe,
    ) -> Self {
        Feature {
            name,
            since,
            used_for,
            probe,
        }
    }

    /// Asks the running kernel.
    pub fn probe(&self) -> Found {
        match self.probe {
            Probe::Program(t) => found(is_program_supported(t)),
            Probe::Map(t) => found(is_map_supported(t)),
            Probe::Helper(h) => found(is_helper_supported(ProgramType::SkReuseport, h)),
            Probe::Tracing(name, helper) => tracing(name, helper),
            Probe::Btf => btf(),
            Probe::Own(probe) => probe(),
        }
    }
}

/// Every feature, in the order the kernel gained them (the oldest first), so that the first
/// missing one on an old kernel names the least upgrade that would not be enough alone, and the
/// last names the version to run.
#[rustfmt::skip]
pub const FEATURES: &[Feature] = &[
    Feature::new("SK_REUSEPORT programs", "4.19",
        "the steering program", Program(ProgramType::SkReuseport)),
    Feature::new("REUSEPORT_SOCKARRAY maps", "4.19",
        "the listeners the program chooses among", Map(MapType::ReuseportSockArray)),
    Feature::new("bpf_sk_select_reuseport helper", "4.19",
        "handing a connection to the chosen listener", Helper(BpfHelper::BPF_FUNC_sk_select_reuseport)),
    Feature::new("bpf_skb_load_bytes_relative helper", "4.19",
        "reading the TCP flags and addresses of a segment", Helper(BpfHelper::BPF_FUNC_skb_load_bytes_relative)),
    Feature::new("SK_STORAGE maps", "5.2",
        "each listener's slot, on the socket", Map(MapType::SkStorage)),
    Feature::new("BTF type information (/sys/kernel/btf/vmlinux)", "5.5",
        "the close tracker's tracepoint arguments", Btf),
    Feature::new("tp_btf program on inet_sock_set_state", "5.5",
        "the close tracker: every TCP state change", Tracing("inet_sock_set_state", None)),
    Feature::new("tp_btf program on tcp_rcv_space_adjust", "5.5",
        "the taker tracker: which worker took an overflow connection",
        Tracing("tcp_rcv_space_adjust", None)),
    Feature::new("BPF_F_MMAPABLE array maps", "5.5",
        "slot loads shared with the supervisor without a syscall", Own(mmapable_array)),
    Feature::new("bpf_ktime_get_coarse_ns helper", "5.11",
        "the window in which connection records are honoured", Helper(BpfHelper::BPF_FUNC_ktime_get_coarse_ns)),
    Feature::new("bpf_sk_storage_get from tp_btf programs", "5.11",
        "the close tracker finding a connection's slot on its socket",
        Tracing("inet_sock_set_state", Some(BpfHelper::BPF_FUNC_sk_storage_get))),
    Feature::new("SK_REUSEPORT select-or-migrate attach type", "5.14",
        "moving a closing listener's queued connections to a live worker", Own(migrate_attach_type)),
    Feature::new("bpf_get_socket_cookie from SK_REUSEPORT", "5.14",
        "knowing which listener a migrating connection leaves", Helper(BpfHelper::BPF_FUNC_get_socket_cookie)),
    Feature::new("bpf_loop helper", "5.17",
        "the least-loaded scan over up to 1024 slots", Helper(BpfHelper::BPF_FUNC_loop)),
];

fn found(r: Result<bool, impl std::fmt::Display>) -> Found {
    match r {
        Ok(true) => Found::Yes,
        Ok(false) => Found::No,
        Err(e) => Found::Unknown(e.to_string()),
    }
}

fn btf() -> Found {
    match aya::Btf::from_sys_fs() {
        Ok(_) => Found::Yes,
        Err(_) if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() => Found::No,
        Err(e) => Found::Unknown(format!("/sys/kernel/btf/vmlinux: {e}")),
    }
}

/// A trivial tp_btf program (`r0 = 0; exit`, or a call of `helper` first) loaded for the
/// tracepoint `name`, as the close tracker is: attached, by BTF id, to the kernel's
/// `btf_trace_NAME` type. aya's own probe of the tracing type needs a test function some
/// kernels do not build, so this one asks for the real target instead.
fn tracing(name: &str, helper: Option<BpfHelper>) -> Found {
    let Ok(btf) = aya::Btf::from_sys_fs() else {
        return Found::No;
    };
    let typedef = format!("btf_trace_{name}");
    let Ok(id) = btf.id_by_type_name_kind(&typedef, aya_obj::btf::BtfKind::Typedef) else {
        return Found::No;
    };
    // call helper (0x85, the helper's number in imm); mov64 r0, 0; exit.
    let mut insns: Vec<u64> = helper
        .map(|h| 0x85 | (h as u64) << 32)
        .into_iter()
        .collect();
    insns.extend([0xb7, 0x95]);
    let mut log = vec![0u8; 4096];
    let r = load_program(
        ProgLoad {
            prog_type: BPF_PROG_TYPE_TRACING,
            expected_attach_type: BPF_TRACE_RAW_TP,
            attach_btf_id: id,
            ..ProgLoad::default()
        },
        &insns,
        Some(&mut log),
    );
    let log = String::from_utf8_lossy(&log);
    let log = log.trim_end_matches('\0');
    match r {
        Ok(()) => Found::Yes,
        // What libbpf's helper probe reads as "no such helper here".
        Err(_)
            if ["invalid func ", "unknown func ", "cannot use helper "]
                .iter()
                .any(|m| log.contains(m)) =>
        {
            Found::No
        }
        // A helper call with no arguments set up: the verifier knew the helper.
        Err(_) if helper.is_some() && !log.is_empty() => Found::Yes,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) && log.is_empty() => Found::No,
        Err(e) => Found::Unknown(format!("{e}: {}", log.lines().last().unwrap_or(""))),
    }
}

// The leading fields of `union bpf_attr` for BPF_MAP_CREATE and BPF_PROG_LOAD. The kernel
// accepts a shorter attribute than its own and reads the missing tail as zeroes.
#[repr(C)]
#[derive(Default)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    attach_btf_id: u32,
}

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_F_MMAPABLE: u32 = 1 << 10;
const BPF_PROG_TYPE_SK_REUSEPORT: u32 = 21;
const BPF_SK_REUSEPORT_SELECT_OR_MIGRATE: u32 = 40;
const BPF_PROG_TYPE_TRACING: u32 = 26;
const BPF_TRACE_RAW_TP: u32 = 23;

/// `bpf(cmd, attr)`; the object it makes, if any, is closed again at once.
fn bpf<T>(cmd: libc::c_long, attr: &T) -> std::io::Result<()> {
    // SAFETY: `attr` is a valid bpf_attr prefix of its own size, as the kernel reads it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    drop(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) });
    Ok(())
}

/// `BPF_PROG_LOAD` of `insns` (GPL) with the rest of `attr`, the verifier writing its log
/// into `log` if given; the program is closed again at once.
fn load_program(mut attr: ProgLoad, insns: &[u64], log: Option<&mut [u8]>) -> std::io::Result<()> {
    let license = CString::new("GPL").unwrap();
    attr.insn_cnt = insns.len() as u32;
    attr.insns = insns.as_ptr() as u64;
    attr.license = license.as_ptr() as u64;
    if let Some(log) = log {
        attr.log_level = 1;
        attr.log_size = log.len() as u32;
        attr.log_buf = log.as_mut_ptr() as u64;
    }
    bpf(BPF_PROG_LOAD, &attr)
}

/// Yes when the kernel made the object, No when it refused it with one of `refusals` (what an
/// older kernel answers), Unknown on anything else (EPERM: no capability).
fn judged(r: std::io::Result<()>, refusals: &[i32]) -> Found {
    match r {
        Ok(()) => Found::Yes,
        Err(e) if e.raw_os_error().is_some_and(|n| refusals.contains(&n)) => Found::No,
        Err(e) => Found::Unknown(e.to_string()),
    }
}

fn mmapable_array() -> Found {
    let attr = MapCreate {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: 8,
        max_entries: 1,
        map_flags: BPF_F_MMAPABLE,
    };
    // An unknown flag: EINVAL.
    judged(bpf(BPF_MAP_CREATE, &attr), &[libc::EINVAL])
}

/// An SK_REUSEPORT program loaded for the migrate attach type that reads its context's
/// `migrating_sk` (`r0 = ctx->migrating_sk; r0 = 0; exit`). Kernels before 5.14 accept any
/// expected attach type for this program type, so the attach type alone proves nothing; the
/// field, which came with it, does: older verifiers refuse the access (EACCES).
fn migrate_attach_type() -> Found {
    // ldxdw r0, [r1 + 48] (opcode 0x79, src r1, offset 48); mov64 r0, 0 (0xb7); exit (0x95).
    let insns: [u64; 3] = [0x0030_1079, 0xb7, 0x95];
    let attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_SK_REUSEPORT,
        expected_attach_type: BPF_SK_REUSEPORT_SELECT_OR_MIGRATE,
        ..ProgLoad::default()
    };
    let r = load_program(attr, &insns, None);
    // An unknown attach type: EINVAL; a context field the verifier does not know: EACCES.
    judged(r, &[libc::EINVAL, libc::EACCES])
}

/// The features this kernel lacks, in [`FEATURES`] order, with what each probe found.
pub fn missing() -> Vec<&'static Feature> {
    FEATURES.iter().filter(|f| f.probe() == Found::No).collect()
}
