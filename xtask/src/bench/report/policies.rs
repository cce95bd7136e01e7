//! The distribution table: each policy's spread of connections, with and without a busy
//! worker.

use std::fmt::Write as _;

use super::super::policies::PolicyRow;

pub fn policies(rows: &[PolicyRow], workers: u32) -> String {
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
