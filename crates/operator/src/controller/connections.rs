//! Graph connections: which tenant each object is reconciled with, and everything that is
//! per tenant.
//!
//! Resolution, most specific first: the object's `spec.connectionRef`; else the namespace's
//! `GraphConnection` named `default`; else the operator's own connection (its flags). A
//! `GraphConnection` is only ever looked up in the object's own namespace. A connection that
//! is missing or not usable stalls its objects; an object that was reconciled with a
//! connection never moves to another one by itself (only a spec change accepts the move).
//!
//! Per connection ([`Tenant`]): the Graph client (token cache, HTTP concurrency, throttling
//! gates), the read cache (`Observations`), drift attribution, the reprocess token bucket and
//! the repair ledger. The last two outlive a rebuilt client (after a Secret rotation), so a
//! rotation neither refills the budget nor forgets what was sent.
//!
//! A connection's Secret is read with `get` only (never list or watch, so the operator needs
//! no permission to enumerate Secrets): at the connection's check, again every
//! [`RECHECK_READY`] while it is ready (a rotated Secret is picked up) and every
//! [`RECHECK_STALLED`] while it is stalled, backing off to [`STALLED_BACKOFF_CAP`] times that
//! (a fixed Secret un-stalls it; a wrong one is not tried again sooner).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret as KubeSecret;
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};

use super::limits::TokenBucket;
use super::observation::Observations;
pub use crate::api::ConnectionKey;
use crate::api::{
    ClusterGraphConnection, ConnectionRef, ConnectionSettings, DEFAULT_CONNECTION_NAME,
    GraphConnection, MASS_DRIFT_ACK_ANNOTATION, SafetySpec, validate_connection_settings,
};
use crate::engine::ledger::RepairLedger;
use crate::engine::{MassDriftBoard, SafetyPolicy};
use crate::graph::config::{GraphSettings, Secret};
pub use crate::graph::connection::{ResolvedCredential, connection_graph_config};
use crate::graph::error::without_run_ids;
use crate::graph::{GraphClient, GraphError};
use crate::observe::accounts::AccountSettings;
use crate::observe::attribution::{AttributionSettings, AttributionStats, Attributor};
use crate::observe::safety::{RESPECTED_GROUP_TTL, SafetyReads};

/// How often a ready connection is checked again (its Secret re-read, a token obtained).
pub const RECHECK_READY: Duration = Duration::from_secs(300);
/// How often a stalled connection is checked again.
pub const RECHECK_STALLED: Duration = Duration::from_secs(30);
/// The longest `Retry-After` a connection's Graph call waits out inside a reconcile; a
/// longer one fails the reconcile at once and it is requeued at exactly that time, so a
/// throttled tenant holds no reconcile slot another tenant's objects could use.
pub const CONNECTION_MAX_RETRY_AFTER: Duration = Duration::from_secs(2);

/// Everything that is per tenant, for one connection.
pub struct Tenant {
    /// Which connection this is.
    pub key: ConnectionKey,
    /// Graph reads shared between this connection's objects (and its Graph client).
    pub observations: Observations,
    /// Who removed a missing resource: this tenant's audit log lookups and their cache.
    pub attribution: Attributor,
    /// This connection's reprocess budget.
    pub reprocess_bucket: Arc<TokenBucket>,
    ledger: Arc<Mutex<RepairLedger>>,
    /// The connection's `spec.safety` (none for the operator's own connection).
    pub safety_spec: Option<SafetySpec>,
    /// What the safety rails read before a grant: target accounts, respected groups.
    pub safety: SafetyReads,
    /// The mass-drift breaker of this connection's AccessPackageAssignments; kept across
    /// re-checks of the connection, like the ledger.
    breaker: Arc<Mutex<MassDriftBoard>>,
    /// See `Settings::privileged_poll_interval`.
    pub privileged_poll_interval: Duration,
    /// When the privileged kinds were last read by a delta poll.
    privileged_polled: Mutex<Option<tokio::time::Instant>>,
}

impl Tenant {
    /// This connection's repair ledger, for planning. Never hold it across an `.await`.
    pub fn ledger(&self) -> MutexGuard<'_, RepairLedger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This connection's repair ledger, for a repair transaction's claim
    /// (`engine::transaction::Claim`), which locks it only while planning and resolving.
    pub fn ledger_cell(&self) -> &Mutex<RepairLedger> {
        &self.ledger
    }

    /// This connection's Graph client.
    pub fn graph(&self) -> &GraphClient {
        self.observations.graph()
    }

    /// Whether a delta poll should read the privileged kinds now: always with no interval of
    /// their own, else once that interval has passed since the last time (recorded now).
    pub fn privileged_poll_due(&self) -> bool {
        let mut last = self
            .privileged_polled
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        poll_due(
            &mut last,
            tokio::time::Instant::now(),
            self.privileged_poll_interval,
        )
    }

