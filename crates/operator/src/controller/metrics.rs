//! Prometheus metrics (prometheus-client, no global registry). Label values come from fixed
//! vocabularies — kinds, results, outcomes, Graph operation names, condition statuses — so
//! cardinality stays bounded whatever the number of objects or users.

use std::collections::HashMap;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use kube::runtime::reflector::Store;

use crate::api::AccessPackageAssignment;
use crate::graph::GraphClient;

/// Labels of the reconciles counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    /// `AccessPackageAssignment` or `AccessPackageGuard`.
    pub kind: &'static str,
    /// `ok` or an error label ([`super::Error::metric_label`]).
    pub result: &'static str,
}

/// A label set with only the kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// `AccessPackageAssignment` or `AccessPackageGuard`.
    pub kind: &'static str,
}

/// A label set with only the connection (`operator`, `namespace/name` of a
/// `GraphConnection`, `cluster/name` of a `ClusterGraphConnection`): bounded by the number
/// of connections.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    /// The connection.
    pub connection: String,
}

/// Labels of the safety holds counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HoldLabels {
    /// `AccessPackageAssignment` or `AccessPackageGuard`.
    pub kind: &'static str,
    /// The `Stalled` reason: `TargetDisabled`, `TargetDeleted`, `TargetAtRisk`,
    /// `TargetUnverified`, `AccountsHeld`, `RemovedDeliberately`, `AttributionUnavailable`,
    /// `MassDrift`.
    pub reason: &'static str,
}

/// Labels of the reprocess calls counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReprocessLabels {
    /// `AccessPackageAssignment` or `AccessPackageGuard`.
    pub kind: &'static str,
    /// `requested`, `rate_limited`, `throttled`, `forbidden`, `rejected`, `failed`.
    pub outcome: &'static str,
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 14))
}

