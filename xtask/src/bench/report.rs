//! benchmarks.md: the results of one run as tables, each with what it measured and how.

use std::fmt::Write as _;

use super::{
    alternatives::{open_loop_rate, PeerResult, NEW_CONN_CLIENTS},
    cost::SelectionCost,
    drift::Drift,
    json::Results,
    many_core::ManyCore,
    policies::PolicyRow,
    skew::{self, Skew},
};

pub fn markdown(r: &Results, quick: bool) -> String {
    let mut flag = String::from(if quick { " --quick" } else { "" });
    if r.workers != super::DEFAULT_WORKERS {
        let _ = write!(flag, " --workers {}", r.workers);
    }
    if r.many_core.forced {
        flag.push_str(" --many-core");
    }
    let mut md = String::new();
    md.push_str("# Benchmarks\n\n");
    md.push_str(&format!(
        "Written by `cargo xtask bench{flag}` on {} (UTC date {}). Machine: {}.\n\n",
        "a machine of the project's CI kind", r.date, r.machine
    ));
    md.push_str(&selection_cost(&r.selection_cost, r.cores));
    md.push_str(&policies(&r.policies, r.workers));
    md.push_str(&drift(&r.drift, r.workers));
    md.push_str(&output(&r.output));
    md.push_str(&peers(&r.peers, r.workers, r.cores));
    md.push_str(&skew_table(&r.skew));
    md.push_str(&many_core(&r.many_core));
    md.push_str("\n![Latency CDF per peer](bench-latency-cdf.png)\n\n![Per-worker distribution](bench-distribution.png)\n");
    md.push_str(&format!(
        "\nReproduce: `cargo xtask bench{flag}` (root; it installs nothing itself: nginx-light, haproxy, \
         node and matplotlib come from `cargo xtask setup`).\n",
    ));
    md
}

fn output(o: &super::output::Output) -> String {
    let rate = |s: f64| o.lines as f64 / s / 1e6;
    let mut md = String::from("## Worker output\n\n");
    md.push_str(&format!(
        "One worker writes {} lines of {} bytes as fast as `yes | head` can: into /dev/null directly \
         (the limit, no supervisor), through a supervisor whose own output goes to /dev/null (a reader \
         that keeps up), and through one whose stdout is a pipe nobody reads (a stalled log shipper). \
         Time from the start signal to the worker's last write; the supervisor captures every line \
         in all cases (`balancer logs` has them), and drops from its own output only what its log \
         thread's queue cannot hold.\n\n",
        o.lines, o.line_bytes
    ));
    md.push_str("| path | seconds | million lines/s | lines dropped from the output |\n|---|---:|---:|---:|\n");
    md.push_str(&format!(
        "| direct to /dev/null (limit) | {:.3} | {:.2} | - |\n",
        o.direct_seconds,
        rate(o.direct_seconds)
    ));
    md.push_str(&format!(
        "| through the supervisor, output read | {:.3} ({:.3} until all captured) | {:.2} | {} |\n",
        o.read_seconds,
        o.read_captured_seconds,
        rate(o.read_captured_seconds),
        o.read_dropped
    ));
    md.push_str(&format!(
        "| through the supervisor, output never read | {:.3} | {:.2} | {} |\n\n",
        o.unread_seconds,
        rate(o.unread_seconds),
        o.unread_dropped
    ));
    md.push_str(&format!(
        "Supervisor CPU per line captured and written out: {:.0} ns.\n\n",
        o.supervisor_ns_per_line
    ));
    md
}

