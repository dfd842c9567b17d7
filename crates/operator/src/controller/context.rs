//! State shared by every reconcile: clients, recorder, metrics, the Graph read cache, the
//! per-object backoff and the global reprocess budget.

use std::fmt::Debug;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use jiff::Timestamp;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use rand::Rng;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;

use super::Error;
use super::connections::{ConnectionKey, Connections, TenantSettings};
use super::ledger::Triggers;
use super::limits::Backoff;
use super::metrics::Metrics;
use crate::engine::ledger::RepairLedger;
use crate::engine::{EngineEvent, EngineSettings};
use crate::graph::GraphClient;

/// The default field manager of every server-side apply the controller makes
/// (`--field-manager`).
pub const FIELD_MANAGER: &str = "redeliver";

/// This process's field manager: `--field-manager`, set once at start-up.
static FIELD_MANAGER_NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Sets this process's field manager (once; a second, different value is refused).
pub fn set_field_manager(name: &str) -> anyhow::Result<()> {
    let name = name.trim();
    if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
        anyhow::bail!(
            "--field-manager {name:?} is not a valid field manager: give 1 to 128 printable characters, e.g. redeliver-team-a"
        );
    }
    let set = FIELD_MANAGER_NAME.get_or_init(|| name.to_string());
    if set != name {
        anyhow::bail!("--field-manager {name:?}: this process already writes as {set:?}");
    }
    Ok(())
}

/// The field manager status writes are made with.
pub fn field_manager() -> &'static str {
    FIELD_MANAGER_NAME
        .get()
        .map_or(FIELD_MANAGER, String::as_str)
}

/// Event series remembered at once (one per object, reason and action).
const MAX_EVENT_SERIES: usize = 100_000;

/// What makes two events one series (besides the message).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SeriesKey {
    kind: Option<String>,
    uid: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
    reason: String,
    action: String,
    warning: bool,
}

pub use crate::domain::clock::{Clock, FixedClock, OffsetClock, SystemClock};

/// Requeue pace while an `adminRemove` is being processed.
pub const REMOVAL_POLL: Duration = Duration::from_secs(15);

