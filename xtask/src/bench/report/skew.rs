//! The skewed-request-times tables, one per worker count, and the goal they are checked
//! against.

use std::fmt::Write as _;

use super::super::skew::{self, Skew};

pub fn skew_table(s: &Skew) -> String {
    let mut md = String::from("\n## Skewed request times\n\n");
    md.push_str(&intro(s));
    for why in &s.left_out {
        let _ = writeln!(md, "Left out: {why}.\n");
    }
    for z in &s.sizes {
        md.push_str(&size(z));
    }
    md.push_str(&skew_goal(s));
    md
}

/// The goal the overflow queue is judged by, checked on this run's figures: least-loaded with
/// the queue within 1.5x of the ideal's fast p99 at 4 workers, and never worse than without it.
fn skew_goal(s: &Skew) -> String {
    let mut md = String::from("Against the goal (fast p99, median over the traces):\n\n");
    for z in &s.sizes {
        let (Some(ideal), Some(on), Some(off)) = (
            skew::row(z, skew::IDEAL),
            skew::row(z, skew::OVERFLOW),
            skew::row(z, skew::LEAST_LOADED),
        ) else {
            continue;
        };
        let (vs_ideal, _) = skew::compare(ideal, on);
        let (vs_off, worse) = skew::compare(off, on);
        let target = if z.workers == 4 {
            format!(
                " (goal at 4 workers: within 1.5x, {})",
                if vs_ideal <= 1.5 { "met" } else { "not met" }
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            md,
            "- {} workers: least-loaded + overflow {vs_ideal:.2}x the ideal{target}; {vs_off:.2}x \
             least-loaded without it, worse in {worse} of {} traces.",
            z.workers,
            on.runs.len()
        );
    }
    md
}

/// What the tables measure and how.
fn intro(s: &Skew) -> String {
    let mut md = String::new();
    let node = s
        .sizes
        .iter()
        .flat_map(|z| &z.rows)
        .any(|r| r.key == "node-cluster");
    let _ = write!(
        md,
        "Single-threaded built-in workers, a new connection per request, Poisson arrivals: {slow:.0}% \
         of the requests hold their worker {hold} ms (`{slow_path}`), the others are fast \
         (`{fast_path}`). Service times, measured first on this machine, one request at a time on \
         one worker, from connect to last byte (median of 200, and of 5): {fast_ms:.2} ms and \
         {slow_ms:.1} ms; the rate of each worker count is {util:.0}% of what its workers can serve \
         with them. A trace is a pre-generated list of arrival times and kinds (seeds 1 to \
         {traces}), at least {min_req:.0} requests and {min_s} s long, replayed identically to \
         every peer: each request is sent when due by whichever client thread is free, and its \
         latency counts from when it was due. The peers run one at a time, each trace through them \
         in another order. *ideal*: the same traces through a simulation of N servers with one \
         first-come-first-served queue and no overhead (no request waits while a server is free), \
         with the measured service times. Figures are the median over the traces (of an even \
         count: the mean of the middle two), in brackets the lowest and highest; *fast p99 vs ideal*: over the ideal's on the \
         same trace. *overflowed*: connections the program sent to the overflow queue, of all. \
         *failed*: refused, reset or not answered with 200; *sent late*: sent over 5 ms after due \
         (the client fell behind), both summed over the traces.{node_note}\n\n",
        slow = s.slow_share * 100.0,
        hold = s.slow_hold_ms,
        slow_ms = s.slow_service_ms,
        slow_path = s.slow_path,
        fast_path = s.fast_path,
        fast_ms = s.fast_service_ms,
        util = s.utilisation * 100.0,
        traces = s.traces,
        min_req = s.min_requests_per_trace,
        min_s = s.min_seconds_per_trace,
        node_note = if node {
            " *node cluster*: examples/node/cluster.js, the holds by a synchronous wait \
             (`/block?ms=N&sleep=1`), with Node's own per-request cost on top of the same ideal."
        } else {
            ""
        },
    );
    md
}

/// One worker count's table.
fn size(z: &skew::SkewSize) -> String {
    let mut md = String::new();
    let cell = |v: Vec<f64>, digits: usize| {
        let (m, lo, hi) = skew::spread(v);
        format!("{m:.digits$} ({lo:.digits$}-{hi:.digits$})")
    };
    let _ = write!(
        md,
        "### {} workers: {:.0} requests/s, {} traces of {:.1} s\n\n\
         | peer | fast p50 ms | fast p99 ms | fast p99.9 ms | slow p50 ms | slow p99 ms | fast p99 vs ideal | overflowed | failed | sent late |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        z.workers,
        z.rate,
        z.seeds.len(),
        z.seconds_per_trace
    );
    for r in &z.rows {
        let of = |f: fn(&skew::TraceRun) -> f64| r.runs.iter().map(f).collect::<Vec<_>>();
        let overflowed = if r.runs.iter().all(|x| x.overflowed.is_none()) {
            "-".to_string()
        } else {
            let sent: u64 = r.runs.iter().filter_map(|x| x.overflowed).sum();
            let all: usize = r.runs.iter().map(|x| x.requests).sum();
            format!("{:.1}%", sent as f64 * 100.0 / all.max(1) as f64)
        };
        let (failed, late) = if r.key == skew::IDEAL {
            ("-".to_string(), "-".to_string())
        } else {
            (
                r.runs.iter().map(|x| x.failed).sum::<usize>().to_string(),
                r.runs
                    .iter()
                    .map(|x| x.sent_late)
                    .sum::<usize>()
                    .to_string(),
            )
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {}x | {overflowed} | {failed} | {late} |",
            r.name,
            cell(of(|x| x.fast_p50_ms), 1),
            cell(of(|x| x.fast_p99_ms), 1),
            cell(of(|x| x.fast_p999_ms), 1),
            cell(of(|x| x.slow_p50_ms), 1),
            cell(of(|x| x.slow_p99_ms), 1),
            cell(of(|x| x.fast_p99_vs_ideal), 2),
        );
    }
    md.push('\n');
    md
}