/// Every metric the controller exports.
pub struct Metrics {
    /// Reconciles by kind and result.
    pub reconciles: Family<ReconcileLabels, Counter>,
    /// Reconcile duration by kind.
    pub reconcile_duration: Family<KindLabels, Histogram, fn() -> Histogram>,
    /// Drift findings (a delivered assignment with a missing resource) by kind.
    pub drift_detected: Family<KindLabels, Counter>,
    /// Disagreements between Microsoft's access drift report and Redeliver's own read, by
    /// kind, counted per verification that finds them (`--use-access-drift-report`).
    pub access_drift_disagreements: Family<KindLabels, Counter>,
    /// Reprocess calls by kind and outcome.
    pub reprocess_calls: Family<ReprocessLabels, Counter>,
    /// Objects in the watch that could not be decoded, by kind.
    pub malformed_objects: Family<KindLabels, Counter>,
    /// 1 while this replica holds the leader lease (or runs without leader election).
    pub is_leader: Gauge<i64, AtomicI64>,
    /// Unix time of the last reconcile that ended `ok`, by kind: a reconcile verifies, so
    /// an alert on its age catches verification that has stopped without counting errors.
    pub last_success: Family<KindLabels, Gauge<i64, AtomicI64>>,
    /// 1 while a connection is ready, 0 while it is stalled or gone, by connection.
    pub connection_ready: Family<ConnectionLabels, Gauge<i64, AtomicI64>>,
    /// Holds by a safety rail (a grant not sent), counted when an object starts holding.
    pub safety_holds: Family<HoldLabels, Counter>,
    /// Mass-drift breakers tripped and not acknowledged, by kind: packages of the
    /// assignments' connections, and guards.
    pub mass_drift_tripped: Family<KindLabels, Gauge<i64, AtomicI64>>,
    /// The tripped count of each (kind, scope), summed into `mass_drift_tripped`.
    tripped_by_scope: Mutex<HashMap<(&'static str, String), usize>>,
    /// Last known `Delivered` condition status per assignment, for the objects gauge.
    delivered: Arc<DeliveredIndex>,
    /// The Graph clients of the connections, for their per-connection request counters.
    connection_clients: Arc<Mutex<Vec<(String, GraphClient)>>>,
    /// Drift attribution's audit-log queries, of every connection.
    pub attribution_queries: Arc<crate::observe::attribution::AttributionStats>,
    /// What reports the internal maps' sizes (the controller's context, once running).
    state: Arc<Mutex<Option<std::sync::Weak<dyn StateSizes>>>>,
}

/// Something whose internal maps `redeliver_state_entries{map}` reports: each map keyed by
/// object, connection or assignment, so a leak shows as a series that only grows.
pub trait StateSizes: Send + Sync {
    /// `(map, entries)`, with fixed map names.
    fn state_sizes(&self) -> Vec<(&'static str, usize)>;
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Creates the metrics and registers them (plus the Graph client's counters, when given)
    /// in a new registry under the `redeliver` prefix.
    pub fn new(graph: Option<GraphClient>) -> (Arc<Metrics>, Registry) {
        let mut registry = Registry::with_prefix("redeliver");
        let metrics = Metrics {
            reconciles: Family::default(),
            reconcile_duration: Family::new_with_constructor(duration_histogram),
            drift_detected: Family::default(),
            access_drift_disagreements: Family::default(),
            reprocess_calls: Family::default(),
            malformed_objects: Family::default(),
            is_leader: Gauge::default(),
            last_success: Family::default(),
            connection_ready: Family::default(),
            safety_holds: Family::default(),
            mass_drift_tripped: Family::default(),
            tripped_by_scope: Mutex::default(),
            delivered: Arc::default(),
            connection_clients: Arc::default(),
            attribution_queries: Arc::default(),
            state: Arc::default(),
        };
        registry.register(
            "connection_ready",
            "1 while a Graph connection is ready (token obtained, probe read succeeded), by connection",
            metrics.connection_ready.clone(),
        );
        registry.register_collector(Box::new(ConnectionCollector(
            metrics.connection_clients.clone(),
        )));
        registry.register(
            "reconciles",
            "Reconciles by kind and result",
            metrics.reconciles.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile duration by kind",
            metrics.reconcile_duration.clone(),
        );
        registry.register(
            "drift_detected",
            "Delivered assignments found with a missing resource",
            metrics.drift_detected.clone(),
        );
        registry.register(
            "access_drift_report_disagreements",
            "Resources Microsoft's access drift report and Redeliver's read disagree on, per verification",
            metrics.access_drift_disagreements.clone(),
        );
        registry.register(
            "reprocess_calls",
            "Reprocess calls by kind and outcome",
            metrics.reprocess_calls.clone(),
        );
        registry.register(
            "malformed_objects",
            "Objects in the watch that could not be decoded and were skipped",
            metrics.malformed_objects.clone(),
        );
        registry.register(
            "is_leader",
            "1 while this replica runs the controllers",
            metrics.is_leader.clone(),
        );
        registry.register(
            "last_successful_reconcile_timestamp_seconds",
            "Unix time of the last reconcile that ended ok (and so verified), by kind",
            metrics.last_success.clone(),
        );
        registry.register(
            "safety_holds",
            "Grants Redeliver did not send because a safety rail held them, by kind and reason",
            metrics.safety_holds.clone(),
        );
        registry.register(
            "mass_drift_tripped",
            "Access packages whose mass-drift breaker is tripped and not acknowledged (automatic repair stopped)",
            metrics.mass_drift_tripped.clone(),
        );
        // Known label values start at zero, so dashboards and alerts see a series before
        // the first hold.
        for kind in ["AccessPackageAssignment", "AccessPackageGuard"] {
            metrics
                .mass_drift_tripped
                .get_or_create(&KindLabels { kind })
                .set(0);
            for reason in crate::engine::HOLD_REASONS {
                let _ = metrics.safety_holds.get_or_create(&HoldLabels {
                    kind,
                    reason: reason.as_str(),
                });
            }
        }
        registry.register_collector(Box::new(DeliveredCollector(metrics.delivered.clone())));
        registry.register_collector(Box::new(StateCollector(metrics.state.clone())));
        registry.register_collector(Box::new(AttributionCollector(
            metrics.attribution_queries.clone(),
        )));
        if let Some(graph) = graph {
            registry.register_collector(Box::new(GraphCollector(graph)));
        }
        // Every known series of the labelled counters starts at 0: a family that appears
        // only at its first event shows "No data" in dashboards, and rate() over it is
        // empty until then.
        for kind in [crate::api::ASSIGNMENT_KIND, crate::api::GUARD_KIND] {
            for outcome in ReprocessCall::ALL {
                let _ = metrics.reprocess_calls.get_or_create(&ReprocessLabels {
                    kind,
                    outcome: outcome.label(),
                });
            }
            let _ = metrics.drift_detected.get_or_create(&KindLabels { kind });
            let _ = metrics
                .reconciles
                .get_or_create(&ReconcileLabels { kind, result: "ok" });
        }
        (Arc::new(metrics), registry)
    }

    /// Starts timing one reconcile; the result is recorded when the guard is finished.
    pub fn reconcile_started(&self, kind: &'static str) -> ReconcileTimer<'_> {
        ReconcileTimer {
            metrics: self,
            kind,
            start: Instant::now(),
        }
    }

    /// Records whether a connection is ready.
    pub fn connection_ready(&self, connection: &str, ready: bool) {
        self.connection_ready
            .get_or_create(&ConnectionLabels {
                connection: connection.to_string(),
            })
            .set(i64::from(ready));
    }

    /// The Graph clients of the ready connections (other than the operator's own, which the
    /// unlabelled `graph_*` series count), for `connection_graph_requests` and
    /// `connection_graph_throttled`.
    pub fn set_connection_clients(&self, clients: Vec<(String, GraphClient)>) {
        *self
            .connection_clients
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = clients;
    }

    /// Reports `sizes`' maps in `redeliver_state_entries` (held weakly: the metrics outlive
    /// no one).
    pub fn watch_state(&self, sizes: std::sync::Weak<dyn StateSizes>) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = Some(sizes);
    }

    /// Records one reprocess call outcome.
    pub fn reprocess(&self, kind: &'static str, outcome: ReprocessCall) {
        self.reprocess_calls
            .get_or_create(&ReprocessLabels {
                kind,
                outcome: outcome.label(),
            })
            .inc();
    }

    /// Counts the holds that begin with `events` (the engine emits a safety event only when
    /// an object starts holding, so a steady hold is counted once).
    pub fn safety_holds(
        &self,
        kind: &'static str,
        events: &[crate::engine::EngineEvent],
        conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    ) {
        use crate::engine::EventKind;
        let starts = events.iter().any(|e| {
            matches!(
                e.kind,
                EventKind::TargetHeld
                    | EventKind::RemovedDeliberately
                    | EventKind::AttributionUnavailable
                    | EventKind::MassDrift
            )
        });
        let reason = crate::engine::conditions::true_reason(
            conditions,
            crate::engine::conditions::ConditionType::Stalled,
        );
        if let Some(reason) = reason.filter(|r| starts && crate::engine::HOLD_REASONS.contains(r)) {
            self.safety_holds
                .get_or_create(&HoldLabels {
                    kind,
                    reason: reason.as_str(),
                })
                .inc();
        }
    }

    /// Sets how many mass-drift breakers are tripped in `scope` (a connection's board, or
    /// one guard), and the kind's total with it.
    pub fn mass_drift_tripped(&self, kind: &'static str, scope: String, tripped: usize) {
        let total: usize = {
            let mut by = self
                .tripped_by_scope
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if tripped == 0 {
                by.remove(&(kind, scope));
            } else {
                by.insert((kind, scope), tripped);
            }
            by.iter()
                .filter(|((k, _), _)| *k == kind)
                .map(|(_, n)| n)
                .sum()
        };
        self.mass_drift_tripped
            .get_or_create(&KindLabels { kind })
            .set(i64::try_from(total).unwrap_or(i64::MAX));
    }

    /// Records a drift finding.
    pub fn drift(&self, kind: &'static str, count: u64) {
        if count > 0 {
            self.drift_detected
                .get_or_create(&KindLabels { kind })
                .inc_by(count);
        }
    }

    /// Counts only the assignments `filter` accepts in `redeliver_assignments` (with
    /// sharding: this shard's, so the shards' series add up).
    pub fn count_only(&self, filter: AssignmentFilter) {
        *self.delivered.1.lock().unwrap_or_else(|p| p.into_inner()) = Some(filter);
    }

    /// Records disagreements with Microsoft's access drift report found by one verification.
    pub fn access_drift_disagreements(&self, kind: &'static str, count: u64) {
        if count > 0 {
            self.access_drift_disagreements
                .get_or_create(&KindLabels { kind })
                .inc_by(count);
        }
    }

    /// Counts the objects of `store` in the assignments gauge (by `Delivered` status) at
    /// every scrape, so deleted objects drop out by themselves.
    pub fn track_assignments(&self, store: Store<AccessPackageAssignment>) {
        self.delivered
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(store);
    }
}

/// Times one reconcile.
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    kind: &'static str,
    start: Instant,
}

impl ReconcileTimer<'_> {
    /// Records the duration and the result label.
    pub fn finish(self, result: &'static str) {
        let kind = self.kind;
        self.metrics
            .reconcile_duration
            .get_or_create(&KindLabels { kind })
            .observe(self.start.elapsed().as_secs_f64());
        self.metrics
            .reconciles
            .get_or_create(&ReconcileLabels { kind, result })
            .inc();
        if result == "ok" {
            // Wall-clock time, as Prometheus compares it with time(); a clock before 1970
            // leaves the gauge alone rather than exporting nonsense.
            if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
                let secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
                self.metrics
                    .last_success
                    .get_or_create(&KindLabels { kind })
                    .set(secs);
            }
        }
    }
}

