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
use crate::graph::{GraphClient, GraphError};
use crate::observe::{ObserveError, Observer, stable_message};

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

    /// Forgets what a write to a package may have changed: the package views (assignments,
    /// requests) and the memberships of the resources it promises.
    pub fn invalidate_package(&self, resources: &[PromisedResource]) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = (
            Instant::now(),
            Arc::new(Observer::new(self.graph.clone(), self.concurrency)),
        );
        let reads = reads_needed(resources);
        self.reads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| !reads.contains(k));
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
        let mut snapshot = Snapshot::new();
        for (read, result) in results {
            match result {
                Ok(data) => snapshot.record(read, data),
                Err(err) => {
                    tracing::warn!(resource = ?read, error = %err, "could not read a resource's membership");
                    snapshot.record_failure(read, stable_message(&err));
                }
            }
        }
        snapshot
    }
}