fn selection_cost(c: &SelectionCost, cores: usize) -> String {
    let base = |slots: u32| {
        c.rows
            .iter()
            .find(|r| r.slots == slots && r.policy == "hash")
            .map_or(f64::NAN, |r| r.ns_per_run)
    };
    let mut md = String::from("## Cost of one selection\n\n");
    let _ = write!(
        md,
        "The kernel's own accounting of the program (`kernel.bpf_stats_enabled=1`): run time / run \
         count, built-in workers, a new connection per request from {clients} client threads of the \
         native load generator (closed loop). One balancer per slot count, its policy switched live \
         (`balancer policy`) between measurements: {rounds} rounds, each through every policy in \
         another order, {conns} new connections per policy per round after 100 unmeasured ones; the \
         figures are the medians over the rounds, the range their lowest and highest. `hash` runs \
         the same program, which returns at once: the fixed cost of running a program at all, and \
         the baseline of the ratios. The shared overflow queue is off (`--overflow off`): \
         `least-loaded` is the policy alone. `weighted` runs with slot 0 weighing 3, the others 1. `least-loaded` reads \
         slots from a random start until an idle one (at most 32, a random window beyond 32 \
         slots; the first two in line, the rest through `bpf_loop`). Every selection but \
         `hash`'s calls `bpf_sk_select_reuseport`, its one helper call, and counts the \
         connection in its slot's load (one atomic add); nothing else is written per connection \
         but per-CPU values (no flow record while no worker is crowded). The close tracker runs on every TCP state \
         change on the host and counts a close on the slot the socket inherited from its listener; \
         its column is its total time divided by the connections, both ends of each loopback \
         connection included (a remote client's end would not count). Under `hash` a close is \
         not counted, so the tracker only looks.\n\n",
        clients = c.clients,
        rounds = c.rounds,
        conns = c.connections_per_round,
    );
    md.push_str("| slots | policy | runs | ns per selection (median) | range over the rounds | vs `hash` at the same size | close tracker ns per connection (runs) |\n|---:|---|---:|---:|---:|---:|---:|\n");
    for r in &c.rows {
        let lo = r.ns_per_run_rounds.iter().copied().fold(f64::MAX, f64::min);
        let hi = r.ns_per_run_rounds.iter().copied().fold(f64::MIN, f64::max);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.0} | {:.0}-{:.0} | {:.2}x | {:.0} ({:.1}) |",
            r.slots,
            r.policy,
            r.runs,
            r.ns_per_run,
            lo,
            hi,
            r.ns_per_run / base(r.slots),
            r.tracker_ns_per_connection,
            r.tracker_runs_per_connection
        );
    }
    let _ = write!(
        md,
        "\nHow busy the workers were meanwhile: the load the program read is what these clients \
         make, {clients} connections in flight at most, whatever the slot count (a selection by \
         load among many idle slots is the easy case); a load counts a connection until the close \
         tracker sees it end, so a sample may show a few more. *In flight*: the sum of the \
         slots' loads, sampled every 25 ms (250 ms past 64 slots, whose status is large) while a \
         policy other than `hash`, which records no load, ran; *loaded slots*: how many had any. *Client CPU*: the \
         clients' CPU time per second of wall time (100% is one of the machine's {cores} cores), \
         in brackets its user part (the rest is the kernel's, on loopback both ends').\n\n\
         | slots | new conn/s (median) | in flight, mean (max) | loaded slots, mean | samples | client CPU |\n\
         |---:|---:|---:|---:|---:|---:|\n",
        clients = c.clients,
    );
    for l in &c.load {
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.2} ({}) | {:.2} | {} | {:.0}% ({:.0}%) |",
            l.slots,
            l.connections_per_second,
            l.in_flight_mean,
            l.in_flight_max,
            l.loaded_slots_mean,
            l.samples,
            l.client_cpu * 100.0,
            l.client_user_cpu * 100.0
        );
    }
    md
}

fn policies(rows: &[PolicyRow], workers: u32) -> String {
    let mut md = format!(
        "\n## Distribution by policy\n\n\
         {workers} built-in workers. *Counts*: 2,000 new connections from 4 concurrent clients, each \
         connection from one of 64 client addresses (127.0.3.x), per worker, and their coefficient \
         of variation. *Busy worker*: one worker's event loop is held for 2 s \
         (`/work?ms=2000` on a keep-alive connection) while 32 clients open new connections; the \
         share of those connections sent to the held worker, and how many were served in the \
         1.9 s window (a client stuck behind the held worker opens no more). `weighted` runs with \
         slot 0 weighing 3, the others 1. The shared overflow queue is off (`--overflow off`): \
         the policies alone.\n\n\
         | policy | counts per worker | CV | busy worker's share | connections in the window |\n\
         |---|---|---:|---:|---:|\n",
    );
    for p in rows {
        let _ = writeln!(
            md,
            "| {} | {:?} | {:.3} | {:.3} | {} |",
            p.policy, p.counts, p.cv, p.busy_share, p.during_block
        );
    }
    md
}