#[derive(Default)]
struct DeliveredIndex(
    Mutex<Vec<Store<AccessPackageAssignment>>>,
    Mutex<Option<AssignmentFilter>>,
);

/// Which assignments this replica reports (its shard's).
pub type AssignmentFilter = Arc<dyn Fn(&AccessPackageAssignment) -> bool + Send + Sync>;

impl std::fmt::Debug for DeliveredIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeliveredIndex")
    }
}

/// Exports `redeliver_assignments{delivered="True|False|Unknown"}` and
/// `redeliver_assignments_reprocess_exhausted` from the watch caches at scrape time.
#[derive(Debug)]
struct DeliveredCollector(Arc<DeliveredIndex>);

impl Collector for DeliveredCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use crate::engine::conditions::{ConditionType, Reason, Status, find, true_reason};
        let mut counts = [(Status::True, 0), (Status::False, 0), (Status::Unknown, 0)];
        let mut exhausted: i64 = 0;
        let filter = self.0.1.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for store in self.0.0.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            for obj in store.state() {
                if filter.as_ref().is_some_and(|f| !f(&obj)) {
                    continue;
                }
                if obj.status.as_ref().is_some_and(|s| {
                    true_reason(&s.conditions, ConditionType::Stalled)
                        == Some(Reason::ReprocessExhausted)
                }) {
                    exhausted += 1;
                }
                // Anything but True/False (absent, or a value some other writer put there)
                // counts as Unknown.
                let status = obj
                    .status
                    .as_ref()
                    .and_then(|s| find(&s.conditions, ConditionType::Delivered))
                    .and_then(|c| c.status.parse().ok())
                    .unwrap_or(Status::Unknown);
                if let Some(slot) = counts.iter_mut().find(|(s, _)| *s == status) {
                    slot.1 += 1;
                }
            }
        }
        let mut family = encoder.encode_descriptor(
            "assignments",
            "AccessPackageAssignment objects by Delivered condition status",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (status, n) in counts {
            let labels = [("delivered", status.as_str())];
            let m = family.encode_family(&labels)?;
            ConstGauge::new(n).encode(m)?;
        }
        let family = encoder.encode_descriptor(
            "assignments_reprocess_exhausted",
            "AccessPackageAssignment objects stalled because maxAttempts reprocesses did not repair them",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        ConstGauge::new(exhausted).encode(family)?;
        Ok(())
    }
}

