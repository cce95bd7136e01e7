//! What one kernel's run showed, judged against what that kernel is expected to do, and the
//! table of kernels that docs/kernels.md and README.md's Requirements both carry.
//!
//! The table holds only what a run decides (programs loaded, checks passed, features lacking),
//! never timings or Debian's build numbers, so that the same code on the same kernel series
//! always writes the same rows: the CI leg on 6.1 compares its row with the committed one, and
//! a unit test compares README's copy with docs/kernels.md's, so neither can drift from what
//! was measured.

use std::time::Duration;

use super::{
    boot::Transcript,
    kernels::{Expect, Kernel},
    CORE,
};

pub const BEGIN: &str = "<!-- kernels:table -->";
pub const END: &str = "<!-- /kernels:table -->";

/// One core check's result.
pub struct Test {
    pub bin: String,
    pub name: String,
    pub passed: bool,
    pub seconds: f64,
    /// The end of its output, when it failed.
    pub said: Vec<String>,
    /// Earlier runs that failed before this one, with why (see /init: one retry).
    pub failed_before: Vec<String>,
}

impl Test {
    /// Where and why it panicked: the panic line and the two after it (the message).
    pub fn panic(&self) -> String {
        let at = self.said.iter().position(|l| l.contains("panicked at"));
        let lines = match at {
            Some(i) => &self.said[i..(i + 3).min(self.said.len())],
            None => &self.said[self.said.len().saturating_sub(3)..],
        };
        let text = lines.join(" / ");
        match text.char_indices().nth(600) {
            Some((cut, _)) => format!("{}...", &text[..cut]),
            None => text,
        }
    }
}

pub struct Outcome {
    pub series: String,
    pub package: String,
    pub shipped_by: String,
    pub release: String,
    /// From starting QEMU to /init's first line.
    pub boot: Option<Duration>,
    pub wall: Duration,
    pub check_rc: Option<i32>,
    pub check_said: Vec<String>,
    pub tests: Vec<Test>,
    pub run_rc: Option<i32>,
    pub run_said: Vec<String>,
    /// The end of the verifier's log behind a refusal.
    pub verifier_said: Vec<String>,
    pub finished: bool,
    /// Why the run does not meet its expectation; empty when it does.
    pub failures: Vec<String>,
}

impl Outcome {
    pub fn read(k: &Kernel, package: &str, t: &Transcript) -> Outcome {
        let mut o = Outcome {
            series: k.series.into(),
            package: package.into(),
            shipped_by: k.shipped_by.into(),
            release: String::new(),
            boot: None,
            wall: t.wall,
            check_rc: None,
            check_said: vec![],
            tests: vec![],
            run_rc: None,
            run_said: vec![],
            verifier_said: vec![],
            finished: false,
            failures: vec![],
        };
        let mut said = vec![];
        for (at, line) in &t.lines {
            let (kind, rest) = line.split_once(' ').unwrap_or((line, ""));
            let words: Vec<&str> = rest.split_whitespace().collect();
            match kind {
                "up" => {
                    o.release = words.first().unwrap_or(&"").to_string();
                    o.boot = Some(*at);
                }
                "check-said" => o.check_said.push(rest.to_string()),
                "check" => o.check_rc = words.first().and_then(|w| w.parse().ok()),
                "test-said" => said.push(rest.to_string()),
                "test" if words.len() >= 5 => {
                    let t = Test {
                        bin: words[0].into(),
                        name: words[1].into(),
                        passed: words[2] == "0",
                        seconds: seconds(words[4]) - seconds(words[3]),
                        said: std::mem::take(&mut said),
                        failed_before: vec![],
                    };
                    // A second run of the same check replaces the first, which it remembers.
                    match o.tests.last_mut() {
                        Some(last) if last.bin == t.bin && last.name == t.name && !last.passed => {
                            let mut before = std::mem::take(&mut last.failed_before);
                            before.push(last.panic());
                            *last = Test {
                                failed_before: before,
                                ..t
                            };
                        }
                        _ => o.tests.push(t),
                    }
                }
                "run-said" => o.run_said.push(rest.to_string()),
                "verifier-said" => o.verifier_said.push(rest.to_string()),
                "run" => o.run_rc = words.first().and_then(|w| w.parse().ok()),
                "done" => o.finished = true,
                _ => {}
            }
        }
        o.failures = judge(k.expect, &o, t.timed_out);
        o
    }

