//! Observation: turns declarations into what the engine needs, reading Graph as little
//! as possible.
//!
//! Everything here is shared by `redeliver audit` and the controller:
//! - resolution of display names to ids (package, policy, user), cached per run;
//! - one read per access package of its resources, assignments and requests;
//! - one paged read per *resource* (group members/owners, app role assignments), shared by
//!   every assignment that promises it — never one read per user;
//! - account state before a grant ([`accounts::AccountReader`]): only for write
//!   candidates, batched, cached and shared by concurrent reconciles.

pub mod accounts;
pub mod attribution;
pub mod delta;
pub mod safety;
pub mod suggest;

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use std::sync::Arc;

use tokio::sync::{Mutex, OnceCell};

use crate::api::{AccessPackageSelector, PolicySelector, TargetSelector};
use crate::domain::clock::{Clock, SystemClock};
use crate::engine::{
    PromisedResource, ReadData, ResolveFailure, ResolveFailureKind, ResourceRead, Snapshot,
    promised_resources,
};
use crate::graph::GraphClient;
use crate::graph::error::GraphError;
use crate::graph::models::{AccessPackage, Assignment, AssignmentPolicy, AssignmentRequest};

/// Why an observation could not be completed.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    /// The declaration cannot be satisfied as written (unknown package, ambiguous name,
    /// missing permission): report it and wait for a human.
    #[error("{}", .0.message)]
    Resolve(ResolveFailure),
    /// Graph failed in a way worth retrying later (throttling, 5xx, network).
    #[error(transparent)]
    Graph(#[from] GraphError),
}

/// One access package as read for this run: what it promises and who holds it.
///
/// Its assignment requests are a separate read ([`Observer::package_requests`]): only
/// assignments that are not delivered need them, and a guard sweep never does, so not
/// holding them with the package's assignments cuts what a large sweep keeps in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct PackageView {
    pub package: AccessPackage,
    pub resources: Vec<PromisedResource>,
    pub policies: Vec<AssignmentPolicy>,
    pub assignments: Vec<Assignment>,
    /// Positions in `assignments` with a target object id, ordered by it (ASCII case
    /// ignored), and the same for the target's principal name: every declaration of a
    /// package looks its target up here, and a scan of a package of thousands of
    /// assignments per declaration made a large first pass quadratic. 4 bytes an entry.
    by_object_id: Vec<u32>,
    by_principal_name: Vec<u32>,
}

/// `a` and `b` ordered with ASCII case ignored, as ids and principal names are compared.
fn cmp_ignore_ascii_case(a: &str, b: &str) -> std::cmp::Ordering {
    a.bytes()
        .map(|c| c.to_ascii_lowercase())
        .cmp(b.bytes().map(|c| c.to_ascii_lowercase()))
}

/// The positions of `assignments` that have a `key`, ordered by it.
fn index_by(assignments: &[Assignment], key: impl Fn(&Assignment) -> Option<&str>) -> Vec<u32> {
    let mut index: Vec<u32> = (0..assignments.len())
        .filter(|i| key(&assignments[*i]).is_some())
        .filter_map(|i| u32::try_from(i).ok())
        .collect();
    index.sort_by(|a, b| {
        cmp_ignore_ascii_case(
            key(&assignments[*a as usize]).unwrap_or_default(),
            key(&assignments[*b as usize]).unwrap_or_default(),
        )
    });
    index
}

fn target_object_id(a: &Assignment) -> Option<&str> {
    a.target.as_ref()?.object_id.as_deref()
}

fn target_principal_name(a: &Assignment) -> Option<&str> {
    a.target.as_ref()?.principal_name.as_deref()
}

impl PackageView {
    /// A view of `package` with its promises, policies and assignments.
    pub fn new(
        package: AccessPackage,
        resources: Vec<PromisedResource>,
        policies: Vec<AssignmentPolicy>,
        assignments: Vec<Assignment>,
    ) -> Self {
        Self {
            by_object_id: index_by(&assignments, target_object_id),
            by_principal_name: index_by(&assignments, target_principal_name),
            package,
            resources,
            policies,
            assignments,
        }
    }

    /// The assignments whose `key` equals `wanted` (ASCII case ignored), through `index`.
    fn matching<'a>(
        &'a self,
        index: &'a [u32],
        key: fn(&Assignment) -> Option<&str>,
        wanted: &'a str,
    ) -> impl Iterator<Item = &'a Assignment> + 'a {
        let at = move |i: &u32| key(&self.assignments[*i as usize]).unwrap_or_default();
        let start = index.partition_point(|i| cmp_ignore_ascii_case(at(i), wanted).is_lt());
        index[start..]
            .iter()
            .take_while(move |i| at(i).eq_ignore_ascii_case(wanted))
            .map(|i| &self.assignments[*i as usize])
    }

    /// The target's directory object id when one of the package's assignments names it: by
    /// object id, or by `principalName` for a UPN. `None` means it must be resolved (and
    /// may not exist). Saves one user read per declaration whose user holds the package.
    pub fn holder(&self, target: &TargetSelector) -> Option<String> {
        let found = match (
            target.object_id.as_deref(),
            target.user_principal_name.as_deref(),
        ) {
            (Some(wanted), _) => self
                .matching(&self.by_object_id, target_object_id, wanted)
                .next(),
            (None, Some(upn)) => self
                .matching(&self.by_principal_name, target_principal_name, upn)
                .find(|a| target_object_id(a).is_some()),
            (None, None) => None,
        };
        found.and_then(target_object_id).map(str::to_string)
    }

    /// Display name, falling back to the id.
    pub fn name(&self) -> &str {
        self.package
            .display_name
            .as_deref()
            .unwrap_or(&self.package.id)
    }

    /// The target's current assignment, chosen by [`crate::engine::pick_assignment`]
    /// among the target's assignments of this package.
    pub fn assignment_for(&self, target: &str) -> Option<Assignment> {
        let mine: Vec<Assignment> = self
            .matching(&self.by_object_id, target_object_id, target)
            .cloned()
            .collect();
        crate::engine::pick_assignment(&mine).cloned()
    }

    /// The target's most recent add request among `requests` (this package's, from
    /// [`Observer::package_requests`]), to follow delivery or reprocess a failure.
    pub fn latest_request_for(
        &self,
        requests: &[AssignmentRequest],
        target_object_id: &str,
    ) -> Option<AssignmentRequest> {
        let mine: Vec<AssignmentRequest> = requests
            .iter()
            .filter(|r| r.request_type.is_add())
            .filter(|r| {
                self.request_target(r)
                    .is_some_and(|id| id.eq_ignore_ascii_case(target_object_id))
            })
            .cloned()
            .collect();
        crate::engine::pick_latest_request(&mine).cloned()
    }

    /// Whom a request is for. Lists expand `assignment` without its target, so the
    /// assignment id is matched against the package's assignments; an expanded target or
    /// (for self-service requests) the requestor are used when present.
    fn request_target<'a>(&'a self, r: &'a AssignmentRequest) -> Option<&'a str> {
        let assignment = r.assignment.as_ref();
        assignment
            .and_then(|a| a.target.as_ref())
            .and_then(|t| t.object_id.as_deref())
            .or_else(|| {
                let id = assignment.and_then(|a| a.id.as_deref())?;
                self.assignments
                    .iter()
                    .find(|a| a.id.eq_ignore_ascii_case(id))
                    .and_then(|a| a.target.as_ref())
                    .and_then(|t| t.object_id.as_deref())
            })
            .or_else(|| {
                matches!(r.request_type, crate::graph::models::RequestType::UserAdd)
                    .then(|| r.requestor.as_ref().and_then(|s| s.object_id.as_deref()))
                    .flatten()
            })
    }
}

/// Packages themselves (`resourceRoleScopes`) by id.
type Heads = Memo<String, Result<Arc<AccessPackage>, ResolveFailure>>;

/// A package looked up by (display name, catalog).
type PackageName = (String, Option<String>);

