//! Keeping the shard-key label right (see [`super::shard`] for the rule): a replica of a
//! sharded installation labels the unlabelled objects of the connections it owns, and
//! relabels the objects it holds whose connection now hashes elsewhere. Both write one
//! JSON merge patch of `metadata.labels` with the object's `resourceVersion` as a
//! precondition: a patch that raced another write gets `409 Conflict` and is retried from
//! the next copy the watch brings, never applied to a newer object blindly.
//!
//! No two replicas act on one object at once: a replica acts on an object only when the
//! object's live resolution says the replica owns it ([`super::Context::owns`], checked at
//! the start of every reconcile), and hands an object over (relabels it so another
//! replica's watch picks it up) only when it no longer owns it *and* no reconcile of it is
//! in flight here ([`InFlight`]). A reconcile registers itself before it checks
//! ownership, so one that starts after the hand-over decision sees the same (or a newer)
//! resolution and skips the object.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::Context;
use super::shard::{Connected, SHARD_KEY_LABEL, bucket_of};
use crate::api::{ConnectionKey, ConnectionRef};

pub use super::shard::{LABEL_EVERY, RELABEL_EVERY};

/// Label patches in flight at once per kind.
const PATCHES_AT_ONCE: usize = 16;

pub use super::inflight::{InFlight, InFlightGuard};

/// The shard-key label of each object a scoped watch holds, kept beside the store rather
/// than in the stored object: a label map of one entry is a B-tree node (544 bytes) and two
/// strings, about 670 bytes an object in the allocator (16 MiB at 25,000 objects), where
/// the bucket takes 2. The watch takes the label out of each object it stores
/// (`controller::watch`) and notes it here, in step with the store: a deleted object is
/// forgotten, and a relist forgets what it did not list (the deletions it missed). The
/// hand-over ([`relabel_moved`]) reads it.
///
/// Keyed by a 64-bit hash of the object's namespace and name: two objects of one replica
/// sharing a hash (odds about 10⁻¹¹ at 25,000 objects) would at worst delay one hand-over;
/// ownership is always decided from the live resolution, never from the label.
#[derive(Debug, Default)]
pub struct ShardKeys(Mutex<Keys>);

#[derive(Debug, Default)]
struct Keys {
    buckets: HashMap<u64, u16>,
    /// During a relist, the objects it listed so far.
    relisting: Option<HashSet<u64>>,
}

/// What [`ShardKeys`] keeps for a label that is not a bucket (a user's typo): never equal
/// to a bucket, so the object is relabelled.
const NOT_A_BUCKET: u16 = u16::MAX;

impl ShardKeys {
    fn id(namespace: &str, name: &str) -> u64 {
        super::shard::fnv1a(namespace.bytes().chain([0]).chain(name.bytes()))
    }

    fn keys(&self) -> std::sync::MutexGuard<'_, Keys> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes an object's label as the watch saw it (`None`: it has none).
    pub fn note(&self, namespace: &str, name: &str, value: Option<&str>) {
        let id = Self::id(namespace, name);
        let mut keys = self.keys();
        if let Some(listed) = keys.relisting.as_mut() {
            listed.insert(id);
        }
        match value {
            Some(v) => {
                let bucket = v
                    .parse::<u16>()
                    .ok()
                    .filter(|b| u32::from(*b) < super::shard::BUCKETS)
                    .unwrap_or(NOT_A_BUCKET);
                keys.buckets.insert(id, bucket);
            }
            None => {
                keys.buckets.remove(&id);
            }
        }
    }

    /// Forgets a deleted object.
    pub fn forget(&self, namespace: &str, name: &str) {
        self.keys().buckets.remove(&Self::id(namespace, name));
    }

    /// The watch starts listing again (`watcher::Event::Init`).
    pub fn relist_started(&self) {
        self.keys().relisting = Some(HashSet::new());
    }

    /// The relist is complete (`watcher::Event::InitDone`): what it did not list is gone.
    pub fn relist_done(&self) {
        let mut keys = self.keys();
        if let Some(listed) = keys.relisting.take() {
            keys.buckets.retain(|id, _| listed.contains(id));
        }
    }