    pub fn passed(&self) -> usize {
        self.tests.iter().filter(|t| t.passed).count()
    }

    /// The features `balancer check` found missing: the rows of its table whose third
    /// column (columns are two or more spaces apart) is "NO", as "name (since)".
    pub fn lacks(&self) -> Vec<String> {
        self.check_said
            .iter()
            .filter_map(|l| {
                let cols: Vec<&str> = l
                    .split("  ")
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .collect();
                (cols.len() >= 3 && cols[2] == "NO").then(|| format!("{} ({})", cols[0], cols[1]))
            })
            .collect()
    }

    fn loaded_programs(&self) -> bool {
        self.check_said
            .iter()
            .any(|l| l.contains("loaded and verified"))
    }

    /// This kernel's row of the table.
    pub fn row(&self) -> String {
        let programs = if self.loaded_programs() {
            "all three load and verify"
        } else {
            "refused"
        };
        let checks = if self.tests.is_empty() {
            match self.run_said.last() {
                Some(_) if self.run_rc != Some(0) => {
                    "`balancer check` and `balancer run` refuse, naming what it lacks".to_string()
                }
                _ => "none ran".to_string(),
            }
        } else {
            format!("{}/{} pass", self.passed(), CORE.len())
        };
        let lacks = self.lacks();
        let lacks = if lacks.is_empty() {
            "nothing".to_string()
        } else {
            lacks.join(", ")
        };
        format!(
            "| {} | {} | {programs} | {checks} | {lacks} |",
            self.series, self.shipped_by
        )
    }
}

fn seconds(s: &str) -> f64 {
    s.parse().unwrap_or(0.0)
}

fn judge(expect: Expect, o: &Outcome, timed_out: bool) -> Vec<String> {
    let mut f = vec![];
    if timed_out {
        f.push("the guest did not finish in time (see its console log)".to_string());
    } else if !o.finished {
        f.push("the guest stopped before /init finished (see its console log)".to_string());
    }
    match expect {
        Expect::Runs => {
            if o.check_rc != Some(0) {
                f.push(format!(
                    "`balancer check` failed: {}",
                    o.check_said.join(" / ")
                ));
            }
            for t in o.tests.iter().filter(|t| !t.passed) {
                f.push(format!("{} {} failed: {}", t.bin, t.name, t.panic()));
            }
            if o.check_rc == Some(0) && o.tests.len() != CORE.len() {
                f.push(format!(
                    "{} of {} core checks ran",
                    o.tests.len(),
                    CORE.len()
                ));
            }
        }
        Expect::Refuses { feature, since } => {
            let names = |lines: &[String]| {
                lines.iter().any(|l| {
                    l.contains(feature) && l.contains(&format!("needs Linux {since} or later"))
                })
            };
            if o.check_rc == Some(0) || !names(&o.check_said) {
                f.push(format!(
                    "`balancer check` should refuse naming {feature} and Linux {since}: {}",
                    o.check_said.join(" / ")
                ));
            }
            if o.run_rc == Some(0) || !names(&o.run_said) || o.run_said.len() != 1 {
                f.push(format!(
                    "`balancer run` should refuse in one line naming {feature} and Linux {since}: {}",
                    o.run_said.join(" / ")
                ));
            }
        }
    }
    f
}

/// The table, between its markers, as both files carry it.
pub fn table(rows: &[String]) -> String {
    let mut t = format!(
        "{BEGIN}\n| kernel | shipped by | programs | core checks in a VM | lacks |\n|---|---|---|---|---|\n"
    );
    for r in rows {
        t += r;
        t += "\n";
    }
    t + END
}

/// The table block of a file, markers included, if it has one.
pub fn block(text: &str) -> Option<&str> {
    let start = text.find(BEGIN)?;
    let end = text[start..].find(END)? + start + END.len();
    Some(&text[start..end])
}

/// The row for `series` within a table block.
pub fn row_of<'a>(block: &'a str, series: &str) -> Option<&'a str> {
    let prefix = format!("| {series} |");
    block.lines().find(|l| l.starts_with(&prefix))
}

