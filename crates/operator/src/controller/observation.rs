//! Graph reads for the controller, shared across objects within a bounded window.
//!
//! Resolution and package reads go through [`crate::observe::Observer`] (the same code and
//! messages as `redeliver audit`). A long-running controller adds what a one-shot audit does
//! not need: an age bound. Name resolutions, each package's reads and each resource's
//! membership are kept for at most `max_age` across all objects — one paged read per
//! *resource* per window, never one per user. After the controller writes to Graph for a
//! package, that package's reads and the memberships it promises are dropped so the next
//! pass sees the effect.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

// Tokio's clock, so tests can age observations without waiting for them.
use tokio::time::Instant;

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

/// Values per key that are replaced by a fresh one once `max_age` old.
struct Windows<K, V> {
    max_age: Duration,
    map: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: std::hash::Hash + Eq, V: Clone> Windows<K, V> {
    fn new(max_age: Duration) -> Self {
        Self {
            max_age,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// The value of `key` in its current window, or a `fresh()` one starting a new window.
    fn get(&self, key: K, fresh: impl FnOnce() -> V) -> V {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, v)) = map.get(&key)
            && at.elapsed() < self.max_age
        {
            return v.clone();
        }
        // Bound memory: expired entries go whenever a new window starts.
        let max_age = self.max_age;
        map.retain(|_, (at, _)| at.elapsed() < max_age);
        let v = fresh();
        map.insert(key, (Instant::now(), v.clone()));
        v
    }

    /// Ends the windows of the keys `drop` selects.
    fn end(&self, drop: impl Fn(&K) -> bool) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| !drop(k));
    }
}

/// The controller's Graph read cache. Shared by every reconcile.
pub struct Observations {
    graph: GraphClient,
    concurrency: usize,
    /// Name resolutions (packages, users).
    names: Windows<(), Arc<Observer>>,
    /// One observer per package for its reads, so that a write to one package renews only
    /// that package's (one renewal for all of them re-read every package's view after
    /// each reprocess).
    packages: Windows<String, Arc<Observer>>,
    /// One cell per resource: concurrent reconciles that need the same resource wait for
    /// the one read in flight; a failed read leaves the cell empty for the next caller.
    reads: Windows<ResourceRead, Arc<OnceCell<ReadData>>>,
}

impl Observations {
    /// A cache whose entries live at most `max_age`; `concurrency` bounds membership reads
    /// in flight for one snapshot.
    pub fn new(graph: GraphClient, max_age: Duration, concurrency: usize) -> Self {
        Self {
            graph,
            concurrency: concurrency.max(1),
            names: Windows::new(max_age),
            packages: Windows::new(max_age),
            reads: Windows::new(max_age),
        }
    }

    /// The Graph client, for acting on a plan and for reads that must be fresh.
    pub fn graph(&self) -> &GraphClient {
        &self.graph
    }

    /// How many Graph calls one reconcile may have in flight.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    fn new_observer(&self) -> Arc<Observer> {
        Arc::new(Observer::new(self.graph.clone(), self.concurrency))
    }

    /// The observer of the current window, for name resolution.
    pub fn observer(&self) -> Arc<Observer> {
        self.names.get((), || self.new_observer())
    }

    /// The observer holding one package's reads in its current window.
    fn package_observer(&self, package_id: &str) -> Arc<Observer> {
        self.packages
            .get(package_id.to_ascii_lowercase(), || self.new_observer())
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
        let package_id = package_id.to_ascii_lowercase();
        self.packages.end(|k| *k == package_id);
        self.invalidate_memberships(resources);
    }

    /// Forgets the cached memberships of `resources` (e.g. after group delta reported a
    /// removal).
    pub fn invalidate_memberships(&self, resources: &[PromisedResource]) {
        let reads = reads_needed(resources);
        self.reads.end(|k| reads.contains(k));
    }

    /// Like [`Observations::snapshot`], but every membership is read now (and the fresh
    /// copy replaces the cached one for the other objects).
    pub async fn snapshot_fresh(&self, resources: &[PromisedResource]) -> Snapshot {
        self.invalidate_memberships(resources);
        self.snapshot(resources).await
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
                    let cell = self.reads.get(read.clone(), Default::default);
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

impl crate::observe::Reads for Observations {
    async fn package_id(
        &self,
        selector: &crate::api::AccessPackageSelector,
    ) -> Result<String, ObserveError> {
        self.observer().resolve_package_id(selector).await
    }

    async fn view(&self, package_id: &str) -> Result<Arc<PackageView>, ObserveError> {
        self.package_view(package_id).await
    }

    async fn requests(&self, package_id: &str) -> Result<Arc<[AssignmentRequest]>, ObserveError> {
        self.package_requests(package_id).await
    }

    async fn target(&self, selector: &crate::api::TargetSelector) -> Result<String, ObserveError> {
        self.observer().resolve_target(selector).await
    }

    async fn memberships(&self, resources: &[PromisedResource], fresh: bool) -> Snapshot {
        if fresh {
            self.snapshot_fresh(resources).await
        } else {
            self.snapshot(resources).await
        }
    }

    async fn request(&self, id: &str) -> Result<Option<AssignmentRequest>, GraphError> {
        self.graph.get_request(id).await
    }
}
