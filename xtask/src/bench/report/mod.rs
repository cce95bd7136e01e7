//! benchmarks.md: the results of one run as tables, each with what it measured and how, one
//! section per [`Part`]. A part not run in this pass (`--only`) keeps its section of the
//! benchmarks.md already there, or says that it was not run.

mod alternatives;
mod cost;
mod drift;
mod many_core;
mod output;
mod policies;
mod scale;
mod skew;

use std::fmt::Write as _;

use super::{json::Results, Options, Part};

/// Where the sections end: the plots and the closing line, which every pass writes.
const TRAILER: &str = "\n![Latency CDF per peer]";

pub fn markdown(r: &Results, opts: &Options, previous: Option<&str>) -> String {
    let mut flag = String::from(if opts.quick { " --quick" } else { "" });
    if r.workers != super::DEFAULT_WORKERS {
        let _ = write!(flag, " --workers {}", r.workers);
    }
    if opts.many_core {
        flag.push_str(" --many-core");
    }
    let mut only = String::new();
    if !opts.only.is_empty() {
        let names: Vec<String> = opts.only.iter().map(|p| part_name(*p)).collect();
        let _ = write!(flag, " --only {}", names.join(","));
        only.push_str(
            " Only the sections of the parts named were measured in this pass: the others are \
             those of an earlier run.",
        );
    }
    let mut md = format!(
        "# Benchmarks\n\nWritten by `cargo xtask bench{flag}` on a machine of the project's CI \
         kind (UTC date {}). Machine: {}.{only}\n",
        r.date, r.machine
    );
    let sections: [(&str, Option<String>); 8] = [
        (
            "Cost of one selection",
            r.selection_cost
                .as_ref()
                .map(|c| cost::selection_cost(c, r.cores)),
        ),
        (
            "Distribution by policy",
            r.policies
                .as_ref()
                .map(|p| policies::policies(p, r.workers)),
        ),
        (
            "Drift soak",
            r.drift.as_ref().map(|d| drift::drift(d, r.workers)),
        ),
        ("Worker output", r.output.as_ref().map(output::output)),
        (
            "Against the alternatives",
            r.peers
                .as_ref()
                .map(|a| alternatives::alternatives(a, r.workers, r.cores)),
        ),
        (
            "Skewed request times",
            r.skew.as_ref().map(skew::skew_table),
        ),
        ("Many cores", r.many_core.as_ref().map(many_core::many_core)),
        ("Scale", r.scale.as_ref().map(scale::scale)),
    ];
    for (title, body) in sections {
        let body = body.unwrap_or_else(|| kept(previous, title));
        md.push_str(body.trim_end());
        md.push('\n');
    }
    md.push_str(TRAILER);
    md.push_str("(bench-latency-cdf.png)\n\n![Per-worker distribution](bench-distribution.png)\n");
    let _ = write!(
        md,
        "\nReproduce: `cargo xtask bench{flag}` (root; it installs nothing itself: nginx-light, \
         haproxy, wrk, node and matplotlib come from `cargo xtask setup`).\n",
    );
    md
}

fn part_name(p: Part) -> String {
    use clap::ValueEnum as _;
    p.to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default()
}

/// The section `title` of the previous benchmarks.md: from its heading to the next section's
/// (or to the plots); where there is none, a heading that says it was not run.
fn kept(previous: Option<&str>, title: &str) -> String {
    let heading = format!("\n## {title}\n");
    let found = previous.and_then(|p| {
        let start = p.find(&heading)?;
        let rest = &p[start + 1..];
        let end = [rest.find("\n## "), rest.find(TRAILER)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(rest.len());
        Some(format!("\n{}", &rest[..end]))
    });
    found.unwrap_or_else(|| format!("{heading}\nNot run in this pass (`--only`).\n"))
}