/// Exports `redeliver_state_entries{map}` at scrape time.
struct StateCollector(Arc<Mutex<Option<std::sync::Weak<dyn StateSizes>>>>);

impl std::fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateCollector")
    }
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let source = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(std::sync::Weak::upgrade);
        let Some(source) = source else {
            return Ok(());
        };
        let mut family = encoder.encode_descriptor(
            "state_entries",
            "Entries of the controller's internal maps (per-object backoff, repair ledgers, read caches, attribution lookups, per-connection state): flat while objects come and go",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (map, n) in source.state_sizes() {
            let labels = [("map", map)];
            let m = family.encode_family(&labels)?;
            ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX)).encode(m)?;
        }
        Ok(())
    }
}

/// Exports `redeliver_attribution_queries_total{scope}` at scrape time.
#[derive(Debug)]
struct AttributionCollector(Arc<crate::observe::attribution::AttributionStats>);

impl Collector for AttributionCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut family = encoder.encode_descriptor(
            "attribution_queries",
            "Audit-log queries drift attribution made: batch (one per detection batch and retry) or target (one group or app, for a removal found outside a batch)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (scope, n) in [
            ("batch", self.0.batch.load(Relaxed)),
            ("target", self.0.target.load(Relaxed)),
        ] {
            let labels = [("scope", scope)];
            let m = family.encode_family(&labels)?;
            ConstCounter::new(n).encode(m)?;
        }
        Ok(())
    }
}

/// Exports each connection's Graph request and throttled-response totals at scrape time.
struct ConnectionCollector(Arc<Mutex<Vec<(String, GraphClient)>>>);

