//! The ordered stop: the program refuses new connections, every worker gets SIGTERM and serves
//! what is already queued for it, and whatever still runs after `--kill-timeout` (or a second
//! Ctrl-C) gets SIGKILL.

use std::time::Duration;

use balancer_common::SlotState;
use nix::sys::signal::Signal;

use super::error::one_line;
use super::{Inbox, Next, Phase, Supervisor};

impl Supervisor {
    /// Marks every slot down, sends SIGTERM, waits up to the kill timeout (a second Ctrl-C cuts
    /// it short), then SIGKILLs the rest. Returns whether every worker stopped by itself.
    pub(super) async fn stop_with(&mut self, inbox: &mut Inbox) -> bool {
        self.phase = Phase::Stopping;
        for i in 0..self.slots.len() as u32 {
            self.steering.set_state(i, SlotState::Down);
        }
        // New connections are refused from here on; handshakes already under way complete
        // into the queues within a round trip, which the pause covers, and the workers then
        // serve everything queued before they exit.
        if let Err(e) = self.steering.refuse_new() {
            log::warn!("{}", one_line(&e));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The overflow queue is no worker's own, and a worker on SIGTERM serves only its own
        // queue: close it for every holder at once, which makes the kernel move what it holds
        // to the workers' queues (the program's migrate path) before they are told to stop.
        if let Some(overflow) = &self.overflow {
            if let Err(e) = overflow.stop_listening() {
                log::warn!("cannot close the overflow queue: {e}");
            }
        }
        self.signal_all(Signal::SIGTERM);
        let deadline = tokio::time::sleep(self.opts.kill_timeout);
        tokio::pin!(deadline);
        let mut clean = true;
        while self.running() > 0 {
            tokio::select! {
                input = inbox.next() => {
                    if let Next::KillNow = self.handle(input) {
                        if clean {
                            log::warn!("second interrupt: SIGKILL");
                            self.signal_all(Signal::SIGKILL);
                            clean = false;
                        }
                    }
                }
                _ = &mut deadline, if clean => {
                    log::warn!("{} workers still running after {:?}: SIGKILL", self.running(), self.opts.kill_timeout);
                    self.signal_all(Signal::SIGKILL);
                    clean = false;
                }
            }
        }
        let _ = std::fs::remove_file(&self.opts.control);
        log::info!("stopped");
        clean
    }

    /// Sends `sig` to every worker, retiring ones (a reload or scale cut short) included.
    pub(super) fn signal_all(&self, sig: Signal) {
        for pid in self.slots.iter().flat_map(|s| s.worker.pids()) {
            if sig == Signal::SIGTERM {
                self.messaging.hang_up(pid);
            }
            let _ = nix::sys::signal::kill(pid, sig);
        }
    }

    pub(super) fn running(&self) -> usize {
        self.slots.iter().map(|s| s.worker.running()).sum()
    }
}
