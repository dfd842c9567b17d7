//! The simulator's shared state and the request pipeline every Graph call (direct or
//! inside `$batch`) goes through: correlation ids, latency, authentication, injected
//! faults, resource-unit metering, routing, and the request log.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::SimOptions;
use super::latency::{LatencyModel, RouteClass};
use super::odata::{GraphError, Query, Reply};
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
    pub arm_reads: Option<super::arm::ReadQuota>,
    pub faults: Vec<ActiveFault>,
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

pub(crate) fn reply_to_response(r: Reply) -> Response {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = match r.body {
        Some(b) => {
            let mut resp = (status, b.to_string()).into_response();
            resp.headers_mut().insert(
                "content-type",
                HeaderValue::from_static("application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8"),
            );
            resp
        }
        None => status.into_response(),
    };
    for (k, v) in r.headers {
        if let (Ok(name), Ok(val)) = (
            axum::http::HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(&v),
        ) {
            resp.headers_mut().append(name, val);
        }
    }
    resp
}

/// Axum fallback: every path that is not the token endpoint, discovery or `/_sim`.
pub(crate) async fn entry(State(shared): State<Arc<Shared>>, req: Request<Body>) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, 4 * 1024 * 1024).await {
        Ok(b) => b,
        Err(_) => Bytes::new(),
    };
    let reply = graph_call(
        &shared,
        parts.method.clone(),
        parts.uri.path().to_string(),
        parts.uri.query().map(str::to_string),
        parts.headers.clone(),
        bytes,
        false,
    )
    .await;
    reply_to_response(reply)
}

/// Handles one Graph request end to end. Boxed because `$batch` recurses into it.
pub(crate) fn graph_call(
    shared: &Arc<Shared>,
    method: Method,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Bytes,
    in_batch: bool,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Reply> + Send + '_>> {
    Box::pin(async move {
        let request_id = new_request_id();
        let sent_client_request_id = headers
            .get("client-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let client_request_id = sent_client_request_id
            .clone()
            .unwrap_or_else(|| request_id.clone());
        let arrived_ms = shared.elapsed_ms();
        let t0 = Instant::now();
        let date = Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S").to_string();
        let full_path = match &query {
            Some(q) => format!("{path}?{q}"),
            None => path.clone(),
        };

        let (result, ru) = if let Some(arm_path) = path.strip_prefix("/arm/") {
            (
                super::arm::handle(shared, &method, arm_path, query.as_deref(), &headers),
                None,
            )
        } else if !path.starts_with("/v1.0/") && path != "/v1.0" && !path.starts_with("/beta/") {
            (
                Err(GraphError::not_found(
                    "itemNotFound",
                    format!(
                        "No HTTP resource was found that matches the request URI '{path}'. The simulator serves /v1.0, /{{tenant}}/oauth2/v2.0/token and /_sim."
                    ),
                )),
                None,
            )
        } else {
            let mut latency = take_latency(shared, &method, &path);
            // Items of a batch wait together, in `batch::handle` (they run concurrently on
            // Graph); everything else waits its own delay here.
            if !in_batch {
                latency += shared.lock().draw_latency(RouteClass::of_graph_path(&path));
            }
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            handle_v1(
                shared,
                &method,
                &path,
                query.as_deref(),
                &headers,
                &body,
                in_batch,
            )
            .await
        };

        let mut reply = match result {
            Ok(r) => r,
            Err(e) => e.into_reply(&request_id, &client_request_id, &date),
        };
        reply
            .headers
            .push(("request-id".into(), request_id.clone()));
        reply
            .headers
            .push(("client-request-id".into(), client_request_id));
        reply.headers.push((
            "x-ms-ags-diagnostic".into(),
            r#"{"ServerInfo":{"DataCenter":"Simulator","Slice":"E","Ring":"0","ScaleUnit":"000","RoleInstance":"redeliver-sim"}}"#.into(),
        ));
        if let Some(ru) = ru {
            reply
                .headers
                .push(("x-ms-resource-unit".into(), ru.to_string()));
        }
        shared.record(LogEntry {
            method: method.to_string(),
            path: full_path,
            status: reply.status,
            time_ms: arrived_ms,
            duration_ms: u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX),
            ru,
            batch: in_batch,
            request_id,
            client_request_id: sent_client_request_id,
        });
        reply
    })
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
    Some(f.spec.clone())
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

fn throttle_error(sim: &Sim, retry_after: f64, info: &str) -> GraphError {
    GraphError::new(429, "TooManyRequests", "Please retry again later.")
        .header("Retry-After", fmt_seconds(retry_after))
        .header(
            "x-ms-throttle-scope",
            format!(
                "Tenant_Application/ReadWrite/{}/{}",
                sim.world.client_id, sim.world.tenant_id
            ),
        )
        .header("x-ms-throttle-information", info)
}

fn error_code_for(status: u16) -> &'static str {
    match status {
        500 => "generalException",
        502 => "badGateway",
        503 => "serviceNotAvailable",
        504 => "gatewayTimeout",
        _ => "UnknownError",
    }
}