    /// Whether the object's label, as last seen, is `bucket`.
    pub fn is(&self, namespace: &str, name: &str, bucket: u32) -> bool {
        self.keys()
            .buckets
            .get(&Self::id(namespace, name))
            .is_some_and(|b| u32::from(*b) == bucket)
    }

    /// Objects noted.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.keys().buckets.len()
    }

    /// Whether none is.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The label selector of objects without a shard key.
pub fn unlabelled_selector() -> String {
    format!("!{SHARD_KEY_LABEL}")
}

/// What a label patch needs of an unlabelled object. Its connection is resolved when the
/// label is written, not when the object is seen: the first page of the watch can arrive
/// before the connection stores are listed, when a namespace's default `GraphConnection`
/// is not known yet and the object would resolve to the operator's own connection. (A key
/// kept from then left the first page of a tenant, 200 objects, unlabelled and so watched
/// by no shard, in the 4-shard benchmark.)
#[derive(Debug, Clone)]
struct Unlabelled {
    resource_version: String,
    connection_ref: Option<ConnectionRef>,
}

/// Watches the objects of one kind (one namespace, or all) that carry no shard key, and
/// labels those whose connection this shard owns, until `stop`. The other shards label
/// theirs. Holds only unlabelled objects (normally none), and only what a label needs.
pub async fn label_unlabelled(
    ctx: Arc<Context>,
    api: Api<DynamicObject>,
    ar: ApiResource,
    kind: &'static str,
    stop: CancellationToken,
) {
    let config = watcher::Config::default()
        .labels(&unlabelled_selector())
        .page_size(200);
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    // (namespace, name) → what to label it with; `listing` collects a relist.
    let mut pending: BTreeMap<(String, String), Unlabelled> = BTreeMap::new();
    let mut listing: Option<BTreeMap<(String, String), Unlabelled>> = None;
    // Resource versions already patched (or refused for good): not tried again.
    let mut tried: HashMap<(String, String), String> = HashMap::new();
    let mut tick = tokio::time::interval(ctx.shard_label_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Resolution needs every connection store listed: until then an object of a namespace
    // with a default GraphConnection would look like the operator's own connection's.
    let mut open = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = ctx.started(), if !open => open = true,
            event = events.next() => {
                let Some(event) = event else { return };
                let event = match event {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::debug!(kind, error = %e, "unlabelled-object watch failed; retrying with backoff");
                        continue;
                    }
                };
                match event {
                    watcher::Event::Init => listing = Some(BTreeMap::new()),
                    watcher::Event::InitApply(o) => {
                        if let Some((id, u)) = unlabelled(&o) {
                            listing.get_or_insert_with(BTreeMap::new).insert(id, u);
                        }
                    }
                    watcher::Event::InitDone => {
                        if let Some(listed) = listing.take() {
                            pending = listed;
                        }
                    }
                    watcher::Event::Apply(o) => {
                        if let Some((id, u)) = unlabelled(&o) {
                            pending.insert(id, u);
                        }
                    }
                    watcher::Event::Delete(o) => {
                        let id = (o.namespace().unwrap_or_default(), o.name_any());
                        tried.remove(&id);
                        pending.remove(&id);
                    }
                }
            }
            _ = tick.tick(), if open => {
                let todo: Vec<((String, String), String, ConnectionKey)> = pending
                    .iter()
                    .filter(|(id, u)| tried.get(*id) != Some(&u.resource_version))
                    .map(|(id, u)| {
                        let key = ctx.connections.resolve(&id.0, u.connection_ref.as_ref());
                        (id.clone(), u.resource_version.clone(), key)
                    })
                    .filter(|(_, _, key)| ctx.shard.owns(key))
                    .collect();
                if todo.is_empty() {
                    continue;
                }
                tracing::info!(kind, objects = todo.len(), "labelling this shard's unlabelled objects with their shard key");
                let results: Vec<_> = futures::stream::iter(todo)
                    .map(|((namespace, name), resource_version, key)| {
                        let client = ctx.client.clone();
                        let ar = ar.clone();
                        async move {
                            let api = scoped_api(client, &ar, &namespace);
                            let result = patch_label(&api, &name, &resource_version, &key).await;
                            ((namespace, name), resource_version, result)
                        }
                    })
                    .buffer_unordered(PATCHES_AT_ONCE)
                    .collect()
                    .await;
                for (id, rv, result) in results {
                    match result {
                        // Labelled: the watch drops it; deletions: the watch brings them.
                        Ok(()) | Err(Refused::Gone) => {
                            tried.insert(id, rv);
                        }
                        // Our copy is older than the server's: read the current one rather
                        // than count on a watch event to bring it (one may have come before
                        // the copy this patch was based on was listed).
                        Err(Refused::Conflict) => {
                            tried.insert(id.clone(), rv);
                            let api = scoped_api(ctx.client.clone(), &ar, &id.0);
                            if !reread(&api, id.clone(), &mut pending).await {
                                tried.remove(&id);
                            }
                        }
                        // Anything else (RBAC, the API server away) is tried at the next tick.
                        Err(Refused::Other(e)) => {
                            tracing::warn!(kind, namespace = %id.0, name = %id.1, error = %e, "cannot label the object with its shard key (the chart's ClusterRole grants patch); retrying");
                        }
                    }
                }
            }
        }
    }
}

