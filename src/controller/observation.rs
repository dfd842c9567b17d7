//! Graph reads for the controller, shared across objects within a bounded window.
//!
//! Resolution and package reads go through [`crate::observe::Observer`] (the same code and
//! messages as `redeliver audit`). A long-running controller adds what a one-shot audit does
//! not need: an age bound. The observer is replaced once it is older than `max_age`, and
//! each resource's membership is cached for at most `max_age` across all objects — one paged
//! read per *resource* per window, never one per user. After the controller writes to Graph
//! for a package, the observer and that package's memberships are dropped so the next pass
//! sees the effect.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::engine::{PromisedResource, ResolveFailure, ResourceRead, Snapshot, reads_needed};
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

#[derive(Debug, Clone)]
enum ReadData {
    Ids(BTreeSet<String>),
    Pairs(BTreeSet<(String, String)>),
}

struct TtlCache<K, V> {
    ttl: Duration,
    map: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, key: &K) -> Option<V> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(key) {
            Some((at, v)) if at.elapsed() < self.ttl => Some(v.clone()),
            Some(_) => {
                map.remove(key);
                None
            }
            None => None,
        }
    }

    fn put(&self, key: K, value: V) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        // Bound memory: expired entries go whenever the map grows.
        if map.len() > 4096 {
            let ttl = self.ttl;
            map.retain(|_, (at, _)| at.elapsed() < ttl);
        }
        map.insert(key, (Instant::now(), value));
    }

    fn remove_where(&self, f: impl Fn(&K) -> bool) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| !f(k));
    }
}

/// The controller's Graph read cache. Shared by every reconcile.
pub struct Observations {
    graph: GraphClient,
    max_age: Duration,
    concurrency: usize,
    current: Mutex<(Instant, Arc<Observer>)>,
    /// One observer per package for its view, so that a write to one package renews only
    /// that package's view (one renewal for all of them cost ~15 view reads per reprocess).
    views: Mutex<HashMap<String, (Instant, Arc<Observer>)>>,
    reads: TtlCache<ResourceRead, ReadData>,
    /// One lock per resource being read: reconciles that miss the same expired entry at
    /// once wait for one read instead of each paying for their own.
    in_flight: Mutex<HashMap<ResourceRead, Arc<tokio::sync::Mutex<()>>>>,
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
            reads: TtlCache::new(max_age),
            in_flight: Mutex::new(HashMap::new()),
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

    /// The package's view (policies, assignments, requests), read at most once per
    /// `max_age` and shared by every object of the package.
    pub async fn package_view(&self, package_id: &str) -> Result<Arc<PackageView>, ObserveError> {
        let observer = {
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
        };
        observer.package_view(package_id).await
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
        self.reads.remove_where(|k| reads.contains(k));
    }

    /// Like [`Observations::snapshot`], but every membership is read now (and the fresh
    /// copy replaces the cached one for the other objects).
    pub async fn snapshot_fresh(&self, resources: &[PromisedResource]) -> Snapshot {
        let reads = reads_needed(resources);
        self.reads.remove_where(|k| reads.contains(k));
        self.snapshot(resources).await
    }

