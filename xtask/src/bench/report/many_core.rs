//! The many-core table.

use std::fmt::Write as _;

use super::super::many_core::ManyCore;

pub fn many_core(m: &ManyCore) -> String {
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
         run after 0.2 s unmeasured; rounds: {}, each through every row in another order; the \
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
