//! benchmarks.json: everything one run measured, through serde.

use anyhow::Result;
use serde::Serialize;

use super::{
    alternatives::PeerResult, cost::SelectionCost, drift::Drift, many_core::ManyCore,
    output::Output, policies::PolicyRow, skew::Skew,
};

#[derive(Serialize)]
pub struct Results {
    pub machine: String,
    pub cores: usize,
    pub date: String,
    /// Workers of the distribution, drift and comparison scenarios.
    pub workers: u32,
    pub selection_cost: SelectionCost,
    pub peers: Vec<PeerResult>,
    pub drift: Drift,
    pub output: Output,
    pub policies: Vec<PolicyRow>,
    pub skew: Skew,
    pub many_core: ManyCore,
}

impl Results {
    /// Pretty-printed, keys in alphabetical order at every level: the order of every earlier
    /// benchmarks.json, so that runs compare line by line.
    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(&serde_json::to_value(self)?)?)
    }
}