    /// The memberships of every verifiable resource in `resources`: cached ones from this
    /// window, the others read now (through the observer) and cached for the next objects. A
    /// failed read is recorded as such (never cached), so the engine reports `Unknown`
    /// instead of guessing.
    pub async fn snapshot(&self, resources: &[PromisedResource]) -> Snapshot {
        let mut snapshot = Snapshot::new();
        let mut missing: Vec<PromisedResource> = Vec::new();
        for r in resources {
            let Some(read) = ResourceRead::for_kind(&r.kind) else {
                continue;
            };
            match self.reads.get(&read) {
                Some(data) => record(&mut snapshot, read, data),
                None => missing.push(r.clone()),
            }
        }
        if missing.is_empty() {
            return snapshot;
        }
        // Take the reads' locks in their (sorted) order, so two callers never wait on each
        // other crosswise; then whatever another caller read meanwhile is taken from the cache.
        let locks: Vec<Arc<tokio::sync::Mutex<()>>> = {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            reads_needed(missing.iter())
                .into_iter()
                .map(|read| in_flight.entry(read).or_default().clone())
                .collect()
        };
        let mut guards = Vec::with_capacity(locks.len());
        for lock in &locks {
            guards.push(lock.lock().await);
        }
        missing.retain(|r| {
            let Some(read) = ResourceRead::for_kind(&r.kind) else {
                return false;
            };
            match self.reads.get(&read) {
                Some(data) => {
                    record(&mut snapshot, read, data);
                    false
                }
                None => true,
            }
        });
        if missing.is_empty() {
            drop(guards);
            self.release(locks);
            return snapshot;
        }
        let fresh = self.observer().snapshot(missing.iter()).await;
        for read in reads_needed(missing.iter()) {
            if let Some(message) = fresh.failures.get(&read) {
                snapshot.record_failure(read, message.clone());
                continue;
            }
            let data = match &read {
                ResourceRead::GroupMembers(g) => {
                    fresh.group_members.get(g).cloned().map(ReadData::Ids)
                }
                ResourceRead::GroupOwners(g) => {
                    fresh.group_owners.get(g).cloned().map(ReadData::Ids)
                }
                ResourceRead::AppRoleAssignments(sp) => fresh
                    .app_role_assignments
                    .get(sp)
                    .cloned()
                    .map(ReadData::Pairs),
            };
            match data {
                Some(data) => {
                    self.reads.put(read.clone(), data.clone());
                    record(&mut snapshot, read, data);
                }
                None => snapshot.record_failure(read, "the membership read returned nothing"),
            }
        }
        drop(guards);
        self.release(locks);
        snapshot
    }

    /// Drops the in-flight locks nobody else holds or waits for.
    fn release(&self, locks: Vec<Arc<tokio::sync::Mutex<()>>>) {
        drop(locks);
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, lock| Arc::strong_count(lock) > 1);
    }
}

fn record(snapshot: &mut Snapshot, read: ResourceRead, data: ReadData) {
    match (read, data) {
        (ResourceRead::GroupMembers(g), ReadData::Ids(ids)) => {
            snapshot.record_group_members(g, ids)
        }
        (ResourceRead::GroupOwners(g), ReadData::Ids(ids)) => snapshot.record_group_owners(g, ids),
        (ResourceRead::AppRoleAssignments(sp), ReadData::Pairs(pairs)) => {
            snapshot.record_app_role_assignments(sp, pairs)
        }
        (read, _) => snapshot.record_failure(read, "internal error: mismatched read"),
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

    /// Objects that miss the same resource at once share one read.
    #[tokio::test]
    async fn concurrent_misses_share_one_membership_read() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let sim = crate::sim::Simulator::start(
            crate::sim::Scenario::demo(),
            crate::sim::SimOptions::fast(),
        )
        .await
        .unwrap();
        let obs = Arc::new(Observations::new(
            sim.graph_client().unwrap(),
            Duration::from_secs(600),
            4,
        ));
        let id = sim.package_id("Finance Analysts").unwrap();
        let view = obs.package_view(&id).await.unwrap();
        let reads_before = sim.count_requests("GET", "/v1.0/groups/");
        let snapshots = futures::future::join_all((0..8).map(|_| {
            let obs = obs.clone();
            let view = view.clone();
            async move { obs.snapshot(&view.resources).await }
        }))
        .await;
        let groups = reads_needed(view.resources.iter())
            .iter()
            .filter(|r| matches!(r, ResourceRead::GroupMembers(_)))
            .count();
        assert!(groups >= 2, "the demo package promises groups");
        assert_eq!(
            sim.count_requests("GET", "/v1.0/groups/") - reads_before,
            groups,
            "one read per group for eight objects"
        );
        assert!(
            snapshots
                .iter()
                .all(|s| s == &snapshots[0] && s.failures.is_empty())
        );
        assert!(
            obs.in_flight.lock().unwrap().is_empty(),
            "locks are released"
        );
    }

    #[test]
    fn ttl_cache_expires() {
        let c: TtlCache<String, u32> = TtlCache::new(Duration::from_millis(30));
        c.put("a".into(), 1);
        assert_eq!(c.get(&"a".to_string()), Some(1));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(c.get(&"a".to_string()), None);
        c.put("b".into(), 2);
        c.remove_where(|k| k == "b");
        assert_eq!(c.get(&"b".to_string()), None);
    }
}
