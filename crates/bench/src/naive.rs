//! The naive per-user strategy the benchmark compares against: for every assignment,
//! look the assignment up, then ask `checkMemberGroups` whether the user is in each group
//! the package promises (4 RU per call, up to 20 groups). App roles have no per-user
//! check in this strategy (as in the scripts it stands for), so app-role drift is not
//! seen by it.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Deserialize;

use redeliver::graph::error::GraphError;
use redeliver::graph::{GraphClient, GraphRequest, RetryMode};

/// One assignment for the naive checker.
#[derive(Debug, Clone)]
pub struct NaiveItem {
    /// Caller's index (returned for drifted items).
    pub index: usize,
    /// Access package id.
    pub package_id: String,
    /// Target user object id.
    pub user_id: String,
    /// Group ids the package promises (at most 20 per call; more are split).
    pub group_ids: Vec<String>,
}

/// What a naive pass found.
#[derive(Debug, Clone, Default)]
pub struct NaiveOutcome {
    /// Assignments checked.
    pub checked: usize,
    /// Indices of assignments with a missing group.
    pub drifted: BTreeSet<usize>,
    /// Assignments that could not be checked (Graph errors after retries).
    pub errors: usize,
    /// First error seen, for the report.
    pub first_error: Option<String>,
    /// Wall time of the pass.
    pub wall: Duration,
}

#[derive(Deserialize)]
struct StringCollection {
    value: Vec<String>,
}

/// Checks every item with `concurrency` in flight.
pub async fn run(graph: &GraphClient, items: Vec<NaiveItem>, concurrency: usize) -> NaiveOutcome {
    let started = Instant::now();
    let results: Vec<(usize, Result<bool, GraphError>)> = futures::stream::iter(items)
        .map(|item| async move { (item.index, check_one(graph, &item).await) })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut out = NaiveOutcome {
        checked: results.len(),
        ..NaiveOutcome::default()
    };
    for (index, result) in results {
        match result {
            Ok(true) => {
                out.drifted.insert(index);
            }
            Ok(false) => {}
            Err(e) => {
                out.errors += 1;
                out.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    out.wall = started.elapsed();
    out
}

/// True when the user misses one of the groups.
async fn check_one(graph: &GraphClient, item: &NaiveItem) -> Result<bool, GraphError> {
    let assignments = graph
        .find_assignments(&item.package_id, &item.user_id)
        .await?;
    if assignments.is_empty() {
        return Ok(false);
    }
    for chunk in item.group_ids.chunks(20) {
        const OP: &str = "check_member_groups";
        let path = format!("/users/{}/checkMemberGroups", item.user_id);
        let url = graph.url(OP, &path, &[])?;
        let body = serde_json::json!({ "groupIds": chunk });
        let resp = graph
            .send(GraphRequest::post(
                OP,
                url,
                Some(body),
                RetryMode::Idempotent,
            ))
            .await?;
        let found: StringCollection =
            serde_json::from_slice(&resp.body).map_err(|e| GraphError::Decode {
                operation: OP,
                message: e.to_string(),
                request_id: resp.request_id.clone(),
            })?;
        let found: BTreeSet<String> = found
            .value
            .into_iter()
            .map(|g| g.to_ascii_lowercase())
            .collect();
        if chunk
            .iter()
            .any(|g| !found.contains(&g.to_ascii_lowercase()))
        {
            return Ok(true);
        }
    }
    Ok(false)
}
