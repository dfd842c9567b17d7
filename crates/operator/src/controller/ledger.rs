//! The controller's side of the repair ledger ([`crate::engine::ledger`]): names of covering
//! objects, rebuilding the ledger from the objects' status after a restart or failover, and
//! waking the other objects that cover an assignment when one of them reprocesses it, so
//! they all tell the same story at the same time.
//!
//! Durability: a reprocess is written to the sending object's status *before* it is sent
//! (see the reconcilers), and the ledger is rebuilt from every object's status before the
//! first reconcile of a new leader. A restart therefore never repeats a reprocess within its
//! cooldown; a process killed between that status write and the Graph call loses the
//! reprocess (it is sent one cooldown later), which is the safe direction.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use futures::channel::mpsc::UnboundedSender;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};

use crate::api::{AccessPackageAssignment, AccessPackageGuard};
use crate::engine::ledger::{RepairKey, RepairLedger, RepairRecord};

/// How a covering object is named in the ledger, in status and in events:
/// `Kind namespace/name`.
pub fn name_of<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{} {}/{}",
        K::kind(&()),
        obj.namespace().unwrap_or_default(),
        obj.name_any()
    )
}

/// Rebuilds the ledger from what is durable: every object's status. An assignment's history
/// is the newest any covering object recorded.
pub fn seed(
    ledger: &mut RepairLedger,
    assignments: &[Arc<AccessPackageAssignment>],
    guards: &[Arc<AccessPackageGuard>],
) {
    for obj in assignments {
        let Some(status) = obj.status.as_ref() else {
            continue;
        };
        let Some(at) = status.reprocess.last_requested_time.as_ref() else {
            continue;
        };
        let record = RepairRecord {
            attempts: status.reprocess.attempts,
            last_requested: at.0,
            by: status
                .reprocess
                .last_requested_by
                .clone()
                .unwrap_or_else(|| name_of(obj.as_ref())),
        };
        if let Some(id) = &status.assignment_id {
            ledger.seed(RepairKey::assignment(id), record.clone());
        }
        if let Some(id) = &status.last_request_id {
            ledger.seed(RepairKey::request(id), record);
        }
    }
    for obj in guards {
        let Some(status) = obj.status.as_ref() else {
            continue;
        };
        for entry in &status.drifted {
            let Some(at) = entry.last_reprocess_time.as_ref() else {
                continue;
            };
            ledger.seed(
                RepairKey::assignment(&entry.assignment_id),
                RepairRecord {
                    attempts: entry.reprocess_attempts,
                    last_requested: at.0,
                    by: entry
                        .reprocessed_by
                        .clone()
                        .unwrap_or_else(|| name_of(obj.as_ref())),
                },
            );
        }
    }
}

/// A reconcile queue. Unbounded on purpose: it is fed from inside reconciles and
/// connection checks, which must not wait on the controller that runs them (a bounded queue
/// full of their own triggers would deadlock), and what goes in is bounded by the store:
/// one reference per covering object per repair or connection change, each drained and
/// deduplicated by the controller's scheduler. Group delta's triggers, which a flood of
/// outside changes could multiply, go through a bounded queue (`delta::TRIGGER_QUEUE`).
type Sender<K> = UnboundedSender<ObjectRef<K>>;

/// The stores and reconcile queues of both kinds, so a repair can wake the objects that
/// cover the same assignment.
#[derive(Default)]
pub struct Triggers {
    assignments: Mutex<
        Vec<(
            Store<AccessPackageAssignment>,
            Sender<AccessPackageAssignment>,
        )>,
    >,
    guards: Mutex<Vec<(Store<AccessPackageGuard>, Sender<AccessPackageGuard>)>>,
    /// Delivered assignments per package (lower-cased id), from one scan of the stores, and
    /// when it was made: see [`DELIVERED_COUNT_AGE`].
    delivered: tokio::sync::Mutex<Option<(Instant, Arc<DeliveredCounts>)>>,
}

/// Delivered assignments per package, by lower-cased package id.
type DeliveredCounts = HashMap<String, usize>;

/// How long one count of every package's delivered assignments serves the mass-drift
/// breaker. A mass removal finds hundreds of drifted objects at once, and counting for each
/// of them scanned every stored object (100,000 per drifted object at that scale) under the
/// stores' lock; a denominator a few seconds old is as good.
pub const DELIVERED_COUNT_AGE: Duration = Duration::from_secs(5);

