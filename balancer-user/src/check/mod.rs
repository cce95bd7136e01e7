//! `balancer check`: whether the balancer can run on this host, asked of the kernel itself.
//!
//! A user runs it before deploying. It prints the kernel's release, then one row per kernel
//! feature the programs use ([`probes::FEATURES`]), each found by loading something that needs
//! it rather than by comparing version numbers, then loads the real programs (the verifier runs
//! over them exactly as `balancer run` would, nothing is attached), the capabilities the
//! supervisor holds and the sysctls that change how connections move. It exits non-zero with one
//! line naming what is missing and the fix when the balancer cannot run here.
//!
//! The same probes explain a refusal of `balancer run`: when the kernel will not load the
//! programs, [`lacking`] turns the verifier's pages into one line naming the missing feature
//! and the Linux version that has it.

mod probes;

use std::time::Instant;

pub use probes::{missing, Feature, Found, FEATURES};

use crate::capabilities;

/// Why the balancer cannot run on this host, in the one line the report ends with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// This process may not load the programs (see [`crate::capabilities`]).
    #[error(transparent)]
    Capability(Box<dyn std::error::Error + Send + Sync>),
    /// The kernel lacks features the programs use: their names and the version to run.
    #[error("{0}")]
    Lacking(String),
    #[error("the kernel refused the programs although every probed feature is present")]
    Refused(#[source] crate::kernel::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Prints the report; fails with the one line that says why the balancer cannot run here.
///
/// # Errors
///
/// [`Error::Capability`] without the capability to load the programs, [`Error::Lacking`]
/// when a probe finds a feature missing, [`Error::Refused`] when the kernel refuses the
/// programs all the same.
pub fn run() -> Result<()> {
    println!("kernel {}", release());
    println!();
    let found: Vec<(&Feature, Found)> = FEATURES.iter().map(|f| (f, f.probe())).collect();
    print!("{}", table(&found));
    println!();
    let caps = capabilities::effective().unwrap_or(0);
    println!("capabilities  {}", held(caps));
    for (name, note) in sysctls() {
        println!("sysctl        {name} = {note}");
    }
    let (reads_sockets, diag) = sock_diag();
    println!("sock_diag     {diag}");
    println!();
    if let Err(e) = capabilities::require_bpf() {
        println!("programs      not loaded: no capability to load them");
        return Err(Error::Capability(e.into()));
    }
    let lacking: Vec<&Feature> = found
        .iter()
        .filter(|(_, r)| *r == Found::No)
        .map(|(f, _)| *f)
        .collect();
    if !lacking.is_empty() {
        println!("programs      not loaded: this kernel lacks what they use");
        return Err(Error::Lacking(refusal(&lacking)));
    }
    let start = Instant::now();
    match crate::kernel::Steering::load(1024) {
        Ok(steering) => {
            drop(steering);
            println!(
                "programs      {}: loaded and verified in {} ms (not attached)",
                PROGRAMS,
                start.elapsed().as_millis()
            );
        }
        Err(e) => {
            println!("programs      refused: {}", chain(&e));
            return Err(Error::Refused(e));
        }
    }
    println!();
    if reads_sockets {
        println!("balancer can run here: every feature it uses is present, nothing degrades.");
    } else {
        println!("balancer can run here, degraded: see sock_diag above.");
    }
    Ok(())
}

/// `e` and its causes on one line, as the binary reports an error.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let causes: Vec<String> = std::iter::successors(Some(e), |&e| e.source())
        .map(ToString::to_string)
        .collect();
    causes.join(": ")
}

/// The programs `balancer run` loads, as the report names them.
pub const PROGRAMS: &str = "balancer (SK_REUSEPORT, select-or-migrate), closes and takes (tp_btf)";

/// One line naming every feature this kernel lacks (newest first) and the version to run, or
/// None when every probe finds its feature (or cannot tell).
pub fn lacking() -> Option<String> {
    let lacking = missing();
    (!lacking.is_empty()).then(|| refusal(&lacking))
}

fn refusal(lacking: &[&Feature]) -> String {
    let mut newest_first = lacking.to_vec();
    newest_first.sort_by_key(|f| std::cmp::Reverse(version(f.since)));
    let newest = newest_first[0];
    let names: Vec<String> = newest_first
        .iter()
        .map(|f| format!("{} ({})", f.name, f.since))
        .collect();
    format!(
        "this kernel ({}) lacks {}, needed for {}: the balancer needs Linux {} or later; \
         run it on a newer kernel (`balancer check` lists every feature)",
        release(),
        names.join(", "),
        newest.used_for,
        newest.since
    )
}

