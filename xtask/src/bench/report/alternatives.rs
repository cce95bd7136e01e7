//! The tables of `balancer` against the alternatives: throughput side by side (medians over
//! interleaved rounds, ratios to plain SO_REUSEPORT, what every process used), then latency,
//! then the native client next to wrk.

use std::fmt::Write as _;

use super::super::alternatives::{
    open_loop_rate, Alternatives, PeerResult, Summary, KEEPALIVE_CLIENTS, NEW_CONN_CLIENTS,
};

pub fn alternatives(a: &Alternatives, workers: u32, cores: usize) -> String {
    let mut md = String::from("\n## Against the alternatives\n\n");
    let _ = write!(
        md,
        "{workers} single-threaded built-in workers behind each peer (the Node pair: {workers} \
         Node.js processes of the same server). Every peer is started first and stays up, idle \
         while another is measured; then {rounds} rounds, each through every peer once in another \
         order (the order rotates by one each round), of {secs:.0} s of each kind: *new conn/s*, \
         the native load generator, {NEW_CONN_CLIENTS} client threads in a closed loop, a new \
         connection per trivial request (`Connection: close`) from 64 loopback addresses; \
         *keep-alive/s*, {KEEPALIVE_CLIENTS} clients, one connection each. Figures are the \
         median over the rounds, in brackets the lowest and highest; *vs plain*: over plain \
         SO_REUSEPORT's median (the same workers on SO_REUSEPORT listeners with no program: the \
         kernel's hash); *paired*: the median of the peer's rate over plain's in the same round, \
         lowest and highest after it (a round's two runs are seconds apart, so what drifts over \
         minutes falls on both). *CPU*: CPU time (utime + stime from /proc/PID/stat) per second of wall \
         time, 100% being one of the machine's {cores} cores: *layer* is the balancing layer \
         (the balancer supervisor, nginx, haproxy, the Node primary), *workers* the workers, \
         *client* the load generator (getrusage). On loopback the kernel mostly does the \
         receiving side's work of a segment in the sender's context, so the client's system time \
         includes part of the server's handshakes and closes, the program's runs among them; the \
         kernel's time in the program is in the selection-cost table. *switches/req*: context \
         switches (voluntary + involuntary, /proc/PID/task/*/status, getrusage for the client) \
         of every process of the peer and of the client, per request. `balancer` rows run \
         without the shared overflow queue (`--overflow off`) except `+ overflow`, the built-in \
         worker's default (`balancer run` with no options).\n\n",
        rounds = a.rounds,
        secs = a.seconds_per_run,
    );
    md.push_str(&throughput(
        "New connections (`Connection: close`)",
        &a.peers,
        |r| &r.new_conn,
    ));
    md.push_str(&throughput("Keep-alive requests", &a.peers, |r| {
        &r.keepalive
    }));
    md.push_str(&latency(&a.peers, workers));
    let c = &a.client_check;
    let _ = write!(
        md,
        "\nThe client is not the limit: against plain SO_REUSEPORT, back to back, the native \
         client made {:.0} new conn/s and wrk ({NEW_CONN_CLIENTS} connections, \
         `-H 'Connection: close'`) {:.0}; keep-alive, the native client {:.0}/s and wrk \
         ({KEEPALIVE_CLIENTS} connections) {:.0}/s.\n",
        c.native_new_conn, c.wrk_new_conn, c.native_keepalive, c.wrk_keepalive
    );
    let failed: Vec<String> = a
        .peers
        .iter()
        .filter(|r| r.new_conn.failed > 0)
        .map(|r| format!("{} {}", r.name, r.new_conn.failed))
        .collect();
    if !failed.is_empty() {
        let _ = writeln!(
            md,
            "\nNew connections refused, reset or not answered with 200 in the new conn/s runs: {}.",
            failed.join(", ")
        );
    }
    md
}

fn throughput(title: &str, peers: &[PeerResult], of: fn(&PeerResult) -> &Summary) -> String {
    let mut md = format!(
        "### {title}\n\n\
         | peer | per second (median) | range | vs plain | paired (range) | layer CPU | workers CPU | client CPU (user) | switches/req |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for r in peers {
        let s = of(r);
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.0}-{:.0} | {:.2}x | {:.2}x ({:.2}-{:.2}) | {:.0}% | {:.0}% | {:.0}% ({:.0}%) | {:.1} |",
            r.name,
            s.per_second,
            s.low,
            s.high,
            s.vs_plain,
            s.vs_plain_paired,
            s.paired_low,
            s.paired_high,
            s.layer_cpu * 100.0,
            s.workers_cpu * 100.0,
            s.client_cpu * 100.0,
            s.client_user_cpu * 100.0,
            s.switches_per_request,
        );
    }
    md.push('\n');
    md
}

fn latency(peers: &[PeerResult], workers: u32) -> String {
    let rate = open_loop_rate(workers);
    let best_p99 = peers
        .iter()
        .map(|r| r.latency.p99_ms)
        .fold(f64::MAX, f64::min);
    let mut md = format!(
        "### Latency\n\n\
         Once per peer, after the rounds. *p50/p99/p99.9/max*: open loop, a new connection per \
         request at a fixed rate ({rate:.0}/s; {node:.0}/s for Node, whose `/block` busy-loops \
         instead of sleeping), 95% 1 ms requests and 5% of 50-200 ms, latency counted from when \
         each request was due; the p99's ratio in brackets is to the best peer's. *stuck \
         worker*: one worker held for 2 s mid-run; its share of the connections due in that \
         window, and the run's p99. *per-worker counts*: the new-connection rounds' connections \
         per worker, and their coefficient of variation.\n\n\
         | peer | p50 ms | p99 ms | p99.9 ms | max ms | stuck worker's share | p99 with stuck worker | per-worker counts (CV) |\n\
         |---|---:|---:|---:|---:|---:|---:|---|\n",
        node = rate / 3.0,
    );
    for r in peers {
        let l = &r.latency;
        let _ = writeln!(
            md,
            "| {} | {:.1} | {:.1} ({:.1}x) | {:.1} | {:.1} | {:.3} | {:.1} | {:?} ({:.3}) |",
            r.name,
            l.p50_ms,
            l.p99_ms,
            l.p99_ms / best_p99,
            l.p999_ms,
            l.max_ms,
            r.stuck_share,
            r.stuck_p99_ms,
            r.counts,
            r.counts_cv,
        );
    }
    md
}
