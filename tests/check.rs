//! `balancer check`, the preflight a user runs before deploying: on this kernel every probed
//! feature is there and the programs load; without the capability to load anything it exits
//! non-zero with the fix. (Its refusal on a kernel that lacks features runs in a VM: `cargo
//! xtask vm --kernel 5.10`.)

use std::process::{Command, Output};

use balancer_tests::*;

fn check() -> Output {
    Command::new(bin()).arg("check").output().unwrap()
}

/// The rows of the feature table: every line between the header and the first blank line.
fn feature_rows(report: &str) -> Vec<&str> {
    report
        .lines()
        .skip_while(|l| !l.starts_with("feature "))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .collect()
}

#[test]
fn every_feature_is_found_here_and_the_programs_load() {
    netns();
    let out = check();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert!(
        report.starts_with(&format!("kernel {}", release.trim())),
        "{report}"
    );
    let rows = feature_rows(&report);
    for feature in [
        "SK_REUSEPORT programs",
        "bpf_sk_select_reuseport helper",
        "BTF type information",
        "tp_btf program on inet_sock_set_state",
        "BPF_F_MMAPABLE array maps",
        "SK_REUSEPORT select-or-migrate attach type",
        "bpf_loop helper",
    ] {
        let row = rows.iter().find(|r| r.starts_with(feature));
        let row = row.unwrap_or_else(|| panic!("no row for {feature}: {report}"));
        let cols: Vec<&str> = row
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        assert_eq!(cols[2], "yes", "{row}");
    }
    assert!(rows.len() >= 14, "{report}");
    assert!(
        rows.iter().all(|r| r.contains(" yes ")),
        "every feature found: {report}"
    );
    assert!(report.contains("loaded and verified"), "{report}");
    assert!(report.contains("CAP_BPF yes"), "{report}");
    assert!(report.contains("net.ipv4.tcp_migrate_req = "), "{report}");
    assert!(report.contains("balancer can run here"), "{report}");
}

#[test]
fn without_capabilities_it_exits_non_zero_with_the_fix() {
    netns();
    let out = {
        use std::os::unix::process::CommandExt as _;
        Command::new(bin())
            .arg("check")
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    };
    fails_with(&out, "missing capability CAP_BPF");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("setcap cap_bpf,cap_perfmon+ep"), "{err}");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("CAP_BPF no"), "{report}");
    assert!(report.contains("not loaded: no capability"), "{report}");
}