fn drift(d: &Drift, workers: u32) -> String {
    let faults: Vec<String> = d
        .faults
        .iter()
        .map(|f| format!("{} ×{}", f.fault, f.count))
        .collect();
    format!(
        "\n## Drift soak\n\n\
         {} built-in workers, least-loaded without the overflow queue, backlog 8; 4 clients opening a new connection per \
         request for {:.0} s while one fault every 1.5 s: {}. Every 100 ms the sum over slots \
         of |load − kernel| is sampled (kernel: the live accept queue plus, at the last \
         reconciliation, the sockets open in the worker and the young handshakes, so a sample \
         can lag by up to one 0.5 s interval; an abandoned handshake counts as held until its \
         first SYN-ACK retransmission, a second after its SYN). Then traffic stops and the loads must return to the truth.\n\n\
         | requests answered | failed | max error | p99 error | corrections | back to the truth after quiescence |\n\
         |---:|---:|---:|---:|---:|---:|\n\
         | {} | {} | {} | {} | {} | {:.0} ms |\n\n\
         Failed: requests in flight on a SIGKILLed worker, and burst clients the kernel left \
         waiting over 20 s on a handshake it dropped under SYN cookies (docs/reliability.md).\n\n",
        workers,
        d.seconds,
        faults.join(", "),
        d.requests,
        d.failed,
        d.max_error,
        d.p99_error,
        d.corrections,
        d.converge_ms
    )
}

fn peers(results: &[PeerResult], workers: u32, cores: usize) -> String {
    let best = |f: fn(&PeerResult) -> f64, max: bool| {
        let values = results.iter().map(f);
        if max {
            values.fold(f64::MIN, f64::max)
        } else {
            values.fold(f64::MAX, f64::min)
        }
    };
    let rate = open_loop_rate(workers);
    let mut md = String::new();
    md.push_str("\n## Against the alternatives\n\n");
    let _ = write!(
        md,
        "{workers} single-threaded built-in workers behind each peer (the Node pair: {workers} \
         Node.js processes of the same server, `/block` busy loops instead of sleeps, a third of \
         the rate). *new conn/s*: the native load generator, {NEW_CONN_CLIENTS} client threads in \
         a closed loop, a new connection per trivial request (`Connection: close`) from 64 \
         loopback addresses; *client CPU*: that generator's own CPU time (user + system, \
         `RUSAGE_THREAD` of each client thread) per second of wall time, 100% being one of the \
         machine's {cores} cores, in brackets its user part. On loopback the kernel mostly does the \
         receiving side's work of a segment in the sender's context, so the client's system time \
         includes part of the server's handshakes and closes, the program's runs among them: the \
         user part is the generator's own work. *keep-alive/s*: 16 \
         clients, one connection each. *layer CPU*: CPU time of the balancing layer (nginx, \
         haproxy, the Node primary, the balancer supervisor; the kernel's time in the program is \
         in the selection-cost table) per second of wall time, during the new-connection run. \
         *p50/p99/p99.9/max*: open loop, a new connection per request at a fixed rate \
         ({rate:.0}/s; {node:.0}/s for Node), 95% 1 ms requests and 5% of 50-200 ms, latency \
         counted from when each request was due. *stuck worker*: one worker held for 2 s mid-run; \
         its share of the connections due in that window, and the run's p99. Ratios in brackets \
         are to the best peer of the column. `balancer` rows run without the shared overflow \
         queue (`--overflow off`), except `+ overflow` (the built-in worker's default; full run \
         only).\n\n",
        node = rate / 3.0,
    );
    md.push_str("| peer | new conn/s | client CPU | keep-alive/s | layer CPU | p50 ms | p99 ms | p99.9 ms | max ms | stuck worker's share | p99 with stuck worker | per-worker counts (CV) |\n");
    md.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    let b_rps = best(|r| r.new_conn_rps, true);
    let b_ka = best(|r| r.keepalive_rps, true);
    let b_p99 = best(|r| r.latency.p99_ms, false);
    for r in results {
        let l = &r.latency;
        let _ = writeln!(
            md,
            "| {} | {:.0} ({:.2}x) | {:.0}% ({:.0}%) | {:.0} ({:.2}x) | {:.0}% | {:.1} | {:.1} ({:.1}x) | {:.1} | {:.1} | {:.3} | {:.1} | {:?} ({:.3}) |",
            r.name,
            r.new_conn_rps,
            r.new_conn_rps / b_rps,
            r.new_conn_client_cpu * 100.0,
            r.new_conn_client_user_cpu * 100.0,
            r.keepalive_rps,
            r.keepalive_rps / b_ka,
            r.layer_cpu * 100.0,
            l.p50_ms,
            l.p99_ms,
            l.p99_ms / b_p99,
            l.p999_ms,
            l.max_ms,
            r.stuck_share,
            r.stuck_p99_ms,
            r.counts,
            r.counts_cv,
        );
    }
    let failed: Vec<String> = results
        .iter()
        .filter(|r| r.new_conn_failed > 0)
        .map(|r| format!("{} {}", r.name, r.new_conn_failed))
        .collect();
    if !failed.is_empty() {
        let _ = writeln!(
            md,
            "\nNew connections refused, reset or not answered with 200 in the new conn/s run: {}.",
            failed.join(", ")
        );
    }
    md
}