/// "5.17" as (5, 17), for ordering.
fn version(v: &str) -> (u32, u32) {
    let mut parts = v.split('.').map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// The kernel's release string, as `uname -r` prints it.
pub fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn table(found: &[(&Feature, Found)]) -> String {
    let width = FEATURES.iter().map(|f| f.name.len()).max().unwrap_or(0);
    let mut out = format!("{:width$}  since  here  used for\n", "feature");
    for (f, r) in found {
        let here = match r {
            Found::Yes => "yes".to_string(),
            Found::No => "NO".to_string(),
            Found::Unknown(why) => format!("?     ({why})"),
        };
        out += &format!(
            "{:width$}  {:5}  {:4}  {}\n",
            f.name, f.since, here, f.used_for
        );
    }
    out
}

fn held(caps: u64) -> String {
    [("CAP_BPF", 39), ("CAP_PERFMON", 38), ("CAP_SYS_ADMIN", 21)]
        .iter()
        .map(|(name, n)| {
            let yes = if capabilities::has(caps, *n) {
                "yes"
            } else {
                "no"
            };
            format!("{name} {yes}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether the supervisor can read each worker's connections (the reconciliation); without
/// it the balancer runs, its loads kept by the programs alone.
fn sock_diag() -> (bool, String) {
    match crate::inspect::open_sockets(std::net::SocketAddr::from(([127, 0, 0, 1], 1))) {
        Ok(_) => (
            true,
            "yes (the supervisor reads what each worker holds and corrects any drift)".into(),
        ),
        Err(e) => (
            false,
            format!(
            "NO, degrades: loads are not checked against the kernel, a drift stays uncorrected \
             ({e}); fix: `modprobe tcp_diag`"
        ),
        ),
    }
}

/// The sysctls that change what happens to connections, with what each value means here.
fn sysctls() -> Vec<(&'static str, String)> {
    let read = |path: &str| {
        std::fs::read_to_string(format!("/proc/sys/{path}")).map(|s| s.trim().to_string())
    };
    let migrate = match read("net/ipv4/tcp_migrate_req") {
        Ok(v) => format!(
            "{v} (the program moves a closing listener's queued connections itself; \
             not needed)"
        ),
        Err(_) => "absent (a kernel before 5.14: no connection migration)".into(),
    };
    let cookies = match read("net/ipv4/tcp_syncookies").as_deref() {
        Ok("0") => "0 (no SYN cookies: a full queue drops SYNs, clients retry)".into(),
        Ok("2") => "2 (cookies for every SYN; each connection still counted once)".into(),
        Ok(v) => format!("{v} (cookies only when a queue overflows; counted once)"),
        Err(_) => "absent".into(),
    };
    let unprivileged = match read("kernel/unprivileged_bpf_disabled") {
        Ok(v) => format!("{v} (the supervisor needs CAP_BPF either way)"),
        Err(_) => "absent".into(),
    };
    vec![
        ("net.ipv4.tcp_migrate_req", migrate),
        ("net.ipv4.tcp_syncookies", cookies),
        ("kernel.unprivileged_bpf_disabled", unprivileged),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_are_listed_oldest_first() {
        let versions: Vec<_> = FEATURES.iter().map(|f| version(f.since)).collect();
        let mut sorted = versions.clone();
        sorted.sort();
        assert_eq!(versions, sorted);
    }

    #[test]
    fn a_refusal_names_the_newest_missing_feature_and_its_version() {
        let loop_ = FEATURES
            .iter()
            .find(|f| f.name.contains("bpf_loop"))
            .unwrap();
        let mmap = FEATURES
            .iter()
            .find(|f| f.name.contains("MMAPABLE"))
            .unwrap();
        let line = refusal(&[mmap, loop_]);
        assert!(line.contains("needs Linux 5.17 or later"), "{line}");
        assert!(
            line.find("bpf_loop").unwrap() < line.find("MMAPABLE").unwrap(),
            "newest first: {line}"
        );
        assert!(!line.contains('\n'), "{line}");
    }
}
