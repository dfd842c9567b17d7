//! Graph reads for the controller, shared across objects within a bounded window.
//!
//! Resolution and package reads go through [`crate::observe::Observer`] (the same code and
//! messages as `redeliver audit`). A long-running controller adds what a one-shot audit does
//! not need: an age bound. The observer is replaced once it is older than `max_age`, and
//! each resource's membership is cached for at most `max_age` across all objects — one paged
//! read per *resource* per window, never one per user. After the controller writes to Graph
//! for a package, the observer and that package's memberships are dropped so the next pass
//! sees the effect.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::OnceCell;

use crate::engine::{
    PromisedResource, ReadData, ResolveFailure, ResourceRead, Snapshot, reads_needed,
};
use crate::graph::models::AssignmentRequest;
use crate::graph::{GraphClient, GraphError};
use crate::observe::{ObserveError, Observer, PackageView, snapshot_of};

/// Splits an observation result into "retry later" (`Err`) and "report on the object"
/// (`Ok(Err(failure))`).
pub fn split<T>(result: Result<T, ObserveError>) -> Result<Result<T, ResolveFailure>, GraphError> {
    match result {
        Ok(v) => Ok(Ok(v)),
        Err(ObserveError::Resolve(f)) => Ok(Err(f)),
        Err(ObserveError::Graph(e)) => Err(e),
    }
}

/// One cached read: when it was started, and its result once there is one. Concurrent
/// reconciles that need the same resource wait for the one read in flight (single
/// flight); a failed read leaves the cell empty, so the next caller tries again.
type Cell = (Instant, Arc<OnceCell<ReadData>>);

/// The controller's Graph read cache. Shared by every reconcile.
pub struct Observations {
    graph: GraphClient,
    max_age: Duration,
    concurrency: usize,
    current: Mutex<(Instant, Arc<Observer>)>,
    /// One observer per package for its view, so that a write to one package renews only
    /// that package's view (one renewal for all of them cost ~15 view reads per reprocess).
    views: Mutex<HashMap<String, (Instant, Arc<Observer>)>>,
    reads: Mutex<HashMap<ResourceRead, Cell>>,
}

impl Observations {
    /// A cache whose entries live at most `max_age`; `concurrency` bounds membership reads
    /// in flight for one snapshot.
    pub fn new(graph: GraphClient, max_age: Duration, concurrency: usize) -> Self {
        let concurrency = concurrency.max(1);
        Self {
            current: Mutex::new((
                Instant::now(),
                Arc::new(Observer::new(graph.clone(), concurrency)),
            )),
            graph,
            max_age,
            concurrency,
            views: Mutex::new(HashMap::new()),
            reads: Mutex::new(HashMap::new()),
        }
    }

    /// The Graph client, for acting on a plan and for reads that must be fresh.
    pub fn graph(&self) -> &GraphClient {
        &self.graph
    }