    /// This connection's mass-drift breaker. Never hold it across an `.await`.
    pub fn breaker(&self) -> MutexGuard<'_, MassDriftBoard> {
        self.breaker.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The safety policy in force for an object with `own` settings.
    pub async fn safety_policy(&self, own: Option<&SafetySpec>) -> SafetyPolicy {
        self.safety
            .policy(self.graph(), self.safety_spec.as_ref(), own)
            .await
    }
}

/// Settings every connection's per-tenant state is built with.
#[derive(Debug, Clone)]
pub struct TenantSettings {
    /// See `Settings::observation_max_age`.
    pub observation_max_age: Duration,
    /// See `Settings::concurrency`.
    pub concurrency: usize,
    /// See `Settings::reprocess_per_minute`: the default of a connection's `reprocessRate`.
    pub reprocess_per_minute: u32,
    /// See `Settings::attribution`.
    pub attribution: AttributionSettings,
    /// Audit-log queries of every connection's attribution, for the metrics.
    pub attribution_stats: Arc<AttributionStats>,
    /// The Graph options a connection does not set (timeouts, retries, CA file, the default
    /// authority and Graph URLs and concurrency): the operator's flags.
    pub graph_defaults: GraphSettings,
    /// Where a `ClusterGraphConnection`'s Secret is read: the operator's namespace.
    pub operator_namespace: Option<String>,
    /// How often a ready connection is checked again ([`RECHECK_READY`] by default).
    pub recheck_ready: Duration,
    /// How often a stalled connection is checked again ([`RECHECK_STALLED`] by default).
    pub recheck_stalled: Duration,
    /// How long a write target's account state is trusted (see `Settings::account_max_age`).
    pub account_max_age: Duration,
    /// See `Settings::privileged_poll_interval`.
    pub privileged_poll_interval: Duration,
    /// The controller's clock: the observer judges end dates and ages with it, and the
    /// attribution's per-object lookups count back from it.
    pub clock: Arc<dyn crate::domain::clock::Clock>,
}

/// Why an object cannot be reconciled now: its connection is not usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unready {
    /// The connection the object resolves to.
    pub key: ConnectionKey,
    /// What is wrong and what to do, for the object's status.
    pub message: String,
    /// When to look again.
    pub retry: Duration,
    /// The connection to record in the object's status (the one it resolves to once a
    /// move was accepted, else the one it was reconciled with).
    pub record: Option<String>,
}

/// What the last check of a connection found.
#[derive(Clone)]
enum Checked {
    Ready(Arc<Tenant>),
    Stalled(Problem),
}

/// A failed connection check, for the connection's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The condition reason.
    pub reason: crate::engine::conditions::Reason,
    /// The Entra or Graph error code, when there is one.
    pub code: Option<String>,
    /// What failed and what to fix (never a secret).
    pub message: String,
}

struct Entry {
    /// `uid/generation/secret resourceVersion`: a change means a new check.
    fingerprint: String,
    checked_at: Instant,
    result: Checked,
    /// Checks in a row that found it stalled (0 when ready): the re-check backs off.
    stalled_in_a_row: u32,
}

/// The stalled re-check backs off to this many times [`RECHECK_STALLED`] (30 s, 60 s, then
/// every 2 minutes): a wrong secret costs the tenant a failed sign-in at most that often.
pub const STALLED_BACKOFF_CAP: u32 = 4;

impl TenantSettings {
    /// How long a check result holds before the connection is checked again: the ready
    /// interval, or the stalled one doubled per stalled check in a row up to
    /// [`STALLED_BACKOFF_CAP`] times.
    fn recheck_after(&self, stalled_in_a_row: u32) -> Duration {
        if stalled_in_a_row == 0 {
            return self.recheck_ready;
        }
        let factor = (1u32 << (stalled_in_a_row - 1).min(8)).min(STALLED_BACKOFF_CAP);
        self.recheck_stalled.saturating_mul(factor)
    }
}

/// Whether a poll with an interval of its own is due at `now`, given when it last ran
/// (recorded when due). A zero interval is due every time.
fn poll_due(
    last: &mut Option<tokio::time::Instant>,
    now: tokio::time::Instant,
    interval: Duration,
) -> bool {
    if let Some(at) = *last
        && now.duration_since(at) < interval
    {
        return false;
    }
    *last = Some(now);
    true
}