/// Operator-wide settings of the reconcilers.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Reconciles running at once across both kinds and all namespaces.
    pub concurrency: usize,
    /// Verify interval for objects whose own is unusable.
    pub verify_interval: Duration,
    /// A request or assignment in a transitional state longer than this is reported stuck.
    pub stuck_after: Duration,
    /// Reprocess calls per minute across all objects.
    pub reprocess_per_minute: u32,
    /// How long Graph reads are shared between objects.
    pub observation_max_age: Duration,
    /// First delay of the per-object error backoff.
    pub backoff_base: Duration,
    /// Longest delay of the per-object error backoff.
    pub backoff_cap: Duration,
    /// Event reporter instance (the pod name), when known.
    pub instance: Option<String>,
    /// How often group delta is polled between full verifications (zero: never).
    pub delta_interval: Duration,
    /// How often, at most, the privileged kinds are read again on a delta poll (zero:
    /// every poll); rounded up to whole delta intervals.
    pub privileged_poll_interval: Duration,
    /// How long after a write Graph is asked again (its processing delay).
    pub poll_interval: Duration,
    /// How long an object's first observation may take before its first-visit status is
    /// written meanwhile (zero: always write it first).
    pub first_status_after: Duration,
    /// Drift attribution from the audit log (`--drift-attribution`).
    pub attribution: crate::observe::attribution::AttributionSettings,
    /// The Graph options a `GraphConnection` does not set (the operator's flags).
    pub graph_defaults: crate::graph::GraphSettings,
    /// The operator's namespace, where a `ClusterGraphConnection`'s Secret is read.
    pub operator_namespace: Option<String>,
    /// How often a ready connection is checked again (its Secret re-read).
    pub connection_recheck_ready: Duration,
    /// How often a stalled connection is checked again (a fixed Secret un-stalls it).
    pub connection_recheck_stalled: Duration,
    /// This replica's shard (the whole cluster without sharding).
    pub shard: super::shard::Shard,
    /// Cross-check verdicts against Microsoft's access drift report
    /// (`--use-access-drift-report`; off by default).
    pub use_access_drift_report: bool,
    /// How long a write target's account state (enabled, deleted, at risk) is trusted.
    /// Kept below the delta interval, so a re-enabled account's repair proceeds within one.
    pub account_max_age: Duration,
    /// Reconcile `ClusterGraphConnection`s (`--cluster-connections`).
    pub cluster_connections: bool,
    /// Wall-clock time ([`SystemClock`] but in tests).
    pub clock: Arc<dyn Clock>,
    /// How long a reconcile request waits for more of the same object before it runs, so a
    /// burst of changes is reconciled once ([`DEBOUNCE`]; tests shorten it).
    pub debounce: Duration,
    /// How often a sharded replica labels its unlabelled objects
    /// ([`super::shard::LABEL_EVERY`]; tests shorten it).
    pub shard_label_every: Duration,
    /// How often a sharded replica relabels the objects whose connection moved to another
    /// shard ([`super::shard::RELABEL_EVERY`]; tests shorten it).
    pub shard_relabel_every: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            concurrency: 4,
            verify_interval: Duration::from_secs(600),
            stuck_after: Duration::from_secs(1800),
            reprocess_per_minute: 30,
            observation_max_age: Duration::from_secs(30),
            backoff_base: Duration::from_secs(5),
            backoff_cap: Duration::from_secs(300),
            instance: None,
            delta_interval: Duration::from_secs(60),
            privileged_poll_interval: Duration::ZERO,
            poll_interval: EngineSettings::default().poll_interval,
            first_status_after: FIRST_STATUS_AFTER,
            attribution: Default::default(),
            graph_defaults: crate::graph::GraphSettings::default(),
            operator_namespace: None,
            connection_recheck_ready: super::connections::RECHECK_READY,
            connection_recheck_stalled: super::connections::RECHECK_STALLED,
            shard: super::shard::Shard::default(),
            use_access_drift_report: false,
            account_max_age: crate::observe::accounts::AccountSettings::default().ttl,
            cluster_connections: true,
            clock: Arc::new(SystemClock),
            debounce: DEBOUNCE,
            shard_label_every: super::shard::LABEL_EVERY,
            shard_relabel_every: super::shard::RELABEL_EVERY,
        }
    }
}

/// The controllers' debounce: see [`Settings::debounce`].
pub const DEBOUNCE: Duration = Duration::from_secs(1);

/// Everything a reconcile needs.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Event recorder (reporting controller `redeliver`).
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The Graph connections and everything that is per tenant (client, read cache,
    /// reprocess budget, repair ledger, attribution).
    pub connections: Connections,
    /// Per-object error backoff.
    pub backoff: Backoff,
    /// Settings handed to the engine.
    pub engine: EngineSettings,
    /// Bounds reconciles in flight across all controllers.
    pub slots: Semaphore,
    /// Group delta poll interval (zero: incremental mode off).
    pub delta_interval: Duration,
    /// The operator connection's repair ledger (see [`Context::ledger`]).
    operator_ledger: Arc<Mutex<RepairLedger>>,
    /// Wakes the other objects that cover an assignment one of them repaired.
    pub triggers: Triggers,
    /// See [`Settings::first_status_after`].
    pub first_status_after: Duration,
    /// This replica's shard.
    pub shard: super::shard::Shard,
    /// Reconciles in flight, by object: an object is handed to another shard only when
    /// none is (see `controller::sharding`).
    pub in_flight: super::inflight::InFlight,
    /// Whether verdicts are cross-checked against Microsoft's access drift report.
    pub use_access_drift_report: bool,
    /// See [`Settings::cluster_connections`].
    pub cluster_connections: bool,
    /// Event series by (object, reason, action, type), each with the message it repeats:
    /// see [`Context::publish_event`].
    series: Mutex<std::collections::HashMap<SeriesKey, (Option<String>, Recorder)>>,
    reporter: Reporter,
    /// Open once start-up is done (ledger rebuilt, delta baseline taken): reconciles wait.
    started: tokio::sync::watch::Sender<bool>,
    /// Wall-clock time: the only source of it in the controller.
    clock: Arc<dyn Clock>,
    /// See [`Settings::debounce`].
    pub debounce: Duration,
    /// See [`Settings::shard_label_every`].
    pub shard_label_every: Duration,
    /// See [`Settings::shard_relabel_every`].
    pub shard_relabel_every: Duration,
}

