//! The watch feeding each controller: lenient decoding (one malformed object never breaks the
//! watch for the others) and the trigger predicate (status writes never retrigger).

use std::collections::hash_map::DefaultHasher;
use std::fmt::Debug;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

use futures::{Stream, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::PredicateConfig;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc::{Receiver, Sender};

use super::metrics::{KindLabels, Metrics};
use super::shard::SHARD_KEY_LABEL;
use super::sharding::ShardKeys;
use crate::api::REPROCESS_ANNOTATION;

/// Whether a watch has listed its objects once: set by the watch, awaited (not polled) by
/// whoever must not start before it.
#[derive(Debug, Default)]
pub struct Synced {
    done: AtomicBool,
    notify: Notify,
}

impl Synced {
    /// Not synced yet.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Already synced (tests that feed a store by hand).
    pub fn already() -> Arc<Self> {
        let s = Self::new();
        s.set();
        s
    }

    /// The first full list has been applied.
    pub fn set(&self) {
        self.done.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// Whether it has.
    pub fn is_set(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// Returns once it has.
    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before the check, so a `set` in between is not missed.
            notified.as_mut().enable();
            if self.is_set() {
                return;
            }
            notified.await;
        }
    }
}

/// Undecodable objects waiting to be reported on their status. When the queue is full a
/// report is dropped (the `malformed_objects` counter and the log have it; the next relist
/// or change of the object reports it again): a flood of bad objects must not hold memory.
pub const MALFORMED_QUEUE: usize = 256;

/// What [`report_malformed`] needs of an object that does not decode (not the object: its
/// spec and status can be large, and nothing else of it is read).
#[derive(Debug, Clone)]
pub struct Malformed {
    name: String,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    generation: Option<i64>,
    conditions: Vec<Condition>,
    error: String,
}

impl Malformed {
    /// What is reported of `obj`, which failed to decode with `error`.
    pub fn of(obj: &DynamicObject, error: String) -> Self {
        Self {
            name: obj.name_any(),
            namespace: obj.namespace(),
            uid: obj.metadata.uid.clone(),
            resource_version: obj.metadata.resource_version.clone(),
            generation: obj.metadata.generation,
            conditions: obj
                .data
                .get("status")
                .and_then(|s| s.get("conditions"))
                .and_then(|c| serde_json::from_value(c.clone()).ok())
                .unwrap_or_default(),
            error,
        }
    }
}

/// The properties whose change must reconcile an object at once: its generation (spec), the
/// manual-reprocess annotation, its finalizers and whether it is being deleted. Status and
/// other metadata changes are ignored, so our own status patch never retriggers.
pub fn trigger_hash<K: Resource>(obj: &K) -> Option<u64> {
    let meta = obj.meta();
    let mut h = DefaultHasher::new();
    meta.generation.hash(&mut h);
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(REPROCESS_ANNOTATION))
        .hash(&mut h);
    meta.finalizers.hash(&mut h);
    meta.deletion_timestamp.is_some().hash(&mut h);
    Some(h.finish())
}

/// The API for `K` as untyped objects, in one namespace or all.
pub fn dynamic_api<K: Resource<DynamicType = ()>>(
    client: Client,
    namespace: Option<&str>,
) -> Api<DynamicObject> {
    let ar = ApiResource::erase::<K>(&());
    match namespace {
        Some(ns) => Api::namespaced_with(client, ns, &ar),
        None => Api::all_with(client, &ar),
    }
}

/// What a watch does with each object besides storing it: counts and reports those that do
/// not decode, and (sharded) keeps their shard-key labels aside.
#[derive(Clone)]
pub struct Decoding {
    /// Where undecodable objects are counted.
    pub metrics: Arc<Metrics>,
    /// The kind, for logs and metrics.
    pub kind: &'static str,
    /// Where undecodable objects are sent (see [`report_malformed`]).
    pub malformed: Option<Sender<Malformed>>,
    /// Where the shard-key labels go (a sharded replica's hand-over reads them there).
    pub shard_keys: Option<Arc<ShardKeys>>,
}