/// `interval` plus up to a tenth more, at random: connections that stalled together (a
/// rotated shared Secret) do not all sign in again in the same second. Never less.
pub fn jittered(interval: Duration) -> Duration {
    use rand::Rng as _;
    let tenth = interval.as_millis() / 10;
    let extra = rand::rng().random_range(0..=u64::try_from(tenth).unwrap_or(u64::MAX));
    interval + Duration::from_millis(extra)
}

/// Per-connection state that survives a rebuilt client.
struct Durable {
    ledger: Arc<Mutex<RepairLedger>>,
    bucket: Arc<TokenBucket>,
    rate: u32,
    breaker: Arc<Mutex<MassDriftBoard>>,
}

/// The result of checking one connection, for its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckOutcome {
    /// Usable.
    Ready,
    /// Not usable, and why.
    Stalled(Problem),
}

/// The registry of connections: resolution and the per-connection state.
pub struct Connections {
    client: Client,
    settings: TenantSettings,
    operator: Option<Arc<Tenant>>,
    namespaced: Mutex<Vec<Store<GraphConnection>>>,
    cluster: Mutex<Option<Store<ClusterGraphConnection>>>,
    checked: Mutex<HashMap<ConnectionKey, Entry>>,
    durable: Mutex<HashMap<ConnectionKey, Durable>>,
    /// One check at a time per connection: concurrent reconciles wait for it.
    checking: Mutex<HashMap<ConnectionKey, Arc<tokio::sync::Mutex<()>>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Connections {
    /// A registry whose operator connection uses `graph` (none: every object needs a
    /// `GraphConnection` or `ClusterGraphConnection`).
    pub fn new(client: Client, graph: Option<GraphClient>, settings: TenantSettings) -> Self {
        let mut this = Self {
            client,
            settings,
            operator: None,
            namespaced: Mutex::default(),
            cluster: Mutex::default(),
            checked: Mutex::default(),
            durable: Mutex::default(),
            checking: Mutex::default(),
        };
        if let Some(graph) = graph {
            let rate = this.settings.reprocess_per_minute;
            this.operator = Some(Arc::new(this.tenant(
                ConnectionKey::Operator,
                graph,
                rate,
                None,
            )));
        }
        this
    }

    /// The operator's own connection, when it has one.
    pub fn operator(&self) -> Option<&Arc<Tenant>> {
        self.operator.as_ref()
    }

    /// How often a connection is checked again: (ready, stalled).
    pub fn recheck(&self) -> (Duration, Duration) {
        (self.settings.recheck_ready, self.settings.recheck_stalled)
    }

    /// When `key` is next due for a check: its last check's age subtracted from its
    /// interval (ready, or the stalled one backed off).
    pub fn recheck_in(&self, key: &ConnectionKey) -> Duration {
        match lock(&self.checked).get(key) {
            Some(e) => self
                .settings
                .recheck_after(e.stalled_in_a_row)
                .saturating_sub(e.checked_at.elapsed()),
            None => self.settings.recheck_stalled,
        }
    }

    /// Where a `ClusterGraphConnection`'s Secret is read: the operator's namespace.
    pub fn secret_namespace(&self) -> Option<String> {
        self.settings.operator_namespace.clone()
    }

    /// Adds one watch scope's `GraphConnection` store.
    pub fn add_namespaced_store(&self, store: Store<GraphConnection>) {
        lock(&self.namespaced).push(store);
    }

    /// Sets the `ClusterGraphConnection` store.
    pub fn set_cluster_store(&self, store: Store<ClusterGraphConnection>) {
        *lock(&self.cluster) = Some(store);
    }

    fn tenant(
        &self,
        key: ConnectionKey,
        graph: GraphClient,
        rate: u32,
        safety_spec: Option<SafetySpec>,
    ) -> Tenant {
        let (ledger, bucket, breaker) = {
            let mut durable = lock(&self.durable);
            let d = durable.entry(key.clone()).or_insert_with(|| Durable {
                ledger: Arc::default(),
                bucket: Arc::new(TokenBucket::per_minute(rate)),
                rate,
                breaker: Arc::default(),
            });
            if d.rate != rate {
                d.bucket = Arc::new(TokenBucket::per_minute(rate));
                d.rate = rate;
            }
            (d.ledger.clone(), d.bucket.clone(), d.breaker.clone())
        };
        Tenant {
            key,
            observations: Observations::new(
                graph,
                self.settings.observation_max_age,
                self.settings.concurrency.max(1) * 2,
            )
            .with_clock(self.settings.clock.clone()),
            attribution: Attributor::with_stats(
                self.settings.attribution.clone(),
                self.settings.attribution_stats.clone(),
            )
            .with_clock(self.settings.clock.clone()),
            reprocess_bucket: bucket,
            ledger,
            safety_spec,
            safety: SafetyReads::new(
                AccountSettings {
                    ttl: self.settings.account_max_age,
                    ..AccountSettings::default()
                },
                RESPECTED_GROUP_TTL,
            ),
            breaker,
            privileged_poll_interval: self.settings.privileged_poll_interval,
            privileged_polled: Mutex::new(None),
        }
    }

    /// The repair ledger of `key` (created empty when new), for seeding at start-up.
    pub fn ledger_of(&self, key: &ConnectionKey) -> Arc<Mutex<RepairLedger>> {
        if *key == ConnectionKey::Operator
            && let Some(op) = &self.operator
        {
            return op.ledger.clone();
        }
        let rate = self.settings.reprocess_per_minute;
        lock(&self.durable)
            .entry(key.clone())
            .or_insert_with(|| Durable {
                ledger: Arc::default(),
                bucket: Arc::new(TokenBucket::per_minute(rate)),
                rate,
                breaker: Arc::default(),
            })
            .ledger
            .clone()
    }

    /// Every repair ledger, for pruning.
    pub fn ledgers(&self) -> Vec<Arc<Mutex<RepairLedger>>> {
        let mut out: Vec<_> = lock(&self.durable)
            .values()
            .map(|d| d.ledger.clone())
            .collect();
        if let Some(op) = &self.operator
            && !out.iter().any(|l| Arc::ptr_eq(l, &op.ledger))
        {
            out.push(op.ledger.clone());
        }
        out
    }

    /// The connection an object of `namespace` with `connection_ref` resolves to.
    pub fn resolve(
        &self,
        namespace: &str,
        connection_ref: Option<&ConnectionRef>,
    ) -> ConnectionKey {
        ConnectionKey::resolve(namespace, connection_ref, |ns| {
            self.namespaced_connection(ns, DEFAULT_CONNECTION_NAME)
                .is_some()
        })
    }

    fn namespaced_connection(&self, namespace: &str, name: &str) -> Option<Arc<GraphConnection>> {
        let key = ObjectRef::new(name).within(namespace);
        lock(&self.namespaced).iter().find_map(|s| s.get(&key))
    }

    fn cluster_connection(&self, name: &str) -> Option<Arc<ClusterGraphConnection>> {
        lock(&self.cluster)
            .as_ref()
            .and_then(|s| s.get(&ObjectRef::new(name)))
    }

    /// The value of the mass-drift acknowledgement annotation on connection `key`'s object
    /// (none for the operator's own connection: acknowledge through a guard).
    pub fn mass_drift_ack(&self, key: &ConnectionKey) -> Option<String> {
        let annotations = match key {
            ConnectionKey::Operator => return None,
            ConnectionKey::Namespaced { namespace, name } => self
                .namespaced_connection(namespace, name)?
                .annotations()
                .clone(),
            ConnectionKey::Cluster { name } => self.cluster_connection(name)?.annotations().clone(),
        };
        annotations.get(MASS_DRIFT_ACK_ANNOTATION).cloned()
    }

    /// Applies a connection's mass-drift acknowledgement annotation (`value`, as its watch
    /// just saw it) to its breaker at once, instead of at the next reconcile of one of its
    /// objects; returns the packages whose hold this lifted. A connection no object has
    /// used yet has no breaker: the value is then read at its first use.
    pub fn acknowledge_mass_drift(&self, key: &ConnectionKey, value: Option<&str>) -> Vec<String> {
        let breaker = lock(&self.durable).get(key).map(|d| d.breaker.clone());
        breaker.map_or_else(Vec::new, |b| {
            b.lock()
                .unwrap_or_else(|p| p.into_inner())
                .acknowledge(value)
        })
    }

    /// The tenant an object is reconciled with, or why it cannot be now. `recorded` is the
    /// object's `status.connection`; `spec_changed` says its spec changed since its status
    /// was written (only then may it move to another connection).
    pub async fn tenant_for(
        &self,
        namespace: &str,
        connection_ref: Option<&ConnectionRef>,
        recorded: Option<&str>,
        spec_changed: bool,
    ) -> Result<Arc<Tenant>, Unready> {
        let key = self.resolve(namespace, connection_ref);
        let label = key.status_label();
        if !spec_changed
            && let Some(previous) = recorded
            && Some(previous) != label.as_deref()
        {
            return Err(Unready {
                message: format!(
                    "This object was reconciled with {previous}, which no longer exists or no longer applies; it now resolves to {key}. Redeliver never moves an object to another tenant by itself: re-create {previous}, or change the object's spec (for example set spec.connectionRef) to accept the new connection."
                ),
                key,
                retry: self.settings.recheck_stalled,
                record: Some(previous.to_string()),
            });
        }
        let unready = |key: ConnectionKey, message: String| Unready {
            record: key.status_label(),
            key,
            message,
            retry: self.settings.recheck_stalled,
        };
        match &key {
            ConnectionKey::Operator => match &self.operator {
                Some(t) => Ok(t.clone()),
                None => Err(unready(
                    key,
                    format!(
                        "No Graph connection: the operator runs without a connection of its own and namespace {namespace} has no GraphConnection named {DEFAULT_CONNECTION_NAME}; create one, or set spec.connectionRef to a GraphConnection or ClusterGraphConnection."
                    ),
                )),
            },
            ConnectionKey::Namespaced { namespace, name } => {
                let Some(conn) = self.namespaced_connection(namespace, name) else {
                    return Err(unready(
                        key.clone(),
                        format!(
                            "GraphConnection {namespace}/{name} does not exist; create it in namespace {namespace} (a GraphConnection of another namespace cannot be used)."
                        ),
                    ));
                };
                self.checked_tenant(
                    &key,
                    &conn.uid().unwrap_or_default(),
                    conn.metadata.generation,
                    &conn.spec.settings(),
                    Some(namespace.as_str()),
                )
                .await
            }
            ConnectionKey::Cluster { name } => {
                let Some(conn) = self.cluster_connection(name) else {
                    return Err(unready(
                        key.clone(),
                        format!("ClusterGraphConnection {name} does not exist; create it."),
                    ));
                };
                let ns = self.settings.operator_namespace.clone();
                self.checked_tenant(
                    &key,
                    &conn.uid().unwrap_or_default(),
                    conn.metadata.generation,
                    &conn.spec.settings(),
                    ns.as_deref(),
                )
                .await
            }
        }
    }

    async fn checked_tenant(
        &self,
        key: &ConnectionKey,
        uid: &str,
        generation: Option<i64>,
        settings: &ConnectionSettings,
        secret_namespace: Option<&str>,
    ) -> Result<Arc<Tenant>, Unready> {
        // A connection checked recently (by its own reconcile or another object's) is used
        // as it was found; otherwise check it now.
        let fresh = {
            let checked = lock(&self.checked);
            checked.get(key).and_then(|e| {
                let prefix = format!("{uid}/{}/", generation.unwrap_or_default());
                let max_age = self.settings.recheck_after(e.stalled_in_a_row);
                (e.fingerprint.starts_with(&prefix) && e.checked_at.elapsed() < max_age)
                    .then(|| e.result.clone())
            })
        };
        let result = match fresh {
            Some(r) => r,
            None => {
                self.check_unless_fresh(
                    key,
                    uid,
                    generation,
                    settings,
                    secret_namespace,
                    Some(Duration::from_secs(5)),
                )
                .await;
                match lock(&self.checked).get(key) {
                    Some(e) => e.result.clone(),
                    None => Checked::Stalled(Problem {
                        reason: crate::engine::conditions::Reason::ProbeFailed,
                        code: None,
                        message: format!("{key} has not been checked yet"),
                    }),
                }
            }
        };
        match result {
            Checked::Ready(t) => Ok(t),
            Checked::Stalled(p) => Err(Unready {
                record: key.status_label(),
                key: key.clone(),
                message: format!("{key} is not ready: {}", p.message),
                retry: self.settings.recheck_stalled,
            }),
        }
    }

    /// Checks one connection now (reads its Secret, obtains a token, makes one cheap read)
    /// unless its Secret and spec are unchanged since a check younger than the recheck
    /// interval; keeps the result for its objects and returns it. Returns whether the
    /// connection became ready (its objects should be reconciled at once).
    pub async fn check(
        &self,
        key: &ConnectionKey,
        uid: &str,
        generation: Option<i64>,
        settings: &ConnectionSettings,
        secret_namespace: Option<&str>,
    ) -> (CheckOutcome, bool) {
        // A connection is checked when it is due (its own requeue), when its spec changed
        // (a new generation) or when it was never checked: never because its status was
        // written or another object looked at it a moment ago.
        let due = {
            let checked = lock(&self.checked);
            checked.get(key).map_or(Duration::ZERO, |e| {
                self.settings.recheck_after(e.stalled_in_a_row)
            })
        };
        self.check_unless_fresh(key, uid, generation, settings, secret_namespace, Some(due))
            .await
    }

    /// Checks `key` unless a check of the same object and generation is younger than
    /// `fresh_for` (`None`: always).
    async fn check_unless_fresh(
        &self,
        key: &ConnectionKey,
        uid: &str,
        generation: Option<i64>,
        settings: &ConnectionSettings,
        secret_namespace: Option<&str>,
        fresh_for: Option<Duration>,
    ) -> (CheckOutcome, bool) {
        let gate = lock(&self.checking).entry(key.clone()).or_default().clone();
        let _one = gate.lock().await;
        if let Some(fresh_for) = fresh_for {
            // Checked recently enough (perhaps by another reconcile while this one waited).
            let prefix = format!("{uid}/{}/", generation.unwrap_or_default());
            if let Some(e) = lock(&self.checked).get(key)
                && e.fingerprint.starts_with(&prefix)
                && e.checked_at.elapsed() < fresh_for
            {
                let outcome = match &e.result {
                    Checked::Ready(_) => CheckOutcome::Ready,
                    Checked::Stalled(p) => CheckOutcome::Stalled(p.clone()),
                };
                return (outcome, false);
            }
        }
        let was_ready = matches!(
            lock(&self.checked).get(key).map(|e| &e.result),
            Some(Checked::Ready(_))
        );
        let (fingerprint, result) = self
            .build(key, uid, generation, settings, secret_namespace)
            .await;
        let outcome = match &result {
            Checked::Ready(_) => CheckOutcome::Ready,
            Checked::Stalled(p) => CheckOutcome::Stalled(p.clone()),
        };
        let mut checked = lock(&self.checked);
        let stalled_in_a_row = match (&result, checked.get(key)) {
            (Checked::Ready(_), _) => 0,
            // A new spec or Secret starts the backoff over.
            (Checked::Stalled(_), Some(e)) if e.fingerprint == fingerprint => {
                e.stalled_in_a_row.saturating_add(1)
            }
            (Checked::Stalled(_), _) => 1,
        };
        let reuse = match (checked.get(key), &result) {
            // Same Secret and spec, still working: keep the client (its token and cache).
            (Some(e), Checked::Ready(_)) if e.fingerprint == fingerprint => {
                matches!(e.result, Checked::Ready(_))
            }
            _ => false,
        };
        if reuse {
            if let Some(e) = checked.get_mut(key) {
                e.checked_at = Instant::now();
            }
        } else {
            checked.insert(
                key.clone(),
                Entry {
                    fingerprint,
                    checked_at: Instant::now(),
                    result,
                    stalled_in_a_row,
                },
            );
        }
        let became_ready = !was_ready && outcome == CheckOutcome::Ready;
        (outcome, became_ready)
    }

    /// Forgets a deleted connection: its objects stall at their next reconcile.
    pub fn forget(&self, key: &ConnectionKey) {
        lock(&self.checked).remove(key);
        // What outlives a client rebuild (ledger, budget, breaker) does not outlive the
        // connection: each object's own status still spaces its reprocesses if it comes
        // back.
        lock(&self.durable).remove(key);
        lock(&self.checking).remove(key);
    }

    /// Entries of the per-connection maps (checked, durable, checking), for the state-size
    /// metric.
    pub fn state_len(&self) -> usize {
        lock(&self.checked).len() + lock(&self.durable).len() + lock(&self.checking).len()
    }

    /// The ready tenant of `key`, without checking anything (for the delta loop).
    pub fn ready(&self, key: &ConnectionKey) -> Option<Arc<Tenant>> {
        if *key == ConnectionKey::Operator {
            return self.operator.clone();
        }
        match lock(&self.checked).get(key).map(|e| &e.result) {
            Some(Checked::Ready(t)) => Some(t.clone()),
            _ => None,
        }
    }

    /// Every ready tenant, for the metrics.
    pub fn ready_tenants(&self) -> Vec<Arc<Tenant>> {
        let mut out: Vec<Arc<Tenant>> = self.operator.iter().cloned().collect();
        out.extend(
            lock(&self.checked)
                .values()
                .filter_map(|e| match &e.result {
                    Checked::Ready(t) => Some(t.clone()),
                    Checked::Stalled(_) => None,
                }),
        );
        out
    }

    /// Builds (or keeps) the tenant of one connection: the fingerprint of what it was built
    /// from (uid, generation, the Secret's resourceVersion) and the result.
    async fn build(
        &self,
        key: &ConnectionKey,
        uid: &str,
        generation: Option<i64>,
        settings: &ConnectionSettings,
        secret_namespace: Option<&str>,
    ) -> (String, Checked) {
        let mut fingerprint = format!("{uid}/{}/", generation.unwrap_or_default());
        let built = self
            .try_build(key, settings, secret_namespace, &mut fingerprint)
            .await;
        (
            fingerprint,
            built.map_or_else(Checked::Stalled, Checked::Ready),
        )
    }

    async fn try_build(
        &self,
        key: &ConnectionKey,
        settings: &ConnectionSettings,
        secret_namespace: Option<&str>,
        fingerprint: &mut String,
    ) -> Result<Arc<Tenant>, Problem> {
        validate_connection_settings(settings)
            .map_err(|e| invalid_spec(format!("{}: {}", e.field, e.message)))?;
        let (credential, described) = self
            .credential(settings, secret_namespace, fingerprint)
            .await?;
        // The same Secret and spec as a working client: keep that client.
        let working = match lock(&self.checked).get(key) {
            Some(Entry {
                fingerprint: f,
                result: Checked::Ready(t),
                ..
            }) if f == fingerprint => Some(t.clone()),
            _ => None,
        };
        if let Some(t) = working {
            probe(t.graph(), &described).await?;
            return Ok(t);
        }
        let mut config =
            connection_graph_config(&self.settings.graph_defaults, settings, credential)
                .map_err(|e| invalid_spec(e.to_string()))?;
        // A reconcile never sleeps through one tenant's long Retry-After.
        config.max_retry_after = config.max_retry_after.min(CONNECTION_MAX_RETRY_AFTER);
        let graph = GraphClient::new(config).map_err(|e| invalid_spec(e.to_string()))?;
        probe(&graph, &described).await?;
        let rate = settings
            .reprocess_rate
            .unwrap_or(self.settings.reprocess_per_minute);
        Ok(Arc::new(self.tenant(
            key.clone(),
            graph,
            rate,
            settings.safety.clone(),
        )))
    }

    /// The connection's credential and how messages name it. A Secret's resourceVersion
    /// joins the fingerprint, so a rotated Secret builds a new client.
    async fn credential(
        &self,
        settings: &ConnectionSettings,
        secret_namespace: Option<&str>,
        fingerprint: &mut String,
    ) -> Result<(ResolvedCredential, String), Problem> {
        use crate::engine::conditions::Reason;
        match (
            &settings.credential.client_secret,
            &settings.credential.workload_identity,
        ) {
            (Some(sel), _) => {
                let unavailable = |message| Problem {
                    reason: Reason::SecretUnavailable,
                    code: None,
                    message,
                };
                let ns = secret_namespace.ok_or_else(|| {
                    unavailable(format!(
                        "the operator's namespace is not known, so the Secret {} of a ClusterGraphConnection cannot be read; set POD_NAMESPACE (the chart does) or --cluster-secret-namespace",
                        sel.name
                    ))
                })?;
                let api: Api<KubeSecret> = Api::namespaced(self.client.clone(), ns);
                let (value, rv) = read_secret_key(&api, ns, &sel.name, &sel.key)
                    .await
                    .map_err(unavailable)?;
                fingerprint.push_str(&rv);
                let described = format!(
                    "the client secret in key {} of Secret {ns}/{}",
                    sel.key, sel.name
                );
                Ok((ResolvedCredential::ClientSecret(value), described))
            }
            (None, Some(wi)) => {
                let path = wi
                    .token_file
                    .clone()
                    .map(PathBuf::from)
                    .or_else(|| self.settings.graph_defaults.federated_token_file.clone())
                    .ok_or_else(|| {
                        invalid_spec(
                            "spec.credential.workloadIdentity: no token file; set tokenFile, or run the operator with Azure Workload Identity (AZURE_FEDERATED_TOKEN_FILE)".into(),
                        )
                    })?;
                let described = format!("the federated token file {}", path.display());
                Ok((ResolvedCredential::FederatedTokenFile(path), described))
            }
            (None, None) => Err(invalid_spec(
                "spec.credential: set clientSecret or workloadIdentity".into(),
            )),
        }
    }
}

/// A connection whose spec cannot work as written.
fn invalid_spec(message: String) -> Problem {
    Problem {
        reason: crate::engine::conditions::Reason::InvalidSpec,
        code: None,
        message,
    }
}

/// Obtains a token and makes one cheap read of access packages (an exact-name lookup that
/// matches nothing): proves the credential, the tenant and the entitlement management
/// permission.
async fn probe(graph: &GraphClient, credential: &str) -> Result<(), Problem> {
    use crate::engine::conditions::Reason;
    // The status says what failed without Entra's correlation id and Graph's request id:
    // they change on every attempt, and a status that changes on every check is rewritten
    // on every check. The log line carries them, for a support case.
    if let Err(e) = graph.check_token().await {
        tracing::warn!(%credential, error = %e, "connection check: no token");
        return Err(Problem {
            reason: Reason::AuthenticationFailed,
            code: error_code(&e),
            message: format!(
                "cannot obtain a Graph token with {credential}: {} (for this connection, the credential is {credential}, not the operator's flags)",
                without_run_ids(&e.to_string())
            ),
        });
    }
    match graph
        .find_access_packages("redeliver connection probe")
        .await
    {
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::warn!(%credential, error = %e, "connection check: reading access packages failed");
            Err(Problem {
                reason: Reason::ProbeFailed,
                code: error_code(&e),
                message: format!(
                    "a token was issued but reading access packages failed: {}",
                    without_run_ids(&e.to_string())
                ),
            })
        }
    }
}

