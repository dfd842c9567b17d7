//! A small Kubernetes API server for measuring `redeliver controller` without a cluster: it
//! serves Redeliver's custom resources (the two kinds and the two connection kinds, the
//! cluster-scoped one included) and core `Secret`s, with the semantics the controller relies
//! on, and counts every request. Tests change objects with [`FakeKube::put`] and
//! [`FakeKube::delete`], which the watches see as `ADDED`/`MODIFIED`/`DELETED`.
//!
//! - LIST with `limit`/`continue` (every page at the first page's `resourceVersion`, as the
//!   real server serves a paginated list from one snapshot) and WATCH (`watch=true`:
//!   newline-delimited JSON events replayed from the requested `resourceVersion`, the stream
//!   kept open until `timeoutSeconds`; a `resourceVersion` older than the server's start gets
//!   `410 Gone`).
//! - PATCH of `/status` by server-side apply (the applied `status` replaces the old one: the
//!   controller is its only field manager) or by JSON merge patch. A change bumps
//!   `resourceVersion` and is sent to open watches as `MODIFIED`, exactly as the real server
//!   does — so the controller's own status write comes back to it. A write that changes
//!   nothing is a no-op: same `resourceVersion`, no watch event.
//! - JSON merge patch of the object itself (finalizers, annotations, spec; a spec change bumps
//!   `generation`).
//! - GET of one object (and of its `/status`), `404 NotFound` naming it when absent.
//! - `labelSelector` on LIST and WATCH (`k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`,
//!   `k`, `!k`, comma-separated, all must hold). As on the real server, a change that makes
//!   an object match a watch's selector reaches that watch as `ADDED`, one that makes it stop
//!   matching as `DELETED`.
//! - `fieldSelector` on LIST and WATCH with the fields the real server supports for custom
//!   resources, `metadata.name` and `metadata.namespace` (`=`, `==`, `!=`, comma-separated,
//!   all must hold); any other field is `400 BadRequest` ("field label not supported"), as
//!   from the real server. This is what `kube::runtime::watcher::watch_object` (and
//!   `kubectl wait`) uses to watch one object.
//! - `events.k8s.io/v1` events: create and patch, answered, counted and kept as sent
//!   ([`FakeKube::events`]).
//! - GET of a core `Namespace`: found when it was put or any object lives in it.
//! - `apps/v1` `Deployment`s, stored and listed like the others (the kubectl plugin reads
//!   the controller's flags from them).
//! - `coordination.k8s.io/v1` `Lease`s: GET, LIST (with label selectors), POST (create:
//!   `409 AlreadyExists` when the name is taken, as on the real server) and JSON merge
//!   patch with `metadata.resourceVersion` as a precondition (`409 Conflict` when stale),
//!   which is all the controller's shard-set Leases use (`controller::shard_set`).
//! - Anything else: `404` with a `Status` body.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use kube::Resource;
use serde_json::{Value, json};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

use redeliver::api::{
    AccessPackageAssignment, AccessPackageGuard, ClusterGraphConnection, GraphConnection,
};

/// One status write the server received.
#[derive(Debug, Clone)]
pub struct StatusWrite {
    /// When it arrived.
    pub at: Instant,
    /// Resource plural (e.g. `accesspackageassignments`).
    pub plural: String,
    /// Object namespace (empty for a cluster-scoped one).
    pub namespace: String,
    /// Object name.
    pub name: String,
    /// `status` of the `Delivered` condition after the write, if any.
    pub delivered: Option<String>,
    /// Whether the write changed the stored status.
    pub changed: bool,
    /// The writer's `fieldManager` (server-side apply), when it gave one.
    pub field_manager: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    plural: String,
    namespace: String,
    name: String,
}

struct Watcher {
    plural: String,
    namespace: Option<String>,
    selector: FieldSelector,
    labels: LabelSelector,
    tx: UnboundedSender<Bytes>,
}

struct Change {
    rv: u64,
    plural: String,
    namespace: String,
    name: String,
    /// `ADDED`, `MODIFIED` or `DELETED`, as a watch without a label selector sees it.
    kind: &'static str,
    /// The object's labels before the change (none for `ADDED`).
    old_labels: Option<Value>,
    /// The object after the change, serialized.
    object: Bytes,
    /// Its labels.
    labels: Value,
}

impl Change {
    /// The watch event a watch with `selector` gets for this change, if any: a label change
    /// across the selector is `ADDED` or `DELETED` for that watch.
    fn line_for(&self, selector: &LabelSelector) -> Option<Bytes> {
        let now = selector.matches(&self.labels);
        let before = self.old_labels.as_ref().map(|l| selector.matches(l));
        let kind = match (self.kind, before, now) {
            ("DELETED", _, true) => "DELETED",
            ("DELETED", _, false) => return None,
            (_, Some(true), true) => "MODIFIED",
            (_, Some(true), false) => "DELETED",
            (_, _, true) => "ADDED",
            (_, _, false) => return None,
        };
        let mut line = Vec::with_capacity(self.object.len() + 32);
        line.extend_from_slice(b"{\"type\":\"");
        line.extend_from_slice(kind.as_bytes());
        line.extend_from_slice(b"\",\"object\":");
        line.extend_from_slice(&self.object);
        line.extend_from_slice(b"}\n");
        Some(Bytes::from(line))
    }
}

/// One term of a `labelSelector`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelTerm {
    /// `k=v`, `k==v` (true) or `k!=v` (false).
    Equals(String, bool, String),
    /// `k in (..)` (true) or `k notin (..)` (false).
    In(String, bool, Vec<String>),
    /// `k` (true) or `!k` (false).
    Exists(String, bool),
}

/// A `labelSelector`: every term must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct LabelSelector(Vec<LabelTerm>);

