//! Graph reads for the controller, shared across objects within a bounded window.
//!
//! Many objects point at the same package and the same groups; within `max_age` a package,
//! its policies, a name resolution and each resource's membership are read once and served to
//! every object that needs them — one paged read per *resource*, never one per user. After the
//! controller writes to Graph for a package it drops that package's cached requests and
//! memberships, so the next pass sees the effect.
//
// `crate::observe::Observer` does the same job for one-shot `audit` runs; this cache adds the
// bounded age a long-running controller needs.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::api::{AccessPackageSelector, PolicySelector, TargetSelector};
use crate::engine::{
    PromisedResource, ResolveFailure, ResolveFailureKind, ResourceRead, Snapshot,
    promised_resources, reads_needed,
};
use crate::graph::models::{AccessPackage, AssignmentPolicy, AssignmentRequest};
use crate::graph::{GraphClient, GraphError};

/// A read that either resolved, or says why the declaration cannot be satisfied as written.
pub type Resolution<T> = Result<T, ResolveFailure>;

/// A package as read from Graph, with what it promises decoded.
#[derive(Debug, Clone)]
pub struct PackageInfo {
    /// The package (resource role scopes expanded).
    pub package: AccessPackage,
    /// What it promises.
    pub resources: Vec<PromisedResource>,
}

impl PackageInfo {
    /// Display name, falling back to the id.
    pub fn name(&self) -> String {
        self.package
            .display_name
            .clone()
            .unwrap_or_else(|| self.package.id.clone())
    }
}

/// A resolved user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    /// Directory object id.
    pub id: String,
    /// User principal name, when Graph returned it.
    pub name: Option<String>,
}

#[derive(Debug, Clone)]
enum ReadData {
    Ids(Vec<String>),
    Pairs(Vec<(String, String)>),
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

/// The controller's Graph read cache. Cheap to share behind an `Arc`.
pub struct Observations {
    graph: GraphClient,
    concurrency: usize,
    package_names: TtlCache<(String, Option<String>), Resolution<String>>,
    packages: TtlCache<String, Resolution<Arc<PackageInfo>>>,
    policies: TtlCache<String, Arc<Vec<AssignmentPolicy>>>,
    requests: TtlCache<String, Arc<Vec<AssignmentRequest>>>,
    users: TtlCache<String, Resolution<ResolvedUser>>,
    reads: TtlCache<ResourceRead, Result<ReadData, String>>,
}

impl Observations {
    /// A cache whose entries live at most `max_age`; `concurrency` bounds membership reads
    /// in flight for one snapshot.
    pub fn new(graph: GraphClient, max_age: Duration, concurrency: usize) -> Self {
        Self {
            graph,
            concurrency: concurrency.max(1),
            package_names: TtlCache::new(max_age),
            packages: TtlCache::new(max_age),
            policies: TtlCache::new(max_age),
            requests: TtlCache::new(max_age),
            users: TtlCache::new(max_age),
            reads: TtlCache::new(max_age),
        }
    }

    /// The Graph client, for acting on a plan.
    pub fn graph(&self) -> &GraphClient {
        &self.graph
    }

    /// Forgets what a write to `package_id` may have changed: its requests and the
    /// memberships of the resources it promises.
    pub fn invalidate_package(&self, package_id: &str, resources: &[PromisedResource]) {
        self.requests.remove_where(|k| k == package_id);
        let reads = reads_needed(resources);
        self.reads.remove_where(|k| reads.contains(k));
    }

    /// Resolves a package selector to the package (read once per window).
    pub async fn package(
        &self,
        selector: &AccessPackageSelector,
    ) -> Result<Resolution<Arc<PackageInfo>>, GraphError> {
        let id = match (&selector.id, &selector.display_name) {
            (Some(id), _) => id.clone(),
            (None, Some(name)) => match self
                .package_id_by_name(name, selector.catalog.as_deref())
                .await?
            {
                Ok(id) => id,
                Err(f) => return Ok(Err(f)),
            },
            (None, None) => {
                return Ok(Err(ResolveFailure::new(
                    ResolveFailureKind::InvalidSpec,
                    "spec.accessPackage: set exactly one of id or displayName",
                )));
            }
        };
        if let Some(hit) = self.packages.get(&id) {
            return Ok(hit);
        }
        let outcome = match self.graph.get_access_package(&id).await {
            Ok(Some(package)) => {
                let resources =
                    promised_resources(package.resource_role_scopes.as_deref().unwrap_or(&[]));
                Ok(Arc::new(PackageInfo { package, resources }))
            }
            Ok(None) => Err(ResolveFailure::new(
                ResolveFailureKind::PackageNotFound,
                format!("spec.accessPackage.id: no access package with id {id} in the tenant"),
            )),
            Err(e) => forbidden_or(e, "spec.accessPackage")?,
        };
        self.packages.put(id, outcome.clone());
        Ok(outcome)
    }