/// The Entra or Graph error code: `invalid_client (AADSTS7000215)` for a token refusal.
fn error_code(e: &GraphError) -> Option<String> {
    match e {
        GraphError::Auth(f) if !f.error_codes.is_empty() => Some(format!(
            "{} (AADSTS{})",
            f.error,
            f.error_codes
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(", AADSTS")
        )),
        other => other.code().map(str::to_string),
    }
}

/// Reads one key of a Secret (value and the Secret's resourceVersion). The error names the
/// Secret and key and says what to do; it never carries the value.
async fn read_secret_key(
    api: &Api<KubeSecret>,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<(Secret, String), String> {
    let secret = match api.get(name).await {
        Ok(s) => s,
        Err(kube::Error::Api(e)) if e.code == 404 => {
            return Err(format!(
                "Secret {namespace}/{name} does not exist; create it with the client secret under key {key}"
            ));
        }
        Err(kube::Error::Api(e)) if e.code == 403 => {
            return Err(format!(
                "the operator may not read Secret {namespace}/{name} ({}); grant get on secrets in namespace {namespace} (Helm value rbac.secrets, see docs/install.md)",
                e.message
            ));
        }
        Err(e) => {
            return Err(format!(
                "cannot read Secret {namespace}/{name}: {e}; retrying"
            ));
        }
    };
    let rv = secret.resource_version().unwrap_or_default();
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| String::from_utf8_lossy(&b.0).trim().to_string())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|s| s.trim().to_string())
        });
    match value {
        Some(v) if !v.is_empty() => Ok((Secret::new(v), rv)),
        Some(_) => Err(format!(
            "key {key} of Secret {namespace}/{name} is empty; put the client secret value there"
        )),
        None => Err(format!(
            "Secret {namespace}/{name} has no key {key}; add it, or set spec.credential.clientSecret.key to the key that holds the client secret"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn privileged_polls_with_an_interval_of_their_own_skip_the_polls_in_between() {
        let start = tokio::time::Instant::now();
        let minute = Duration::from_secs(60);
        let mut last = None;
        // Every delta poll (60 s) with a 10-minute interval: the first, then the tenth after.
        let due: Vec<bool> = (0..12)
            .map(|i| poll_due(&mut last, start + minute * i, Duration::from_secs(600)))
            .collect();
        assert_eq!(
            due,
            [
                true, false, false, false, false, false, false, false, false, false, true, false
            ]
        );
        // No interval of their own: every delta poll.
        let mut last = None;
        assert!((0..3).all(|i| poll_due(&mut last, start + minute * i, Duration::ZERO)));
    }

    #[test]
    fn labels() {
        let k = ConnectionKey::Namespaced {
            namespace: "a".into(),
            name: "default".into(),
        };
        assert_eq!(k.status_label().as_deref(), Some("GraphConnection/default"));
        assert_eq!(k.metric_label(), "a/default");
        assert_eq!(k.to_string(), "GraphConnection a/default");
        assert_eq!(ConnectionKey::Operator.status_label(), None);
        let c = ConnectionKey::Cluster {
            name: "prod".into(),
        };
        assert_eq!(c.metric_label(), "cluster/prod");
    }

    #[test]
    fn a_connection_sets_what_it_names_and_inherits_the_rest() {
        let defaults = GraphSettings {
            graph_timeout: Duration::from_secs(7),
            ..GraphSettings::default()
        };
        let settings = ConnectionSettings {
            tenant_id: "fabrikam.onmicrosoft.com".into(),
            client_id: "11111111-2222-4333-8444-555555555555".into(),
            credential: Default::default(),
            authority_host: Some("https://login.microsoftonline.us".into()),
            graph_url: None,
            arm_url: None,
            concurrency: Some(3),
            reprocess_rate: None,
            safety: None,
        };
        let c = connection_graph_config(
            &defaults,
            &settings,
            ResolvedCredential::ClientSecret(Secret::new("s3cr3t")),
        )
        .unwrap();
        assert_eq!(c.tenant_id, "fabrikam.onmicrosoft.com");
        assert_eq!(
            c.token_url.as_str(),
            "https://login.microsoftonline.us/fabrikam.onmicrosoft.com/oauth2/v2.0/token"
        );
        assert_eq!(c.graph_root, "https://graph.microsoft.com");
        assert_eq!(c.concurrency, 3);
        assert_eq!(c.timeout, Duration::from_secs(7));
        assert!(!format!("{c:?}").contains("s3cr3t"));
    }
}