impl LabelSelector {
    /// Parses the selector syntax of the real server; the error is its message.
    fn parse(s: &str) -> Result<Self, String> {
        let bad = |term: &str| format!("unable to parse requirement: {term:?} in {s:?}");
        let mut terms = Vec::new();
        // Split on commas outside parentheses.
        let mut depth = 0;
        let mut start = 0;
        let mut parts = Vec::new();
        for (i, c) in s.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(&s[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&s[start..]);
        for term in parts.into_iter().map(str::trim).filter(|t| !t.is_empty()) {
            let set = |rest: &str| -> Result<Vec<String>, String> {
                let inner = rest
                    .trim()
                    .strip_prefix('(')
                    .and_then(|r| r.strip_suffix(')'))
                    .ok_or_else(|| bad(term))?;
                Ok(inner
                    .split(',')
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty())
                    .collect())
            };
            let t = if let Some((k, rest)) = term.split_once(" notin ") {
                LabelTerm::In(k.trim().into(), false, set(rest)?)
            } else if let Some((k, rest)) = term.split_once(" in ") {
                LabelTerm::In(k.trim().into(), true, set(rest)?)
            } else if let Some((k, v)) = term.split_once("!=") {
                LabelTerm::Equals(k.trim().into(), false, v.trim().into())
            } else if let Some((k, v)) = term.split_once("==") {
                LabelTerm::Equals(k.trim().into(), true, v.trim().into())
            } else if let Some((k, v)) = term.split_once('=') {
                LabelTerm::Equals(k.trim().into(), true, v.trim().into())
            } else if let Some(k) = term.strip_prefix('!') {
                LabelTerm::Exists(k.trim().into(), false)
            } else if term.contains(|c: char| c.is_whitespace() || c == '(') {
                return Err(bad(term));
            } else {
                LabelTerm::Exists(term.into(), true)
            };
            terms.push(t);
        }
        Ok(Self(terms))
    }

    /// Whether an object with these `metadata.labels` (an object, or null) matches.
    fn matches(&self, labels: &Value) -> bool {
        self.0.iter().all(|term| match term {
            LabelTerm::Equals(k, equal, v) => {
                // `k!=v` holds for an object without the label, as on the real server.
                (labels.get(k).and_then(Value::as_str) == Some(v.as_str())) == *equal
            }
            LabelTerm::In(k, inside, set) => {
                let value = labels.get(k).and_then(Value::as_str);
                match value {
                    Some(v) => set.iter().any(|s| s == v) == *inside,
                    None => !*inside,
                }
            }
            LabelTerm::Exists(k, exists) => labels.get(k).is_some() == *exists,
        })
    }
}

/// The request's `labelSelector`, or the message of the `400` the real server answers.
fn label_selector(query: &BTreeMap<String, String>) -> Result<LabelSelector, String> {
    query
        .get("labelSelector")
        .map_or_else(|| Ok(LabelSelector::default()), |s| LabelSelector::parse(s))
}

/// How the fake API server charges writes (see [`FakeKube::start_with_write_model`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteModel {
    /// Service time of one write; zero makes writes free.
    pub cost: Duration,
    /// Writes served at once; more wait their turn. 1 is the old serial queue.
    pub parallel: usize,
}

impl WriteModel {
    /// Writes cost nothing.
    pub const FREE: Self = Self {
        cost: Duration::ZERO,
        parallel: 1,
    };

    /// Every write waits its turn in one queue and takes `cost`.
    pub fn serial(cost: Duration) -> Self {
        Self { cost, parallel: 1 }
    }
}

/// A `fieldSelector` restricted to what custom resources support.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct FieldSelector(Vec<(FieldLabel, bool, String)>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FieldLabel {
    Name,
    Namespace,
}

impl FieldSelector {
    /// Parses `metadata.name=x,metadata.namespace!=y`; the error is the server's message.
    fn parse(s: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, true, v)
            } else {
                return Err(format!(
                    "invalid selector: '{s}'; can't understand '{term}'"
                ));
            };
            let label = match field.trim() {
                "metadata.name" => FieldLabel::Name,
                "metadata.namespace" => FieldLabel::Namespace,
                other => return Err(format!("field label not supported: {other}")),
            };
            terms.push((label, equal, value.trim().to_string()));
        }
        Ok(Self(terms))
    }

    fn matches(&self, namespace: &str, name: &str) -> bool {
        self.0.iter().all(|(label, equal, value)| {
            let actual = match label {
                FieldLabel::Name => name,
                FieldLabel::Namespace => namespace,
            };
            (actual == value) == *equal
        })
    }
}

/// The request's `fieldSelector`, or the message of the `400` the real server answers to one
/// it cannot use.
fn field_selector(query: &BTreeMap<String, String>) -> Result<FieldSelector, String> {
    query
        .get("fieldSelector")
        .map_or_else(|| Ok(FieldSelector::default()), |s| FieldSelector::parse(s))
}

struct Inner {
    rv: u64,
    /// `resourceVersion` after the initial objects were stored; older ones are "too old".
    base_rv: u64,
    objects: BTreeMap<Key, Value>,
    history: Vec<Change>,
    watchers: Vec<Watcher>,
}

