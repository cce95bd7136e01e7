//! What the supervisor's own tasks tell its loop: a worker exited, a restart delay ran out, a
//! worker got ready, a control request arrived, a reading of the kernel or a health probe came
//! back. Every room that starts such a task sends one of these; only the [inbox](super::inbox)
//! receives them.

use std::{process::ExitStatus, time::Duration};

use balancer_common::maps::FlowKey;
use tokio::sync::oneshot;

use crate::{control::Request, inspect::Reading};

pub enum Event {
    Exited {
        slot: u32,
        generation: u64,
        status: std::io::Result<ExitStatus>,
    },
    Restart {
        slot: u32,
        generation: u64,
    },
    /// The worker sent READY=1 on its NOTIFY_SOCKET, or its --ready-timeout ran out.
    Ready {
        slot: u32,
        generation: u64,
    },
    Control(Request, oneshot::Sender<String>),
    /// Connections open in each slot's workers, read on a blocking thread.
    Held(Reading),
    /// A health probe's result.
    Probe(Probe),
}

/// What one health probe found.
#[derive(Debug)]
pub struct Probe {
    pub slot: u32,
    pub generation: u64,
    pub key: FlowKey,
    pub ok: bool,
    pub latency: Duration,
    pub detail: String,
}