impl super::metrics::StateSizes for Context {
    fn state_sizes(&self) -> Vec<(&'static str, usize)> {
        let tenants = self.connections.ready_tenants();
        let ledgers: usize = self
            .connections
            .ledgers()
            .iter()
            .map(|l| l.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum();
        vec![
            ("backoff", self.backoff.len()),
            ("ledger", ledgers),
            ("connections", self.connections.state_len()),
            (
                "read_cache",
                tenants
                    .iter()
                    .map(|t| t.observations.observer().cached_entries())
                    .sum(),
            ),
            (
                "attribution",
                tenants.iter().map(|t| t.attribution.tracked()).sum(),
            ),
            (
                "event_series",
                self.series.lock().unwrap_or_else(|p| p.into_inner()).len(),
            ),
            ("shared_strings", crate::api::interned_len()),
            (
                "membership_changes",
                tenants.iter().map(|t| t.observations.changed_len()).sum(),
            ),
        ]
    }
}

impl Context {
    /// The controller's clock, for tasks that outlive one reconcile (the delta followers).
    pub fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    /// Now, by the controller's clock ([`Settings::clock`]).
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Builds the context with the operator's own connection using `graph`.
    pub fn new(
        client: Client,
        graph: GraphClient,
        metrics: Arc<Metrics>,
        settings: &Settings,
    ) -> Self {
        Self::with_operator_connection(client, Some(graph), metrics, settings)
    }

    /// Builds the context; without `graph` every object needs a `GraphConnection` or a
    /// `ClusterGraphConnection`.
    pub fn with_operator_connection(
        client: Client,
        graph: Option<GraphClient>,
        metrics: Arc<Metrics>,
        settings: &Settings,
    ) -> Self {
        let reporter = Reporter {
            controller: "redeliver".into(),
            instance: settings.instance.clone(),
        };
        let engine = EngineSettings {
            stuck_after: settings.stuck_after,
            default_verify_interval: settings.verify_interval,
            poll_interval: settings.poll_interval,
            // A held object looks again once per delta interval: a re-enabled account or an
            // acknowledgement is acted on within one.
            hold_recheck: if settings.delta_interval.is_zero() {
                EngineSettings::default().hold_recheck
            } else {
                settings.delta_interval
            },
            ..EngineSettings::default()
        };
        let connections = Connections::new(
            client.clone(),
            graph,
            TenantSettings {
                observation_max_age: settings.observation_max_age,
                concurrency: settings.concurrency,
                reprocess_per_minute: settings.reprocess_per_minute,
                attribution: settings.attribution.clone(),
                attribution_stats: metrics.attribution_queries.clone(),
                graph_defaults: settings.graph_defaults.clone(),
                operator_namespace: settings.operator_namespace.clone(),
                recheck_ready: settings.connection_recheck_ready,
                recheck_stalled: settings.connection_recheck_stalled,
                privileged_poll_interval: settings.privileged_poll_interval,
                clock: settings.clock.clone(),
                account_max_age: if settings.delta_interval.is_zero() {
                    settings.account_max_age
                } else {
                    settings.account_max_age.min(settings.delta_interval / 2)
                },
            },
        );
        Self {
            recorder: Recorder::new(client.clone(), reporter.clone()),
            series: Mutex::default(),
            reporter,
            client,
            metrics,
            operator_ledger: connections.ledger_of(&ConnectionKey::Operator),
            connections,
            backoff: Backoff::new(settings.backoff_base, settings.backoff_cap),
            engine,
            slots: Semaphore::new(settings.concurrency.max(1)),
            delta_interval: settings.delta_interval,
            triggers: Triggers::default(),
            first_status_after: settings.first_status_after,
            shard: settings.shard,
            in_flight: super::inflight::InFlight::default(),
            use_access_drift_report: settings.use_access_drift_report,
            cluster_connections: settings.cluster_connections,
            started: tokio::sync::watch::Sender::new(true),
            clock: settings.clock.clone(),
            debounce: settings.debounce,
            shard_label_every: settings.shard_label_every,
            shard_relabel_every: settings.shard_relabel_every,
        }
    }

