//! Incremental mode: between full verifications, follow group delta for the groups that
//! delivered assignments rely on, and reconcile an assignment as soon as its user leaves
//! one of them (graph-api.md §5.5), or comes back to one it was missing from (a reprocess
//! landed, or someone put the user back): `Delivered=True` is then written within one
//! delta interval instead of at the next re-check. The periodic full verification stays
//! the safety net.
//!
//! The index comes from the objects' own status (`graphState: delivered`,
//! `targetObjectId`, `resources[]` in an `AadGroup`, present or missing), so no extra
//! Graph read is needed to know whom a change concerns. A change drops that group's
//! cached membership and triggers the matching objects; a group whose sync state expired
//! triggers every object that relies on it.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use futures::channel::mpsc::UnboundedSender;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio_util::sync::CancellationToken;

use super::context::Context;
use crate::api::{AccessPackageAssignment, ResourceState};
use crate::engine::{PromisedResource, ResourceKind};
use crate::observe::delta::DeltaTracker;

type Index = HashMap<(String, String), Vec<ObjectRef<AccessPackageAssignment>>>;

/// Who relies on which group membership, from the objects' status.
#[derive(Default)]
struct Memberships {
    /// Every group tracked.
    groups: BTreeSet<String>,
    /// (group id, user id) → objects of delivered assignments that hold the membership:
    /// a removal is drift.
    present: Index,
    /// (group id, user id) → objects of delivered assignments that miss it: an addition
    /// is the repair landing.
    missing: Index,
}

/// (group id, user id) of every group membership of a delivered assignment, present or
/// missing.
fn index(store: &Store<AccessPackageAssignment>) -> Memberships {
    let mut m = Memberships::default();
    for obj in store.state() {
        let Some(status) = obj.status.as_ref() else {
            continue;
        };
        let delivered = status
            .graph_state
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("delivered"));
        let Some(user) = status.target_object_id.as_deref() else {
            continue;
        };
        if !delivered {
            continue;
        }
        for r in &status.resources {
            if r.origin_system != "AadGroup" {
                continue;
            }
            let idx = match r.state {
                ResourceState::Present => &mut m.present,
                ResourceState::Missing => &mut m.missing,
                _ => continue,
            };
            let group = r.origin_id.to_ascii_lowercase();
            m.groups.insert(group.clone());
            idx.entry((group, user.to_ascii_lowercase()))
                .or_default()
                .push(ObjectRef::from_obj(&*obj));
        }
    }
    m
}

fn group_resource(group_id: &str) -> PromisedResource {
    PromisedResource {
        origin_system: "AadGroup".into(),
        origin_id: group_id.to_string(),
        display_name: group_id.to_string(),
        role: "Member".into(),
        kind: ResourceKind::GroupMember {
            group_id: group_id.to_string(),
        },
        note: None,
    }
}