/// Reads `id` again after its label patch conflicted, and keeps what labelling it needs
/// now in `pending` (nothing once it is labelled or gone). `false` when the read failed:
/// the caller tries the patch again at the next pass.
async fn reread(
    api: &Api<DynamicObject>,
    id: (String, String),
    pending: &mut BTreeMap<(String, String), Unlabelled>,
) -> bool {
    match api.get_opt(&id.1).await {
        Ok(found) => {
            match found.as_ref().and_then(unlabelled) {
                Some((id, u)) => pending.insert(id, u),
                None => pending.remove(&id),
            };
            true
        }
        Err(e) => {
            tracing::debug!(namespace = %id.0, name = %id.1, error = %e, "re-reading an object whose label patch conflicted; the next pass tries again");
            false
        }
    }
}

/// What labelling an unlabelled object needs, if it is one (a relist can still bring a
/// labelled one when its label was added in between).
fn unlabelled(o: &DynamicObject) -> Option<((String, String), Unlabelled)> {
    if o.labels().contains_key(SHARD_KEY_LABEL) {
        return None;
    }
    let connection_ref: Option<ConnectionRef> = o
        .data
        .get("spec")
        .and_then(|s| s.get("connectionRef"))
        .and_then(|r| serde_json::from_value(r.clone()).ok());
    Some((
        (o.namespace().unwrap_or_default(), o.name_any()),
        Unlabelled {
            resource_version: o.resource_version().unwrap_or_default(),
            connection_ref,
        },
    ))
}

/// Every `Context::shard_relabel_every` ([`RELABEL_EVERY`]), relabels the objects of `store`
/// (this shard's watch) whose label (`keys`) no longer names their connection's bucket,
/// once no reconcile of them is in flight here, until `stop`.
pub async fn relabel_moved<K>(
    ctx: Arc<Context>,
    store: Store<K>,
    keys: Arc<ShardKeys>,
    ar: ApiResource,
    kind: &'static str,
    stop: CancellationToken,
) where
    K: Resource<DynamicType = ()> + Connected + Clone + Send + Sync + 'static,
{
    tokio::select! {
        () = stop.cancelled() => return,
        () = ctx.started() => {}
    }
    let mut tick = tokio::time::interval(ctx.shard_relabel_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let moved: Vec<(String, String, String, ConnectionKey)> = store
            .state()
            .iter()
            .filter_map(|o| {
                let namespace = o.meta().namespace.clone().unwrap_or_default();
                let name = o.meta().name.clone().unwrap_or_default();
                let key = ctx.connections.resolve(&namespace, o.connection_ref());
                (!keys.is(&namespace, &name, bucket_of(&key))
                    && ctx
                        .in_flight
                        .is_idle(&super::context::object_key(o.as_ref())))
                .then(|| {
                    (
                        namespace,
                        name,
                        o.meta().resource_version.clone().unwrap_or_default(),
                        key,
                    )
                })
            })
            .collect();
        if moved.is_empty() {
            continue;
        }
        tracing::info!(
            kind,
            objects = moved.len(),
            "objects whose connection moved: relabelling them for their new shard"
        );
        futures::stream::iter(moved)
            .for_each_concurrent(PATCHES_AT_ONCE, |(namespace, name, rv, key)| {
                let api = scoped_api(ctx.client.clone(), &ar, &namespace);
                let keys = &keys;
                async move {
                    match patch_label(&api, &name, &rv, &key).await {
                        // Noted now rather than from the watch: a patch that changed nothing
                        // (the label was right, but not known here after a relist) brings no
                        // event, and would be sent again at every pass.
                        Ok(()) => keys.note(&namespace, &name, Some(&bucket_of(&key).to_string())),
                        Err(Refused::Other(e)) => {
                            tracing::warn!(kind, namespace = %namespace, name = %name, error = %e, "cannot relabel the object for its new shard; retrying");
                        }
                        Err(Refused::Conflict | Refused::Gone) => {}
                    }
                }
            })
            .await;
    }
}

