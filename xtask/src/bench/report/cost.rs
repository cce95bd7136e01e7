//! The selection-cost tables: the program's run time per selection, and how busy the workers
//! were meanwhile.

use std::fmt::Write as _;

use super::super::cost::SelectionCost;

pub fn selection_cost(c: &SelectionCost, cores: usize) -> String {
    let base = |slots: u32| {
        c.rows
            .iter()
            .find(|r| r.slots == slots && r.policy == "hash")
            .map_or(f64::NAN, |r| r.ns_per_run)
    };
    let mut md = String::from("\n## Cost of one selection\n\n");
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