impl Triggers {
    /// Adds one watch scope's assignment store and queue.
    pub fn add_assignments(
        &self,
        store: Store<AccessPackageAssignment>,
        queue: Sender<AccessPackageAssignment>,
    ) {
        lock(&self.assignments).push((store, queue));
    }

    /// Adds one watch scope's guard store and queue.
    pub fn add_guards(&self, store: Store<AccessPackageGuard>, queue: Sender<AccessPackageGuard>) {
        lock(&self.guards).push((store, queue));
    }

    /// Every object in the stores, for seeding the ledger.
    pub fn snapshot(
        &self,
    ) -> (
        Vec<Arc<AccessPackageAssignment>>,
        Vec<Arc<AccessPackageGuard>>,
    ) {
        let a = lock(&self.assignments)
            .iter()
            .flat_map(|(s, _)| s.state())
            .collect();
        let g = lock(&self.guards)
            .iter()
            .flat_map(|(s, _)| s.state())
            .collect();
        (a, g)
    }

    /// The uids of every object in the stores (both kinds).
    pub fn live_uids(&self) -> std::collections::HashSet<String> {
        let (a, g) = self.snapshot();
        a.iter()
            .filter_map(|o| o.metadata.uid.clone())
            .chain(g.iter().filter_map(|o| o.metadata.uid.clone()))
            .collect()
    }

    /// How many delivered assignments of `package` the controller knows of: its
    /// AccessPackageAssignments Graph says are delivered, or a guard's last count of the
    /// package, whichever is larger. The mass-drift breaker's denominator: asked only when
    /// drift is found, and counted for every package at once, at most once per
    /// [`DELIVERED_COUNT_AGE`] (concurrent callers wait for the one count).
    pub async fn delivered_in_package(&self, package: &str) -> usize {
        let mut cached = self.delivered.lock().await;
        let counts = match cached.as_ref() {
            Some((at, counts)) if at.elapsed() < DELIVERED_COUNT_AGE => counts.clone(),
            _ => {
                let counts = Arc::new(self.count_delivered());
                *cached = Some((Instant::now(), counts.clone()));
                counts
            }
        };
        counts
            .get(&package.to_ascii_lowercase())
            .copied()
            .unwrap_or(0)
    }

    /// One scan of both stores: delivered assignments per package.
    fn count_delivered(&self) -> DeliveredCounts {
        let mut counts = DeliveredCounts::new();
        for obj in lock(&self.assignments).iter().flat_map(|(s, _)| s.state()) {
            let Some(s) = obj.status.as_ref() else {
                continue;
            };
            let delivered = s.graph_state.as_deref().is_some_and(|g| {
                crate::graph::models::AssignmentState::from_wire(g)
                    == crate::graph::models::AssignmentState::Delivered
            });
            if let (true, Some(p)) = (delivered, s.access_package_id.as_deref()) {
                *counts.entry(p.to_ascii_lowercase()).or_default() += 1;
            }
        }
        for guard in lock(&self.guards).iter().flat_map(|(s, _)| s.state()) {
            let Some(s) = guard.status.as_ref() else {
                continue;
            };
            let Some(p) = s.access_package_id.as_deref() else {
                continue;
            };
            let swept =
                usize::try_from(s.assignments.delivered + s.assignments.drifted).unwrap_or(0);
            let n = counts.entry(p.to_ascii_lowercase()).or_default();
            *n = (*n).max(swept);
        }
        counts
    }

    /// Reconciles every object for which `assignment` or `guard` says yes (e.g. the objects
    /// of a connection that became ready).
    pub fn wake(
        &self,
        assignment: impl Fn(&AccessPackageAssignment) -> bool,
        guard: impl Fn(&AccessPackageGuard) -> bool,
    ) {
        for (store, queue) in lock(&self.assignments).iter() {
            for obj in store.state() {
                if assignment(&obj) {
                    let _ = queue.unbounded_send(ObjectRef::from_obj(obj.as_ref()));
                }
            }
        }
        for (store, queue) in lock(&self.guards).iter() {
            for obj in store.state() {
                if guard(&obj) {
                    let _ = queue.unbounded_send(ObjectRef::from_obj(obj.as_ref()));
                }
            }
        }
    }

