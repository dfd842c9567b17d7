//! The partition benchmark: does splitting one package's assignment list by policy
//! (`$filter=... and assignmentPolicy/id eq '…'`, one `nextLink` chain per policy, paged
//! side by side) shorten its read, and what does it cost in requests?
//!
//! A tenant of one package whose assignments are spread evenly over `policies` policies
//! is read twice with the simulator's latency model on: once as the single chain
//! Redeliver reads today (`GraphClient::list_assignments`), once as one chain per policy
//! in parallel (`GraphClient::list_policy_assignments`). Both must return the same
//! assignments. One package is the case where a split could matter: with many packages
//! their chains already keep every request slot busy (docs/benchmarks.md).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use redeliver_sim::{LatencyModel, Scenario, SimOptions, Simulator, SyntheticTenant};

/// One way of reading the package.
#[derive(Debug, Clone, Default)]
pub struct ReadFigures {
    /// Entitlement-management requests the simulator answered.
    pub requests: u64,
    /// Wall time of the read.
    pub wall: Duration,
}

/// The two reads of one tenant shape.
#[derive(Debug, Clone, Default)]
pub struct PartitionResult {
    pub assignments: usize,
    pub policies: usize,
    /// The single chain.
    pub single: ReadFigures,
    /// One chain per policy, side by side.
    pub split: ReadFigures,
}

/// Reads a one-package tenant of `assignments` over `policies` policies both ways.
pub async fn run_partition(
    assignments: usize,
    policies: usize,
    latency: LatencyModel,
    concurrency: usize,
) -> anyhow::Result<PartitionResult> {
    let tenant = SyntheticTenant {
        tenant_name: "partition".into(),
        seed: 11,
        assignments,
        groups: 3,
        apps: 0,
        packages: 1,
        min_resources: 3,
        max_resources: 3,
        drift_every: 0,
        policies_per_package: policies,
    };
    let sim = Simulator::start(Scenario::synthetic_tenant(&tenant), SimOptions::default())
        .await
        .context("the simulator did not start")?;
    let name = SyntheticTenant::package_name(0);
    let package = sim
        .package_id(&name)
        .with_context(|| format!("package {name} missing from the simulator"))?;
    let graph = super::client(&sim, concurrency, 3)?;
    let policy_ids: Vec<String> = graph
        .list_policies(&package)
        .await?
        .into_iter()
        .map(|p| p.id)
        .collect();
    ensure!(
        policy_ids.len() == policies.max(1),
        "the package has {} policies, expected {policies}",
        policy_ids.len()
    );
    // A token first, so neither read pays for it.
    graph.list_policies(&package).await?;
    sim.set_latency(latency);

    let em_requests = |sim: &redeliver_sim::SimHandle| {
        sim.usage()
            .by_route
            .iter()
            .filter(|(route, _)| route.contains("/entitlementManagement/"))
            .map(|(_, u)| u.requests)
            .sum::<u64>()
    };

    sim.clear_request_log();
    let started = Instant::now();
    let whole = graph.list_assignments(&package).await?;
    let single = ReadFigures {
        requests: em_requests(&sim),
        wall: started.elapsed(),
    };

    sim.clear_request_log();
    let started = Instant::now();
    let parts = futures::future::try_join_all(
        policy_ids
            .iter()
            .map(|policy| graph.list_policy_assignments(&package, policy)),
    )
    .await?;
    let split = ReadFigures {
        requests: em_requests(&sim),
        wall: started.elapsed(),
    };
    sim.set_latency(LatencyModel::default());

    let ids = |list: &[redeliver::graph::models::Assignment]| -> BTreeSet<String> {
        list.iter().map(|a| a.id.clone()).collect()
    };
    let split_ids: BTreeSet<String> = parts.iter().flat_map(|p| ids(p)).collect();
    ensure!(
        whole.len() == assignments && ids(&whole) == split_ids,
        "the split read returned other assignments ({} whole, {} split)",
        whole.len(),
        split_ids.len()
    );
    Ok(PartitionResult {
        assignments,
        policies,
        single,
        split,
    })
}

/// The results as a Markdown table.
pub fn table(results: &[PartitionResult]) -> String {
    let mut t = String::from(
        "| assignments | policies | single chain: requests / wall | one chain per policy: requests / wall | wall saved |\n|---:|---:|---:|---:|---:|\n",
    );
    for r in results {
        let saved = 1.0 - r.split.wall.as_secs_f64() / r.single.wall.as_secs_f64().max(1e-9);
        let _ = writeln!(
            t,
            "| {} | {} | {} / {:.1} s | {} / {:.1} s | {:.0} % |",
            r.assignments,
            r.policies,
            r.single.requests,
            r.single.wall.as_secs_f64(),
            r.split.requests,
            r.split.wall.as_secs_f64(),
            saved * 100.0
        );
    }
    t
}
