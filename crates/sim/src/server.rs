//! The simulator's shared state, what every handler may use: the world behind its lock,
//! injected faults, resource-unit buckets, usage and the request log. The request pipeline
//! that routes to the handlers is `dispatch`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::http::Method;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::SimOptions;
use super::latency::{LatencyModel, RouteClass};
use super::scenario::Scenario;
use super::state::World;

/// One line of the request log (`GET /_sim/requests`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogEntry {
    /// HTTP method.
    pub method: String,
    /// Path and query as received, e.g. `/v1.0/groups/{id}/members?$top=999`.
    pub path: String,
    /// Response status.
    pub status: u16,
    /// Milliseconds since the simulator started, when the request arrived.
    pub time_ms: u64,
    /// How long the simulator took to answer, in milliseconds.
    pub duration_ms: u64,
    /// Resource units charged (directory requests only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ru: Option<u32>,
    /// True for requests that arrived inside a `$batch`.
    #[serde(default)]
    pub batch: bool,
    /// The `request-id` the simulator answered with.
    pub request_id: String,
    /// The `client-request-id` the client sent, if any (a write's trace id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_request_id: Option<String>,
}

/// A fault to inject (`POST /_sim/faults`, [`super::SimHandle::inject_fault`]).
///
/// Every kind except `silentReprocess` applies to requests whose path starts with
/// `pathPrefix` (default: every `/v1.0` path; a prefix without `/v1.0` is taken relative to
/// it) and, if `method` is set, only to that method. It lasts for `count` matching
/// requests, or for `durationMs` milliseconds, or both (whichever ends first); with
/// neither it applies once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum FaultSpec {
    /// Answer `429 TooManyRequests` with `Retry-After: retryAfter` (seconds, fractional).
    #[serde(rename_all = "camelCase")]
    Throttle {
        /// Seconds; written with up to three decimals.
        #[serde(default = "default_retry_after")]
        retry_after: f64,
        #[serde(flatten)]
        scope: FaultScope,
    },
    /// Answer with a server error (`500`, `502`, `503`, `504`, ...).
    #[serde(rename_all = "camelCase")]
    Error {
        /// HTTP status to answer with.
        #[serde(default = "default_error_status")]
        status: u16,
        /// Optional `Retry-After` seconds.
        #[serde(default)]
        retry_after: Option<f64>,
        #[serde(flatten)]
        scope: FaultScope,
    },
    /// Delay matching requests before handling them.
    #[serde(rename_all = "camelCase")]
    Latency {
        /// Added delay in milliseconds.
        millis: u64,
        #[serde(flatten)]
        scope: FaultScope,
    },
    /// `reprocess` is accepted (`202`) but nothing is restored. With no ids it applies to
    /// every assignment and request; otherwise only to the listed ones.
    #[serde(rename_all = "camelCase")]
    SilentReprocess {
        /// Assignment ids whose reprocess silently does nothing.
        #[serde(default)]
        assignment_ids: Vec<String>,
        /// Request ids whose reprocess silently does nothing.
        #[serde(default)]
        request_ids: Vec<String>,
    },
    /// The next `count` `adminAdd` requests stop at `delivering` (request and assignment)
    /// and never finish — Graph's known "stuck in Delivering" behaviour.
    #[serde(rename_all = "camelCase")]
    StuckDelivery {
        /// How many future requests are affected.
        #[serde(default = "one")]
        count: u32,
    },
    /// The next `count` `adminAdd` requests end `deliveryFailed` (request and assignment,
    /// nothing granted); they can then be reprocessed.
    #[serde(rename_all = "camelCase")]
    FailDelivery {
        /// How many future requests are affected.
        #[serde(default = "one")]
        count: u32,
    },
    /// The next `count` `adminAdd` requests end `partiallyDelivered`: everything is granted
    /// except the package's first group or app role.
    #[serde(rename_all = "camelCase")]
    PartialDelivery {
        /// How many future requests are affected.
        #[serde(default = "one")]
        count: u32,
    },
}

/// How the simulator will finish an `adminAdd` (decided when it is created).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AddOutcome {
    Deliver,
    Stuck,
    Fail,
    Partial,
}

fn one() -> u32 {
    1
}

fn default_retry_after() -> f64 {
    1.0
}

fn default_error_status() -> u16 {
    503
}