/// Authentication, faults and RU metering, then routing.
async fn handle_v1(
    shared: &Arc<Shared>,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &Bytes,
    in_batch: bool,
) -> (Result<Reply, GraphError>, Option<u32>) {
    let q = Query::parse(query);
    let beta = path.starts_with("/beta/");
    let segs: Vec<String> = path
        .trim_start_matches("/v1.0")
        .trim_start_matches("/beta")
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();

    {
        let mut sim = shared.lock();
        if let Err(e) = check_auth(&sim, headers, &shared.base_url) {
            return (Err(e), None);
        }
        let want_err: fn(&FaultSpec) -> bool =
            |s| matches!(s, FaultSpec::Throttle { .. } | FaultSpec::Error { .. });
        match take_fault(&mut sim, method, path, want_err) {
            Some(FaultSpec::Throttle { retry_after, .. }) => {
                return (
                    Err(throttle_error(
                        &sim,
                        retry_after,
                        "ResourceUnitLimitExceeded",
                    )),
                    None,
                );
            }
            Some(FaultSpec::Error {
                status,
                retry_after,
                ..
            }) => {
                let mut e = GraphError::new(
                    status,
                    error_code_for(status),
                    "The service is temporarily unavailable (injected by the simulator).",
                );
                if let Some(ra) = retry_after {
                    e = e.header("Retry-After", fmt_seconds(ra));
                }
                return (Err(e), None);
            }
            _ => {}
        }
    }

    if segs.len() == 1 && segs[0] == "$batch" {
        if *method != Method::POST {
            return (Err(method_not_allowed(method, path)), None);
        }
        return (
            super::batch::handle(shared, headers, body, in_batch).await,
            None,
        );
    }

    if beta {
        return beta_call(shared, method, &segs, &q, path);
    }
    let ru = resource_units(method, &segs, &q);
    let mut sim = shared.lock();
    if let Some(cost) = ru
        && let Some(err) = charge(&mut sim, cost)
    {
        // Refused requests are not charged: the bucket only lost what it served.
        return (Err(err), None);
    }
    let result = super::graph::route(shared, &mut sim, method, &segs, &q, headers, body);
    let result = result.map(|r| match (ru, &sim.bucket) {
        (Some(_), Some(b)) => {
            let used = 1.0 - b.tokens / f64::from(b.cfg.capacity.max(1));
            if used >= 0.8 {
                r.header("x-ms-throttle-limit-percentage", format!("{used:.1}"))
            } else {
                r
            }
        }
        _ => r,
    });
    (result, ru)
}

/// The beta paths the simulator serves: Microsoft's access drift report only (Graph
/// meters it in no documented RU table; charged 1 RU a page so its cost shows in the usage
/// report).
fn beta_call(
    shared: &Arc<Shared>,
    method: &Method,
    segs: &[String],
    q: &Query,
    path: &str,
) -> (Result<Reply, GraphError>, Option<u32>) {
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let rest = match s.as_slice() {
        ["identityGovernance", "entitlementManagement", c, rest @ ..]
            if c.eq_ignore_ascii_case("accessDriftSummaries") =>
        {
            rest.to_vec()
        }
        _ => {
            return (
                Err(GraphError::not_found(
                    "itemNotFound",
                    format!(
                        "No HTTP resource was found that matches the request URI '{path}'. The simulator serves only the access drift report under /beta."
                    ),
                )),
                None,
            );
        }
    };
    if *method != Method::GET {
        return (Err(method_not_allowed(method, path)), None);
    }
    let mut sim = shared.lock();
    if let Some(err) = charge(&mut sim, 1) {
        return (Err(err), None);
    }
    let result = super::drift::route(&sim.world, &sim.drift, &rest, q, &shared.base_url, path);
    (result, Some(1))
}

pub(crate) fn method_not_allowed(method: &Method, path: &str) -> GraphError {
    GraphError::new(
        405,
        "Request_BadRequest",
        format!("The HTTP method '{method}' is not supported on '{path}'."),
    )
}

