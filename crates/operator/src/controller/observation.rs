//! Graph reads for the controller, shared across objects for a bounded time.
//!
//! Everything goes through [`crate::observe::Observer`] (the same code, messages and cache
//! as `redeliver audit`). A long-running controller adds what a one-shot audit does not
//! need: an age bound (`--observation-max-age`). Name resolutions, each package's reads and
//! each resource's membership are kept for at most `max_age` across all objects — one paged
//! read per *resource* per window, never one per user. After the controller requests an
//! assignment for a package, that package's reads and the memberships it promises are
//! dropped so the next pass sees the effect; after a reprocess only what it restores is
//! read again, after it was sent (`engine::fresh_reads`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;

use crate::domain::clock::{Clock, SystemClock};
use crate::engine::{
    FreshAfter, PromisedResource, ResolveFailure, ResourceKind, ResourceRead, Snapshot,
    reads_needed,
};
use crate::graph::models::AssignmentRequest;
use crate::graph::{GraphClient, GraphError};
use crate::observe::{ObserveError, Observer, PackageView};

/// Splits an observation result into "retry later" (`Err`) and "report on the object"
/// (`Ok(Err(failure))`).
pub fn split<T>(result: Result<T, ObserveError>) -> Result<Result<T, ResolveFailure>, GraphError> {
    match result {
        Ok(v) => Ok(Ok(v)),
        Err(ObserveError::Resolve(f)) => Ok(Err(f)),
        Err(ObserveError::Graph(e)) => Err(e),
    }
}

/// The controller's Graph read cache, shared by every reconcile: an [`Observer`] (the
/// audit's, with the same single-flight cache) whose reads are each kept for at most
/// `max_age`, plus what a long-running controller needs on top: dropping a package's reads
/// after a write to it, and reading memberships fresh on demand.
pub struct Observations {
    graph: GraphClient,
    observer: Observer,
    max_age: Duration,
    clock: Arc<dyn Clock>,
    /// Group memberships a delta poll reported changed, by (group, user), lower-cased: when
    /// the poll came back. A copy of the group read before then is stale for that user
    /// only, so every other object keeps the shared copy while it is renewed.
    changed: Mutex<HashMap<(String, String), Timestamp>>,
}

impl Observations {
    /// A cache whose entries live at most `max_age`; `concurrency` bounds membership reads
    /// in flight for one snapshot.
    pub fn new(graph: GraphClient, max_age: Duration, concurrency: usize) -> Self {
        Self {
            observer: Observer::with_max_age(graph.clone(), concurrency, Some(max_age)),
            graph,
            max_age,
            clock: Arc::new(SystemClock),
            changed: Mutex::default(),
        }
    }

    /// The same cache reading wall-clock time from `clock` (the controller's).
    pub fn with_clock(self, clock: Arc<dyn Clock>) -> Self {
        Self {
            observer: self.observer.with_clock(clock.clone()),
            clock,
            ..self
        }
    }

    /// Records that a group delta poll, just come back, reported these (group, user)
    /// memberships begun or ended: the next snapshot for such a user reads the group again
    /// (once, shared), while other objects go on with the copy at hand. Without this the
    /// whole group was dropped, and at 100,000 objects a steady stream of repairs kept
    /// every reconcile of every object in the repaired groups waiting on re-reads.
    pub fn note_membership_changes(&self, pairs: impl IntoIterator<Item = (String, String)>) {
        let now = self.clock.now();
        let mut changed = self.changed.lock().unwrap_or_else(|p| p.into_inner());
        // Any copy served is at most twice `max_age` old (a renewal in flight), so past
        // that every copy was read after the change.
        let keep = jiff::SignedDuration::try_from(self.max_age.saturating_mul(2))
            .unwrap_or(jiff::SignedDuration::MAX);
        changed.retain(|_, at| now.duration_since(*at) <= keep);
        for (group, user) in pairs {
            changed.insert((group.to_ascii_lowercase(), user.to_ascii_lowercase()), now);
        }
    }