/// Which requests a fault applies to and for how long.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultScope {
    /// Path prefix, e.g. `/v1.0/groups` or `/identityGovernance`.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Only this HTTP method.
    #[serde(default)]
    pub method: Option<String>,
    /// Number of matching requests to affect.
    #[serde(default)]
    pub count: Option<u32>,
    /// Time window in milliseconds from injection.
    #[serde(default)]
    pub duration_ms: Option<u64>,
}

/// Token-bucket settings for resource-unit throttling (docs/graph.md "Throttling and
/// retries"). Missing fields default to the app + tenant limit of a large tenant (8,000 RU
/// per 10 s), so `PUT /_sim/throttling` with `{}` turns on the bucket a large tenant has.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuBucket {
    /// Resource units available per window (e.g. 8000).
    #[serde(default = "default_capacity")]
    pub capacity: u32,
    /// Window length in milliseconds (e.g. 10000); the bucket refills continuously.
    #[serde(default = "default_window_ms")]
    pub window_ms: u64,
}

fn default_capacity() -> u32 {
    RuBucket::LARGE_TENANT.capacity
}

fn default_window_ms() -> u64 {
    RuBucket::LARGE_TENANT.window_ms
}

impl RuBucket {
    /// App + tenant limit of a large tenant (> 500 users): 8,000 RU per 10 s.
    pub const LARGE_TENANT: RuBucket = RuBucket {
        capacity: 8000,
        window_ms: 10_000,
    };
    /// Medium tenant (50–500 users): 5,000 RU per 10 s.
    pub const MEDIUM_TENANT: RuBucket = RuBucket {
        capacity: 5000,
        window_ms: 10_000,
    };
    /// Small tenant (< 50 users): 3,500 RU per 10 s.
    pub const SMALL_TENANT: RuBucket = RuBucket {
        capacity: 3500,
        window_ms: 10_000,
    };
}

impl Default for RuBucket {
    fn default() -> Self {
        Self::LARGE_TENANT
    }
}

/// Requests and resource units spent on one path (`GET /_sim/usage`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PathUsage {
    /// Requests answered (any status, batch items included, the outer `$batch` too).
    pub requests: u64,
    /// Resource units charged (only requests that were served; a 429 costs nothing).
    pub ru: u64,
    /// Requests answered `429`.
    pub throttled: u64,
}

impl PathUsage {
    fn add(&mut self, entry: &LogEntry) {
        self.requests += 1;
        self.ru += u64::from(entry.ru.unwrap_or(0));
        if entry.status == 429 {
            self.throttled += 1;
        }
    }
}

/// Usage since the log was last cleared, in total, per path and per route.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// Everything.
    pub total: PathUsage,
    /// Keyed by `METHOD /path` without the query, ids as sent.
    pub by_path: BTreeMap<String, PathUsage>,
    /// Keyed by `METHOD /route`, GUID segments replaced by `{id}` (e.g.
    /// `GET /v1.0/groups/{id}/members`).
    pub by_route: BTreeMap<String, PathUsage>,
}

