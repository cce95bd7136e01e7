//! The taker tracker (a BTF tracepoint on `tcp_rcv_space_adjust`) and `WORKERS`, the worker
//! processes it recognises: together they move an overflow connection's count to the worker
//! that takes it (see the program's `takes.rs`).

use anyhow::{Context as _, Result};
use aya::programs::BtfTracePoint;
use balancer_common::maps as names;

use super::Steering;

impl Steering {
    /// Attaches the taker tracker (loaded with the other programs).
    pub(super) fn track_takes(&mut self) -> Result<()> {
        let program: &mut BtfTracePoint = self
            .bpf
            .program_mut(names::TAKES_PROGRAM)
            .context("the object file has no taker tracker")?
            .try_into()?;
        program.attach().with_context(|| {
            format!(
                "cannot attach the taker tracker to the {} tracepoint",
                names::TAKES_TRACEPOINT
            )
        })?;
        Ok(())
    }

    /// Tells the taker tracker that process `pid` is `slot`'s worker.
    pub fn worker_started(&mut self, pid: u32, slot: u32) {
        if let Err(e) = self.workers.insert(pid, slot, 0) {
            log::warn!("cannot record worker {pid} of slot {slot} (WORKERS): {e}");
        }
    }

    /// Forgets worker `pid` (it exited).
    pub fn worker_exited(&mut self, pid: u32) {
        let _ = self.workers.remove(&pid);
    }
}
