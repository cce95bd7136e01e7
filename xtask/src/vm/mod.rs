//! `cargo xtask vm`: the balancer on the kernels its users run, each booted in a virtual
//! machine.
//!
//! For each kernel of the matrix ([`kernels::KERNELS`]: Debian's 6.1 and 6.12, and 5.10 as the
//! case below the minimum) it fetches Debian's cloud kernel package ([`kernels`]), builds an
//! initramfs holding busybox, the static `balancer` that every release artefact holds and the
//! end-to-end test binaries ([`initramfs`]), boots it under QEMU ([`boot`]) and reads the
//! results the guest prints ([`report`]). Inside, /init runs `balancer check` and then the [`CORE`] checks: the same
//! test functions `cargo test` runs on the host, each in its own network namespace, unchanged.
//! A kernel below the minimum must instead refuse, in `balancer check` and in `balancer run`,
//! with one line naming the missing feature and the version that has it.
//!
//! With no `--kernel` it runs the whole matrix and writes docs/kernels.md and the table in
//! README.md's Requirements. With `--kernel 6.1` (what `cargo xtask test` runs) it compares the
//! row it measured with the committed one, so the table cannot go stale unnoticed.

mod boot;
mod initramfs;
mod kernels;
mod report;

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::setup::Env;

/// One core check: an end-to-end test that runs in the guest.
pub struct Check {
    /// The test binary (a `[[test]]` of balancer-user/Cargo.toml).
    pub bin: &'static str,
    pub name: &'static str,
}

/// The end-to-end tests that run in every VM, chosen for what differs between kernels (the
/// reuseport selection, the close tracker's tracepoint, socket migration, the overflow
/// listener) and for needing nothing but the balancer itself: no Python, Node.js, `ip` or
/// peer server is in the guest. docs/kernels.md says why each is there.
pub const CORE: &[Check] = &[
    Check {
        bin: "steering",
        name: "bursts_of_64_connects_put_exactly_16_on_each_of_4_idle_workers",
    },
    Check {
        bin: "steering",
        name: "load_returns_to_exactly_zero_including_reset_connections",
    },
    Check {
        bin: "truth",
        name: "sigkill_with_queued_connections_moves_them_and_their_count",
    },
    Check {
        bin: "lifecycle",
        name: "sigkill_of_a_worker_loses_none_of_its_queued_connections",
    },
    Check {
        bin: "reliability",
        name: "ten_rolling_reloads_under_load_fail_nothing",
    },
    Check {
        bin: "overflow",
        name: "a_connection_waits_for_the_first_free_worker_not_behind_a_busy_one",
    },
    Check {
        bin: "policies",
        name: "round_robin_cycles_exactly_on_each_cpu",
    },
    Check {
        bin: "policies",
        name: "p2c_takes_the_lighter_of_two_random_workers",
    },
    Check {
        bin: "policies",
        name: "weighted_splits_idle_traffic_by_weight",
    },
    Check {
        bin: "policies",
        name: "sticky_keeps_each_client_on_one_worker_and_survives_a_restart",
    },
    Check {
        bin: "policies",
        name: "switching_policy_live_drops_nothing",
    },
];

/// How long one guest may run, boot to power-off.
const LIMIT: Duration = Duration::from_secs(900);

pub struct Options {
    /// Kernel series to run; empty: the whole matrix, writing the docs.
    pub kernels: Vec<String>,
}

pub fn run(env: &Env, root: &Path, opts: &Options) -> Result<()> {
    let matrix = opts.kernels.is_empty();
    let chosen: Vec<&kernels::Kernel> = if matrix {
        kernels::KERNELS.iter().collect()
    } else {
        opts.kernels
            .iter()
            .map(|s| kernels::by_series(s))
            .collect::<Result<_>>()?
    };
    let vm = root.join("target/vm");
    fs::create_dir_all(&vm)?;
    let started = Instant::now();
    let (balancer, tests) = binaries(env, root)?;
    let plan: String = CORE
        .iter()
        .map(|c| format!("{} {}\n", c.bin, c.name))
        .collect();
    let initrd = vm.join("initramfs.cpio");
    let contents = initramfs::Contents {
        balancer: &balancer,
        busybox: Path::new("/bin/busybox"),
        tests: &tests,
        plan: &plan,
    };
    initramfs::build(&contents, &vm.join("stage"), &initrd)?;
    eprintln!(
        "xtask: vm: initramfs {} MB, built in {:.0} s",
        fs::metadata(&initrd)?.len() >> 20,
        started.elapsed().as_secs_f64()
    );
    let mut outcomes = vec![];
    for k in chosen {
        let fetched = kernels::fetch(k, &vm)?;
        eprintln!("xtask: vm: booting {} ({})", k.series, fetched.package);
        let log = vm.join(format!("console-{}.log", k.series));
        let own = vm.join(format!("initramfs-{}.cpio", k.series));
        initramfs::with_modules(&initrd, &fetched.modules, &own)?;
        let t = boot::boot(&fetched.vmlinuz, &own, &log, LIMIT)?;
        let o = report::Outcome::read(k, &fetched.package, &t);
        print_outcome(&o, &log);
        outcomes.push(o);
    }
    eprintln!("xtask: vm: {:.0} s in all", started.elapsed().as_secs_f64());
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.failures.is_empty())
        .map(|o| o.series.as_str())
        .collect();
    if matrix {
        write_docs(root, &outcomes)?;
    }
    if !failed.is_empty() {
        bail!("kernel {} not as expected (see above)", failed.join(", "));
    }
    if !matrix {
        compare_rows(root, &outcomes)?;
    }
    Ok(())
}