    /// Reconciles now the assignments held by the mass-drift breaker of one of `packages`,
    /// whose hold was just lifted (acknowledged, or the drift repaired below the
    /// threshold): held objects are otherwise only looked at again on their verify
    /// interval.
    pub fn wake_mass_drift_held(&self, packages: &[String]) {
        if packages.is_empty() {
            return;
        }
        tracing::info!(
            packages = packages.join(", "),
            "mass-drift hold lifted; resuming the held objects"
        );
        self.wake(
            |a: &AccessPackageAssignment| {
                a.status.as_ref().is_some_and(|s| {
                    crate::engine::conditions::true_reason(
                        &s.conditions,
                        crate::engine::conditions::ConditionType::Stalled,
                    ) == Some(crate::engine::conditions::Reason::MassDrift)
                        && s.access_package_id
                            .as_deref()
                            .is_some_and(|p| packages.iter().any(|l| l.eq_ignore_ascii_case(p)))
                })
            },
            |_| false,
        );
    }

    /// Reconciles every object but `except` that covers one of `assignment_ids` of
    /// `package_id`: declarations tracking that assignment, and guards of the package.
    /// Repairs are rare, so one scan of the stores per repair is cheap.
    pub fn covering(&self, package_id: &str, assignment_ids: &[&str], except: &str) {
        if assignment_ids.is_empty() {
            return;
        }
        for (store, queue) in lock(&self.assignments).iter() {
            for obj in store.state() {
                let tracks = obj
                    .status
                    .as_ref()
                    .and_then(|s| s.assignment_id.as_deref())
                    .is_some_and(|id| assignment_ids.iter().any(|a| a.eq_ignore_ascii_case(id)));
                if tracks && name_of(obj.as_ref()) != except {
                    let _ = queue.unbounded_send(ObjectRef::from_obj(obj.as_ref()));
                }
            }
        }
        for (store, queue) in lock(&self.guards).iter() {
            for obj in store.state() {
                let guards = obj
                    .status
                    .as_ref()
                    .and_then(|s| s.access_package_id.as_deref())
                    .is_some_and(|id| id.eq_ignore_ascii_case(package_id));
                if guards && name_of(obj.as_ref()) != except {
                    let _ = queue.unbounded_send(ObjectRef::from_obj(obj.as_ref()));
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector::store;
    use kube::runtime::watcher::Event;

    fn apa(name: &str, package: &str, state: &str) -> AccessPackageAssignment {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "redeliver.dev/v1alpha1",
            "kind": "AccessPackageAssignment",
            "metadata": {"name": name, "namespace": "access"},
            "spec": {"accessPackage": {"id": package}, "target": {"objectId": name}},
            "status": {"accessPackageId": package, "graphState": state},
        }))
        .expect("a valid object")
    }

    #[tokio::test(start_paused = true)]
    async fn delivered_counts_come_from_one_scan_reused_for_a_few_seconds() {
        let (reader, mut writer) = store::<AccessPackageAssignment>();
        writer.apply_watcher_event(&Event::Init);
        for obj in [
            apa("a", "PKG-A", "delivered"),
            apa("b", "pkg-a", "delivered"),
            apa("c", "pkg-a", "delivering"),
            apa("d", "pkg-b", "delivered"),
        ] {
            writer.apply_watcher_event(&Event::InitApply(obj));
        }
        writer.apply_watcher_event(&Event::InitDone);
        let triggers = Triggers::default();
        let (queue, _rx) = futures::channel::mpsc::unbounded();
        triggers.add_assignments(reader, queue);

        assert_eq!(triggers.delivered_in_package("pkg-a").await, 2);
        assert_eq!(triggers.delivered_in_package("PKG-B").await, 1);
        assert_eq!(triggers.delivered_in_package("pkg-c").await, 0);
        // c is delivered now: within the age bound the count at hand still answers.
        writer.apply_watcher_event(&Event::Apply(apa("c", "pkg-a", "delivered")));
        assert_eq!(triggers.delivered_in_package("pkg-a").await, 2);
        tokio::time::advance(DELIVERED_COUNT_AGE).await;
        assert_eq!(triggers.delivered_in_package("pkg-a").await, 3);
    }
}