impl Decoding {
    /// Counting undecodable objects of `kind`, nothing else.
    pub fn new(metrics: Arc<Metrics>, kind: &'static str) -> Self {
        Self {
            metrics,
            kind,
            malformed: None,
            shard_keys: None,
        }
    }
}

/// Watches `K` through untyped objects, decoding each one separately: a list or watch event
/// holding an object that does not decode (a spec that slipped past the schema, a hand-edited
/// status) is logged, counted and skipped instead of failing the whole list. Decoded objects
/// go into `writer`'s store; the returned stream yields the objects whose
/// [`trigger_hash`] changed. `synced` turns true once the first full list has been applied.
pub fn lenient_watch<K>(
    api: Api<DynamicObject>,
    config: watcher::Config,
    writer: Writer<K>,
    decoding: Decoding,
    synced: Arc<Synced>,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + DeserializeOwned + Clone + Debug + Send + Sync + 'static,
{
    // An object that stops decoding is deleted from the store by its last good copy.
    let known = writer.as_reader();
    watcher(api, config)
        .default_backoff()
        .filter_map(move |event| {
            if matches!(event, Ok(watcher::Event::InitDone)) {
                // Readiness is tracked here rather than with `Store::wait_until_ready`, whose
                // single waker slot the controller itself already uses.
                synced.set();
            }
            let out = match event {
                Ok(event) => decode_event::<K>(event, &decoding, Some(&known)).map(Ok),
                Err(err) => Some(Err(err)),
            };
            std::future::ready(out)
        })
        .reflect(writer)
        .applied_objects()
        .predicate_filter(trigger_hash::<K>, PredicateConfig::default())
}

/// Decodes one event. A `Delete` whose object does not decode still removes the object
/// from the store: `known` (the store) gives its last good copy, so a malformed-then-deleted
/// object does not linger as a phantom reconciled with 404s until the next relist.
fn decode_event<K>(
    event: watcher::Event<DynamicObject>,
    decoding: &Decoding,
    known: Option<&Store<K>>,
) -> Option<watcher::Event<K>>
where
    K: Resource<DynamicType = ()> + DeserializeOwned + Clone,
{
    let Decoding {
        metrics,
        kind,
        malformed,
        shard_keys,
    } = decoding;
    let kind = *kind;
    let is_delete = matches!(event, watcher::Event::Delete(_));
    let decode = |mut obj: DynamicObject| -> Option<K> {
        let name = obj.name_any();
        let namespace = obj.namespace().unwrap_or_default();
        let shard_key = slim(&mut obj);
        if let Some(keys) = shard_keys {
            if is_delete {
                keys.forget(&namespace, &name);
            } else {
                keys.note(&namespace, &name, shard_key.as_deref());
            }
        }
        let report = (!is_delete).then_some(malformed.as_ref()).flatten();
        let seen = report.map(|_| Malformed::of(&obj, String::new()));
        match obj.try_parse::<K>() {
            Ok(k) => Some(k),
            Err(err) => {
                metrics
                    .malformed_objects
                    .get_or_create(&KindLabels { kind })
                    .inc();
                tracing::warn!(
                    kind,
                    namespace = %namespace,
                    name = %name,
                    error = %err,
                    "skipping an object that does not decode; fix or delete it (kubectl get -o yaml shows the bad field)"
                );
                if let (Some(tx), Some(mut seen)) = (report, seen) {
                    seen.error = err.to_string();
                    // Full: dropped (see MALFORMED_QUEUE).
                    let _ = tx.try_send(seen);
                }
                None
            }
        }
    };
    match event {
        watcher::Event::Apply(o) => decode(o).map(watcher::Event::Apply),
        watcher::Event::Delete(o) => {
            let key = ObjectRef::<K>::new(&o.name_any()).within(&o.namespace().unwrap_or_default());
            decode(o)
                .or_else(|| known.and_then(|s| s.get(&key)).map(|k| (*k).clone()))
                .map(watcher::Event::Delete)
        }
        watcher::Event::InitApply(o) => decode(o).map(watcher::Event::InitApply),
        watcher::Event::Init => {
            if let Some(keys) = shard_keys {
                keys.relist_started();
            }
            Some(watcher::Event::Init)
        }
        watcher::Event::InitDone => {
            if let Some(keys) = shard_keys {
                keys.relist_done();
            }
            Some(watcher::Event::InitDone)
        }
    }
}

/// The annotation `kubectl apply` (client side) keeps a whole copy of the object in.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops what the controller never reads but a real API server sends with every object:
/// `managedFields` (every field's owner; with our status applies often the largest part of
/// the object) and kubectl's last-applied copy. Kept, they would sit in the store for every
/// object. Takes out the shard-key label too and returns it: kept aside by a sharded
/// replica ([`ShardKeys`]), it would otherwise cost a label map per object.
fn slim(obj: &mut DynamicObject) -> Option<String> {
    obj.metadata.managed_fields = None;
    if let Some(annotations) = obj.metadata.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
        if annotations.is_empty() {
            obj.metadata.annotations = None;
        }
    }
    let labels = obj.metadata.labels.as_mut()?;
    let shard_key = labels.remove(SHARD_KEY_LABEL);
    if labels.is_empty() {
        obj.metadata.labels = None;
    }
    shard_key
}