    async fn package_id_by_name(
        &self,
        name: &str,
        catalog: Option<&str>,
    ) -> Result<Resolution<String>, GraphError> {
        let key = (name.to_string(), catalog.map(str::to_string));
        if let Some(hit) = self.package_names.get(&key) {
            return Ok(hit);
        }
        let found = match self.graph.find_access_packages(name).await {
            Ok(found) => found,
            Err(e) => return forbidden_or(e, "spec.accessPackage.displayName"),
        };
        let matching: Vec<&AccessPackage> = found
            .iter()
            .filter(|p| {
                catalog.is_none_or(|c| {
                    p.catalog.as_ref().and_then(|x| x.display_name.as_deref()) == Some(c)
                })
            })
            .collect();
        let outcome = match matching.as_slice() {
            [one] => Ok(one.id.clone()),
            [] => Err(ResolveFailure::new(
                ResolveFailureKind::PackageNotFound,
                format!(
                    "spec.accessPackage.displayName: no access package named '{name}'{}",
                    catalog
                        .map(|c| format!(" in catalog '{c}'"))
                        .unwrap_or_default()
                ),
            )),
            many => Err(ResolveFailure::new(
                ResolveFailureKind::PackageAmbiguous,
                format!(
                    "spec.accessPackage.displayName: '{name}' matches {} packages (ids {}); set spec.accessPackage.catalog or spec.accessPackage.id",
                    many.len(),
                    many.iter()
                        .map(|p| p.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        };
        self.package_names.put(key, outcome.clone());
        Ok(outcome)
    }

    /// Picks the policy to request with: the named one, or the package's only one.
    pub async fn policy(
        &self,
        package: &PackageInfo,
        selector: Option<&PolicySelector>,
    ) -> Result<Resolution<String>, GraphError> {
        let id = &package.package.id;
        let policies = match self.policies.get(id) {
            Some(p) => p,
            None => {
                let list = match self.graph.list_policies(id).await {
                    Ok(list) => Arc::new(list),
                    Err(e) => return forbidden_or(e, "spec.assignmentPolicy"),
                };
                self.policies.put(id.clone(), list.clone());
                list
            }
        };
        Ok(choose_policy(&package.name(), &policies, selector))
    }

    /// Resolves the target user.
    pub async fn user(
        &self,
        selector: &TargetSelector,
    ) -> Result<Resolution<ResolvedUser>, GraphError> {
        let (key, field) = match (&selector.object_id, &selector.user_principal_name) {
            (Some(id), _) => (id.clone(), "spec.target.objectId"),
            (None, Some(upn)) => (upn.clone(), "spec.target.userPrincipalName"),
            (None, None) => {
                return Ok(Err(ResolveFailure::new(
                    ResolveFailureKind::InvalidSpec,
                    "spec.target: set exactly one of objectId or userPrincipalName",
                )));
            }
        };
        if let Some(hit) = self.users.get(&key) {
            return Ok(hit);
        }
        let outcome = match self.graph.get_user(&key).await {
            Ok(Some(u)) => Ok(ResolvedUser {
                id: u.id,
                name: u.user_principal_name,
            }),
            Ok(None) => Err(ResolveFailure::new(
                ResolveFailureKind::TargetNotFound,
                format!("{field}: no user '{key}' in the tenant"),
            )),
            Err(e) => forbidden_or(e, field)?,
        };
        self.users.put(key, outcome.clone());
        Ok(outcome)
    }

    /// Every request of a package (read once per window, dropped after our writes).
    pub async fn requests(
        &self,
        package_id: &str,
    ) -> Result<Arc<Vec<AssignmentRequest>>, GraphError> {
        if let Some(hit) = self.requests.get(&package_id.to_string()) {
            return Ok(hit);
        }
        let list = Arc::new(self.graph.list_requests(package_id).await?);
        self.requests.put(package_id.to_string(), list.clone());
        Ok(list)
    }

    /// Reads the membership of every verifiable resource in `resources` — each at most once
    /// per window, across all objects — into a snapshot. A failed read is recorded as such, so
    /// the engine reports `Unknown` instead of guessing.
    pub async fn snapshot(&self, resources: &[PromisedResource]) -> Snapshot {
        let needed = reads_needed(resources);
        let mut cached = Vec::new();
        let mut missing = Vec::new();
        for read in needed {
            match self.reads.get(&read) {
                Some(data) => cached.push((read, data)),
                None => missing.push(read),
            }
        }
        let fresh: Vec<(ResourceRead, Result<ReadData, String>)> = futures::stream::iter(missing)
            .map(|read| async move {
                let data = self.read(&read).await;
                (read, data)
            })
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        let mut snapshot = Snapshot::new();
        for (read, data) in fresh {
            // Only successful reads are shared; a failure is retried by the next object.
            if let Ok(ok) = &data {
                self.reads.put(read.clone(), Ok(ok.clone()));
            }
            cached.push((read, data));
        }
        for (read, data) in cached {
            match (read, data) {
                (ResourceRead::GroupMembers(g), Ok(ReadData::Ids(ids))) => {
                    snapshot.record_group_members(g, ids)
                }
                (ResourceRead::GroupOwners(g), Ok(ReadData::Ids(ids))) => {
                    snapshot.record_group_owners(g, ids)
                }
                (ResourceRead::AppRoleAssignments(sp), Ok(ReadData::Pairs(pairs))) => {
                    snapshot.record_app_role_assignments(sp, pairs)
                }
                (read, Err(message)) => snapshot.record_failure(read, message),
                (read, Ok(_)) => snapshot.record_failure(read, "internal: mismatched read"),
            }
        }
        snapshot
    }

    async fn read(&self, read: &ResourceRead) -> Result<ReadData, String> {
        let result = match read {
            ResourceRead::GroupMembers(g) => {
                self.graph.list_group_members(g).await.map(ReadData::Ids)
            }
            ResourceRead::GroupOwners(g) => {
                self.graph.list_group_owners(g).await.map(ReadData::Ids)
            }
            ResourceRead::AppRoleAssignments(sp) => {
                self.graph.list_app_role_assignments(sp).await.map(|list| {
                    ReadData::Pairs(
                        list.into_iter()
                            .map(|a| (a.principal_id, a.app_role_id))
                            .collect(),
                    )
                })
            }
        };
        result.map_err(|e| {
            tracing::warn!(?read, error = %e, request_id = e.request_id().unwrap_or(""), "membership read failed");
            e.to_string()
        })
    }
}

fn choose_policy(
    package: &str,
    policies: &[AssignmentPolicy],
    selector: Option<&PolicySelector>,
) -> Resolution<String> {
    let describe = || {
        policies
            .iter()
            .map(|p| format!("'{}' ({})", p.display_name.as_deref().unwrap_or("?"), p.id))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match selector {
        Some(PolicySelector { id: Some(id), .. }) => policies
            .iter()
            .find(|p| p.id.eq_ignore_ascii_case(id))
            .map(|p| p.id.clone())
            .ok_or_else(|| {
                ResolveFailure::new(
                    ResolveFailureKind::PolicyNotFound,
                    format!(
                        "spec.assignmentPolicy.id: package '{package}' has no policy {id}; its policies are {}",
                        describe()
                    ),
                )
            }),
        Some(PolicySelector {
            display_name: Some(name),
            ..
        }) => {
            let hits: Vec<&AssignmentPolicy> = policies
                .iter()
                .filter(|p| p.display_name.as_deref() == Some(name.as_str()))
                .collect();
            match hits.as_slice() {
                [one] => Ok(one.id.clone()),
                [] => Err(ResolveFailure::new(
                    ResolveFailureKind::PolicyNotFound,
                    format!(
                        "spec.assignmentPolicy.displayName: package '{package}' has no policy named '{name}'; its policies are {}",
                        describe()
                    ),
                )),
                _ => Err(ResolveFailure::new(
                    ResolveFailureKind::PolicyAmbiguous,
                    format!(
                        "spec.assignmentPolicy.displayName: '{name}' names {} policies of package '{package}'; set spec.assignmentPolicy.id",
                        hits.len()
                    ),
                )),
            }
        }
        _ => match policies {
            [one] => Ok(one.id.clone()),
            [] => Err(ResolveFailure::new(
                ResolveFailureKind::PolicyNotFound,
                format!(
                    "spec.assignmentPolicy: package '{package}' has no assignment policy; create a direct-assignment policy for it"
                ),
            )),
            _ => Err(ResolveFailure::new(
                ResolveFailureKind::PolicyAmbiguous,
                format!(
                    "spec.assignmentPolicy: package '{package}' has {} policies; name one in spec.assignmentPolicy ({})",
                    policies.len(),
                    describe()
                ),
            )),
        },
    }
}

/// A 403 will not fix itself: it becomes a resolution failure reported on the object.
/// Anything else is returned as an error and retried with backoff.
fn forbidden_or<T>(err: GraphError, field: &str) -> Result<Resolution<T>, GraphError> {
    if err.is_forbidden() {
        Ok(Err(ResolveFailure::new(
            ResolveFailureKind::Forbidden,
            format!("{field}: Graph refused the read: {err}"),
        )))
    } else {
        Err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(id: &str, name: &str) -> AssignmentPolicy {
        serde_json::from_value(serde_json::json!({"id": id, "displayName": name})).unwrap()
    }

    #[test]
    fn policy_choice() {
        let one = [policy("p1", "Direct")];
        assert_eq!(choose_policy("Pkg", &one, None), Ok("p1".into()));
        let two = [policy("p1", "Direct"), policy("p2", "Self-service")];
        let err = choose_policy("Pkg", &two, None).unwrap_err();
        assert_eq!(err.kind, ResolveFailureKind::PolicyAmbiguous);
        assert!(err.message.contains("spec.assignmentPolicy"));
        let by_name = PolicySelector {
            display_name: Some("Self-service".into()),
            id: None,
        };
        assert_eq!(choose_policy("Pkg", &two, Some(&by_name)), Ok("p2".into()));
        let unknown = PolicySelector {
            id: Some("P9".into()),
            display_name: None,
        };
        assert_eq!(
            choose_policy("Pkg", &two, Some(&unknown)).unwrap_err().kind,
            ResolveFailureKind::PolicyNotFound
        );
        assert_eq!(
            choose_policy("Pkg", &[], None).unwrap_err().kind,
            ResolveFailureKind::PolicyNotFound
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