impl std::fmt::Debug for ConnectionCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnectionCollector")
    }
}

impl Collector for ConnectionCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let clients = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        type Pick = fn(&crate::graph::OperationStats) -> u64;
        let series: [(&str, &str, Pick); 2] = [
            (
                "connection_graph_requests",
                "HTTP exchanges with Graph and the token endpoint, by GraphConnection or ClusterGraphConnection",
                |s| s.requests,
            ),
            (
                "connection_graph_throttled",
                "Graph responses with status 429, by GraphConnection or ClusterGraphConnection",
                |s| s.throttled,
            ),
        ];
        for (name, help, pick) in series {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (connection, graph) in &clients {
                let total: u64 = graph.stats().iter().map(pick).sum();
                let labels = [("connection", connection.as_str())];
                let m = family.encode_family(&labels)?;
                ConstCounter::new(total).encode(m)?;
            }
        }
        Ok(())
    }
}

/// Exports the Graph client's per-operation counters at scrape time.
struct GraphCollector(GraphClient);

impl std::fmt::Debug for GraphCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GraphCollector")
    }
}

impl Collector for GraphCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.0.stats();
        type Pick = fn(&crate::graph::OperationStats) -> u64;
        let series: [(&str, &str, Pick); 4] = [
            (
                "graph_requests",
                "HTTP exchanges with Graph and the token endpoint by operation (retries and pages included)",
                |s| s.requests,
            ),
            (
                "graph_retries",
                "Graph exchanges that were retries, by operation",
                |s| s.retries,
            ),
            (
                "graph_throttled",
                "Graph responses with status 429, by operation",
                |s| s.throttled,
            ),
            (
                "graph_failures",
                "Graph calls that ended in an error, by operation",
                |s| s.failures,
            ),
        ];
        for (name, help, pick) in series {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for s in &stats {
                let labels = [("operation", s.operation)];
                let m = family.encode_family(&labels)?;
                ConstCounter::new(pick(s)).encode(m)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "graph_responses",
            "Graph (and token endpoint) HTTP responses by operation and status code",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for s in &stats {
            for (code, count) in &s.by_status {
                let code = code.to_string();
                let labels = [("operation", s.operation), ("code", code.as_str())];
                let m = family.encode_family(&labels)?;
                ConstCounter::new(*count).encode(m)?;
            }
        }
        Ok(())
    }
}

/// Renders the registry as OpenMetrics text.
pub fn render(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

/// The outcome of one reprocess call, as the `outcome` label of
/// `redeliver_reprocess_calls_total` (a fixed set of values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReprocessCall {
    /// Graph accepted it.
    Requested,
    /// Held back by the operator's global rate limit (`--reprocess-rate`).
    RateLimited,
    /// Graph throttled it (429, or 503 with `Retry-After`).
    Throttled,
    /// Graph refused it for lack of permission (403).
    Forbidden,
    /// Graph refused it for another reason (a 4xx).
    Rejected,
    /// It failed in transit (5xx, network) and is retried.
    Failed,
}

