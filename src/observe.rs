//! Observation: turns declarations into what the engine needs, reading Graph as little
//! as possible.
//!
//! Everything here is shared by `redeliver audit` and the controller:
//! - resolution of display names to ids (package, policy, user), cached per run;
//! - one read per access package of its resources, assignments and requests;
//! - one paged read per *resource* (group members/owners, app role assignments), shared by
//!   every assignment that promises it — never one read per user.

pub mod delta;

use std::collections::HashMap;

use futures::StreamExt;
use std::sync::Arc;

use tokio::sync::{Mutex, OnceCell};

use crate::api::{AccessPackageSelector, PolicySelector, TargetSelector};
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
#[derive(Debug, Clone)]
pub struct PackageView {
    pub package: AccessPackage,
    pub resources: Vec<PromisedResource>,
    pub policies: Vec<AssignmentPolicy>,
    pub assignments: Vec<Assignment>,
}

impl PackageView {
    /// Display name, falling back to the id.
    pub fn name(&self) -> &str {
        self.package
            .display_name
            .as_deref()
            .unwrap_or(&self.package.id)
    }

    /// The target's current assignment, chosen by [`crate::engine::pick_assignment`]
    /// among the target's assignments of this package.
    pub fn assignment_for(&self, target_object_id: &str) -> Option<Assignment> {
        let mine: Vec<Assignment> = self
            .assignments
            .iter()
            .filter(|a| {
                a.target
                    .as_ref()
                    .and_then(|t| t.object_id.as_deref())
                    .is_some_and(|id| id.eq_ignore_ascii_case(target_object_id))
            })
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

/// A package looked up by (display name, catalog).
type PackageName = (String, Option<String>);

/// Reads Graph for the engine, with per-run caches so each object is read once.
pub struct Observer {
    graph: GraphClient,
    concurrency: usize,
    packages_by_name: Memo<PackageName, Result<String, ResolveFailure>>,
    users: Memo<String, Result<String, ResolveFailure>>,
    views: Memo<String, Result<Arc<PackageView>, ResolveFailure>>,
    requests: Memo<String, Result<Arc<[AssignmentRequest]>, ResolveFailure>>,
}

/// A single-flight cache: concurrent lookups of one key share one Graph read. Outcomes
/// that will not change by asking again (found, not found, ambiguous, forbidden) are kept;
/// transient Graph errors are not, so the next caller tries again.
struct Memo<K, V> {
    cells: Mutex<HashMap<K, Arc<OnceCell<V>>>>,
}

impl<K: std::hash::Hash + Eq, V: Clone> Memo<K, V> {
    fn new() -> Self {
        Self {
            cells: Mutex::new(HashMap::new()),
        }
    }

    async fn get_or_read<F, Fut>(&self, key: K, read: F) -> Result<V, GraphError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<V, GraphError>>,
    {
        let cell = self.cells.lock().await.entry(key).or_default().clone();
        cell.get_or_try_init(read).await.cloned()
    }

    async fn clear(&self) {
        self.cells.lock().await.clear();
    }
}

impl Observer {
    /// `concurrency` bounds the resource reads in flight at once.
    pub fn new(graph: GraphClient, concurrency: usize) -> Self {
        Self {
            graph,
            concurrency: concurrency.max(1),
            packages_by_name: Memo::new(),
            users: Memo::new(),
            views: Memo::new(),
            requests: Memo::new(),
        }
    }

    /// How many reads this observer runs at once.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// The Graph client, for acting on a plan.
    pub fn graph(&self) -> &GraphClient {
        &self.graph
    }

    /// Forgets the per-package reads (assignments, requests) so the next pass sees fresh
    /// state; name resolutions are kept for the whole run.
    pub async fn refresh(&self) {
        self.views.clear().await;
        self.requests.clear().await;
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
                    String::new()
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

    /// Reads one package with its resources, policies and assignments (cached until
    /// [`Observer::refresh`]).
    ///
    /// The view is shared (`Arc`), not copied: a large package's assignments take a lot of
    /// memory, and every declaration of the package looks at the same one.
    pub async fn package_view(&self, package_id: &str) -> Result<Arc<PackageView>, ObserveError> {
        self.views
            .get_or_read(package_id.to_string(), || {
                self.read_package_view(package_id)
            })
            .await?
            .map_err(ObserveError::Resolve)
    }

    async fn read_package_view(
        &self,
        package_id: &str,
    ) -> Result<Result<Arc<PackageView>, ResolveFailure>, GraphError> {
        let field = "spec.accessPackage";
        let package = match self.graph.get_access_package(package_id).await {
            Ok(Some(package)) => package,
            Ok(None) => {
                return Ok(Err(ResolveFailure::new(
                    ResolveFailureKind::PackageNotFound,
                    format!("spec.accessPackage.id: no access package with id {package_id}"),
                )));
            }
            Err(e) => return forbidden_as_failure(e, field).map(Err),
        };
        let reads = tokio::try_join!(
            self.graph.list_policies(package_id),
            self.graph.list_assignments(package_id),
        );
        let (policies, assignments) = match reads {
            Ok(r) => r,
            Err(e) => return forbidden_as_failure(e, field).map(Err),
        };
        let resources = promised_resources(package.resource_role_scopes.as_deref().unwrap_or(&[]));
        Ok(Ok(Arc::new(PackageView {
            package,
            resources,
            policies,
            assignments,
        })))
    }

    /// The assignment requests of one package (cached until [`Observer::refresh`]), read
    /// only when a declaration needs one: to follow a delivery in flight or to reprocess a
    /// failed request.
    pub async fn package_requests(
        &self,
        package_id: &str,
    ) -> Result<Arc<[AssignmentRequest]>, ObserveError> {
        self.requests
            .get_or_read(package_id.to_string(), || async {
                match self.graph.list_requests(package_id).await {
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
                        "spec.assignmentPolicy.displayName: package '{package}' has no policy named '{name}'; its policies are {}",
                        describe()
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
                    Ok(None) => Ok(Err(ResolveFailure::new(
                        ResolveFailureKind::TargetNotFound,
                        format!("{field}: no user '{key}' in the tenant"),
                    ))),
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
        let reads = crate::engine::reads_needed(resources);
        let results: Vec<(ResourceRead, Result<ReadData, GraphError>)> =
            futures::stream::iter(reads)
                .map(|read| async move {
                    let result = self.read_resource(&read).await;
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
        Ok(match read {
            ResourceRead::GroupMembers(g) => ReadData::Ids(Arc::new(
                self.graph
                    .list_group_members(g)
                    .await?
                    .into_iter()
                    .collect(),
            )),
            ResourceRead::GroupOwners(g) => ReadData::Ids(Arc::new(
                self.graph.list_group_owners(g).await?.into_iter().collect(),
            )),
            ResourceRead::AppRoleAssignments(sp) => ReadData::Pairs(Arc::new(
                self.graph
                    .list_app_role_assignments(sp)
                    .await?
                    .into_iter()
                    .map(|a| (a.principal_id, a.app_role_id))
                    .collect(),
            )),
        })
    }
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
