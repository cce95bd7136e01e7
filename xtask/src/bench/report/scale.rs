//! The scale tables: new connections per second by worker count, and the supervisor's CPU with
//! idle connections held open.

use std::fmt::Write as _;

use super::super::scale::Scale;

pub fn scale(s: &Scale) -> String {
    let mut md = String::from("\n## Scale\n\n");
    let _ = write!(
        md,
        "### Workers\n\n\
         New connections per second (the native load generator, 32 client threads in a closed \
         loop, `Connection: close`) of the default `balancer run` (least-loaded with the shared \
         overflow queue) and of plain SO_REUSEPORT (the same built-in workers on listeners with \
         no program), {rounds} round(s) of {secs:.0} s each, the order swapped every round; the \
         medians, their ratio, and the default's supervisor CPU meanwhile (100% is one core).\n\n\
         | workers | default new conn/s | plain new conn/s | default vs plain | supervisor CPU |\n\
         |---:|---:|---:|---:|---:|\n",
        rounds = s.rounds,
        secs = s.seconds_per_run,
    );
    for r in &s.workers {
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.0} | {:.2}x | {:.1}% |",
            r.workers,
            r.default_per_second,
            r.plain_per_second,
            r.ratio,
            r.supervisor_cpu * 100.0
        );
    }
    let _ = write!(
        md,
        "\n### Idle connections\n\n\
         One default balancer of {w} workers; idle keep-alive connections held open to it (each \
         from one of 16 loopback addresses, one request answered, then silent), more at each \
         step. The supervisor's reconciliation ticks every {ri} s; a reading walks every socket \
         of the port through /proc and sock_diag, and is taken when something moved since the \
         last one, its CPU paid from a budget of 0.5% of a core over five minutes. \
         *Supervisor CPU, quiet*: its utime + stime (/proc/PID/stat) over {window:.0} s with \
         nothing else happening, as a share of one core; then new connections for {secs:.0} s \
         with the idle ones held, and its CPU meanwhile. *Readings*: the reconciliation's \
         readings in each stretch and their own CPU (`status`), as a share of one core. The \
         bar: under 1% of a core at 100k.\n\n\
         | idle connections | supervisor CPU, quiet | readings, quiet | new conn/s | supervisor CPU, under new connections | readings, under new connections | failed |\n\
         |---:|---:|---:|---:|---:|---:|---:|\n",
        w = s.idle_workers,
        ri = s.reconcile_interval_s,
        window = s.window_seconds,
        secs = s.seconds_per_run,
    );
    for r in &s.idle {
        let _ = writeln!(
            md,
            "| {} | {:.2}% | {} ({:.2}%) | {:.0} | {:.2}% | {} ({:.2}%) | {} |",
            r.connections,
            r.supervisor_cpu_quiet * 100.0,
            r.readings_quiet,
            r.reconcile_cpu_quiet * 100.0,
            r.new_conn_per_second,
            r.supervisor_cpu_busy * 100.0,
            r.readings_busy,
            r.reconcile_cpu_busy * 100.0,
            r.failed
        );
    }
    md
}