    /// The observer of the current window (a fresh one once the previous is `max_age` old).
    pub fn observer(&self) -> Arc<Observer> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.0.elapsed() >= self.max_age {
            *current = (
                Instant::now(),
                Arc::new(Observer::new(self.graph.clone(), self.concurrency)),
            );
        }
        current.1.clone()
    }

    /// The observer holding one package's reads in its current window.
    fn package_observer(&self, package_id: &str) -> Arc<Observer> {
        let mut views = self.views.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = || {
            (
                Instant::now(),
                Arc::new(Observer::new(self.graph.clone(), self.concurrency)),
            )
        };
        let entry = views
            .entry(package_id.to_ascii_lowercase())
            .or_insert_with(fresh);
        if entry.0.elapsed() >= self.max_age {
            *entry = fresh();
        }
        entry.1.clone()
    }

    /// The package's view (policies, assignments), read at most once per `max_age` and
    /// shared by every object of the package.
    pub async fn package_view(&self, package_id: &str) -> Result<Arc<PackageView>, ObserveError> {
        self.package_observer(package_id)
            .package_view(package_id)
            .await
    }

    /// The package's assignment requests, read only when an object needs them, at most
    /// once per `max_age`, and renewed with the view after a write to the package.
    pub async fn package_requests(
        &self,
        package_id: &str,
    ) -> Result<Arc<[AssignmentRequest]>, ObserveError> {
        self.package_observer(package_id)
            .package_requests(package_id)
            .await
    }

    /// Forgets what a write to a package may have changed: its view (assignments,
    /// requests) and the memberships of the resources it promises. Other packages' views
    /// are kept.
    pub fn invalidate_package(&self, package_id: &str, resources: &[PromisedResource]) {
        self.views
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&package_id.to_ascii_lowercase());
        self.invalidate_memberships(resources);
    }

    /// Forgets the cached memberships of `resources` (e.g. after group delta reported a
    /// removal).
    pub fn invalidate_memberships(&self, resources: &[PromisedResource]) {
        let reads = reads_needed(resources);
        self.reads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| !reads.contains(k));
    }

    /// Like [`Observations::snapshot`], but every membership is read now (and the fresh
    /// copy replaces the cached one for the other objects).
    pub async fn snapshot_fresh(&self, resources: &[PromisedResource]) -> Snapshot {
        self.invalidate_memberships(resources);
        self.snapshot(resources).await
    }

    /// The cell for `read` in the current window (a new, empty one once it is `max_age`
    /// old).
    fn cell(&self, read: &ResourceRead) -> Arc<OnceCell<ReadData>> {
        let mut reads = self.reads.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, cell)) = reads.get(read)
            && at.elapsed() < self.max_age
        {
            return cell.clone();
        }
        // Bound memory: expired entries go whenever a new one is made.
        let max_age = self.max_age;
        reads.retain(|_, (at, _)| at.elapsed() < max_age);
        let cell = Arc::new(OnceCell::new());
        reads.insert(read.clone(), (Instant::now(), cell.clone()));
        cell
    }

    /// The memberships of every verifiable resource in `resources`: each read once per
    /// window and shared by every object (the same data, not a copy), concurrent
    /// reconciles waiting for the read already in flight. A failed read is recorded as
    /// such (never cached), so the engine reports `Unknown` instead of guessing.
    pub async fn snapshot(&self, resources: &[PromisedResource]) -> Snapshot {
        let observer = self.observer();
        let results: Vec<(ResourceRead, Result<ReadData, GraphError>)> =
            futures::stream::iter(reads_needed(resources))
                .map(|read| {
                    let cell = self.cell(&read);
                    let observer = observer.clone();
                    async move {
                        let result = cell
                            .get_or_try_init(|| observer.read_resource(&read))
                            .await
                            .cloned();
                        (read, result)
                    }
                })
                .buffer_unordered(self.concurrency)
                .collect()
                .await;
        snapshot_of(results)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write to one package renews that package's view only.
    #[tokio::test]
    async fn invalidating_a_package_renews_only_its_view() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let sim = crate::sim::Simulator::start(
            crate::sim::Scenario::demo(),
            crate::sim::SimOptions::fast(),
        )
        .await
        .unwrap();
        let obs = Observations::new(sim.graph_client().unwrap(), Duration::from_secs(600), 4);
        let ids: Vec<String> = ["Finance Analysts", "Engineering Tools"]
            .iter()
            .filter_map(|n| sim.package_id(n))
            .collect();
        assert_eq!(ids.len(), 2, "the demo scenario's packages");
        let reads = |id: &str| {
            sim.count_requests(
                "GET",
                &format!("/v1.0/identityGovernance/entitlementManagement/accessPackages/{id}"),
            )
        };
        for id in &ids {
            obs.package_view(id).await.unwrap();
            obs.package_view(id).await.unwrap();
            assert_eq!(reads(id), 1, "one read per window");
        }
        let view = obs.package_view(&ids[0]).await.unwrap();
        obs.invalidate_package(&ids[0], &view.resources);
        obs.package_view(&ids[0]).await.unwrap();
        obs.package_view(&ids[1]).await.unwrap();
        assert_eq!(reads(&ids[0]), 2, "the written package is read again");
        assert_eq!(reads(&ids[1]), 1, "the other package's view is kept");
    }
}