impl ReprocessCall {
    /// Every outcome, in label order.
    pub const ALL: [Self; 6] = [
        Self::Requested,
        Self::RateLimited,
        Self::Throttled,
        Self::Forbidden,
        Self::Rejected,
        Self::Failed,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Requested => "requested",
            Self::RateLimited => "rate_limited",
            Self::Throttled => "throttled",
            Self::Forbidden => "forbidden",
            Self::Rejected => "rejected",
            Self::Failed => "failed",
        }
    }

    /// The outcome a failed call counts as: one classification for both kinds.
    pub fn of_error(err: &crate::graph::GraphError) -> Self {
        if err.retry_after().is_some() {
            Self::Throttled
        } else if err.is_forbidden() {
            Self::Forbidden
        } else if err.is_refusal() {
            Self::Rejected
        } else {
            Self::Failed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labelled_counters_start_at_zero_for_every_known_label() {
        let (_m, registry) = Metrics::new(None);
        let text = render(&registry).unwrap();
        for kind in ["AccessPackageAssignment", "AccessPackageGuard"] {
            for outcome in ReprocessCall::ALL {
                let series = format!(
                    "redeliver_reprocess_calls_total{{kind=\"{kind}\",outcome=\"{}\"}} 0",
                    outcome.label()
                );
                assert!(text.contains(&series), "{series} in\n{text}");
            }
            let drift = format!("redeliver_drift_detected_total{{kind=\"{kind}\"}} 0");
            assert!(text.contains(&drift), "{drift} in\n{text}");
        }
    }

    #[test]
    fn renders_bounded_families() {
        let (m, registry) = Metrics::new(None);
        m.reconcile_started("AccessPackageAssignment").finish("ok");
        m.reprocess("AccessPackageAssignment", ReprocessCall::Requested);
        m.drift("AccessPackageGuard", 3);
        let (store, mut writer) = kube::runtime::reflector::store::<AccessPackageAssignment>();
        for (name, delivered) in [("a", Some("True")), ("b", None), ("c", Some("True"))] {
            let mut obj = serde_json::json!({
                "apiVersion": "redeliver.dev/v1alpha1", "kind": "AccessPackageAssignment",
                "metadata": {"name": name, "namespace": "ns"},
                "spec": {"accessPackage": {"id": "9f1c0c7e-0000-4000-8000-000000000001"},
                         "target": {"userPrincipalName": "alice@contoso.com"}}
            });
            if let Some(d) = delivered {
                obj["status"] = serde_json::json!({"conditions": [{"type": "Delivered", "status": d,
                    "reason": "Delivered", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]});
            }
            writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(
                serde_json::from_value(obj).unwrap(),
            ));
        }
        m.track_assignments(store);
        m.is_leader.set(1);
        let text = render(&registry).unwrap();
        assert!(
            text.contains(
                "redeliver_reconciles_total{kind=\"AccessPackageAssignment\",result=\"ok\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("redeliver_reprocess_calls_total{kind=\"AccessPackageAssignment\",outcome=\"requested\"} 1"));
        assert!(text.contains("redeliver_drift_detected_total{kind=\"AccessPackageGuard\"} 3"));
        assert!(
            text.contains("redeliver_assignments{delivered=\"True\"} 2"),
            "{text}"
        );
        assert!(text.contains("redeliver_assignments{delivered=\"False\"} 0"));
        assert!(text.contains("redeliver_assignments{delivered=\"Unknown\"} 1"));
        assert!(text.contains("redeliver_is_leader 1"));
        assert!(text.contains(
            "redeliver_reconcile_duration_seconds_count{kind=\"AccessPackageAssignment\"} 1"
        ));
        assert!(text.ends_with("# EOF\n"));
    }

    /// The two series the alerts need beyond the counters: when verification last
    /// succeeded (only an `ok` reconcile moves it) and how many assignments gave up.
    #[test]
    fn exports_last_success_and_exhausted_assignments() {
        let (m, registry) = Metrics::new(None);
        m.reconcile_started("AccessPackageGuard")
            .finish("graph_throttled");
        let text = render(&registry).unwrap();
        assert!(
            !text.contains("redeliver_last_successful_reconcile_timestamp_seconds{"),
            "a failed reconcile is not a success: {text}"
        );
        assert!(
            text.contains("redeliver_assignments_reprocess_exhausted 0"),
            "{text}"
        );

        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        m.reconcile_started("AccessPackageAssignment").finish("ok");
        let (store, mut writer) = kube::runtime::reflector::store::<AccessPackageAssignment>();
        for (name, stalled) in [("a", "ReprocessExhausted"), ("b", "Forbidden")] {
            let obj = serde_json::json!({
                "apiVersion": "redeliver.dev/v1alpha1", "kind": "AccessPackageAssignment",
                "metadata": {"name": name, "namespace": "ns"},
                "spec": {"accessPackage": {"id": "9f1c0c7e-0000-4000-8000-000000000001"},
                         "target": {"userPrincipalName": "alice@contoso.com"}},
                "status": {"conditions": [{"type": "Stalled", "status": "True", "reason": stalled,
                    "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
            });
            writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(
                serde_json::from_value(obj).unwrap(),
            ));
        }
        m.track_assignments(store);
        let text = render(&registry).unwrap();
        assert!(
            text.contains("redeliver_assignments_reprocess_exhausted 1"),
            "{text}"
        );
        let line = text
            .lines()
            .find(|l| {
                l.starts_with("redeliver_last_successful_reconcile_timestamp_seconds{kind=\"AccessPackageAssignment\"}")
            })
            .unwrap_or_else(|| panic!("no timestamp for the ok reconcile: {text}"));
        let value: i64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(value >= before && value <= before + 60, "{line}");
        assert!(
            !text.contains("timestamp_seconds{kind=\"AccessPackageGuard\"}"),
            "{text}"
        );
    }
}