/// Polls every `ctx.delta_interval` until `stop`, sending objects to reconcile into
/// `trigger` (wired to `Controller::reconcile_on`).
pub async fn run(
    ctx: Arc<Context>,
    store: Store<AccessPackageAssignment>,
    trigger: UnboundedSender<ObjectRef<AccessPackageAssignment>>,
    stop: CancellationToken,
) {
    let interval = ctx.delta_interval;
    let mut tracker: Option<(BTreeSet<String>, DeltaTracker)> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let Memberships {
            groups,
            present,
            missing,
        } = index(&store);
        if groups.is_empty() {
            tracker = None;
            continue;
        }
        if tracker.as_ref().map(|(g, _)| g) != Some(&groups) {
            // The set changed: track from now. What changed before is the full
            // verification's to find (it also runs when objects change).
            match DeltaTracker::start(ctx.observations.graph().clone(), groups.iter().cloned())
                .await
            {
                Ok(t) => tracker = Some((groups, t)),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start group delta; retrying next interval");
                    tracker = None;
                }
            }
            continue;
        }
        let Some((_, t)) = tracker.as_mut() else {
            continue;
        };
        let poll = t.poll().await;
        for e in &poll.failed {
            tracing::warn!(error = %e, "group delta poll failed; its changes come next poll");
        }
        let mut hit_groups = BTreeSet::new();
        let mut refs = Vec::new();
        let changes = poll
            .removed
            .iter()
            .map(|change| (change, &present))
            .chain(poll.added.iter().map(|change| (change, &missing)));
        for ((group, user), idx) in changes {
            let key = (group.to_ascii_lowercase(), user.to_ascii_lowercase());
            if let Some(objs) = idx.get(&key) {
                hit_groups.insert(key.0.clone());
                refs.extend(objs.iter().cloned());
            }
        }
        for group in &poll.resync {
            let group = group.to_ascii_lowercase();
            let objs: Vec<_> = present
                .iter()
                .chain(missing.iter())
                .filter(|((g, _), _)| *g == group)
                .flat_map(|(_, o)| o.iter().cloned())
                .collect();
            if !objs.is_empty() {
                hit_groups.insert(group);
                refs.extend(objs);
            }
        }
        if refs.is_empty() {
            continue;
        }
        // The reconcile must read these groups again, not reuse this window's copy.
        let resources: Vec<PromisedResource> =
            hit_groups.iter().map(|g| group_resource(g)).collect();
        ctx.observations.invalidate_memberships(&resources);
        tracing::info!(
            objects = refs.len(),
            groups = hit_groups.len(),
            "group delta: promised group memberships changed; reconciling the affected assignments now"
        );
        for r in refs {
            if trigger.unbounded_send(r).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector::store;
    use kube::runtime::watcher::Event;

    fn apa(
        name: &str,
        state: &str,
        user: &str,
        groups: &[(&str, &str)],
    ) -> AccessPackageAssignment {
        let resources: Vec<serde_json::Value> = groups
            .iter()
            .map(
                |(g, s)| serde_json::json!({"originSystem": "AadGroup", "originId": g, "state": s}),
            )
            .collect();
        serde_json::from_value(serde_json::json!({
            "apiVersion": "redeliver.dev/v1alpha1",
            "kind": "AccessPackageAssignment",
            "metadata": {"name": name, "namespace": "access"},
            "spec": {"accessPackage": {"id": "p1"}, "target": {"objectId": user}},
            "status": {"graphState": state, "targetObjectId": user, "resources": resources},
        }))
        .expect("a valid object")
    }

    #[test]
    fn indexes_group_memberships_of_delivered_assignments_only() {
        let (reader, mut writer) = store::<AccessPackageAssignment>();
        writer.apply_watcher_event(&Event::Init);
        for obj in [
            apa(
                "alice",
                "delivered",
                "U-A",
                &[("G-1", "Present"), ("G-2", "Missing")],
            ),
            apa("bob", "delivering", "u-b", &[("g-1", "Present")]),
            apa("carol", "Delivered", "u-c", &[("g-3", "Present")]),
        ] {
            writer.apply_watcher_event(&Event::InitApply(obj));
        }
        writer.apply_watcher_event(&Event::InitDone);
        let m = index(&reader);
        assert_eq!(
            m.groups.into_iter().collect::<Vec<_>>(),
            vec!["g-1".to_string(), "g-2".to_string(), "g-3".to_string()]
        );
        let alice = &m.present[&("g-1".to_string(), "u-a".to_string())];
        assert_eq!(alice.len(), 1);
        assert_eq!(alice[0].name, "alice");
        assert!(
            m.present
                .contains_key(&("g-3".to_string(), "u-c".to_string()))
        );
        // A missing membership waits for the user to come back (the repair landing).
        let waiting = &m.missing[&("g-2".to_string(), "u-a".to_string())];
        assert_eq!(waiting[0].name, "alice");
        assert!(
            !m.present
                .contains_key(&("g-2".to_string(), "u-a".to_string()))
        );
        // Not-yet-delivered assignments have nothing to lose: delivery is followed by
        // their request, not by group delta.
        assert!(
            !m.present
                .contains_key(&("g-1".to_string(), "u-b".to_string()))
        );
        assert!(
            !m.missing
                .contains_key(&("g-1".to_string(), "u-b".to_string()))
        );
    }
}