/// Reads Graph for the engine, with per-run caches so each object is read once.
pub struct Observer {
    graph: GraphClient,
    concurrency: usize,
    packages_by_name: Memo<PackageName, Result<String, ResolveFailure>>,
    users: Memo<String, Result<String, ResolveFailure>>,
    views: Memo<String, Result<Arc<PackageView>, ResolveFailure>>,
    /// The package itself (`resourceRoleScopes`), read first by its view: what it promises
    /// is known before its assignment pages arrive, so membership reads can start then.
    heads: Arc<Heads>,
    requests: Memo<String, Result<Arc<[AssignmentRequest]>, ResolveFailure>>,
    /// Membership reads of this pass, shared by every declaration promising the resource.
    reads: Memo<ResourceRead, ReadData>,
    /// Microsoft's access drift report per catalog (`--use-access-drift-report`), read once
    /// per pass and shared by every object of the catalog; a refusal is kept as its note.
    drift: Memo<String, Result<Arc<crate::engine::DriftReport>, String>>,
    /// Whether the report's unavailability was logged already (it is logged once).
    drift_unavailable_logged: std::sync::atomic::AtomicBool,
    /// Wall-clock time: eligibility end dates are judged and ages measured against it.
    clock: Arc<dyn Clock>,
}

/// The one read cache, used by `redeliver audit` (no age bound: a pass refreshes it) and by
/// the controller (bounded by `--observation-max-age`): concurrent lookups of one key share
/// one Graph read (single flight); outcomes that will not change by asking again (found,
/// not found, ambiguous, forbidden) are kept for `max_age`; transient Graph errors are not,
/// so the next caller tries again. Ages run on tokio's clock, so tests can advance it.
///
/// Bounded: with an age bound, expired entries are dropped whenever the map has doubled
/// since the last pass over it (amortised: a miss no longer scans the whole map), and it
/// never holds more than [`MEMO_MAX_ENTRIES`]: past that, the oldest go first. (A crate
/// cache such as moka was weighed: its `try_get_with` is single-flight, but this cache also
/// needs "started before `since` is read again" and per-key invalidation by predicate in
/// one critical section, and the controller's key count is small; the bound and the
/// amortised pruning were what was missing.) The cap applies to the controller's caches;
/// `redeliver audit`'s lives one pass and reads each thing once.
struct Memo<K, V> {
    max_age: Option<Duration>,
    cells: Mutex<Cells<K, V>>,
}

/// Most entries one [`Memo`] keeps (reads of groups, apps and packages of one tenant).
pub const MEMO_MAX_ENTRIES: usize = 100_000;

struct Cells<K, V> {
    map: HashMap<K, Entry<V>>,
    /// The size at which expired entries are next dropped.
    prune_at: usize,
}

/// One cache entry: when its read was started, its single-flight cell, and (while a
/// background refresh is in flight, [`Memo::get_or_refresh`]) the value it replaces with
/// when that was read.
struct Entry<V> {
    at: tokio::time::Instant,
    cell: Arc<OnceCell<V>>,
    /// Shared with the refresh's task, which clears it once the new value is in: kept, it
    /// would double what the cache holds.
    previous: Arc<std::sync::Mutex<Option<(tokio::time::Instant, V)>>>,
}

