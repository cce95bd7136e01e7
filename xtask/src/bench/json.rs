//! benchmarks.json: everything one run measured, through serde. A part not run in this pass
//! keeps what the benchmarks.json already there holds for it.

use anyhow::Result;
use serde::Serialize;

use super::{
    alternatives::Alternatives, cost::SelectionCost, drift::Drift, many_core::ManyCore,
    output::Output, policies::PolicyRow, scale::Scale, skew::Skew,
};

#[derive(Serialize)]
pub struct Results {
    pub machine: String,
    pub cores: usize,
    pub date: String,
    /// Workers of the distribution, drift and comparison scenarios.
    pub workers: u32,
    // The parts: None for one not run in this pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selection_cost: Option<SelectionCost>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peers: Option<Alternatives>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drift: Option<Drift>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Output>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policies: Option<Vec<PolicyRow>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skew: Option<Skew>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub many_core: Option<ManyCore>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale: Option<Scale>,
}

impl Results {
    /// Pretty-printed, keys in alphabetical order at every level: the order of every earlier
    /// benchmarks.json, so that runs compare line by line.
    /// Over `previous` (the benchmarks.json already there), whose parts this pass did not run
    /// stay as they were.
    pub fn to_json(&self, previous: Option<&str>) -> Result<String> {
        let mut value = previous
            .and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok())
            .filter(serde_json::Value::is_object)
            .unwrap_or_else(|| serde_json::json!({}));
        if let serde_json::Value::Object(new) = serde_json::to_value(self)? {
            let old = value.as_object_mut().expect("filtered");
            old.extend(new);
        }
        Ok(serde_json::to_string_pretty(&value)?)
    }
}