fn scoped_api(client: kube::Client, ar: &ApiResource, namespace: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client, namespace, ar)
}

/// Why a label patch did not land.
enum Refused {
    /// `409`: the object changed since the copy the patch was based on.
    Conflict,
    /// `404`: the object is gone.
    Gone,
    /// Anything else.
    Other(kube::Error),
}

/// Sets the shard key of object `name` to `key`'s bucket, if it still is at
/// `resource_version`.
async fn patch_label(
    api: &Api<DynamicObject>,
    name: &str,
    resource_version: &str,
    key: &ConnectionKey,
) -> Result<(), Refused> {
    let patch = json!({
        "metadata": {
            "resourceVersion": resource_version,
            "labels": {SHARD_KEY_LABEL: bucket_of(key).to_string()},
        }
    });
    let params = PatchParams {
        field_manager: Some(super::context::field_manager().to_string()),
        ..PatchParams::default()
    };
    match api.patch(name, &params, &Patch::Merge(&patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Err(Refused::Conflict),
        Err(kube::Error::Api(s)) if s.code == 404 => Err(Refused::Gone),
        Err(e) => Err(Refused::Other(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_keys_remember_each_held_objects_bucket() {
        let keys = ShardKeys::default();
        keys.note("ns", "a", Some("17"));
        keys.note("ns", "b", Some("seventeen"));
        keys.note("ns", "c", Some("256"));
        keys.note("other", "a", Some("3"));
        assert!(keys.is("ns", "a", 17) && keys.is("other", "a", 3));
        assert!(!keys.is("ns", "a", 3), "namespaces are told apart");
        for b in 0..super::super::shard::BUCKETS {
            assert!(
                !keys.is("ns", "b", b) && !keys.is("ns", "c", b),
                "not a bucket"
            );
        }
        keys.note("ns", "a", None);
        assert!(!keys.is("ns", "a", 17), "a label taken off is forgotten");
        // A relist that lists only other/a: the rest was deleted while the watch was away.
        keys.relist_started();
        keys.note("other", "a", Some("3"));
        assert_eq!(
            keys.len(),
            3,
            "nothing is forgotten before the relist is complete"
        );
        keys.relist_done();
        assert_eq!(keys.len(), 1);
        assert!(keys.is("other", "a", 3));
        keys.forget("other", "a");
        assert!(keys.is_empty());
    }

    #[test]
    fn in_flight_counts_nested_reconciles_of_one_object() {
        let set = InFlight::default();
        assert!(set.is_idle("a"));
        let mut first = set.enter("a");
        first.act();
        let second = set.enter("a");
        assert_eq!(set.acting(), ["a"]);
        drop(first);
        assert!(!set.is_idle("a"), "one reconcile of a is still in flight");
        assert!(
            set.acting().is_empty(),
            "the one left did not pass the ownership check"
        );
        drop(second);
        assert!(set.is_idle("a"));
        assert_eq!(unlabelled_selector(), "!redeliver.dev/shard-key");
    }
}
