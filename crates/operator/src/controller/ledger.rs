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

use std::sync::{Arc, Mutex};

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
}

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
    /// package, whichever is larger. The mass-drift breaker's denominator; scanned only when
    /// drift is found.
    pub fn delivered_in_package(&self, package: &str) -> usize {
        let declared = lock(&self.assignments)
            .iter()
            .flat_map(|(s, _)| s.state())
            .filter(|o| {
                o.status.as_ref().is_some_and(|s| {
                    s.access_package_id
                        .as_deref()
                        .is_some_and(|p| p.eq_ignore_ascii_case(package))
                        && s.graph_state.as_deref().is_some_and(|g| {
                            crate::graph::models::AssignmentState::from_wire(g)
                                == crate::graph::models::AssignmentState::Delivered
                        })
                })
            })
            .count();
        let swept = lock(&self.guards)
            .iter()
            .flat_map(|(s, _)| s.state())
            .filter_map(|g| {
                let s = g.status.as_ref()?;
                s.access_package_id
                    .as_deref()
                    .is_some_and(|p| p.eq_ignore_ascii_case(package))
                    .then(|| {
                        usize::try_from(s.assignments.delivered + s.assignments.drifted)
                            .unwrap_or(0)
                    })
            })
            .max()
            .unwrap_or(0);
        declared.max(swept)
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