struct Shared {
    /// Service time of one write (see [`FakeKube::start_with_write_model`]); zero: free.
    write_cost: Duration,
    /// Writes served at once (`WriteModel::parallel` permits).
    write_slots: tokio::sync::Semaphore,
    inner: Mutex<Inner>,
    counts: Mutex<BTreeMap<String, u64>>,
    status_writes: Mutex<Vec<StatusWrite>>,
    /// Every event created (`POST`) or patched (`PATCH`, a series count), as sent.
    events: Mutex<Vec<Value>>,
    /// plural → (apiVersion, kind)
    kinds: BTreeMap<String, (String, String)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running fake API server (stopped when dropped).
pub struct FakeKube {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Request counts of one kind of request.
pub type Counts = BTreeMap<String, u64>;

/// Writes (non-GET requests) in `counts`.
pub fn writes(counts: &Counts) -> u64 {
    counts
        .iter()
        .filter(|(k, _)| !k.starts_with("GET "))
        .map(|(_, v)| v)
        .sum()
}

/// `after - before`, per key, dropping zeros.
pub fn diff(after: &Counts, before: &Counts) -> Counts {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

impl FakeKube {
    /// Stores `objects` (each with `apiVersion`, `kind`, `metadata.name` and
    /// `metadata.namespace`; uid, resourceVersion, generation and creationTimestamp are
    /// filled in) and serves them on 127.0.0.1 at a random port.
    pub async fn start(objects: Vec<Value>) -> std::io::Result<Self> {
        Self::start_with_write_model(objects, WriteModel::FREE).await
    }

    /// Like [`FakeKube::start`], but every write (status patch, event, any non-GET) waits
    /// its turn in one queue and takes `write_cost` to serve, so writes cost what they cost
    /// a real API server at saturation instead of nearly nothing. Reads stay free: the
    /// controller's reads are watches and one list. A real kube-apiserver at 10,000
    /// objects absorbed 30,300 writes (status and events) in about 140 s, about 4.6 ms
    /// each, but that was its throughput with several writes in flight, not the time of one.
    pub async fn start_with_write_cost(
        objects: Vec<Value>,
        write_cost: Duration,
    ) -> std::io::Result<Self> {
        Self::start_with_write_model(objects, WriteModel::serial(write_cost)).await
    }

    /// Like [`FakeKube::start`], with writes charged by `model`: up to `model.parallel`
    /// writes are served at once, each taking `model.cost`, and more wait for a free slot.
    /// A real kube-apiserver serves many mutating requests at once (up to
    /// `--max-mutating-requests-inflight`), each costing its own latency (admission, etcd
    /// round trip, watch fan-out); the controller benchmark calibrates both figures to a
    /// real server's convergence time (docs/benchmarks.md).
    pub async fn start_with_write_model(
        objects: Vec<Value>,
        model: WriteModel,
    ) -> std::io::Result<Self> {
        let write_cost = model.cost;
        let mut kinds = BTreeMap::new();
        kinds.insert(
            AccessPackageAssignment::plural(&()).to_string(),
            (
                AccessPackageAssignment::api_version(&()).to_string(),
                AccessPackageAssignment::kind(&()).to_string(),
            ),
        );
        kinds.insert(
            AccessPackageGuard::plural(&()).to_string(),
            (
                AccessPackageGuard::api_version(&()).to_string(),
                AccessPackageGuard::kind(&()).to_string(),
            ),
        );
        kinds.insert(
            GraphConnection::plural(&()).to_string(),
            (
                GraphConnection::api_version(&()).to_string(),
                GraphConnection::kind(&()).to_string(),
            ),
        );
        kinds.insert(
            ClusterGraphConnection::plural(&()).to_string(),
            (
                ClusterGraphConnection::api_version(&()).to_string(),
                ClusterGraphConnection::kind(&()).to_string(),
            ),
        );
        kinds.insert("secrets".to_string(), ("v1".into(), "Secret".into()));
        kinds.insert("namespaces".to_string(), ("v1".into(), "Namespace".into()));
        kinds.insert(
            "deployments".to_string(),
            ("apps/v1".into(), "Deployment".into()),
        );
        kinds.insert(
            "leases".to_string(),
            ("coordination.k8s.io/v1".into(), "Lease".into()),
        );
        let mut inner = Inner {
            rv: 0,
            base_rv: 0,
            objects: BTreeMap::new(),
            history: Vec::new(),
            watchers: Vec::new(),
        };
        let created = jiff::Timestamp::now().to_string();
        for mut obj in objects {
            let kind = obj["kind"].as_str().unwrap_or_default().to_string();
            let Some(plural) = kinds
                .iter()
                .find(|(_, (_, k))| *k == kind)
                .map(|(p, _)| p.clone())
            else {
                return Err(std::io::Error::other(format!(
                    "the fake API server does not serve kind {kind:?}"
                )));
            };
            inner.rv += 1;
            // As created by `kubectl apply --server-side`: the API server records who owns
            // which fields, and every LIST and WATCH carries it.
            let applied = json!({"spec": obj["spec"].clone()});
            let managed = json!([managed_entry("kubectl", None, &created, &applied)]);
            let meta = &mut obj["metadata"];
            meta["uid"] = json!(uuid::Uuid::new_v4().to_string());
            meta["resourceVersion"] = json!(inner.rv.to_string());
            meta["generation"] = json!(1);
            meta["creationTimestamp"] = json!(created);
            meta["managedFields"] = managed;
            let key = Key {
                plural,
                namespace: meta["namespace"].as_str().unwrap_or_default().to_string(),
                name: meta["name"].as_str().unwrap_or_default().to_string(),
            };
            inner.objects.insert(key, obj);
        }
        inner.base_rv = inner.rv;
        let shared = Arc::new(Shared {
            write_cost,
            write_slots: tokio::sync::Semaphore::new(model.parallel.max(1)),
            inner: Mutex::new(inner),
            counts: Mutex::new(BTreeMap::new()),
            status_writes: Mutex::new(Vec::new()),
            events: Mutex::new(Vec::new()),
            kinds,
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("fake API server stopped: {e}");
            }
        });
        Ok(Self { addr, shared, task })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests so far, keyed `METHOD what` (e.g. `PATCH accesspackageassignments/status`,
    /// `GET accesspackageassignments (watch)`, `POST events`).
    pub fn counts(&self) -> Counts {
        lock(&self.shared.counts).clone()
    }

    /// Status writes received from index `from` on.
    pub fn status_writes_since(&self, from: usize) -> Vec<StatusWrite> {
        let log = lock(&self.shared.status_writes);
        log.get(from..).map(<[_]>::to_vec).unwrap_or_default()
    }

    /// Every event body received (creates, then patches of a series, in order).
    pub fn events(&self) -> Vec<Value> {
        lock(&self.shared.events).clone()
    }

    /// Number of status writes received so far.
    pub fn status_write_count(&self) -> usize {
        lock(&self.shared.status_writes).len()
    }

    /// Stored objects of `plural` whose `Delivered` condition has this status.
    pub fn count_delivered(&self, plural: &str, status: &str) -> usize {
        lock(&self.shared.inner)
            .objects
            .iter()
            .filter(|(k, o)| k.plural == plural && delivered(o).as_deref() == Some(status))
            .count()
    }

    /// One stored object.
    pub fn object(&self, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        lock(&self.shared.inner)
            .objects
            .get(&Key {
                plural: plural.into(),
                namespace: namespace.into(),
                name: name.into(),
            })
            .cloned()
    }

    /// Creates `obj` (with `apiVersion`, `kind`, `metadata.name` and, unless cluster-scoped,
    /// `metadata.namespace`) or replaces the stored one, as `kubectl apply` would: a spec
    /// (or Secret data) change bumps `generation`, and watches get `ADDED` or `MODIFIED`.
    pub fn put(&self, mut obj: Value) -> Result<(), String> {
        let kind = obj["kind"].as_str().unwrap_or_default().to_string();
        let Some(plural) = self
            .shared
            .kinds
            .iter()
            .find(|(_, (_, k))| *k == kind)
            .map(|(p, _)| p.clone())
        else {
            return Err(format!("the fake API server does not serve kind {kind:?}"));
        };
        let key = Key {
            plural,
            namespace: obj["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            name: obj["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        };
        let mut inner = lock(&self.shared.inner);
        let old = inner.objects.get(&key).cloned();
        inner.rv += 1;
        let rv = inner.rv;
        let meta = &mut obj["metadata"];
        meta["resourceVersion"] = json!(rv.to_string());
        match &old {
            Some(old) => {
                meta["uid"] = old["metadata"]["uid"].clone();
                meta["creationTimestamp"] = old["metadata"]["creationTimestamp"].clone();
                let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
                let changed = obj["spec"] != old["spec"] || obj["data"] != old["data"];
                obj["metadata"]["generation"] =
                    json!(if changed { generation + 1 } else { generation });
                if obj.get("status").is_none() && old.get("status").is_some() {
                    obj["status"] = old["status"].clone();
                }
            }
            None => {
                meta["uid"] = json!(uuid::Uuid::new_v4().to_string());
                meta["generation"] = json!(1);
                meta["creationTimestamp"] = json!(jiff::Timestamp::now().to_string());
            }
        }
        let kind = if old.is_some() { "MODIFIED" } else { "ADDED" };
        notify(&mut inner, &key, kind, old.as_ref(), &obj, rv);
        inner.objects.insert(key, obj);
        Ok(())
    }

    /// Deletes one stored object (watches get `DELETED`); false when there was none.
    pub fn delete(&self, plural: &str, namespace: &str, name: &str) -> bool {
        let key = Key {
            plural: plural.into(),
            namespace: namespace.into(),
            name: name.into(),
        };
        let mut inner = lock(&self.shared.inner);
        let Some(mut obj) = inner.objects.remove(&key) else {
            return false;
        };
        inner.rv += 1;
        let rv = inner.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        notify(&mut inner, &key, "DELETED", None, &obj, rv);
        true
    }

    /// Watches open now.
    pub fn open_watches(&self) -> usize {
        let mut inner = lock(&self.shared.inner);
        inner.watchers.retain(|w| !w.tx.is_closed());
        inner.watchers.len()
    }
}

/// Sends one watch event for `key` to the matching watches and keeps it in the history.
/// `old` is the object before the change (none when it is new): a watch whose label
/// selector the change crosses gets `ADDED` or `DELETED` instead of `MODIFIED`.
fn notify(
    inner: &mut Inner,
    key: &Key,
    kind: &'static str,
    old: Option<&Value>,
    obj: &Value,
    rv: u64,
) {
    let change = Change {
        rv,
        plural: key.plural.clone(),
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        kind,
        old_labels: old.map(|o| o["metadata"]["labels"].clone()),
        object: Bytes::from(obj.to_string()),
        labels: obj["metadata"]["labels"].clone(),
    };
    inner.watchers.retain(|w| !w.tx.is_closed());
    for w in &inner.watchers {
        if w.plural == key.plural
            && w.namespace.as_ref().is_none_or(|ns| *ns == key.namespace)
            && w.selector.matches(&key.namespace, &key.name)
            && let Some(line) = change.line_for(&w.labels)
        {
            let _ = w.tx.send(line);
        }
    }
    inner.history.push(change);
}

/// One `metadata.managedFields` entry owning every field of `applied`.
fn managed_entry(manager: &str, subresource: Option<&str>, time: &str, applied: &Value) -> Value {
    let mut e = json!({
        "manager": manager,
        "operation": "Apply",
        "apiVersion": "redeliver.dev/v1alpha1",
        "time": time,
        "fieldsType": "FieldsV1",
        "fieldsV1": fields_v1(applied, false),
    });
    if let Some(sub) = subresource {
        e["subresource"] = json!(sub);
    }
    e
}

/// The FieldsV1 set of `v`: `f:<name>` per field; lists of objects with a `type` are map
/// lists keyed by it (`k:{"type":..}`, as `conditions`), other lists are atomic.
fn fields_v1(v: &Value, item: bool) -> Value {
    let mut out = serde_json::Map::new();
    if item {
        out.insert(".".into(), json!({}));
    }
    if let Value::Object(map) = v {
        for (k, child) in map {
            let set = match child {
                Value::Object(_) => fields_v1(child, false),
                Value::Array(items)
                    if !items.is_empty() && items.iter().all(|i| i["type"].is_string()) =>
                {
                    let mut keyed = serde_json::Map::new();
                    for i in items {
                        keyed.insert(
                            format!("k:{}", json!({"type": i["type"]})),
                            fields_v1(i, true),
                        );
                    }
                    Value::Object(keyed)
                }
                _ => json!({}),
            };
            out.insert(format!("f:{k}"), set);
        }
    }
    Value::Object(out)
}

/// Replaces the entry of the same manager and subresource; keeps its time when its fields
/// did not change (the real server does not bump an unchanged apply).
fn set_managed(obj: &mut Value, mut entry: Value, old: &Value) {
    let (manager, subresource) = (entry["manager"].clone(), entry["subresource"].clone());
    let same = |e: &Value| e["manager"] == manager && e["subresource"] == subresource;
    let mut list: Vec<Value> = old["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if let Some(prev) = list.iter().find(|e| same(e))
        && prev["fieldsV1"] == entry["fieldsV1"]
        && old["status"] == obj["status"]
    {
        entry["time"] = prev["time"].clone();
    }
    list.retain(|e| !same(e));
    list.push(entry);
    obj["metadata"]["managedFields"] = Value::Array(list);
}

fn delivered(obj: &Value) -> Option<String> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Delivered")
        .and_then(|c| c["status"].as_str())
        .map(str::to_string)
}

fn status_error(code: StatusCode, reason: &str, message: String) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
        })
        .to_string(),
    )
        .into_response()
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

/// The parts of a resource path: `/apis/{group}/{version}[/namespaces/{ns}]/{plural}[/{name}[/{sub}]]`.
struct Target<'a> {
    group_version: String,
    namespace: Option<&'a str>,
    plural: &'a str,
    name: Option<&'a str>,
    sub: Option<&'a str>,
}

fn parse_path(path: &str) -> Option<Target<'_>> {
    let (core, rest) = match path.strip_prefix("/apis/") {
        Some(rest) => (false, rest),
        None => (true, path.strip_prefix("/api/")?),
    };
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let (group_version, tail) = match (core, segs.as_slice()) {
        // The core group: `/api/v1/...`.
        (true, [v, tail @ ..]) => (v.to_string(), tail),
        (false, [g, v, tail @ ..]) => (format!("{g}/{v}"), tail),
        _ => return None,
    };
    let (namespace, tail) = match tail {
        ["namespaces", ns, tail @ ..] if !tail.is_empty() => (Some(*ns), tail),
        _ => (None, tail),
    };
    match tail {
        [plural] => Some(Target {
            group_version,
            namespace,
            plural,
            name: None,
            sub: None,
        }),
        [plural, name] => Some(Target {
            group_version,
            namespace,
            plural,
            name: Some(name),
            sub: None,
        }),
        [plural, name, sub] => Some(Target {
            group_version,
            namespace,
            plural,
            name: Some(name),
            sub: Some(sub),
        }),
        _ => None,
    }
}