impl<V> Entry<V> {
    fn new(cell: Arc<OnceCell<V>>) -> Self {
        Self {
            at: tokio::time::Instant::now(),
            cell,
            previous: Arc::default(),
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone, V: Clone> Memo<K, V> {
    fn new(max_age: Option<Duration>) -> Self {
        Self {
            max_age,
            cells: Mutex::new(Cells {
                map: HashMap::new(),
                prune_at: 1024,
            }),
        }
    }

    /// Entries held (finished or in flight).
    #[cfg(test)]
    async fn len(&self) -> usize {
        self.cells.lock().await.map.len()
    }

    /// Entries held, unless a caller holds the lock right now (for the metrics, which must
    /// not wait).
    fn try_len(&self) -> usize {
        self.cells.try_lock().map_or(0, |c| c.map.len())
    }

    fn fresh_enough(&self, at: tokio::time::Instant) -> bool {
        self.max_age.is_none_or(|max| at.elapsed() < max)
    }

    async fn get_or_read<F, Fut>(&self, key: K, read: F) -> Result<V, GraphError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<V, GraphError>>,
    {
        self.get_or_read_since(key, None, read).await
    }

    /// Like [`Memo::get_or_read`], but an entry started before `since` is read again (and
    /// the new read replaces it for everyone).
    async fn get_or_read_since<F, Fut>(
        &self,
        key: K,
        since: Option<tokio::time::Instant>,
        read: F,
    ) -> Result<V, GraphError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<V, GraphError>>,
    {
        let cell = {
            let mut cells = self.cells.lock().await;
            match cells.map.get(&key) {
                Some(e) if self.fresh_enough(e.at) && since.is_none_or(|s| e.at >= s) => {
                    e.cell.clone()
                }
                _ => self.start(&mut cells, key, None),
            }
        };
        cell.get_or_try_init(read).await.cloned()
    }

    /// A new entry for `key` (replacing any), remembering `previous`.
    fn start(
        &self,
        cells: &mut Cells<K, V>,
        key: K,
        previous: Option<(tokio::time::Instant, V)>,
    ) -> Arc<OnceCell<V>> {
        if cells.map.len() >= cells.prune_at {
            self.prune(cells);
        }
        let cell = Arc::new(OnceCell::new());
        let mut entry = Entry::new(cell.clone());
        entry.previous = Arc::new(std::sync::Mutex::new(previous));
        cells.map.insert(key, entry);
        cell
    }

    /// Like [`Memo::get_or_read`], for reads that are long and shared by many callers (a
    /// package's view: one page of assignments per 100). Once an entry has expired, the
    /// caller that finds it starts the new read in the background and every caller keeps
    /// being served the previous value until the new one lands, for at most one more
    /// `max_age` (so nothing served is older than twice it). Without this, every reconcile
    /// of the package waited for the whole re-read each `max_age`, and at 100,000 objects
    /// the re-reads of large packages held most reconcile slots most of the time.
    async fn get_or_refresh<F, Fut>(&self, key: K, read: F) -> Result<V, GraphError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<V, GraphError>> + Send + 'static,
        V: Send + Sync + 'static,
    {
        let Some(max_age) = self.max_age else {
            return self.get_or_read(key, read).await;
        };
        let servable = |p: &Option<(tokio::time::Instant, V)>| {
            p.as_ref()
                .filter(|(at, _)| at.elapsed() < max_age * 2)
                .map(|(_, v)| v.clone())
        };
        let previous_of =
            |e: &Entry<V>| e.previous.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let cell = {
            let mut cells = self.cells.lock().await;
            match cells.map.get(&key) {
                Some(e) if self.fresh_enough(e.at) => match e.cell.get() {
                    Some(v) => return Ok(v.clone()),
                    None => match servable(&previous_of(e)) {
                        Some(v) => return Ok(v),
                        None => e.cell.clone(),
                    },
                },
                Some(e) => {
                    let previous = match e.cell.get() {
                        Some(v) => Some((e.at, v.clone())),
                        // A refresh that failed: keep what it was to replace.
                        None => previous_of(e),
                    };
                    if let Some(v) = servable(&previous) {
                        let cell = self.start(&mut cells, key.clone(), previous);
                        let kept = cells.map.get(&key).map(|e| e.previous.clone());
                        let read = read();
                        tokio::spawn(async move {
                            // A failure leaves the cell empty: the next caller past the
                            // previous value's bound reads again itself.
                            if cell.get_or_try_init(|| read).await.is_ok()
                                && let Some(kept) = kept
                            {
                                *kept.lock().unwrap_or_else(|p| p.into_inner()) = None;
                            }
                        });
                        return Ok(v);
                    }
                    self.start(&mut cells, key, None)
                }
                None => self.start(&mut cells, key, None),
            }
        };
        cell.get_or_try_init(read).await.cloned()
    }

    /// Drops expired entries, then the oldest beyond [`MEMO_MAX_ENTRIES`], and sets the
    /// next pass at twice what is left.
    fn prune(&self, cells: &mut Cells<K, V>) {
        if self.max_age.is_some() {
            cells.map.retain(|_, e| self.fresh_enough(e.at));
        }
        // The audit's cache (no age bound) lives one pass and must read each thing once:
        // only the controller's is capped.
        if self.max_age.is_some() && cells.map.len() >= MEMO_MAX_ENTRIES {
            let mut ages: Vec<tokio::time::Instant> = cells.map.values().map(|e| e.at).collect();
            let excess = cells.map.len() + 1 - MEMO_MAX_ENTRIES / 2;
            let nth = excess.min(ages.len() - 1);
            let (_, cutoff, _) = ages.select_nth_unstable(nth);
            let cutoff = *cutoff;
            cells.map.retain(|_, e| e.at > cutoff);
        }
        cells.prune_at = (cells.map.len() * 2).clamp(1024, MEMO_MAX_ENTRIES);
    }

    async fn clear(&self) {
        self.cells.lock().await.map.clear();
    }

    /// Forgets the keys `drop` selects (what a write may have changed).
    async fn invalidate(&self, drop: impl Fn(&K) -> bool) {
        self.cells.lock().await.map.retain(|k, _| !drop(k));
    }
}

impl Observer {
    /// Entries in the read cache (every kind of read), for the state-size metric.
    pub fn cached_entries(&self) -> usize {
        self.packages_by_name.try_len()
            + self.users.try_len()
            + self.views.try_len()
            + self.heads.try_len()
            + self.requests.try_len()
            + self.reads.try_len()
            + self.drift.try_len()
    }

    /// An observer for one run (`redeliver audit`): every read is shared until
    /// [`Observer::refresh`]. `concurrency` bounds the resource reads in flight at once.
    pub fn new(graph: GraphClient, concurrency: usize) -> Self {
        Self::with_max_age(graph, concurrency, None)
    }

    /// An observer whose reads are shared for at most `max_age` each (the controller's).
    pub fn with_max_age(graph: GraphClient, concurrency: usize, max_age: Option<Duration>) -> Self {
        Self {
            graph,
            concurrency: concurrency.max(1),
            packages_by_name: Memo::new(max_age),
            users: Memo::new(max_age),
            views: Memo::new(max_age),
            heads: Arc::new(Memo::new(max_age)),
            requests: Memo::new(max_age),
            reads: Memo::new(max_age),
            drift: Memo::new(max_age),
            drift_unavailable_logged: std::sync::atomic::AtomicBool::new(false),
            clock: Arc::new(SystemClock),
        }
    }

    /// The same observer reading wall-clock time from `clock` (the controller's).
    pub fn with_clock(self, clock: Arc<dyn Clock>) -> Self {
        Self { clock, ..self }
    }

    /// Forgets what a write to a package may have changed: its view (assignments) and its
    /// requests. Name resolutions and other packages' reads are kept.
    pub async fn invalidate_package(&self, package_id: &str) {
        self.views
            .invalidate(|k| k.eq_ignore_ascii_case(package_id))
            .await;
        self.heads
            .invalidate(|k| k.eq_ignore_ascii_case(package_id))
            .await;
        self.requests
            .invalidate(|k| k.eq_ignore_ascii_case(package_id))
            .await;
    }

    /// Forgets the memberships `reads` returned, so the next snapshot reads them now.
    pub async fn invalidate_reads(&self, reads: &std::collections::BTreeSet<ResourceRead>) {
        self.reads.invalidate(|k| reads.contains(k)).await;
    }

    /// How many reads this observer runs at once.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// The Graph client, for acting on a plan.
    pub fn graph(&self) -> &GraphClient {
        &self.graph
    }

    /// Forgets the per-package reads (assignments, requests) and the memberships so the
    /// next pass sees fresh state; name resolutions are kept for the whole run.
    pub async fn refresh(&self) {
        self.views.clear().await;
        self.heads.clear().await;
        self.requests.clear().await;
        self.reads.clear().await;
        self.drift.clear().await;
    }

    /// Microsoft's access drift report for `catalog_id`, read once per pass (or age bound)
    /// for every object of the catalog, or why it is unavailable. Only a cross-check: a
    /// failure is noted (logged once) and changes nothing else.
    pub async fn access_drift(
        &self,
        catalog_id: &str,
    ) -> Result<Arc<crate::engine::DriftReport>, String> {
        let read = || async {
            match self.graph.read_access_drift(catalog_id).await {
                Ok(drift) => Ok(Ok(Arc::new(drift_report_of(&drift)))),
                // A refusal (403 without EntitlementManagement.Read.All, 404 where the
                // tenant or the beta path does not have it) will not change by asking
                // again within the window.
                Err(e) if e.is_forbidden() => Ok(Err(
                    "Graph refused it (forbidden); it needs EntitlementManagement.Read.All".into(),
                )),
                Err(e) if e.is_not_found() => Ok(Err(format!(
                    "Graph has no such report here (not found at {}{}); the tenant may not offer it",
                    crate::graph::drift_report::beta_base(self.graph.base_url()),
                    crate::graph::drift_report::SUMMARIES_PATH
                ))),
                Err(e) => Err(e),
            }
        };
        let outcome = match self.drift.get_or_read(catalog_id.to_string(), read).await {
            Ok(outcome) => outcome,
            Err(e) => Err(stable_message(&e)),
        };
        if let Err(why) = &outcome
            && !self
                .drift_unavailable_logged
                .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(catalog = catalog_id, error = %why, "Microsoft's access drift report is unavailable; the cross-check is skipped");
        }
        outcome
    }

    /// Resolves a package reference to its id.
    pub async fn resolve_package_id(
        &self,
        r: &AccessPackageSelector,
    ) -> Result<String, ObserveError> {
        if let Some(id) = r.id.as_deref() {
            return Ok(id.to_string());
        }
        let Some(name) = r.display_name.as_deref() else {
            return Err(ObserveError::Resolve(ResolveFailure::new(
                ResolveFailureKind::InvalidSpec,
                "spec.accessPackage: set exactly one of `id` or `displayName`",
            )));
        };
        let key = (name.to_string(), r.catalog.clone());
        let outcome = self
            .packages_by_name
            .get_or_read(key, || self.find_package(name, r.catalog.as_deref()))
            .await?;
        outcome.map_err(ObserveError::Resolve)
    }

    async fn find_package(
        &self,
        name: &str,
        catalog: Option<&str>,
    ) -> Result<Result<String, ResolveFailure>, GraphError> {
        let found = match self.graph.find_access_packages(name).await {
            Ok(found) => found,
            Err(e) => return forbidden_as_failure(e, "spec.accessPackage").map(Err),
        };
        let matching: Vec<&AccessPackage> = found
            .iter()
            .filter(|p| match catalog {
                None => true,
                Some(cat) => p
                    .catalog
                    .as_ref()
                    .and_then(|c| c.display_name.as_deref())
                    .is_some_and(|c| c == cat),
            })
            .collect();
        Ok(match matching.as_slice() {
            [one] => Ok(one.id.clone()),
            [] => {
                let where_ = catalog
                    .map(|c| format!(" in catalog '{c}'"))
                    .unwrap_or_default();
                let hint = if found.is_empty() {
                    self.package_hint(name).await?
                } else {
                    format!(
                        "; packages with that name exist in {}",
                        describe_packages(&found)
                    )
                };
                Err(ResolveFailure::new(
                    ResolveFailureKind::PackageNotFound,
                    format!(
                        "spec.accessPackage.displayName: no access package named '{name}'{where_}{hint}"
                    ),
                ))
            }
            many => Err(ResolveFailure::new(
                ResolveFailureKind::PackageAmbiguous,
                format!(
                    "spec.accessPackage.displayName: '{name}' matches {} packages ({}); set spec.accessPackage.catalog or spec.accessPackage.id",
                    many.len(),
                    describe_packages(many.iter().copied())
                ),
            )),
        })
    }

    /// "Did you mean" for a package name that matched nothing. Only on that failure path:
    /// one request, one page of the packages sharing the name's first characters (the
    /// success path reads exactly as before). A refused or unsupported read gives no hint;
    /// a transient failure is returned, so the resolution is retried rather than kept
    /// without its hint (the message lands in status and must not change between passes).
    async fn package_hint(&self, name: &str) -> Result<String, GraphError> {
        let Some(prefix) = suggest::prefix(name) else {
            return Ok(String::new());
        };
        match self.graph.suggest_access_packages(&prefix).await {
            Ok(packages) => Ok(suggest::did_you_mean(
                name,
                packages.iter().filter_map(|p| p.display_name.as_deref()),
            )),
            Err(e) if e.is_transient() => Err(e),
            Err(e) => {
                tracing::debug!(error = %e, "no access package suggestions");
                Ok(String::new())
            }
        }
    }

    /// "Did you mean" for a user principal name that is not in the tenant, on that failure
    /// path only: one request for one page of users sharing its first characters. Errors
    /// are handled as in [`Observer::package_hint`].
    async fn user_hint(&self, upn: &str) -> Result<String, GraphError> {
        let Some(prefix) = suggest::prefix(upn) else {
            return Ok(String::new());
        };
        match self.graph.suggest_users(&prefix).await {
            Ok(users) => Ok(suggest::did_you_mean(
                upn,
                users
                    .iter()
                    .filter_map(|u| u.user_principal_name.as_deref()),
            )),
            Err(e) if e.is_transient() => Err(e),
            Err(e) => {
                tracing::debug!(error = %e, "no user suggestions");
                Ok(String::new())
            }
        }
    }

    /// Reads one package with its resources, policies and assignments (cached until
    /// [`Observer::refresh`]).
    ///
    /// The view is shared (`Arc`), not copied: a large package's assignments take a lot of
    /// memory, and every declaration of the package looks at the same one. With an age
    /// bound (the controller's), an expired view is read again in the background while the
    /// previous one is still served ([`Memo::get_or_refresh`]); a write to the package
    /// drops it ([`Observer::invalidate_package`]), so the next look reads it first.
    pub async fn package_view(&self, package_id: &str) -> Result<Arc<PackageView>, ObserveError> {
        let (graph, heads, id) = (
            self.graph.clone(),
            self.heads.clone(),
            package_id.to_string(),
        );
        self.views
            .get_or_refresh(package_id.to_string(), move || {
                read_package_view(graph, heads, id)
            })
            .await?
            .map_err(ObserveError::Resolve)
    }

    /// What a package promises, from the package alone (shared with its view, so it costs
    /// no read of its own): known before the package's assignment pages have arrived.
    pub async fn package_promises(
        &self,
        package_id: &str,
    ) -> Result<Vec<PromisedResource>, ObserveError> {
        let package = self.package_head(package_id).await?;
        Ok(promised_resources(
            package.resource_role_scopes.as_deref().unwrap_or(&[]),
        ))
    }

    async fn package_head(&self, package_id: &str) -> Result<Arc<AccessPackage>, ObserveError> {
        package_head(&self.graph, &self.heads, package_id).await
    }

    /// The assignment requests of one package (cached until [`Observer::refresh`]), read
    /// only when a declaration needs one: to follow a delivery in flight or to reprocess a
    /// failed request. Like the view, renewed in the background once expired (a package
    /// has about as many requests as assignments: a long, paged read), and dropped by a
    /// write to the package. The request an object submitted itself is always read fresh
    /// by id.
    pub async fn package_requests(
        &self,
        package_id: &str,
    ) -> Result<Arc<[AssignmentRequest]>, ObserveError> {
        let (graph, id) = (self.graph.clone(), package_id.to_string());
        self.requests
            .get_or_refresh(package_id.to_string(), move || async move {
                match graph.list_requests(&id).await {
                    Ok(list) => Ok(Ok(Arc::from(list))),
                    Err(e) => forbidden_as_failure(e, "spec.accessPackage").map(Err),
                }
            })
            .await?
            .map_err(ObserveError::Resolve)
    }

    /// Picks the assignment policy: the named one, or the package's only one.
    pub fn resolve_policy(
        view: &PackageView,
        r: Option<&PolicySelector>,
    ) -> Result<String, ResolveFailure> {
        let describe = || {
            view.policies
                .iter()
                .map(|p| format!("'{}' ({})", p.display_name.as_deref().unwrap_or("?"), p.id))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let package = view.name();
        match r {
            Some(PolicySelector { id: Some(id), .. }) => view
                .policies
                .iter()
                .find(|p| p.id.eq_ignore_ascii_case(id))
                .map(|p| p.id.clone())
                .ok_or_else(|| {
                    ResolveFailure::new(ResolveFailureKind::PolicyNotFound, format!(
                        "spec.assignmentPolicy.id: package '{package}' has no policy {id}; its policies are {}",
                        describe()
                    ))
                }),
            Some(PolicySelector {
                display_name: Some(name),
                ..
            }) => {
                let hits: Vec<_> = view
                    .policies
                    .iter()
                    .filter(|p| p.display_name.as_deref() == Some(name.as_str()))
                    .collect();
                match hits.as_slice() {
                    [one] => Ok(one.id.clone()),
                    [] => Err(ResolveFailure::new(ResolveFailureKind::PolicyNotFound, format!(
                        "spec.assignmentPolicy.displayName: package '{package}' has no policy named '{name}'; its policies are {}{}",
                        describe(),
                        // The package's policies are already read: the hint costs nothing.
                        suggest::did_you_mean(
                            name,
                            view.policies.iter().filter_map(|p| p.display_name.as_deref())
                        )
                    ))),
                    _ => Err(ResolveFailure::new(ResolveFailureKind::PolicyAmbiguous, format!(
                        "spec.assignmentPolicy.displayName: '{name}' names {} policies of package '{package}'; set spec.assignmentPolicy.id ({})",
                        hits.len(),
                        describe()
                    ))),
                }
            }
            _ => match view.policies.as_slice() {
                [one] => Ok(one.id.clone()),
                [] => Err(ResolveFailure::new(ResolveFailureKind::PolicyNotFound, format!(
                    "spec.assignmentPolicy: package '{package}' has no assignment policy; create a direct-assignment policy for it"
                ))),
                _ => Err(ResolveFailure::new(ResolveFailureKind::PolicyAmbiguous, format!(
                    "spec.assignmentPolicy: package '{package}' has {} policies; name one in spec.assignmentPolicy ({})",
                    view.policies.len(),
                    describe()
                ))),
            },
        }
    }

    /// Resolves the target user to its directory object id.
    pub async fn resolve_target(&self, r: &TargetSelector) -> Result<String, ObserveError> {
        let (key, field) = match (r.object_id.as_deref(), r.user_principal_name.as_deref()) {
            (Some(id), _) => (id.to_string(), "spec.target.objectId"),
            (None, Some(upn)) => (upn.to_string(), "spec.target.userPrincipalName"),
            (None, None) => {
                return Err(ObserveError::Resolve(ResolveFailure::new(
                    ResolveFailureKind::InvalidSpec,
                    "spec.target: set exactly one of `objectId` or `userPrincipalName`",
                )));
            }
        };
        let outcome = self
            .users
            .get_or_read(key.clone(), || async {
                match self.graph.get_user(&key).await {
                    Ok(Some(user)) => Ok(Ok(user.id)),
                    Ok(None) => {
                        // Object ids have no near misses worth suggesting.
                        let hint = match r.object_id {
                            Some(_) => String::new(),
                            None => self.user_hint(&key).await?,
                        };
                        Ok(Err(ResolveFailure::new(
                            ResolveFailureKind::TargetNotFound,
                            format!("{field}: no user '{key}' in the tenant{hint}"),
                        )))
                    }
                    Err(e) => forbidden_as_failure(e, field).map(Err),
                }
            })
            .await?;
        outcome.map_err(ObserveError::Resolve)
    }

    /// Reads every distinct resource once (bounded concurrency) into a snapshot. A resource
    /// whose read fails is recorded as failed, so assignments promising it report `Unknown`
    /// rather than a guess.
    pub async fn snapshot<'a>(
        &self,
        resources: impl IntoIterator<Item = &'a PromisedResource>,
    ) -> Snapshot {
        self.snapshot_fresh_after(resources, None).await
    }

    /// Like [`Observer::snapshot`], but the reads `fresh` names must have been made after
    /// its moment: a cached copy started earlier is read again, once, for every caller.
    pub async fn snapshot_fresh_after<'a>(
        &self,
        resources: impl IntoIterator<Item = &'a PromisedResource>,
        fresh: Option<&crate::engine::FreshAfter>,
    ) -> Snapshot {
        let reads = crate::engine::reads_needed(resources);
        let since = fresh.and_then(|f| instant_of(f.since, self.clock.now()));
        let results: Vec<(ResourceRead, Result<ReadData, GraphError>)> =
            futures::stream::iter(reads)
                .map(|read| async move {
                    let since = since.filter(|_| fresh.is_some_and(|f| f.reads.contains(&read)));
                    // Without a freshness demand an expired read is renewed in the
                    // background while the previous answer is served (as package views).
                    let result = match since {
                        Some(_) => {
                            self.reads
                                .get_or_read_since(read.clone(), since, || {
                                    read_resource(&self.graph, &*self.clock, &read)
                                })
                                .await
                        }
                        None => {
                            let (graph, clock, r) =
                                (self.graph.clone(), self.clock.clone(), read.clone());
                            self.reads
                                .get_or_refresh(read.clone(), move || async move {
                                    read_resource(&graph, &*clock, &r).await
                                })
                                .await
                        }
                    };
                    (read, result)
                })
                .buffer_unordered(self.concurrency)
                .collect()
                .await;
        snapshot_of(results)
    }

    /// One resource read (all pages): a group's members or owners, or a service
    /// principal's app role assignments.
    pub async fn read_resource(&self, read: &ResourceRead) -> Result<ReadData, GraphError> {
        read_resource(&self.graph, &*self.clock, read).await
    }
}

/// The engine's view of one catalog's drift report: every resource a summary covers, with
/// the users its `missing` details name (user identities only).
pub fn drift_report_of(
    drift: &crate::graph::drift_report::CatalogDrift,
) -> crate::engine::DriftReport {
    let mut report = crate::engine::DriftReport::default();
    for (summary, details) in &drift.summaries {
        if let Some(id) = summary
            .resource
            .as_ref()
            .and_then(|r| r.identifier.as_deref())
        {
            report.cover(id);
        }
        for d in details {
            if d.drift_type.as_deref() != Some("missing") {
                continue;
            }
            let Some(resource) = d
                .resource
                .as_ref()
                .or(summary.resource.as_ref())
                .and_then(|r| r.identifier.as_deref())
            else {
                continue;
            };
            for who in &d.identities {
                if who.identity_type.as_deref().is_none_or(|t| t == "user")
                    && let Some(user) = who.identifier.as_deref()
                {
                    report.record_missing(resource, user);
                }
            }
        }
    }
    report
}

/// A snapshot of read results. A failed read is recorded as failed, so assignments
/// promising the resource report `Unknown` rather than a guess.
pub fn snapshot_of(
    results: impl IntoIterator<Item = (ResourceRead, Result<ReadData, GraphError>)>,
) -> Snapshot {
    let mut snapshot = Snapshot::new();
    for (read, result) in results {
        match result {
            Ok(data) => snapshot.record(read, data),
            // Azure roles need a Reader-type permission on each scope, which an operator may
            // well not have everywhere: without it the role is not verifiable here, which
            // must neither block Delivered nor look like drift.
            Err(err) if unreadable_azure_scope(&read, &err) => {
                let why = azure_unreadable_note(&read, &err);
                tracing::info!(resource = ?read, error = %err, "cannot read Azure roles at a scope");
                snapshot.record_unreadable(read, why);
            }
            Err(err) => {
                tracing::warn!(resource = ?read, error = %err, "could not read a resource's membership");
                // The message lands in status: keep it stable across passes (no request
                // ids or timings), or every pass would rewrite the status.
                snapshot.record_failure(read, stable_message(&err));
            }
        }
    }
    snapshot
}

/// Whether `err` means `read` (an Azure scope) cannot be made here at all: ARM refused it
/// (403) or no ARM URL is configured.
fn unreadable_azure_scope(read: &ResourceRead, err: &GraphError) -> bool {
    matches!(read, ResourceRead::AzureRoleHolders { .. })
        && (err.is_forbidden() || matches!(err, GraphError::Config { .. }))
}

/// The note an unreadable Azure scope leaves on its roles: the permission and the scope.
fn azure_unreadable_note(read: &ResourceRead, err: &GraphError) -> String {
    let ResourceRead::AzureRoleHolders { scope, mode } = read else {
        return stable_message(err);
    };
    if let GraphError::Config { .. } = err {
        return "not verified: no Azure Resource Manager URL is configured (set --arm-url / REDELIVER_ARM_URL)".into();
    }
    let permission = if *mode == crate::engine::RoleMode::Eligible {
        "Microsoft.Authorization/roleEligibilityScheduleInstances/read"
    } else {
        "Microsoft.Authorization/roleAssignments/read"
    };
    format!(
        "not verified: Azure Resource Manager refused the read (forbidden); grant the app {permission} on {scope} (the Reader role there)"
    )
}

/// One resource read (all pages): a group's members or owners, a service principal's app
/// role assignments, a role's or a group eligibility's holders. Owns nothing of the
/// observer, so a background refresh can run it on its own task.
async fn read_resource(
    graph: &GraphClient,
    clock: &dyn Clock,
    read: &ResourceRead,
) -> Result<ReadData, GraphError> {
    Ok(match read {
        ResourceRead::GroupMembers(g) => ReadData::Ids(Arc::new(
            graph.list_group_members(g).await?.into_iter().collect(),
        )),
        ResourceRead::GroupOwners(g) => ReadData::Ids(Arc::new(
            graph.list_group_owners(g).await?.into_iter().collect(),
        )),
        ResourceRead::AppRoleAssignments(sp) => ReadData::Pairs(Arc::new(
            graph
                .list_app_role_assignments(sp)
                .await?
                .into_iter()
                .map(|a| (a.principal_id, a.app_role_id))
                .collect(),
        )),
        ResourceRead::DirectoryRoleHolders {
            role_definition_id,
            mode,
        } => ReadData::Pairs(Arc::new(
            graph
                .list_directory_role_holders(
                    role_definition_id,
                    *mode == crate::engine::RoleMode::Eligible,
                )
                .await?
                .into_iter()
                // A holder without a scope holds it tenant-wide, as `/` says.
                .map(|h| {
                    let scope = h
                        .directory_scope_id
                        .filter(|s| !s.is_empty())
                        .unwrap_or_else(|| crate::engine::DIRECTORY_ROOT.to_string());
                    (h.principal_id, scope)
                })
                .collect(),
        )),
        ResourceRead::AzureRoleHolders { scope, mode } => ReadData::Pairs(Arc::new(
            graph
                .list_azure_role_holders(scope, *mode == crate::engine::RoleMode::Eligible)
                .await?
                .into_iter()
                .filter_map(|h| {
                    let p = h.properties;
                    let guid = p.role_definition_id.rsplit('/').next()?.to_string();
                    let at = if p.scope.is_empty() {
                        scope.clone()
                    } else {
                        p.scope
                    };
                    Some((p.principal_id, crate::engine::azure_holding(&guid, &at)))
                })
                .collect(),
        )),
        ResourceRead::GroupEligibilities { group_id, access } => {
            let now = clock.now();
            ReadData::Pairs(Arc::new(
                graph
                    .list_group_eligibilities(group_id, access.access_id())
                    .await?
                    .into_iter()
                    // Judged at read time: one whose end has passed ended on schedule.
                    .map(|s| {
                        let state = match s.end() {
                            Some(end) if end <= now => {
                                crate::engine::eligibility_ended(&end.to_string())
                            }
                            _ => crate::engine::ELIGIBILITY_IN_EFFECT.to_string(),
                        };
                        (s.principal_id, state)
                    })
                    .collect(),
            ))
        }
    })
}

/// The package itself, read once per age bound and shared (with its view, and with
/// [`Observer::package_promises`]).
async fn package_head(
    graph: &GraphClient,
    heads: &Heads,
    package_id: &str,
) -> Result<Arc<AccessPackage>, ObserveError> {
    heads
        .get_or_read(package_id.to_string(), || async {
            match graph.get_access_package(package_id).await {
                Ok(Some(package)) => Ok(Ok(Arc::new(package))),
                Ok(None) => Ok(Err(ResolveFailure::new(
                    ResolveFailureKind::PackageNotFound,
                    format!("spec.accessPackage.id: no access package with id {package_id}"),
                ))),
                Err(e) => forbidden_as_failure(e, "spec.accessPackage").map(Err),
            }
        })
        .await?
        .map_err(ObserveError::Resolve)
}

/// Reads one package's view: the package, its policies and its assignments. Owns what it
/// uses, so a background refresh can run it on its own task.
async fn read_package_view(
    graph: GraphClient,
    heads: Arc<Heads>,
    package_id: String,
) -> Result<Result<Arc<PackageView>, ResolveFailure>, GraphError> {
    let field = "spec.accessPackage";
    let package = match package_head(&graph, &heads, &package_id).await {
        Ok(package) => AccessPackage::clone(&package),
        Err(ObserveError::Resolve(f)) => return Ok(Err(f)),
        Err(ObserveError::Graph(e)) => return Err(e),
    };
    let reads = tokio::try_join!(
        graph.list_policies(&package_id),
        graph.list_assignments(&package_id),
    );
    let (policies, assignments) = match reads {
        Ok(r) => r,
        Err(e) => return forbidden_as_failure(e, field).map(Err),
    };
    let resources = promised_resources(package.resource_role_scopes.as_deref().unwrap_or(&[]));
    Ok(Ok(Arc::new(PackageView::new(
        package,
        resources,
        policies,
        assignments,
    ))))
}

fn describe_packages<'a>(packages: impl IntoIterator<Item = &'a AccessPackage>) -> String {
    packages
        .into_iter()
        .map(|p| {
            format!(
                "catalog '{}' (id {})",
                p.catalog
                    .as_ref()
                    .and_then(|c| c.display_name.as_deref())
                    .unwrap_or("?"),
                p.id
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `at` on tokio's clock (the cache's); `None` when it lies in the future, where no read
/// can have been made after it yet — reading now is then the best there is.
fn instant_of(at: jiff::Timestamp, now: jiff::Timestamp) -> Option<tokio::time::Instant> {
    let age = now.duration_since(at);
    let age = Duration::try_from(age).ok()?;
    tokio::time::Instant::now().checked_sub(age)
}

/// A sentence about a Graph failure that is the same on every pass (no request ids or
/// timings), because it lands in status and a changing status would be rewritten on
/// every verification. Request ids go to the logs instead.
pub fn stable_message(err: &GraphError) -> String {
    let code = err.code().map(|c| format!(": {c}")).unwrap_or_default();
    if err.is_forbidden() {
        let hint = crate::graph::error::permission_hint(err.operation().unwrap_or_default());
        format!("Graph refused the call (forbidden{code}); the app likely lacks {hint}")
    } else {
        format!("Graph call failed ({}{code})", err.kind())
    }
}

/// The one classification of a failed write, for the controller and audit alike: a refusal
/// (403, another final 4xx) is a failure the engine records as `Stalled`; anything else
/// (throttling, 5xx, transport) is `None`, to be retried.
pub fn action_failure(err: &GraphError) -> Option<crate::engine::ActionFailure> {
    use crate::engine::{ActionFailure, ActionFailureKind};
    err.is_refusal().then(|| ActionFailure {
        kind: if err.is_forbidden() {
            ActionFailureKind::Forbidden
        } else {
            ActionFailureKind::Rejected
        },
        // Lands in status: a stable sentence (the request id goes to the log).
        message: stable_message(err),
    })
}

/// A 403 will not fix itself: it becomes a failure reported on the object (and cached).
/// Anything else is handed back to be retried later.
fn forbidden_as_failure(err: GraphError, field: &str) -> Result<ResolveFailure, GraphError> {
    if err.is_forbidden() {
        tracing::warn!(error = %err, "Graph refused a read");
        Ok(ResolveFailure::new(
            ResolveFailureKind::Forbidden,
            format!("{field}: {}", stable_message(&err)),
        ))
    } else {
        Err(err)
    }
}

/// Where observations come from. One cache (`Memo`, inside [`Observer`]) answers "how
/// long is a read shared", with two settings: `redeliver audit` shares each read for one
/// pass (it refreshes between passes); the controller's `Observations` for a bounded window
/// across objects, dropping what a write may have changed. Both feed [`observe_assignment`] and
/// [`observe_guard`], so `redeliver audit` and the operator compute the same engine input
/// from the same tenant state.
pub trait Reads: Sync {
    /// The package's id (by id, or by display name and catalog).
    fn package_id(
        &self,
        selector: &AccessPackageSelector,
    ) -> impl std::future::Future<Output = Result<String, ObserveError>> + Send;
    /// The package, what it promises, its policies and its assignments.
    fn view(
        &self,
        package_id: &str,
    ) -> impl std::future::Future<Output = Result<Arc<PackageView>, ObserveError>> + Send;
    /// What the package promises, the same as its view's `resources`. An implementation
    /// that can answer before the package's assignments are read lets the membership reads
    /// run alongside those pages; by default it waits for the view.
    fn promises(
        &self,
        package_id: &str,
    ) -> impl std::future::Future<Output = Result<Vec<PromisedResource>, ObserveError>> + Send {
        async move { self.view(package_id).await.map(|v| v.resources.clone()) }
    }
    /// The package's assignment requests.
    fn requests(
        &self,
        package_id: &str,
    ) -> impl std::future::Future<Output = Result<Arc<[AssignmentRequest]>, ObserveError>> + Send;
    /// The target user's object id.
    fn target(
        &self,
        selector: &TargetSelector,
    ) -> impl std::future::Future<Output = Result<String, ObserveError>> + Send;
    /// The memberships of `resources`; the reads `fresh` names must have been made after
    /// its moment (checking on a reprocess: a copy from before it was sent would still show
    /// the resource missing).
    fn memberships(
        &self,
        resources: &[PromisedResource],
        fresh: Option<&crate::engine::FreshAfter>,
    ) -> impl std::future::Future<Output = Snapshot> + Send;
    /// One request, read now, with its assignment.
    fn request(
        &self,
        id: &str,
    ) -> impl std::future::Future<Output = Result<Option<AssignmentRequest>, GraphError>> + Send;
    /// The reads of `resources` that must be made again for `user` (for anyone's: `None`,
    /// as a guard sweeping every assignment) because a change concerning them was reported
    /// after the copy at hand may have been read (a group delta poll saw the user removed
    /// or added). None by default: a pass reads everything fresh.
    fn changed_for(
        &self,
        _user: Option<&str>,
        _resources: &[PromisedResource],
    ) -> Option<crate::engine::FreshAfter> {
        None
    }
}

impl Reads for Observer {
    async fn package_id(&self, selector: &AccessPackageSelector) -> Result<String, ObserveError> {
        self.resolve_package_id(selector).await
    }

    async fn view(&self, package_id: &str) -> Result<Arc<PackageView>, ObserveError> {
        self.package_view(package_id).await
    }

    async fn promises(&self, package_id: &str) -> Result<Vec<PromisedResource>, ObserveError> {
        self.package_promises(package_id).await
    }

    async fn requests(&self, package_id: &str) -> Result<Arc<[AssignmentRequest]>, ObserveError> {
        self.package_requests(package_id).await
    }

    async fn target(&self, selector: &TargetSelector) -> Result<String, ObserveError> {
        self.resolve_target(selector).await
    }

    /// Within one pass every read is shared; a pass starts with [`Observer::refresh`], so
    /// each pass reads fresh anyway.
    async fn memberships(
        &self,
        resources: &[PromisedResource],
        _fresh: Option<&crate::engine::FreshAfter>,
    ) -> Snapshot {
        self.snapshot(resources).await
    }

    async fn request(&self, id: &str) -> Result<Option<AssignmentRequest>, GraphError> {
        self.graph.get_request(id).await
    }
}

/// What the cross-check with Microsoft's access drift report found for one declaration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriftNotes {
    /// Notes for the Delivered message: each disagreement, or that the report is
    /// unavailable.
    pub notes: Vec<String>,
    /// How many of the notes are disagreements.
    pub disagreements: usize,
}

/// Compares Microsoft's access drift report for the package's catalog (read once per pass
/// or window for every declaration of the catalog) with this observation's own read. The
/// controller and `redeliver audit` both call it, so they say the same.
pub async fn drift_report_notes(
    observer: &Observer,
    observed: &AssignmentObservation,
) -> DriftNotes {
    let (Ok(ids), Some(view)) = (&observed.resolved, &observed.view) else {
        return DriftNotes::default();
    };
    let Some(catalog) = view.package.catalog.as_ref().map(|c| c.id.as_str()) else {
        return DriftNotes::default();
    };
    match observer.access_drift(catalog).await {
        Ok(report) => {
            let who = ids.target_name.as_deref().unwrap_or(&ids.target_object_id);
            let notes = crate::engine::drift_report_disagreements(
                &report,
                observed.resources(),
                &observed.snapshot,
                &ids.target_object_id,
                who,
            );
            DriftNotes {
                disagreements: notes.len(),
                notes,
            }
        }
        Err(why) => DriftNotes {
            notes: vec![crate::engine::drift_report_unavailable(&why)],
            disagreements: 0,
        },
    }
}

/// [`drift_report_notes`] for a guard: every delivered assignment of its package.
pub async fn guard_drift_report_notes(
    observer: &Observer,
    observed: &GuardObservation,
) -> DriftNotes {
    let Some(view) = &observed.view else {
        return DriftNotes::default();
    };
    let Some(catalog) = view.package.catalog.as_ref().map(|c| c.id.as_str()) else {
        return DriftNotes::default();
    };
    match observer.access_drift(catalog).await {
        Ok(report) => {
            let (notes, disagreements) = crate::engine::guard_drift_report_disagreements(
                &report,
                observed.resources(),
                &observed.snapshot,
                observed.assignments(),
            );
            DriftNotes {
                notes,
                disagreements,
            }
        }
        Err(why) => DriftNotes {
            notes: vec![crate::engine::drift_report_unavailable(&why)],
            disagreements: 0,
        },
    }
}

/// Everything [`crate::engine::plan_assignment`] needs from Graph for one declaration.
#[derive(Debug, Clone, PartialEq)]
pub struct AssignmentObservation {
    /// The ids the declaration resolved to, or why it did not.
    pub resolved: Result<crate::engine::ResolvedIds, ResolveFailure>,
    /// The package as read, when it resolved.
    pub view: Option<Arc<PackageView>>,
    /// The target's assignment of the package.
    pub assignment: Option<Assignment>,
    /// Its latest request, read only where the plan can depend on one.
    pub latest_request: Option<AssignmentRequest>,
    /// Memberships of what the package promises.
    pub snapshot: Snapshot,
}

impl AssignmentObservation {
    fn failed(failure: ResolveFailure) -> Self {
        Self {
            resolved: Err(failure),
            view: None,
            assignment: None,
            latest_request: None,
            snapshot: Snapshot::new(),
        }
    }

    /// What the package promises (empty when it did not resolve).
    pub fn resources(&self) -> &[PromisedResource] {
        self.view.as_ref().map_or(&[], |v| v.resources.as_slice())
    }
}

/// Reads what one `AccessPackageAssignment` needs, as little as possible: resolution
/// (the target through the package's own assignments when one names it, so a user whose
/// assignment is healthy costs no user read; one that may be written to is confirmed to
/// still exist), the package view, the promised memberships (those a reprocess should
/// restore read after it was sent, while it is being checked), and the latest request only where the plan can depend on
/// one (the request this object submitted is read directly). `Err` is a Graph failure
/// worth retrying; a declaration that cannot be satisfied as written is `Ok` with
/// `resolved: Err(..)`.
pub async fn observe_assignment(
    reads: &impl Reads,
    spec: &crate::api::AccessPackageAssignmentSpec,
    previous: Option<&crate::api::AccessPackageAssignmentStatus>,
) -> Result<AssignmentObservation, GraphError> {
    if crate::api::validate_assignment_spec(spec).is_err() {
        // An invalid declaration never reaches Graph; the engine reports the field.
        return Ok(AssignmentObservation::failed(ResolveFailure::new(
            ResolveFailureKind::InvalidSpec,
            "invalid declaration",
        )));
    }
    let split = |r: ObserveError| match r {
        ObserveError::Resolve(f) => Ok(AssignmentObservation::failed(f)),
        ObserveError::Graph(e) => Err(e),
    };
    let package_id = match reads.package_id(&spec.access_package).await {
        Ok(id) => id,
        Err(e) => return split(e),
    };
    // Not side by side with the memberships, unlike a guard: a declaration whose target
    // turns out not to exist must not cost its package's membership reads.
    let view = match reads.view(&package_id).await {
        Ok(v) => v,
        Err(e) => return split(e),
    };
    let holder = view.holder(&spec.target);
    let mut target = match &holder {
        Some(id) => id.clone(),
        None => match reads.target(&spec.target).await {
            Ok(t) => t,
            Err(e) => return split(e),
        },
    };
    let policy = Observer::resolve_policy(&view, spec.assignment_policy.as_deref());
    let mut assignment = view.assignment_for(&target);
    let fresh = crate::engine::FreshAfter::merge(
        crate::engine::fresh_reads(previous, &view.resources),
        reads.changed_for(Some(&target), &view.resources),
    );
    let snapshot = reads.memberships(&view.resources, fresh.as_ref()).await;
    let healthy = !crate::engine::needs_latest_request(
        assignment.as_ref(),
        &view.resources,
        &snapshot,
        &target,
    );
    if holder.is_some() && !healthy {
        // A write may follow: make sure the user still exists. A deleted user's assignment
        // can outlive them, and reprocessing it would be pointless.
        target = match reads.target(&spec.target).await {
            Ok(t) => t,
            Err(e) => return split(e),
        };
        assignment = view.assignment_for(&target);
    }
    let latest_request = match previous.and_then(|s| s.last_request_id.as_deref()) {
        // The request this object submitted: read directly, fresh and with its target.
        Some(id) => reads.request(id).await?,
        // A delivered assignment with everything present plans the same with or without a
        // request: don't read (and hold) the package's requests for it.
        None if healthy => None,
        None => match reads.requests(&package_id).await {
            Ok(requests) => view.latest_request_for(&requests, &target),
            Err(e) => return split(e),
        },
    };
    Ok(AssignmentObservation {
        resolved: Ok(crate::engine::ResolvedIds {
            access_package_id: package_id,
            access_package_name: view.package.display_name.clone(),
            policy,
            target_object_id: target,
            target_name: spec.target.user_principal_name.clone(),
        }),
        view: Some(view),
        assignment,
        latest_request,
        snapshot,
    })
}

/// A package's view and the memberships of what it promises, read side by side: the
/// membership reads start as soon as the package itself is known (its
/// `resourceRoleScopes`), while its policy and assignment pages are still arriving; they
/// do not depend on each other. The snapshot is `None` when it could not be taken that
/// way (the promises failed, or differ from the view's: then the caller reads it from the
/// view), so the result is what reading one after the other would give, with the same
/// requests.
async fn view_and_memberships(
    reads: &impl Reads,
    package_id: &str,
) -> (Result<Arc<PackageView>, ObserveError>, Option<Snapshot>) {
    let memberships = async {
        let promised = reads.promises(package_id).await.ok()?;
        let fresh = reads.changed_for(None, &promised);
        let snapshot = reads.memberships(&promised, fresh.as_ref()).await;
        Some((promised, snapshot))
    };
    let (view, early) = tokio::join!(reads.view(package_id), memberships);
    let snapshot = match (&view, early) {
        (Ok(view), Some((promised, snapshot))) if promised == view.resources => Some(snapshot),
        _ => None,
    };
    (view, snapshot)
}

/// Everything [`crate::engine::plan_guard_sweep`] needs from Graph for one guard.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardObservation {
    /// The package's id and display name, or why it did not resolve.
    pub resolved: Result<(String, Option<String>), ResolveFailure>,
    /// The package as read (every assignment), when it resolved.
    pub view: Option<Arc<PackageView>>,
    /// Memberships of what the package promises.
    pub snapshot: Snapshot,
}

impl GuardObservation {
    /// Every assignment of the package (empty when it did not resolve).
    pub fn assignments(&self) -> &[Assignment] {
        self.view.as_ref().map_or(&[], |v| v.assignments.as_slice())
    }

    /// What the package promises (empty when it did not resolve).
    pub fn resources(&self) -> &[PromisedResource] {
        self.view.as_ref().map_or(&[], |v| v.resources.as_slice())
    }
}

/// Reads what one `AccessPackageGuard` sweep needs: the package with every assignment and
/// the memberships of what it promises, each read once and shared.
pub async fn observe_guard(
    reads: &impl Reads,
    spec: &crate::api::AccessPackageGuardSpec,
) -> Result<GuardObservation, GraphError> {
    let failed = |f| GuardObservation {
        resolved: Err(f),
        view: None,
        snapshot: Snapshot::new(),
    };
    if crate::api::validate_guard_spec(spec).is_err() {
        return Ok(failed(ResolveFailure::new(
            ResolveFailureKind::InvalidSpec,
            "invalid declaration",
        )));
    }
    let (view, early) = match reads.package_id(&spec.access_package).await {
        // Boxed: the two reads side by side make a large future, and a reconcile's future
        // nests it (a debug build's test thread overflowed its stack without).
        Ok(id) => Box::pin(view_and_memberships(reads, &id)).await,
        Err(e) => (Err(e), None),
    };
    match view {
        Ok(view) => {
            let snapshot = match early {
                Some(snapshot) => snapshot,
                None => {
                    let fresh = reads.changed_for(None, &view.resources);
                    reads.memberships(&view.resources, fresh.as_ref()).await
                }
            };
            Ok(GuardObservation {
                resolved: Ok((view.package.id.clone(), view.package.display_name.clone())),
                view: Some(view),
                snapshot,
            })
        }
        Err(ObserveError::Resolve(f)) => Ok(failed(f)),
        Err(ObserveError::Graph(e)) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The view's index finds a target's assignments as the scan did: by object id or
    /// principal name with ASCII case ignored, every assignment of the target (the pick
    /// ranks them), and nothing for a stranger.
    #[test]
    fn a_view_finds_each_targets_assignments_by_id_or_name_ignoring_case() {
        let assignment = |id: &str, oid: Option<&str>, upn: Option<&str>, state: &str| {
            serde_json::from_value::<Assignment>(serde_json::json!({
                "id": id, "state": state,
                "target": {"objectId": oid, "principalName": upn},
            }))
            .unwrap()
        };
        let package: AccessPackage =
            serde_json::from_value(serde_json::json!({"id": "p"})).unwrap();
        let mut assignments: Vec<Assignment> = (0..200)
            .map(|i| {
                let oid = format!("{i:08x}-AAAA");
                let upn = format!("User{i}@Contoso.com");
                assignment(&format!("a{i}"), Some(&oid), Some(&upn), "delivered")
            })
            .collect();
        // Listed first, so a lookup that stopped at the first match would pick it.
        assignments.insert(0, assignment("old", Some("00000007-aaaa"), None, "expired"));
        assignments.push(assignment(
            "nobody",
            None,
            Some("ghost@contoso.com"),
            "delivered",
        ));
        let view = PackageView::new(package, Vec::new(), Vec::new(), assignments);

        let by_id = |id: &str| TargetSelector {
            object_id: Some(id.into()),
            user_principal_name: None,
        };
        let by_upn = |upn: &str| TargetSelector {
            object_id: None,
            user_principal_name: Some(upn.into()),
        };
        let holder = |t: TargetSelector| view.holder(&t).map(|id| id.to_ascii_lowercase());
        assert_eq!(
            holder(by_id("00000007-AAAA")).as_deref(),
            Some("00000007-aaaa")
        );
        assert_eq!(
            holder(by_upn("user7@contoso.COM")).as_deref(),
            Some("00000007-aaaa")
        );
        assert_eq!(
            holder(by_upn("user8@contoso.com")).as_deref(),
            Some("00000008-aaaa")
        );
        assert_eq!(
            view.holder(&by_upn("ghost@contoso.com")),
            None,
            "no object id"
        );
        assert_eq!(view.holder(&by_id("ffffffff-aaaa")), None);
        // Both of user 7's assignments are candidates: the delivered one wins, whichever
        // case the id is asked in.
        let picked = view.assignment_for("00000007-aaaa").unwrap();
        assert_eq!(picked.id, "a7");
        assert_eq!(view.assignment_for("000000C7-AAAA").unwrap().id, "a199");
        assert!(view.assignment_for("ffffffff-aaaa").is_none());
    }

    /// An expired entry is read again in the background while everyone is served the
    /// previous value, once; the new value replaces it when it lands; a refresh that fails
    /// keeps the previous value only up to twice the age bound, then a caller reads itself.
    #[tokio::test(start_paused = true)]
    async fn an_expired_view_is_refreshed_in_the_background_while_the_previous_is_served() {
        let max_age = Duration::from_secs(30);
        let memo: Memo<&str, u32> = Memo::new(Some(max_age));
        let reads = Arc::new(AtomicUsize::new(0));
        // Each read takes 5 s and answers how many reads came before it; `fail` makes it
        // a transient Graph error.
        let read = |fail: bool| {
            let reads = reads.clone();
            move || async move {
                let n = reads.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(5)).await;
                if fail {
                    return Err(GraphError::Throttled {
                        operation: "test",
                        retry_after: None,
                        request_id: None,
                    });
                }
                Ok(u32::try_from(n).unwrap())
            }
        };
        // Nothing cached: the caller reads.
        assert_eq!(memo.get_or_refresh("p", read(false)).await.unwrap(), 0);

        tokio::time::advance(max_age).await;
        // Expired: served at once from the previous value, one refresh started...
        assert_eq!(memo.get_or_refresh("p", read(false)).await.unwrap(), 0);
        assert_eq!(memo.get_or_refresh("p", read(false)).await.unwrap(), 0);
        tokio::task::yield_now().await;
        assert_eq!(
            reads.load(Ordering::SeqCst),
            2,
            "one refresh for both callers"
        );
        // ...and its value replaces the previous one when it lands.
        tokio::time::advance(Duration::from_secs(6)).await;
        tokio::task::yield_now().await;
        assert_eq!(memo.get_or_refresh("p", read(false)).await.unwrap(), 1);

        // A refresh that fails: the previous value is served up to twice the bound...
        tokio::time::advance(max_age).await;
        assert_eq!(memo.get_or_refresh("p", read(true)).await.unwrap(), 1);
        tokio::time::advance(Duration::from_secs(6)).await;
        tokio::task::yield_now().await;
        assert_eq!(memo.get_or_refresh("p", read(false)).await.unwrap(), 1);
        assert_eq!(
            reads.load(Ordering::SeqCst),
            3,
            "no second refresh while one failed"
        );
        // ...then a caller waits for its own read.
        tokio::time::advance(max_age).await;
        assert_eq!(memo.get_or_refresh("p", read(false)).await.unwrap(), 3);
    }

    /// Once the refresh has landed the cache no longer holds the value it replaced (kept,
    /// it would double the memory of every large read).
    #[tokio::test(start_paused = true)]
    async fn a_landed_refresh_lets_go_of_the_previous_value() {
        let max_age = Duration::from_secs(30);
        let memo: Memo<&str, Arc<String>> = Memo::new(Some(max_age));
        let read = |v: &'static str| {
            move || async move {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok::<_, GraphError>(Arc::new(v.to_string()))
            }
        };
        let old = memo.get_or_refresh("p", read("old")).await.unwrap();
        tokio::time::advance(max_age).await;
        let served = memo.get_or_refresh("p", read("new")).await.unwrap();
        assert!(Arc::ptr_eq(&served, &old));
        drop(served);
        assert_eq!(Arc::strong_count(&old), 2, "the cache serves it meanwhile");
        // The refresh's task starts its 5 s read when it is first polled: let it.
        for _ in 0..10 {
            tokio::time::advance(Duration::from_secs(1)).await;
            tokio::task::yield_now().await;
        }
        assert_eq!(Arc::strong_count(&old), 1, "only this test holds it now");
        assert_eq!(*memo.get_or_refresh("p", read("x")).await.unwrap(), "new");
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_older_than_since_is_made_again_once_for_everyone() {
        let memo: Memo<&str, u32> = Memo::new(Some(Duration::from_secs(30)));
        let reads = AtomicUsize::new(0);
        let read = || async {
            Ok::<_, GraphError>(u32::try_from(reads.fetch_add(1, Ordering::SeqCst)).unwrap())
        };
        assert_eq!(memo.get_or_read("g", read).await.unwrap(), 0);
        tokio::time::advance(Duration::from_secs(5)).await;
        let sent = tokio::time::Instant::now();
        tokio::time::advance(Duration::from_secs(1)).await;
        // Within max_age the copy is shared...
        assert_eq!(memo.get_or_read("g", read).await.unwrap(), 0);
        // ...but not for a caller that needs a read made after `sent`.
        assert_eq!(
            memo.get_or_read_since("g", Some(sent), read).await.unwrap(),
            1
        );
        // The new read replaced the old one: the next such caller, and everyone else, get it.
        assert_eq!(
            memo.get_or_read_since("g", Some(sent), read).await.unwrap(),
            1
        );
        assert_eq!(memo.get_or_read("g", read).await.unwrap(), 1);
        assert_eq!(reads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_controllers_cache_drops_expired_entries_as_it_grows_and_is_capped() {
        let memo: Memo<u32, u32> = Memo::new(Some(Duration::from_secs(30)));
        let read = || async { Ok::<_, GraphError>(0) };
        for k in 0..2000 {
            memo.get_or_read(k, read).await.unwrap();
        }
        tokio::time::advance(Duration::from_secs(31)).await;
        // Expired entries go at the next pass (the map doubled since the last one), not
        // on every miss.
        for k in 2000..2100 {
            memo.get_or_read(k, read).await.unwrap();
        }
        assert!(memo.len().await <= 2100);
        for k in 2100..4200 {
            memo.get_or_read(k, read).await.unwrap();
        }
        assert!(memo.len().await < 2300, "{}", memo.len().await);
        // Never more than the cap, however many fresh keys.
        for k in 0..(MEMO_MAX_ENTRIES as u32 + 10) {
            memo.get_or_read(k + 10_000, read).await.unwrap();
        }
        assert!(memo.len().await <= MEMO_MAX_ENTRIES);
        // The audit's (no age bound) keeps everything for its pass.
        let audit: Memo<u32, u32> = Memo::new(None);
        for k in 0..(MEMO_MAX_ENTRIES as u32 + 10) {
            audit.get_or_read(k, read).await.unwrap();
        }
        assert_eq!(audit.len().await, MEMO_MAX_ENTRIES + 10);
    }
}