fn print_outcome(o: &report::Outcome, log: &Path) {
    let boot = o
        .boot
        .map_or("never".into(), |b| format!("{:.1} s", b.as_secs_f64()));
    eprintln!(
        "xtask: vm: {} ({}): boot {boot}, whole run {:.0} s, check exit {}",
        o.series,
        o.release,
        o.wall.as_secs_f64(),
        o.check_rc.map_or("-".into(), |c| c.to_string())
    );
    for t in &o.tests {
        let r = if t.passed { "pass" } else { "FAIL" };
        eprintln!("  {r}  {:6.1} s  {} {}", t.seconds, t.bin, t.name);
        for before in &t.failed_before {
            eprintln!("        (its first run failed: {before})");
        }
    }
    for l in &o.run_said {
        eprintln!("  balancer run said: {l}");
    }
    for f in &o.failures {
        eprintln!("  NOT AS EXPECTED: {f}");
    }
    eprintln!("  console: {}", log.display());
}

/// The static `balancer` that the release artefacts hold (`cargo xtask dist`), and the core
/// checks' test binaries, built the way `cargo xtask test` builds them (a plain `cargo test`
/// of the workspace), so that after it nothing is rebuilt.
fn binaries(env: &Env, root: &Path) -> Result<(PathBuf, Vec<(String, PathBuf)>)> {
    let balancer = crate::dist::static_binary(env, root)?;
    let out = env
        .command("cargo")
        .args([
            "test",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(root)
        .output()?;
    if !out.status.success() {
        bail!("cargo test --no-run failed");
    }
    let mut tests = vec![];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let name = v["target"]["name"].as_str().unwrap_or_default();
        let is_test = v["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|x| x == "test"));
        if let (true, Some(exe)) = (is_test, v["executable"].as_str()) {
            if CORE.iter().any(|c| c.bin == name) && !tests.iter().any(|(n, _)| n == name) {
                tests.push((name.to_string(), PathBuf::from(exe)));
            }
        }
    }
    for c in CORE {
        if !tests.iter().any(|(n, _)| n == c.bin) {
            bail!("cargo built no test binary {}", c.bin);
        }
    }
    Ok((balancer, tests))
}

/// Each kernel's measured row must be the committed one, in both files.
fn compare_rows(root: &Path, outcomes: &[report::Outcome]) -> Result<()> {
    let docs = fs::read_to_string(root.join("docs/kernels.md")).context("docs/kernels.md")?;
    let block = report::block(&docs).context("docs/kernels.md has no kernel table")?;
    for o in outcomes {
        let measured = o.row();
        match report::row_of(block, &o.series) {
            Some(committed) if committed == measured => {}
            committed => bail!(
                "the kernel table says {:?} for {} but this run measured {measured:?}: run \
                 `cargo xtask vm` and commit docs/kernels.md and README.md",
                committed.unwrap_or("nothing"),
                o.series
            ),
        }
    }
    Ok(())
}

/// docs/kernels.md (the table, the last run, why these checks) and README's copy of the table.
fn write_docs(root: &Path, outcomes: &[report::Outcome]) -> Result<()> {
    let rows: Vec<String> = outcomes.iter().map(report::Outcome::row).collect();
    let table = report::table(&rows);
    let text = include_str!("kernels.md.in")
        .replace("{table}", &table)
        .replace("{details}", &report::details(outcomes));
    fs::write(root.join("docs/kernels.md"), text)?;
    let readme_path = root.join("README.md");
    let readme = fs::read_to_string(&readme_path)?;
    let old = report::block(&readme).context("README.md has no kernel table markers")?;
    fs::write(&readme_path, readme.replace(old, &table))?;
    eprintln!("xtask: vm: wrote docs/kernels.md and README.md's kernel table");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &str) -> String {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        fs::read_to_string(root.join(path)).unwrap()
    }

    #[test]
    fn readme_carries_the_kernel_table_of_docs_kernels_md() {
        let readme = read("README.md");
        let docs = read("docs/kernels.md");
        let (Some(readme), Some(docs)) = (report::block(&readme), report::block(&docs)) else {
            panic!("README.md and docs/kernels.md must both hold the kernel table markers");
        };
        assert_eq!(
            readme, docs,
            "README.md's kernel table differs from docs/kernels.md: run `cargo xtask vm`"
        );
    }

    #[test]
    fn every_kernel_of_the_matrix_has_a_row() {
        let docs = read("docs/kernels.md");
        let block = report::block(&docs).unwrap();
        for k in kernels::KERNELS {
            assert!(
                report::row_of(block, k.series).is_some(),
                "no row for {}",
                k.series
            );
        }
    }
}