/// `/v1.0/groups/6f1c.../members` → `/v1.0/groups/{id}/members`.
pub(crate) fn route_of(path: &str) -> String {
    path.split('/')
        .map(|seg| {
            if uuid::Uuid::parse_str(seg).is_ok() {
                "{id}"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[derive(Debug, Clone)]
pub(crate) struct ActiveFault {
    pub id: u64,
    pub spec: FaultSpec,
    pub remaining: Option<u32>,
    pub until: Option<Instant>,
}

#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    pub cfg: RuBucket,
    pub tokens: f64,
    pub last: Instant,
}

/// Mutable simulator state behind one lock.
pub(crate) struct Sim {
    pub world: World,
    /// Bumped on reset so background work from before the reset is dropped.
    pub epoch: u64,
    pub tokens: HashMap<String, Timestamp>,
    /// Of `tokens`, those issued for Azure Resource Manager (ARM's `.default` scope): ARM
    /// accepts only these, Graph none of them.
    pub arm_tokens: HashSet<String>,
    /// ARM's read quota (`x-ms-ratelimit-remaining-subscription-reads`), when limited.
    pub arm_reads: Option<ReadQuota>,
    pub faults: Vec<ActiveFault>,
    /// Requests each injected fault has affected, by fault id (kept after the fault ends).
    pub fault_hits: HashMap<u64, u64>,
    pub next_fault_id: u64,
    pub silent_all: bool,
    pub silent_ids: HashSet<String>,
    /// Pending `adminAdd` outcome faults, consumed in order by new requests.
    pub add_outcomes: Vec<(AddOutcome, u32)>,
    /// Outcome decided for each `adminAdd` still being processed.
    pub planned: HashMap<String, AddOutcome>,
    pub log: Vec<LogEntry>,
    pub counters: BTreeMap<String, u64>,
    pub usage: Usage,
    pub bucket: Option<Bucket>,
    /// Delays per route class (docs/simulator.md, "Latency model").
    pub latency: LatencyModel,
    /// Requests that have drawn a model delay since start or reset: the next one's index.
    pub latency_seq: u64,
    /// How Microsoft's access drift report lags or fails (tests set it).
    pub drift: super::drift::DriftControls,
}

impl Sim {
    pub fn new(world: World, bucket: Option<RuBucket>, latency: LatencyModel) -> Sim {
        Sim {
            world,
            epoch: 0,
            tokens: HashMap::new(),
            arm_tokens: HashSet::new(),
            arm_reads: None,
            faults: Vec::new(),
            fault_hits: HashMap::new(),
            next_fault_id: 1,
            silent_all: false,
            silent_ids: HashSet::new(),
            add_outcomes: Vec::new(),
            planned: HashMap::new(),
            log: Vec::new(),
            counters: BTreeMap::new(),
            usage: Usage::default(),
            bucket: bucket.map(new_bucket),
            latency,
            latency_seq: 0,
            drift: Default::default(),
        }
    }

    /// The model delay of the next request of `class`, counted in the request sequence so
    /// the same run order gives the same delays.
    pub fn draw_latency(&mut self, class: Option<RouteClass>) -> Duration {
        let Some(class) = class.filter(|c| self.latency.get(*c).is_some()) else {
            return Duration::ZERO;
        };
        let n = self.latency_seq;
        self.latency_seq += 1;
        self.latency.delay(class, self.world.seed_value, n)
    }

    /// Decides how a new `adminAdd` ends, consuming one outcome fault if any is pending.
    pub fn next_add_outcome(&mut self) -> AddOutcome {
        let Some((outcome, left)) = self.add_outcomes.first_mut() else {
            return AddOutcome::Deliver;
        };
        let outcome = *outcome;
        *left = left.saturating_sub(1);
        if *left == 0 {
            self.add_outcomes.remove(0);
        }
        outcome
    }

    pub fn is_silent(&self, ids: &[&str]) -> bool {
        self.silent_all
            || ids
                .iter()
                .any(|id| self.silent_ids.contains(&id.to_ascii_lowercase()))
    }
}

pub(crate) fn new_bucket(cfg: RuBucket) -> Bucket {
    Bucket {
        cfg,
        tokens: f64::from(cfg.capacity),
        last: Instant::now(),
    }
}

/// Most request-log entries kept (the oldest tenth is dropped when full).
pub(crate) const MAX_LOG: usize = 100_000;

/// Everything the HTTP handlers and background tasks share.
pub(crate) struct Shared {
    pub inner: Mutex<Sim>,
    pub opts: SimOptions,
    pub scenario: Scenario,
    /// Root URL clients use, e.g. `http://127.0.0.1:8080` (no `/v1.0`).
    pub base_url: String,
    pub started: Instant,
    /// Background work (request processing, reprocess) not finished yet.
    pub pending: AtomicUsize,
}

/// Counts one piece of background work in [`Shared::pending`] for as long as it lives.
pub(crate) struct PendingGuard(Arc<Shared>);

impl PendingGuard {
    pub fn new(shared: &Arc<Shared>) -> PendingGuard {
        shared.pending.fetch_add(1, Ordering::SeqCst);
        PendingGuard(shared.clone())
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Shared {
    /// Locks the state. A poisoned lock only means a handler panicked mid-update; the
    /// simulator keeps serving with whatever state is there.
    pub fn lock(&self) -> MutexGuard<'_, Sim> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn record(&self, entry: LogEntry) {
        let path = entry.path.split('?').next().unwrap_or_default();
        let key = format!("{} {path}", entry.method);
        let route = format!("{} {}", entry.method, route_of(path));
        let mut sim = self.lock();
        sim.usage.total.add(&entry);
        sim.usage.by_route.entry(route).or_default().add(&entry);
        sim.usage
            .by_path
            .entry(key.clone())
            .or_default()
            .add(&entry);
        *sim.counters.entry(key).or_default() += 1;
        // Long-running CLI sessions must not grow without bound; keep the newest entries.
        if sim.log.len() >= MAX_LOG {
            sim.log.drain(..MAX_LOG / 10);
        }
        sim.log.push(entry);
    }
}

pub(crate) fn fmt_seconds(s: f64) -> String {
    let t = format!("{:.3}", s.max(0.0));
    let t = t.trim_end_matches('0').trim_end_matches('.');
    if t.is_empty() { "0".into() } else { t.into() }
}

pub(crate) fn new_request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The path token-endpoint requests are matched under for faults (`pathPrefix: /oauth2`),
/// whatever tenant segment they carry. Faults without a prefix never hit the token endpoint.
pub(crate) const TOKEN_FAULT_PATH: &str = "/oauth2";

fn scope_matches(scope: &FaultScope, method: &Method, path: &str) -> bool {
    let method_ok = scope
        .method
        .as_deref()
        .is_none_or(|m| m.eq_ignore_ascii_case(method.as_str()));
    let path_ok = match scope.path_prefix.as_deref() {
        None => path.starts_with("/v1.0/") && path != "/v1.0/$batch",
        Some(p) => {
            // Graph paths may leave out `/v1.0`; the token endpoint, ARM (`/arm/`) and the
            // beta drift report (`/beta/`) are named in full.
            let p = if p.starts_with("/v1.0")
                || p.starts_with("/beta/")
                || p.starts_with(TOKEN_FAULT_PATH)
                || p.starts_with("/arm/")
            {
                p.to_string()
            } else {
                format!("/v1.0{}{p}", if p.starts_with('/') { "" } else { "/" })
            };
            path.to_ascii_lowercase()
                .starts_with(&p.to_ascii_lowercase())
        }
    };
    method_ok && path_ok
}

fn fault_scope(spec: &FaultSpec) -> Option<&FaultScope> {
    match spec {
        FaultSpec::Throttle { scope, .. }
        | FaultSpec::Error { scope, .. }
        | FaultSpec::Latency { scope, .. } => Some(scope),
        FaultSpec::SilentReprocess { .. }
        | FaultSpec::StuckDelivery { .. }
        | FaultSpec::FailDelivery { .. }
        | FaultSpec::PartialDelivery { .. } => None,
    }
}

/// Finds the first active fault matching the request and `want`, consuming one use.
pub(crate) fn take_fault(
    sim: &mut Sim,
    method: &Method,
    path: &str,
    want: fn(&FaultSpec) -> bool,
) -> Option<FaultSpec> {
    let now = Instant::now();
    sim.faults
        .retain(|f| f.remaining.is_none_or(|r| r > 0) && f.until.is_none_or(|u| now < u));
    let f = sim.faults.iter_mut().find(|f| {
        want(&f.spec) && fault_scope(&f.spec).is_some_and(|s| scope_matches(s, method, path))
    })?;
    if let Some(r) = f.remaining.as_mut() {
        *r = r.saturating_sub(1);
    }
    let (id, spec) = (f.id, f.spec.clone());
    *sim.fault_hits.entry(id).or_default() += 1;
    Some(spec)
}

pub(crate) fn take_latency(shared: &Shared, method: &Method, path: &str) -> Duration {
    let mut sim = shared.lock();
    match take_fault(&mut sim, method, path, |s| {
        matches!(s, FaultSpec::Latency { .. })
    }) {
        Some(FaultSpec::Latency { millis, .. }) => Duration::from_millis(millis),
        _ => Duration::ZERO,
    }
}

/// ARM's read quota for the simulated app: `limit` reads per `window`, refilled whole at
/// the end of each window (ARM's real bucket refills continuously; a window is enough to
/// exercise the headers and the 429).
#[derive(Debug, Clone)]
pub(crate) struct ReadQuota {
    pub limit: u32,
    pub window: Duration,
    pub remaining: u32,
    pub resets_at: tokio::time::Instant,
}

impl ReadQuota {
    pub(crate) fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit,
            window,
            remaining: limit,
            resets_at: tokio::time::Instant::now() + window,
        }
    }

    /// Takes one read; `Err(wait)` when the quota is spent until `wait` from now.
    pub(crate) fn take(&mut self) -> Result<u32, Duration> {
        let now = tokio::time::Instant::now();
        if now >= self.resets_at {
            self.remaining = self.limit;
            self.resets_at = now + self.window;
        }
        if self.remaining == 0 {
            return Err(self.resets_at.saturating_duration_since(now));
        }
        self.remaining -= 1;
        Ok(self.remaining)
    }
}

/// JSON for a request-log snapshot.
pub(crate) fn log_json(entries: &[LogEntry]) -> Value {
    json!({ "value": entries })
}
