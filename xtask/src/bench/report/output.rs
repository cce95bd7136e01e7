//! The worker-output table.

use super::super::output::Output;

pub fn output(o: &Output) -> String {
    let rate = |s: f64| o.lines as f64 / s / 1e6;
    let mut md = String::from("\n## Worker output\n\n");
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