/// Reports each undecodable object on the object itself: `Stalled=True, reason=InvalidSpec`
/// with the decode error, written with server-side apply. Skipped when the object already
/// says so, so the status write (which comes back through the watch) cannot loop.
pub async fn report_malformed(
    client: Client,
    ar: ApiResource,
    mut malformed: Receiver<Malformed>,
    clock: std::sync::Arc<dyn super::context::Clock>,
) {
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    let kind = ar.kind.clone();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "redeliver".into(),
            instance: None,
        },
    );
    while let Some(bad) = malformed.recv().await {
        let Some((conditions, message)) = crate::engine::conditions::invalid_object_conditions(
            &bad.conditions,
            &kind,
            &bad.error,
            bad.generation,
            clock.now(),
        ) else {
            continue;
        };
        let generation = bad.generation;
        let patch = serde_json::json!({
            "apiVersion": ar.api_version,
            "kind": ar.kind,
            "status": {"observedGeneration": generation, "conditions": conditions},
        });
        let name = bad.name.clone();
        let Some(ns) = bad.namespace.clone() else {
            continue;
        };
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
        let params = kube::api::PatchParams::apply(super::context::field_manager()).force();
        if let Err(err) = api
            .patch_status(&name, &params, &kube::api::Patch::Apply(&patch))
            .await
        {
            tracing::warn!(kind = %kind, name = %name, error = %err, "could not report a malformed object on its status");
            continue;
        }
        let reference = k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some(ar.api_version.clone()),
            kind: Some(ar.kind.clone()),
            name: Some(name.clone()),
            namespace: Some(ns),
            uid: bad.uid.clone(),
            resource_version: bad.resource_version.clone(),
            ..Default::default()
        };
        let event = Event {
            type_: EventType::Warning,
            reason: crate::engine::conditions::Reason::InvalidSpec.to_string(),
            note: Some(message.chars().take(1000).collect()),
            action: "Decode".to_string(),
            secondary: None,
        };
        if let Err(err) = recorder.publish(&event, &reference).await {
            tracing::warn!(kind = %kind, name = %name, error = %err, "could not record an event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::AccessPackageAssignment;

    fn apa(generation: i64, annotation: Option<&str>) -> AccessPackageAssignment {
        let mut v = serde_json::json!({
            "apiVersion": "redeliver.dev/v1alpha1",
            "kind": "AccessPackageAssignment",
            "metadata": {"name": "a", "namespace": "ns", "generation": generation},
            "spec": {
                "accessPackage": {"id": "9f1c0c7e-0000-4000-8000-000000000001"},
                "target": {"userPrincipalName": "alice@contoso.com"}
            }
        });
        if let Some(a) = annotation {
            v["metadata"]["annotations"] = serde_json::json!({ REPROCESS_ANNOTATION: a });
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn status_and_other_metadata_do_not_trigger() {
        let base = apa(1, None);
        let mut with_status = base.clone();
        with_status.status = Some(Default::default());
        with_status.metadata.resource_version = Some("42".into());
        with_status
            .metadata
            .labels
            .get_or_insert_default()
            .insert("x".into(), "y".into());
        assert_eq!(trigger_hash(&base), trigger_hash(&with_status));
    }

    #[test]
    fn spec_annotation_finalizer_and_deletion_trigger() {
        let base = trigger_hash(&apa(1, None));
        assert_ne!(base, trigger_hash(&apa(2, None)));
        assert_ne!(base, trigger_hash(&apa(1, Some("2026-01-01T00:00:00Z"))));
        assert_ne!(
            trigger_hash(&apa(1, Some("a"))),
            trigger_hash(&apa(1, Some("b")))
        );
        let mut fin = apa(1, None);
        fin.metadata.finalizers = Some(vec![crate::api::FINALIZER.into()]);
        assert_ne!(base, trigger_hash(&fin));
        let mut deleting = apa(1, None);
        deleting.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH),
        );
        assert_ne!(base, trigger_hash(&deleting));
    }

    #[test]
    fn stored_objects_drop_managed_fields_and_the_last_applied_copy() {
        let (metrics, _registry) = Metrics::new(None);
        let decoding = Decoding::new(metrics, "AccessPackageAssignment");
        let mut v = serde_json::to_value(apa(1, Some("2026-01-01T00:00:00Z"))).unwrap();
        v["metadata"]["managedFields"] = serde_json::json!([{
            "manager": "redeliver", "operation": "Apply", "subresource": "status",
            "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {"f:conditions": {}}}
        }]);
        v["metadata"]["annotations"][LAST_APPLIED] = serde_json::json!("{\"spec\":{}}");
        let obj: DynamicObject = serde_json::from_value(v).unwrap();
        let Some(watcher::Event::Apply(decoded)) =
            decode_event::<AccessPackageAssignment>(watcher::Event::Apply(obj), &decoding, None)
        else {
            panic!("the object decodes");
        };
        assert!(decoded.metadata.managed_fields.is_none());
        let annotations = decoded.metadata.annotations.unwrap();
        assert!(!annotations.contains_key(LAST_APPLIED));
        assert_eq!(
            annotations.get(REPROCESS_ANNOTATION).map(String::as_str),
            Some("2026-01-01T00:00:00Z"),
            "what the controller reads is kept"
        );
    }

    #[test]
    fn the_shard_key_label_is_kept_aside_not_in_the_stored_object() {
        let (metrics, _registry) = Metrics::new(None);
        let keys = Arc::new(ShardKeys::default());
        let decoding = Decoding {
            shard_keys: Some(keys.clone()),
            ..Decoding::new(metrics, "AccessPackageAssignment")
        };
        let decode = |labels: serde_json::Value| {
            let mut v = serde_json::to_value(apa(1, None)).unwrap();
            v["metadata"]["labels"] = labels;
            let obj: DynamicObject = serde_json::from_value(v).unwrap();
            match decode_event::<AccessPackageAssignment>(
                watcher::Event::Apply(obj.clone()),
                &decoding,
                None,
            ) {
                Some(watcher::Event::Apply(decoded)) => (obj, decoded),
                other => panic!("the object decodes: {other:?}"),
            }
        };
        let (_, decoded) = decode(serde_json::json!({
            SHARD_KEY_LABEL: "17", "app.kubernetes.io/instance": "team-a"
        }));
        let labels = decoded.metadata.labels.expect("the user's label is kept");
        assert_eq!(
            labels.keys().collect::<Vec<_>>(),
            ["app.kubernetes.io/instance"]
        );
        assert!(keys.is("ns", "a", 17) && !keys.is("ns", "a", 18));
        // Only the shard key: no label map at all in the store.
        let (obj, decoded) = decode(serde_json::json!({SHARD_KEY_LABEL: "18"}));
        assert!(decoded.metadata.labels.is_none());
        assert!(keys.is("ns", "a", 18) && !keys.is("ns", "a", 17));
        decode_event::<AccessPackageAssignment>(watcher::Event::Delete(obj), &decoding, None);
        assert!(keys.is_empty(), "a deleted object is forgotten");
        // Deleted while the watch was away: the relist does not list it.
        decode(serde_json::json!({SHARD_KEY_LABEL: "18"}));
        for event in [watcher::Event::Init, watcher::Event::InitDone] {
            decode_event::<AccessPackageAssignment>(event, &decoding, None);
        }
        assert!(keys.is_empty(), "what a relist did not list is forgotten");
    }

    #[test]
    fn malformed_objects_are_skipped_and_counted() {
        let (metrics, registry) = Metrics::new(None);
        let good: DynamicObject =
            serde_json::from_value(serde_json::to_value(apa(1, None)).unwrap()).unwrap();
        let mut bad = good.clone();
        bad.data["spec"]["reprocess"] = serde_json::json!({"mode": "Sometimes"});
        let kind = "AccessPackageAssignment";
        let (tx, mut rx) = tokio::sync::mpsc::channel(MALFORMED_QUEUE);
        let decoding = Decoding::new(metrics, kind);
        let reporting = Decoding {
            malformed: Some(tx),
            ..decoding.clone()
        };
        assert!(matches!(
            decode_event::<AccessPackageAssignment>(
                watcher::Event::InitApply(good),
                &decoding,
                None
            ),
            Some(watcher::Event::InitApply(_))
        ));
        assert!(
            decode_event::<AccessPackageAssignment>(watcher::Event::Apply(bad), &reporting, None)
                .is_none()
        );
        assert!(matches!(
            decode_event::<AccessPackageAssignment>(watcher::Event::InitDone, &decoding, None),
            Some(watcher::Event::InitDone)
        ));
        let reported = rx.try_recv().expect("the malformed object is reported");
        assert_eq!(reported.name, "a");
        assert!(reported.error.contains("Sometimes"), "{}", reported.error);
        let text = super::super::metrics::render(&registry).unwrap();
        assert!(
            text.contains("redeliver_malformed_objects_total{kind=\"AccessPackageAssignment\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn a_malformed_object_deleted_leaves_the_store() {
        use kube::runtime::reflector::store;
        let (metrics, _registry) = Metrics::new(None);
        let kind = "AccessPackageAssignment";
        let decoding = Decoding::new(metrics, kind);
        let good = apa(1, None);
        let (reader, mut writer) = store::<AccessPackageAssignment>();
        writer.apply_watcher_event(&watcher::Event::Apply(good.clone()));
        let mut bad: DynamicObject =
            serde_json::from_value(serde_json::to_value(&good).unwrap()).unwrap();
        bad.data["spec"]["reprocess"] = serde_json::json!({"mode": "Sometimes"});
        let event = decode_event::<AccessPackageAssignment>(
            watcher::Event::Delete(bad.clone()),
            &decoding,
            Some(&reader),
        );
        let Some(watcher::Event::Delete(deleted)) = event else {
            panic!("the delete goes through: {event:?}");
        };
        writer.apply_watcher_event(&watcher::Event::Delete(deleted));
        assert!(reader.state().is_empty(), "no phantom left");
        // Never decoded, never stored: nothing to delete.
        assert!(
            decode_event::<AccessPackageAssignment>(
                watcher::Event::Delete(bad),
                &decoding,
                Some(&reader)
            )
            .is_none()
        );
    }
}