/// The last run's details, for the end of docs/kernels.md.
pub fn details(outcomes: &[Outcome]) -> String {
    let mut s = String::from(
        "| kernel | Debian package | release | boot | whole run | result |\n|---|---|---|---|---|---|\n",
    );
    for o in outcomes {
        let boot = o
            .boot
            .map_or("-".into(), |b| format!("{:.1} s", b.as_secs_f64()));
        let result = if o.failures.is_empty() {
            "as expected"
        } else {
            "FAILED"
        };
        s += &format!(
            "| {} | {} | {} | {boot} | {:.0} s | {result} |\n",
            o.series,
            o.package,
            o.release,
            o.wall.as_secs_f64()
        );
    }
    for o in outcomes.iter().filter(|o| !o.tests.is_empty()) {
        s += &format!(
            "\nCore checks on {} ({}), seconds each:\n\n",
            o.series, o.release
        );
        s += "| check | result | s |\n|---|---|---|\n";
        for t in &o.tests {
            let r = match (t.passed, t.failed_before.is_empty()) {
                (true, true) => "pass".to_string(),
                (true, false) => format!(
                    "pass on the second run (first: {})",
                    t.failed_before.join("; ").replace('|', "/")
                ),
                (false, _) => "FAIL".to_string(),
            };
            s += &format!("| {} `{}` | {r} | {:.1} |\n", t.bin, t.name, t.seconds);
        }
    }
    for o in outcomes.iter().filter(|o| !o.run_said.is_empty()) {
        s += &format!("\n`balancer run` on {}:\n\n```\n", o.series);
        for l in &o.run_said {
            s += l;
            s += "\n";
        }
        s += "```\n";
        if !o.verifier_said.is_empty() {
            s += "\nBehind it, the end of the verifier's log (`RUST_LOG=debug`):\n\n```\n";
            for l in &o.verifier_said {
                s += l;
                s += "\n";
            }
            s += "```\n";
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::kernels::KERNELS;

    fn transcript(lines: &[&str]) -> Transcript {
        Transcript {
            lines: lines
                .iter()
                .map(|l| (Duration::from_secs(1), l.to_string()))
                .collect(),
            wall: Duration::from_secs(9),
            timed_out: false,
        }
    }

    #[test]
    fn a_refusal_that_names_the_feature_meets_the_old_kernel_s_expectation() {
        let old = KERNELS.iter().find(|k| k.series == "5.10").unwrap();
        let refusal = "balancer: error: this kernel (5.10.0) lacks bpf_loop helper (5.17), \
                       needed for the scan: the balancer needs Linux 5.17 or later; run it on a newer kernel";
        let t = transcript(&[
            "up 5.10.0-43-cloud-amd64 2.9 2",
            "check-said bpf_loop helper                                 5.17   NO    the least-loaded scan",
            &format!("check-said {refusal}"),
            "check 1",
            &format!("run-said {refusal}"),
            "run 1",
            "done 30.1",
        ]);
        let o = Outcome::read(old, "pkg", &t);
        assert!(o.failures.is_empty(), "{:?}", o.failures);
        assert_eq!(o.lacks(), ["bpf_loop helper (5.17)"]);
        assert!(o.row().starts_with("| 5.10 |"), "{}", o.row());
        // The same run without the line naming the version falls short.
        let t = transcript(&[
            "up 5.10.0 2.9 2",
            "check 1",
            "run-said balancer: error: the kernel refused",
            "run 1",
            "done 3",
        ]);
        assert_eq!(Outcome::read(old, "pkg", &t).failures.len(), 2);
    }

    #[test]
    fn a_kernel_that_should_run_fails_on_any_failed_or_missing_check() {
        let k = KERNELS.iter().find(|k| k.series == "6.1").unwrap();
        let t = transcript(&[
            "up 6.1.0 4.6 2",
            "check 0",
            "test steering a 0 1.0 2.0",
            "done 9",
        ]);
        let o = Outcome::read(k, "pkg", &t);
        assert_eq!(o.failures, [format!("1 of {} core checks ran", CORE.len())]);
        let t = transcript(&[
            "up 6.1.0 4.6 2",
            "check 0",
            "test-said boom",
            "test steering a 101 1.0 2.0",
        ]);
        let o = Outcome::read(k, "pkg", &t);
        assert!(
            o.failures
                .iter()
                .any(|f| f.contains("steering a failed: boom")),
            "{:?}",
            o.failures
        );
        assert!(
            o.failures
                .iter()
                .any(|f| f.contains("before /init finished")),
            "{:?}",
            o.failures
        );
    }
}