async fn handle(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query: BTreeMap<String, String> =
        url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let path = uri.path();
    let target = parse_path(path);
    let what = request_kind(&method, path, target.as_ref(), &query);
    *lock(&shared.counts)
        .entry(format!("{method} {what}"))
        .or_default() += 1;
    if method != Method::GET && !shared.write_cost.is_zero() {
        // The semaphore is never closed; a closed one would only make writes free.
        let _turn = shared.write_slots.acquire().await;
        tokio::time::sleep(shared.write_cost).await;
    }
    let Some(t) = target else {
        return status_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        );
    };
    if t.group_version == "events.k8s.io/v1" && t.plural == "events" {
        return record_event(&shared, &method, t.name, &body);
    }
    let Some((api_version, kind)) = shared.kinds.get(t.plural).cloned() else {
        return status_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        );
    };
    if api_version != t.group_version {
        return status_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{} is not served at {}", t.plural, t.group_version),
        );
    }
    if let (&Method::GET, "namespaces", Some(name), None) = (&method, t.plural, t.name, t.sub) {
        return get_namespace(&shared, name);
    }
    match (&method, t.name, t.sub) {
        (&Method::GET, None, None)
            if matches!(query.get("watch").map(String::as_str), Some("true" | "1")) =>
        {
            watch(&shared, &t, &query)
        }
        (&Method::GET, None, None) => list(&shared, &t, &api_version, &kind, &query),
        (&Method::GET, Some(name), None | Some("status")) => get(&shared, &t, name),
        (&Method::POST, None, None) if t.plural == "leases" => create(&shared, &t, &body),
        (&Method::PATCH, Some(name), sub @ (None | Some("status"))) => {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let manager = query.get("fieldManager").map(String::as_str);
            patch(
                &shared,
                &t,
                name,
                sub.is_some(),
                (content_type, manager),
                &body,
            )
        }
        _ => status_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{method} is not supported on {path} by this test server"),
        ),
    }
}