    /// The operator connection's repair ledger. Never hold it across an `.await`.
    pub fn ledger(&self) -> MutexGuard<'_, RepairLedger> {
        self.operator_ledger
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this replica's shard reconciles `obj` (always, without sharding).
    pub fn owns<K>(&self, obj: &K) -> bool
    where
        K: Resource + super::shard::Connected,
    {
        if self.shard.count <= 1 {
            return true;
        }
        let namespace = obj.meta().namespace.clone().unwrap_or_default();
        self.shard
            .owns(&self.connections.resolve(&namespace, obj.connection_ref()))
    }

    /// Makes reconciles wait until [`Context::open`] (start-up of the controllers).
    pub fn hold(&self) {
        self.started.send_replace(false);
    }

    /// Lets reconciles run.
    pub fn open(&self) {
        self.started.send_replace(true);
    }

    /// Returns once reconciles may run.
    pub async fn started(&self) {
        let mut rx = self.started.subscribe();
        let _ = rx.wait_for(|open| *open).await;
    }

    /// Records one deletion-cleanup event (the engine plans the others).
    pub async fn publish_cleanup(
        &self,
        reference: &ObjectReference,
        kind: crate::engine::EventKind,
        message: String,
    ) {
        self.publish(reference, "Cleanup", &[EngineEvent { kind, message }])
            .await;
    }

    /// Records one event. A repeat of the same event (same object, reason, action and
    /// message) counts up its series; a new message starts a new event, so the newest
    /// message is always the one `kubectl describe` shows. (kube's `Recorder` keys a series
    /// without the message: a later "bob missing fin-writers" was counted into the event
    /// that still read "alice missing fin-writers".)
    pub async fn publish_event(
        &self,
        event: &Event,
        reference: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let recorder = {
            let key = SeriesKey {
                kind: reference.kind.clone(),
                uid: reference.uid.clone(),
                namespace: reference.namespace.clone(),
                name: reference.name.clone(),
                reason: event.reason.clone(),
                action: event.action.clone(),
                warning: event.type_ == EventType::Warning,
            };
            let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
            if series.len() >= MAX_EVENT_SERIES && !series.contains_key(&key) {
                // Bounded memory; a forgotten series only means its next repeat starts a
                // new event instead of counting up.
                series.clear();
            }
            match series.get(&key) {
                Some((note, recorder)) if *note == event.note => recorder.clone(),
                _ => {
                    let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
                    series.insert(key, (event.note.clone(), recorder.clone()));
                    recorder
                }
            }
        };
        recorder.publish(event, reference).await
    }

    /// Forgets the event series of assignments and guards that are gone (deleted, or
    /// handed to another shard): without it the map would keep one entry per object ever
    /// reconciled. Connections' series are few and kept.
    pub fn prune_event_series(&self) {
        let live = self.triggers.live_uids();
        let ours = [crate::api::ASSIGNMENT_KIND, crate::api::GUARD_KIND];
        self.series
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|key, _| {
                let object_kind = key.kind.as_deref().is_some_and(|k| ours.contains(&k));
                !object_kind || key.uid.as_ref().is_some_and(|uid| live.contains(uid))
            });
    }