fn check_auth(sim: &Sim, headers: &HeaderMap, base: &str) -> Result<(), GraphError> {
    let err = |m: &str| {
        GraphError::new(401, "InvalidAuthenticationToken", m).header(
            "WWW-Authenticate",
            format!(
                "Bearer realm=\"\", authorization_uri=\"{base}/common/oauth2/authorize\", client_id=\"00000003-0000-0000-c000-000000000000\""
            ),
        )
    };
    let Some(value) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return Err(err("Access token is empty."));
    };
    let token = match value.split_once(' ') {
        Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => t.trim(),
        _ => return Err(err("Access token is empty.")),
    };
    if sim.arm_tokens.contains(token) {
        return Err(err(
            "Access token validation failure. Invalid audience (a token for Azure Resource Manager).",
        ));
    }
    match sim.tokens.get(token) {
        None => Err(err(
            "Access token validation failure. Invalid audience or unknown token.",
        )),
        Some(exp) if *exp <= sim.world.now() => {
            Err(err("Lifetime validation failed, the token is expired."))
        }
        Some(_) => Ok(()),
    }
}

/// Resource-unit cost of a directory request (docs/graph.md "Throttling and retries"),
/// `None` for non-directory paths.
pub(crate) fn resource_units(method: &Method, segs: &[String], q: &Query) -> Option<u32> {
    let first = segs.first()?.to_ascii_lowercase();
    let dir = first == "users"
        || first == "groups"
        || first == "directoryobjects"
        || first.starts_with("serviceprincipals")
        // Not metered by Graph's directory RU table (reports have their own limits); the
        // simulator charges it 1 RU so its cost shows in the usage report.
        || first == "auditlogs"
        // Role management has its own limits, undocumented in RU; charged 1 RU a page so
        // role reads show in the usage report next to the membership reads they replace.
        || first == "rolemanagement"
        // Identity Protection has its own limits, undocumented in RU; charged 1 RU a
        // request like the audit log so risk reads show in the usage report.
        || first == "identityprotection"
        // PIM for Groups has its own limits, undocumented in RU; charged 1 RU a page like
        // role management, so eligibility reads show in the usage report.
        || (first == "identitygovernance"
            && segs
                .get(1)
                .is_some_and(|s| s.eq_ignore_ascii_case("privilegedAccess")));
    if !dir {
        return None;
    }
    let leaf = segs
        .get(2)
        .map(|s| s.to_ascii_lowercase())
        .unwrap_or_default();
    if *method != Method::GET {
        let base = match (first.as_str(), leaf.as_str()) {
            ("users", "checkmembergroups") => 4,
            ("directoryobjects", _)
                if segs
                    .get(1)
                    .is_some_and(|s| s.eq_ignore_ascii_case("getByIds")) =>
            {
                3
            }
            _ => 1,
        };
        return Some(base);
    }
    let base: i32 = match (first.as_str(), leaf.as_str()) {
        ("groups", "members") => 3,
        ("groups", "transitivemembers") => 5,
        (sp, "approleassignments" | "approleassignedto") if sp.starts_with("serviceprincipals") => {
            2
        }
        ("users", _) => 2,
        _ => 1,
    };
    let mut cost = base;
    if q.has("select") {
        cost -= 1;
    }
    if q.has("expand") {
        cost += 1;
    }
    if q.get("top")
        .and_then(|t| t.parse::<u32>().ok())
        .is_some_and(|t| t < 20)
    {
        cost -= 1;
    }
    Some(u32::try_from(cost.max(1)).unwrap_or(1))
}

fn charge(sim: &mut Sim, cost: u32) -> Option<GraphError> {
    let b = sim.bucket.as_mut()?;
    let now = Instant::now();
    let rate = f64::from(b.cfg.capacity) / (b.cfg.window_ms.max(1) as f64 / 1000.0);
    let refill = now.duration_since(b.last).as_secs_f64() * rate;
    b.tokens = (b.tokens + refill).min(f64::from(b.cfg.capacity));
    b.last = now;
    let cost = f64::from(cost);
    if b.tokens >= cost {
        b.tokens -= cost;
        return None;
    }
    let wait = (cost - b.tokens) / rate;
    let sim = &*sim;
    Some(throttle_error(
        sim,
        wait.max(0.001),
        "ResourceUnitLimitExceeded",
    ))
}

/// JSON for a request-log snapshot.
pub(crate) fn log_json(entries: &[LogEntry]) -> Value {
    json!({ "value": entries })
}