/// What a request is counted as: `accesspackageassignments/status`, `leases (watch)`,
/// `other /version`.
fn request_kind(
    method: &Method,
    path: &str,
    target: Option<&Target<'_>>,
    query: &BTreeMap<String, String>,
) -> String {
    let Some(t) = target else {
        return format!("other {path}");
    };
    let mut w = t.plural.to_string();
    if let Some(sub) = t.sub {
        w = format!("{w}/{sub}");
    }
    if *method == Method::GET {
        w.push_str(match (t.name, query.get("watch").map(String::as_str)) {
            (None, Some("true" | "1")) => " (watch)",
            (None, _) => " (list)",
            (Some(_), _) => " (get)",
        });
    }
    w
}

/// An `events.k8s.io/v1` event written: answered, and kept when it is JSON.
fn record_event(shared: &Shared, method: &Method, name: Option<&str>, body: &[u8]) -> Response {
    let answer = event(method, name, body);
    if let Ok(mut ev) = serde_json::from_slice::<Value>(body) {
        if let Some(name) = name {
            ev["metadata"]["name"] = json!(name);
        }
        lock(&shared.events).push(ev);
    }
    answer
}

/// `GET` of namespace `name`: it exists when it was put, or when an object lives in it (a
/// real server holds no object in a namespace that does not exist).
fn get_namespace(shared: &Shared, name: &str) -> Response {
    let inner = lock(&shared.inner);
    let exists = inner
        .objects
        .keys()
        .any(|k| k.namespace == name || (k.plural == "namespaces" && k.name == name));
    if exists {
        json_response(
            StatusCode::OK,
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
        )
    } else {
        not_found("namespaces", name)
    }
}

/// `GET` of one object (or its status: the whole object, as a real server answers).
fn get(shared: &Shared, t: &Target<'_>, name: &str) -> Response {
    let key = Key {
        plural: t.plural.into(),
        namespace: t.namespace.unwrap_or_default().into(),
        name: name.into(),
    };
    match lock(&shared.inner).objects.get(&key) {
        Some(o) => json_response(StatusCode::OK, o),
        None => not_found(t.plural, name),
    }
}

fn not_found(plural: &str, name: &str) -> Response {
    status_error(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("{plural} \"{name}\" not found"),
    )
}

fn event(method: &Method, name: Option<&str>, body: &[u8]) -> Response {
    let Ok(mut ev) = serde_json::from_slice::<Value>(body) else {
        return status_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the event is not JSON".into(),
        );
    };
    match (method, name) {
        (&Method::POST, None) => {
            if ev["metadata"]["name"].is_null() {
                let prefix = ev["metadata"]["generateName"].as_str().unwrap_or("event.");
                ev["metadata"]["name"] =
                    json!(format!("{prefix}{}", uuid::Uuid::new_v4().simple()));
            }
            ev["metadata"]["resourceVersion"] = json!("1");
            json_response(StatusCode::CREATED, &ev)
        }
        (&Method::PATCH, Some(_)) => json_response(StatusCode::OK, &ev),
        _ => status_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{method} on events is not supported by this test server"),
        ),
    }
}