    /// Records the engine's events on the object. A failed publish is logged, not retried:
    /// the status already carries the transition.
    pub async fn publish(&self, reference: &ObjectReference, action: &str, events: &[EngineEvent]) {
        for ev in events {
            let event = Event {
                type_: if ev.kind.is_warning() {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: ev.kind.as_str().to_string(),
                note: Some(truncate(&ev.message, 1000)),
                action: action.to_string(),
                secondary: None,
            };
            if let Err(err) = self.publish_event(&event, reference).await {
                tracing::warn!(
                    name = reference.name.as_deref().unwrap_or(""),
                    namespace = reference.namespace.as_deref().unwrap_or(""),
                    reason = ev.kind.as_str(),
                    error = %err,
                    "could not record an event; check RBAC for events.k8s.io/events create,patch"
                );
            }
        }
    }
}

/// The frame every reconcile runs in: a span naming the object, one of the concurrency
/// slots, the reconcile metrics, and the object's error backoff reset on success. `body`
/// is the kind's domain logic.
pub async fn reconcile_frame<K, F>(
    ctx: &Context,
    kind: &'static str,
    obj: &K,
    body: F,
) -> Result<Action, Error>
where
    K: Resource<DynamicType = ()> + super::shard::Connected,
    F: std::future::Future<Output = Result<Action, Error>>,
{
    use tracing::Instrument;
    let key = object_key(obj);
    let span = tracing::info_span!(
        "reconcile",
        kind = kind,
        namespace = %obj.namespace().unwrap_or_default(),
        name = %obj.name_any()
    );
    async move {
        // A new leader first rebuilds the repair ledger and takes the delta baseline.
        ctx.started().await;
        // Registered before ownership is checked: a hand-over to another shard decided
        // after this point sees this reconcile and waits; one decided before it means the
        // check below already sees the newer resolution (controller::sharding).
        let mut in_flight = (ctx.shard.count > 1).then(|| ctx.in_flight.enter(&key));
        if !ctx.owns(obj) {
            // Another shard's tenant. A change of its namespace's connections can move it
            // here: look again (no I/O) once per verify interval.
            return Ok(Action::requeue(jitter(ctx.engine.default_verify_interval)));
        }
        if let Some(g) = in_flight.as_mut() {
            g.act();
        }
        let _slot = ctx.slots.acquire().await;
        let timer = ctx.metrics.reconcile_started(kind);
        let result = body.await;
        timer.finish(match &result {
            Ok(_) => "ok",
            Err(e) => e.metric_label(),
        });
        if result.is_ok() {
            ctx.backoff.reset(&key);
        }
        result
    }
    .instrument(span)
    .await
}

/// The backoff key of an object: its name in the ledger, `Kind namespace/name`.
pub fn object_key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    super::ledger::name_of(obj)
}

/// Writes `status` to the status subresource with server-side apply (field manager
/// `redeliver`, forced: the controller owns the whole status).
pub async fn patch_status<K>(api: &Api<K>, name: &str, status: &impl Serialize) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    patch_status_within(api, name, status, STATUS_WRITE_TIMEOUT).await
}

/// Longest wait for one status write. A healthy API server answers in milliseconds; one
/// whose storage is down answers `504` after about half a minute, and a reconcile that
/// waits for each of its writes would hold its slot for minutes (with 4 slots, a few such
/// objects stop all reconciles). Past this the write fails, the reconcile gives its slot
/// back and is retried with the object's backoff.
pub const STATUS_WRITE_TIMEOUT: Duration = Duration::from_secs(15);

