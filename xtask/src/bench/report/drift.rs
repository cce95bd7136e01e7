//! The drift soak's table.

use super::super::drift::Drift;

pub fn drift(d: &Drift, workers: u32) -> String {
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