fn list(
    shared: &Shared,
    t: &Target<'_>,
    api_version: &str,
    kind: &str,
    query: &BTreeMap<String, String>,
) -> Response {
    let selector = match field_selector(query) {
        Ok(s) => s,
        Err(message) => return status_error(StatusCode::BAD_REQUEST, "BadRequest", message),
    };
    let labels = match label_selector(query) {
        Ok(s) => s,
        Err(message) => return status_error(StatusCode::BAD_REQUEST, "BadRequest", message),
    };
    let inner = lock(&shared.inner);
    let limit = query
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    // The continue token holds the snapshot's resourceVersion and the last name served.
    let (snapshot_rv, after) = match query.get("continue").filter(|c| !c.is_empty()) {
        Some(c) => match c.split_once('/') {
            Some((rv, name)) => (rv.parse().unwrap_or(inner.rv), Some(name.to_string())),
            None => {
                return status_error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "invalid continue token".into(),
                );
            }
        },
        None => (inner.rv, None),
    };
    let mut items = Vec::new();
    let mut more = false;
    for (k, o) in &inner.objects {
        if k.plural != t.plural
            || t.namespace.is_some_and(|ns| ns != k.namespace)
            || !selector.matches(&k.namespace, &k.name)
            || !labels.matches(&o["metadata"]["labels"])
        {
            continue;
        }
        let sort_name = format!("{}/{}", k.namespace, k.name);
        if after.as_ref().is_some_and(|a| sort_name <= *a) {
            continue;
        }
        if items.len() == limit {
            more = true;
            break;
        }
        items.push((sort_name, o));
    }
    let mut metadata = json!({"resourceVersion": snapshot_rv.to_string()});
    if more && let Some((last, _)) = items.last() {
        metadata["continue"] = json!(format!("{snapshot_rv}/{last}"));
    }
    let body = json!({
        "apiVersion": api_version,
        "kind": format!("{kind}List"),
        "metadata": metadata,
        "items": items.into_iter().map(|(_, o)| o).collect::<Vec<_>>(),
    });
    json_response(StatusCode::OK, &body)
}

