//! The supervisor's pure decisions: each takes what was observed and says what to do, touches
//! no socket, process or file, and is unit-tested on the host without a kernel. The
//! [supervisor](crate::supervisor) observes, asks a rule, and acts on the answer.
//!
//! - [`accounting`]: the load books, and when a reading of the kernel corrects them.
//! - [`pacing`]: how often the kernel is read for the books, within a share of a core.
//! - [`backoff`]: when to restart a worker that exited, and when to stop trying.
//! - [`stall`]: telling a stalled worker from a busy one.
//! - [`health`]: what a run of health probe answers means for a worker.
//! - [`recycling`]: when a worker is due for replacement, and its request budget.
//! - [`maglev`]: the `sticky` policy's table, by Maglev consistent hashing.

pub mod accounting;
pub mod backoff;
pub mod health;
pub mod maglev;
pub mod pacing;
pub mod recycling;
pub mod stall;