/// [`patch_status`] with its own time bound.
pub async fn patch_status_within<K>(
    api: &Api<K>,
    name: &str,
    status: &impl Serialize,
    timeout: Duration,
) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": serde_json::to_value(status).map_err(Error::Serialize)?,
    });
    let params = PatchParams::apply(field_manager()).force();
    match tokio::time::timeout(timeout, api.patch_status(name, &params, &Patch::Apply(&patch)))
        .await
    {
        Ok(result) => {
            result?;
            Ok(())
        }
        Err(_) => Err(Error::Kube(kube::Error::Service(
            format!(
                "the status write of {} {name} did not complete within {}s (is the API server's storage down?); the reconcile gives its slot back and is retried with backoff",
                K::kind(&()),
                timeout.as_secs_f64()
            )
            .into(),
        ))),
    }
}

/// The default of [`Settings::first_status_after`]: how long the first observation of an
/// object without status may take before its first-visit status (`Reconciling=True`, reason `Verifying`) is written meanwhile.
/// kstatus wants conditions soon after creation, but writing them before every first
/// observation doubled the status writes of a healthy object (a real API server spent more
/// time on those writes than Redeliver spent on Graph); when the reads answer quickly the
/// verified status is the first and only write.
pub const FIRST_STATUS_AFTER: Duration = Duration::from_secs(5);

/// Runs an object's observation. When the object has no status yet (`first` is `Some`) and
/// the observation is still running after `grace` (at once for a zero `grace`), `first` is
/// written meanwhile and returned, so the caller compares its plan against what is now
/// stored. A failed write of `first` fails the reconcile (it will be retried), as any
/// status write does.
pub async fn observe_with_first_status<T, S, W>(
    observation: impl std::future::Future<Output = T>,
    first: Option<S>,
    grace: Duration,
    write: W,
) -> Result<(T, Option<S>), Error>
where
    W: AsyncFnOnce(&S) -> Result<(), Error>,
{
    let Some(first) = first else {
        return Ok((observation.await, None));
    };
    if grace.is_zero() {
        write(&first).await?;
        return Ok((observation.await, Some(first)));
    }
    tokio::pin!(observation);
    tokio::select! {
        done = &mut observation => Ok((done, None)),
        () = tokio::time::sleep(grace) => {
            write(&first).await?;
            Ok((observation.await, Some(first)))
        }
    }
}

/// `d` ± 10 %, so objects created together do not verify in lockstep.
pub fn jitter(d: Duration) -> Duration {
    let factor = rand::rng().random_range(0.9..1.1);
    d.mul_f64(factor).max(Duration::from_secs(1))
}

/// What to do after a failed reconcile: exactly `Retry-After` when Graph throttled, a fixed
/// pace while a removal is in progress, otherwise the object's doubling backoff.
pub fn error_policy<K: Resource<DynamicType = ()>>(
    obj: Arc<K>,
    err: &Error,
    ctx: Arc<Context>,
) -> Action {
    let key = object_key(obj.as_ref());
    if let Some(after) = err.retry_after() {
        tracing::warn!(object = %key, error = %err, retry_after_s = after.as_secs_f64(), "Graph throttled; requeue at Retry-After");
        return Action::requeue(after);
    }
    if err.is_waiting() {
        tracing::info!(object = %key, "{err}");
        return Action::requeue(REMOVAL_POLL);
    }
    let delay = ctx.backoff.failed(&key);
    tracing::warn!(object = %key, error = %err, retry_in_s = delay.as_secs(), failures = ctx.backoff.failures(&key), "reconcile failed");
    Action::requeue(delay)
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..200 {
            let j = jitter(Duration::from_secs(600));
            assert!(
                j >= Duration::from_secs(540) && j <= Duration::from_secs(660),
                "{j:?}"
            );
        }
        assert_eq!(jitter(Duration::ZERO), Duration::from_secs(1));
    }

    #[test]
    fn truncates_on_char_boundary() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("ééé", 3), "é…");
    }
}