fn watch(shared: &Shared, t: &Target<'_>, query: &BTreeMap<String, String>) -> Response {
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(1800);
    let selector = match field_selector(query) {
        Ok(s) => s,
        Err(message) => return status_error(StatusCode::BAD_REQUEST, "BadRequest", message),
    };
    let labels = match label_selector(query) {
        Ok(s) => s,
        Err(message) => return status_error(StatusCode::BAD_REQUEST, "BadRequest", message),
    };
    let (tx, rx) = unbounded_channel::<Bytes>();
    {
        let mut inner = lock(&shared.inner);
        let from: Option<u64> = query
            .get("resourceVersion")
            .and_then(|rv| rv.parse().ok())
            .filter(|rv| *rv > 0);
        match from {
            Some(rv) if rv < inner.base_rv => {
                let line = json!({"type": "ERROR", "object": {
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": format!("too old resource version: {rv} ({})", inner.base_rv),
                    "reason": "Expired", "code": 410,
                }});
                let _ = tx.send(Bytes::from(format!("{line}\n")));
            }
            Some(rv) => {
                let start = inner.history.partition_point(|c| c.rv <= rv);
                for c in &inner.history[start..] {
                    if c.plural == t.plural
                        && t.namespace.is_none_or(|ns| ns == c.namespace)
                        && selector.matches(&c.namespace, &c.name)
                        && let Some(line) = c.line_for(&labels)
                    {
                        let _ = tx.send(line);
                    }
                }
            }
            None => {}
        }
        inner.watchers.retain(|w| !w.tx.is_closed());
        inner.watchers.push(Watcher {
            plural: t.plural.to_string(),
            namespace: t.namespace.map(str::to_string),
            selector,
            labels,
            tx,
        });
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    let stream = futures::stream::unfold(rx, move |mut rx| async move {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(line)) => Some((Ok::<_, Infallible>(line), rx)),
            _ => None,
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// POST of a new object to its collection (Leases only): `409 AlreadyExists` when the name is
/// taken, else stored with a uid, a resourceVersion and a creation time, and sent to watches
/// as `ADDED`.
fn create(shared: &Shared, t: &Target<'_>, body: &[u8]) -> Response {
    let mut obj: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return status_error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("the object is not JSON: {e}"),
            );
        }
    };
    let Some(name) = obj["metadata"]["name"].as_str().map(str::to_string) else {
        return status_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "metadata.name: Required value".into(),
        );
    };
    let namespace = t.namespace.unwrap_or_default().to_string();
    let key = Key {
        plural: t.plural.into(),
        namespace: namespace.clone(),
        name: name.clone(),
    };
    let mut inner = lock(&shared.inner);
    if inner.objects.contains_key(&key) {
        return status_error(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", t.plural),
        );
    }
    inner.rv += 1;
    let rv = inner.rv;
    let meta = &mut obj["metadata"];
    if !namespace.is_empty() {
        meta["namespace"] = json!(namespace);
    }
    meta["uid"] = json!(uuid::Uuid::new_v4().to_string());
    meta["resourceVersion"] = json!(rv.to_string());
    meta["creationTimestamp"] = json!(jiff::Timestamp::now().to_string());
    notify(&mut inner, &key, "ADDED", None, &obj, rv);
    inner.objects.insert(key, obj.clone());
    json_response(StatusCode::CREATED, &obj)
}

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn patch(
    shared: &Shared,
    t: &Target<'_>,
    name: &str,
    status: bool,
    (content_type, field_manager): (&str, Option<&str>),
    body: &[u8],
) -> Response {
    // Server-side apply bodies are YAML; the controller sends JSON, which is YAML too.
    let patch: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return status_error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("the patch is not JSON: {e}"),
            );
        }
    };
    let apply = content_type.starts_with("application/apply-patch");
    if !apply && !content_type.starts_with("application/merge-patch+json") {
        return status_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!("this test server takes apply and merge patches, not {content_type:?}"),
        );
    }
    let key = Key {
        plural: t.plural.into(),
        namespace: t.namespace.unwrap_or_default().into(),
        name: name.into(),
    };
    let mut inner = lock(&shared.inner);
    let Some(old) = inner.objects.get(&key).cloned() else {
        return not_found(t.plural, name);
    };
    let mut new = old.clone();
    if status {
        match (apply, patch.get("status")) {
            (true, Some(s)) => new["status"] = s.clone(),
            (true, None) => {
                if let Some(o) = new.as_object_mut() {
                    o.remove("status");
                }
            }
            (false, Some(s)) => merge(&mut new["status"], s),
            (false, None) => {}
        }
    } else if apply {
        return status_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            "this test server takes server-side apply on /status only".into(),
        );
    } else {
        let mut p = patch.clone();
        if let Some(o) = p.as_object_mut() {
            // The main resource ignores status; resourceVersion is a precondition.
            o.remove("status");
            if let Some(meta) = o.get_mut("metadata").and_then(Value::as_object_mut)
                && let Some(rv) = meta.remove("resourceVersion")
                && rv.as_str() != old["metadata"]["resourceVersion"].as_str()
            {
                return status_error(
                    StatusCode::CONFLICT,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on {} \"{name}\": the object has been modified",
                        t.plural
                    ),
                );
            }
        }
        merge(&mut new, &p);
        if new["spec"] != old["spec"] {
            let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
            new["metadata"]["generation"] = json!(generation + 1);
        }
    }
    if status && apply {
        // Server-side apply records the applier's fields (here: the whole status).
        let entry = managed_entry(
            "redeliver",
            Some("status"),
            &jiff::Timestamp::now().to_string(),
            &json!({"status": new["status"].clone()}),
        );
        set_managed(&mut new, entry, &old);
    }
    let changed = new != old;
    if changed {
        inner.rv += 1;
        new["metadata"]["resourceVersion"] = json!(inner.rv.to_string());
        let rv = inner.rv;
        notify(&mut inner, &key, "MODIFIED", Some(&old), &new, rv);
        inner.objects.insert(key.clone(), new.clone());
    }
    drop(inner);
    if status {
        lock(&shared.status_writes).push(StatusWrite {
            at: Instant::now(),
            plural: key.plural,
            namespace: key.namespace,
            name: key.name,
            delivered: delivered(&new),
            changed,
            field_manager: field_manager.map(str::to_string),
        });
    }
    json_response(StatusCode::OK, &new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apa(name: &str) -> Value {
        json!({
            "apiVersion": "redeliver.dev/v1alpha1", "kind": "AccessPackageAssignment",
            "metadata": {"name": name, "namespace": "bench"},
            "spec": {"accessPackage": {"id": "9f1c0c7e-0000-4000-8000-000000000001"},
                     "target": {"userPrincipalName": format!("{name}@contoso.com")}}
        })
    }

    const PLURAL_APA: &str = "accesspackageassignments";

    #[test]
    fn field_selectors_take_name_and_namespace_only() {
        let s = FieldSelector::parse("metadata.name=a,metadata.namespace!=x").unwrap();
        assert!(s.matches("bench", "a"));
        assert!(!s.matches("x", "a"));
        assert!(!s.matches("bench", "b"));
        assert!(
            FieldSelector::parse("metadata.name==a")
                .unwrap()
                .matches("n", "a")
        );
        assert_eq!(
            FieldSelector::parse("spec.mode=Audit").unwrap_err(),
            "field label not supported: spec.mode"
        );
        assert!(FieldSelector::parse("metadata.name").is_err());
    }

    /// `watch_object` (a LIST and a WATCH, both with `metadata.name=`): only that object's
    /// changes arrive, and an annotation merge patch is one of them.
    #[tokio::test]
    async fn watches_one_object_by_field_selector() {
        use futures::StreamExt;
        use kube::api::{Api, Patch, PatchParams};
        let server = FakeKube::start(vec![apa("a"), apa("b")]).await.unwrap();
        let config = kube::Config::new(server.url().parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let api: Api<AccessPackageAssignment> = Api::namespaced(client, "bench");
        let mut events = kube::runtime::watcher::watch_object(api.clone(), "b").boxed();
        let first = events.next().await.unwrap().unwrap().unwrap();
        assert_eq!(first.metadata.name.as_deref(), Some("b"));
        let annotate = |v: &str| json!({"metadata": {"annotations": {"redeliver.dev/reprocess-requested-at": v}}});
        let params = PatchParams::default();
        api.patch("a", &params, &Patch::Merge(annotate("1")))
            .await
            .unwrap();
        api.patch("b", &params, &Patch::Merge(annotate("2")))
            .await
            .unwrap();
        let next = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(next.metadata.name.as_deref(), Some("b"));
        assert_eq!(
            next.metadata.annotations.unwrap()["redeliver.dev/reprocess-requested-at"],
            "2"
        );
        assert!(
            api.list(&kube::api::ListParams::default().fields("spec.mode=x"))
                .await
                .is_err()
        );
    }

    #[test]
    fn label_selectors_take_the_real_syntax() {
        let labels = json!({"redeliver.dev/shard-key": "7", "team": "a"});
        let holds = |s: &str| LabelSelector::parse(s).unwrap().matches(&labels);
        assert!(holds("redeliver.dev/shard-key in (3,7,11)"));
        assert!(!holds("redeliver.dev/shard-key in (3,11)"));
        assert!(holds("redeliver.dev/shard-key notin (3, 11),team=a"));
        assert!(holds("team==a,!other"));
        assert!(!holds("!redeliver.dev/shard-key"));
        assert!(holds("other!=x"), "!= holds without the label");
        assert!(LabelSelector::parse("").unwrap().matches(&Value::Null));
        assert!(
            !LabelSelector::parse("k in (a)")
                .unwrap()
                .matches(&Value::Null)
        );
        assert!(LabelSelector::parse("k in a").is_err());
    }

    async fn next<T>(events: &mut futures::stream::BoxStream<'static, T>) -> T {
        use futures::StreamExt;
        tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    async fn a_label_change_moves_an_object_between_selected_watches() {
        use futures::StreamExt;
        use kube::api::{Api, Patch, PatchParams};
        use kube::runtime::watcher;
        let server = FakeKube::start(vec![apa("a")]).await.unwrap();
        let config = kube::Config::new(server.url().parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let api: Api<AccessPackageAssignment> = Api::namespaced(client, "bench");
        let mut unlabelled =
            watcher::watcher(api.clone(), watcher::Config::default().labels("!k")).boxed();
        let mut selected =
            watcher::watcher(api.clone(), watcher::Config::default().labels("k in (1,2)")).boxed();
        // Initial lists: the unlabelled watch has the object, the selected one does not.
        assert!(matches!(
            next(&mut unlabelled).await,
            Ok(watcher::Event::Init)
        ));
        assert!(
            matches!(next(&mut unlabelled).await, Ok(watcher::Event::InitApply(o)) if o.metadata.name.as_deref() == Some("a"))
        );
        assert!(matches!(
            next(&mut unlabelled).await,
            Ok(watcher::Event::InitDone)
        ));
        assert!(matches!(
            next(&mut selected).await,
            Ok(watcher::Event::Init)
        ));
        assert!(matches!(
            next(&mut selected).await,
            Ok(watcher::Event::InitDone)
        ));
        let label = json!({"metadata": {"labels": {"k": "2"}}});
        api.patch("a", &PatchParams::default(), &Patch::Merge(label))
            .await
            .unwrap();
        assert!(
            matches!(next(&mut unlabelled).await, Ok(watcher::Event::Delete(o)) if o.metadata.name.as_deref() == Some("a")),
            "it left the unlabelled watch"
        );
        assert!(
            matches!(next(&mut selected).await, Ok(watcher::Event::Apply(o)) if o.metadata.name.as_deref() == Some("a")),
            "it entered the selected watch"
        );
        let listed = api
            .list(&kube::api::ListParams::default().labels("k in (2)"))
            .await
            .unwrap();
        assert_eq!(listed.items.len(), 1);
    }

    #[test]
    fn parses_resource_paths() {
        let t = parse_path(
            "/apis/redeliver.dev/v1alpha1/namespaces/a/accesspackageassignments/x/status",
        )
        .unwrap();
        assert_eq!(t.group_version, "redeliver.dev/v1alpha1");
        assert_eq!(t.namespace, Some("a"));
        assert_eq!(t.plural, "accesspackageassignments");
        assert_eq!((t.name, t.sub), (Some("x"), Some("status")));
        let t = parse_path("/apis/redeliver.dev/v1alpha1/accesspackageguards").unwrap();
        assert_eq!(
            (t.namespace, t.plural, t.name),
            (None, "accesspackageguards", None)
        );
        // The core group (Secrets of connections).
        let t = parse_path("/api/v1/namespaces/a/secrets/graph").unwrap();
        assert_eq!(
            (t.group_version.as_str(), t.namespace, t.plural, t.name),
            ("v1", Some("a"), "secrets", Some("graph"))
        );
        assert!(parse_path("/healthz").is_none());
    }

    /// The controller's kube client against this server: paginated list, watch, a status
    /// apply that comes back on the watch, a no-op apply that does not, and the counts.
    #[tokio::test]
    async fn serves_list_watch_and_status_apply_to_a_kube_client() {
        use futures::{StreamExt, TryStreamExt};
        use kube::api::{Api, ListParams, Patch, PatchParams, WatchEvent, WatchParams};
        let server = FakeKube::start(vec![apa("a"), apa("b"), apa("c")])
            .await
            .unwrap();
        let config = kube::Config::new(server.url().parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let api: Api<AccessPackageAssignment> = Api::namespaced(client, "bench");

        let first = api.list(&ListParams::default().limit(2)).await.unwrap();
        assert_eq!(first.items.len(), 2);
        let token = first.metadata.continue_.clone().expect("a second page");
        let second = api
            .list(&ListParams::default().limit(2).continue_token(&token))
            .await
            .unwrap();
        assert_eq!(second.items.len(), 1);
        assert_eq!(second.items[0].metadata.name.as_deref(), Some("c"));
        assert!(second.metadata.continue_.is_none());
        let rv = first.metadata.resource_version.clone().unwrap();
        assert_eq!(
            second.metadata.resource_version.as_deref(),
            Some(rv.as_str())
        );

        let mut events = api
            .watch(&WatchParams::default().timeout(5), &rv)
            .await
            .unwrap()
            .boxed();
        let status = json!({"apiVersion": "redeliver.dev/v1alpha1", "kind": "AccessPackageAssignment",
            "status": {"conditions": [{"type": "Delivered", "status": "True", "reason": "Verified",
                "message": "ok", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
        let params = PatchParams::apply("redeliver").force();
        let written = api
            .patch_status("b", &params, &Patch::Apply(&status))
            .await
            .unwrap();
        let new_rv = written.metadata.resource_version.clone().unwrap();
        assert_ne!(new_rv, rv);
        match events.try_next().await.unwrap() {
            Some(WatchEvent::Modified(o)) => {
                assert_eq!(o.metadata.name.as_deref(), Some("b"));
                assert_eq!(
                    o.metadata.resource_version.as_deref(),
                    Some(new_rv.as_str())
                );
            }
            other => panic!("expected MODIFIED, got {other:?}"),
        }
        // The same status again changes nothing: no new resourceVersion, no event.
        let again = api
            .patch_status("b", &params, &Patch::Apply(&status))
            .await
            .unwrap();
        assert_eq!(
            again.metadata.resource_version.as_deref(),
            Some(new_rv.as_str())
        );
        assert_eq!(
            server.count_delivered("accesspackageassignments", "True"),
            1
        );
        let writes_log = server.status_writes_since(0);
        assert_eq!(writes_log.len(), 2);
        assert!(writes_log[0].changed && !writes_log[1].changed);
        // A watch from before the change replays it.
        let mut replay = api
            .watch(&WatchParams::default().timeout(1), &rv)
            .await
            .unwrap()
            .boxed();
        assert!(matches!(
            replay.try_next().await.unwrap(),
            Some(WatchEvent::Modified(_))
        ));
        assert!(api.get_opt("nope").await.unwrap().is_none());
        let stored = server.object(PLURAL_APA, "bench", "b").unwrap();
        let managers: Vec<&str> = stored["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["manager"].as_str())
            .collect();
        assert_eq!(managers, ["kubectl", "redeliver"]);
        assert!(
            stored["metadata"]["managedFields"][1]["fieldsV1"]["f:status"]["f:conditions"]
                ["k:{\"type\":\"Delivered\"}"]["f:status"]
                .is_object(),
            "{stored}"
        );

        let counts = server.counts();
        assert_eq!(counts["PATCH accesspackageassignments/status"], 2);
        assert_eq!(counts["GET accesspackageassignments (list)"], 2);
        assert_eq!(counts["GET accesspackageassignments (watch)"], 2);
        assert_eq!(writes(&counts), 2);
    }
}