    /// Changed memberships remembered (for `redeliver_state_entries`).
    pub fn changed_len(&self) -> usize {
        self.changed.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The Graph client, for acting on a plan and for reads that must be fresh.
    pub fn graph(&self) -> &GraphClient {
        &self.graph
    }

    /// How many Graph calls one reconcile may have in flight.
    pub fn concurrency(&self) -> usize {
        self.observer.concurrency()
    }

    /// The observer, for name resolution.
    pub fn observer(&self) -> &Observer {
        &self.observer
    }

    /// The package's view (policies, assignments), read at most once per `max_age` and
    /// shared by every object of the package.
    pub async fn package_view(&self, package_id: &str) -> Result<Arc<PackageView>, ObserveError> {
        self.observer.package_view(package_id).await
    }

    /// The package's assignment requests, read only when an object needs them, at most
    /// once per `max_age`, and renewed with the view after a write to the package.
    pub async fn package_requests(
        &self,
        package_id: &str,
    ) -> Result<Arc<[AssignmentRequest]>, ObserveError> {
        self.observer.package_requests(package_id).await
    }

    /// Forgets what a write to a package may have changed: its view (assignments,
    /// requests) and the memberships of the resources it promises. Other packages' views
    /// are kept.
    pub async fn invalidate_package(&self, package_id: &str, resources: &[PromisedResource]) {
        self.observer.invalidate_package(package_id).await;
        self.invalidate_memberships(resources).await;
    }

    /// Forgets the cached memberships of `resources` for everyone (after a write to their
    /// package, or a group delta resync). A change of one user's membership is
    /// [`Observations::note_membership_changes`] instead.
    pub async fn invalidate_memberships(&self, resources: &[PromisedResource]) {
        self.observer
            .invalidate_reads(&reads_needed(resources))
            .await;
    }

    /// Like [`Observations::snapshot`], but every membership is read now (and the fresh
    /// copy replaces the cached one for the other objects).
    pub async fn snapshot_fresh(&self, resources: &[PromisedResource]) -> Snapshot {
        self.invalidate_memberships(resources).await;
        self.snapshot(resources).await
    }

    /// The memberships of every verifiable resource in `resources`: each read once per
    /// `max_age` and shared by every object (the same data, not a copy), concurrent
    /// reconciles waiting for the read already in flight. A failed read is recorded as
    /// such (never cached), so the engine reports `Unknown` instead of guessing.
    pub async fn snapshot(&self, resources: &[PromisedResource]) -> Snapshot {
        self.observer.snapshot(resources).await
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

    // From the package alone, so a guard's membership reads start while its package's
    // assignment pages are still arriving, as they do in `redeliver audit`.
    async fn promises(&self, package_id: &str) -> Result<Vec<PromisedResource>, ObserveError> {
        self.observer.package_promises(package_id).await
    }

    async fn requests(&self, package_id: &str) -> Result<Arc<[AssignmentRequest]>, ObserveError> {
        self.package_requests(package_id).await
    }

    async fn target(&self, selector: &crate::api::TargetSelector) -> Result<String, ObserveError> {
        self.observer().resolve_target(selector).await
    }

    async fn memberships(
        &self,
        resources: &[PromisedResource],
        fresh: Option<&crate::engine::FreshAfter>,
    ) -> Snapshot {
        self.observer.snapshot_fresh_after(resources, fresh).await
    }

    async fn request(&self, id: &str) -> Result<Option<AssignmentRequest>, GraphError> {
        self.graph.get_request(id).await
    }

    fn changed_for(
        &self,
        user: Option<&str>,
        resources: &[PromisedResource],
    ) -> Option<FreshAfter> {
        let changed = self.changed.lock().unwrap_or_else(|p| p.into_inner());
        if changed.is_empty() {
            return None;
        }
        let user = user.map(str::to_ascii_lowercase);
        let mut since: Option<Timestamp> = None;
        let mut reads = std::collections::BTreeSet::new();
        for r in resources {
            let ResourceKind::GroupMember { group_id } = &r.kind else {
                continue;
            };
            let group = group_id.to_ascii_lowercase();
            let at = match &user {
                Some(user) => changed.get(&(group, user.clone())).copied(),
                // Anyone's change: a scan, made only for a guard's sweep.
                None => changed
                    .iter()
                    .filter(|((g, _), _)| *g == group)
                    .map(|(_, at)| *at)
                    .max(),
            };
            if let Some(at) = at {
                since = since.max(Some(at));
                reads.extend(ResourceRead::for_kind(&r.kind));
            }
        }
        since.map(|since| FreshAfter { since, reads })
    }
}