fn many_core(m: &ManyCore) -> String {
    let mut md = String::from("\n## Many cores\n\n");
    if let Some(why) = &m.skipped {
        let _ = writeln!(md, "many-core table: {why}");
        return md;
    }
    if m.forced {
        let _ = write!(
            md,
            "Forced on a machine of {} cores (`--many-core`): a check that the scenario runs, not a \
             measurement; from 8 cores up it runs by itself.\n\n",
            m.cores
        );
    }
    let _ = write!(
        md,
        "{} built-in workers, one per core. New connections per second from the native load \
         generator, {} client threads in a closed loop, a new connection per request, {:.0} s per \
         run after 0.2 s unmeasured; {} rounds, each through every row in another order; the \
         median, the ratio to the kernel's hash with no program, and the client's CPU time per \
         second of wall time (100% is one core; in brackets its user part). `balancer` is one instance whose policy is \
         switched live between runs, the overflow queue off; `weighted` has every weight 1.\n\n\
         | peer | new conn/s (median) | rounds | vs no program | client CPU | failed |\n\
         |---|---:|---|---:|---:|---:|\n",
        m.workers, m.clients, m.seconds_per_run, m.rounds
    );
    for r in &m.rows {
        let rounds: Vec<String> = r
            .per_second_rounds
            .iter()
            .map(|v| format!("{v:.0}"))
            .collect();
        let _ = writeln!(
            md,
            "| {} | {:.0} | {} | {:.2}x | {:.0}% ({:.0}%) | {} |",
            r.name,
            r.per_second,
            rounds.join(", "),
            r.vs_no_program,
            r.client_cpu * 100.0,
            r.client_user_cpu * 100.0,
            r.failed
        );
    }
    md
}

fn skew_table(s: &Skew) -> String {
    let mut md = String::from("\n## Skewed request times\n\n");
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
         with the measured service times. Figures are the median over the traces (of two: their \
         mean), in brackets the lowest and highest; *fast p99 vs ideal*: over the ideal's on the \
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
    for why in &s.left_out {
        let _ = writeln!(md, "Left out: {why}.\n");
    }
    let cell = |v: Vec<f64>, digits: usize| {
        let (m, lo, hi) = skew::spread(v);
        format!("{m:.digits$} ({lo:.digits$}-{hi:.digits$})")
    };
    for z in &s.sizes {
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
