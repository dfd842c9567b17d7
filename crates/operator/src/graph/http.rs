//! The HTTP core shared by Graph calls and token requests: bounded concurrency, correlation
//! headers, retries with `Retry-After`, and per-operation counters.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{RequestBuilder, StatusCode};
use tokio::sync::{Semaphore, SemaphorePermit};
// Tokio's clock rather than std's, so tests can pause and advance it; in production the two
// read the same monotonic clock.
use tokio::time::Instant;
use tracing::debug;

use super::config::GraphConfig;
use super::error::GraphError;
use super::retry::{Retries, RetryPolicy, parse_retry_after};

/// Which failures may be retried for a request.
///
/// Graph reads, `reprocess` actions and token requests are safe to repeat: repeating them
/// converges on the same result. Creating an assignment request is not: a duplicate
/// `adminAdd` is refused or, worse, can leave a second request stuck (docs/graph.md
/// "Assignment requests"). So a create is retried only when the server certainly did not
/// act on it: a 429 (Graph throttles before processing), a 503 that carries `Retry-After`
/// (the service declined the request and said when to come back), or a connection that was
/// never established. A timeout, a 504 or a reset after sending may have been processed, so
/// they are reported, and the caller re-reads state before trying again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryMode {
    /// Retry on 429, 503, 504, connect and timeout failures.
    Idempotent,
    /// Retry only on 429, 503 with `Retry-After`, and connect failures.
    NonIdempotent,
}

/// Whether an answer with `status` may be retried in `mode` (see [`RetryMode`]); the same
/// rule decides whether a `$batch` item is sent again on its own.
pub(crate) fn retryable_status(status: u16, has_retry_after: bool, mode: RetryMode) -> bool {
    match (status, mode) {
        (429, _) => true,
        (503, RetryMode::NonIdempotent) => has_retry_after,
        (503 | 504, RetryMode::Idempotent) => true,
        _ => false,
    }
}

/// A response with its body read. Any status; the caller maps errors. Deliberately not
/// `Debug`: for the token endpoint the body holds the access token.
pub(crate) struct RawResponse {
    /// HTTP status.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: bytes::Bytes,
    /// Graph's `request-id` response header.
    pub request_id: Option<String>,
    /// Parsed `Retry-After`, if present and valid.
    pub retry_after: Option<Duration>,
}

/// What one exchange came to.
enum Exchange {
    /// The server answered (any status); the body is read whole.
    Answered(RawResponse),
    /// No answer: the connection failed, timed out or broke off.
    Failed {
        error: reqwest::Error,
        /// Host and path, for the error message.
        target: String,
    },
}

/// Which attempt of which call an exchange is, for its counters and log line.
struct Sent<'a> {
    operation: &'static str,
    scope: ThrottleScope,
    attempt: u32,
    client_request_id: &'a str,
    /// When the attempt began queueing for a permit.
    started: Instant,
}

/// The retry decision after one exchange: how long to wait before sending again, or
/// `None` to hand the outcome to the caller. An answer is retried when [`RetryMode`]
/// allows it for its status; a failed exchange when no connection was made or the request
/// is safe to repeat. Whether retries are left and how long to wait is the policy's.
fn retry_wait(mode: RetryMode, exchange: &Exchange, retries: &mut Retries) -> Option<Duration> {
    match exchange {
        Exchange::Answered(r) => {
            if retryable_status(r.status.as_u16(), r.retry_after.is_some(), mode) {
                retries.next_wait(r.retry_after)
            } else {
                None
            }
        }
        Exchange::Failed { error, .. } => {
            if Unfixable::of(error).is_some() {
                // Sending again cannot change the answer: say it now, with what to set.
                None
            } else if error.is_connect() || mode == RetryMode::Idempotent {
                retries.next_wait(None)
            } else {
                None
            }
        }
    }
}

/// Per-operation request counters, for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OperationStats {
    /// Operation name (e.g. `list_group_members`, `token`).
    pub operation: &'static str,
    /// HTTP exchanges attempted (including retries and extra pages).
    pub requests: u64,
    /// Of those, how many were retries.
    pub retries: u64,
    /// Responses with status 429.
    pub throttled: u64,
    /// Calls that ended in an error returned to the caller.
    pub failures: u64,
    /// Responses by HTTP status code (a handful of distinct codes, so label cardinality
    /// stays bounded).
    pub by_status: BTreeMap<u16, u64>,
}

pub(crate) struct Http {
    pub(crate) client: reqwest::Client,
    limiter: Semaphore,
    policy: RetryPolicy,
    stats: Mutex<BTreeMap<&'static str, OperationStats>>,
    /// Per throttling scope, the instant before which no call may be sent (the latest
    /// `Retry-After` the server gave). Graph throttles per app and tenant, so the wait applies
    /// to every caller of this client, not only to the call that was refused.
    gates: Mutex<HashMap<ThrottleScope, Instant>>,
}

/// Which Graph throttling budget a path draws from: entitlement management, the token
/// endpoint, or the directory (users, groups, service principals: one shared bucket,
/// docs/graph.md "Throttling and retries").
pub(crate) fn throttle_scope(path: &str) -> ThrottleScope {
    if path.contains("/identityGovernance/") {
        ThrottleScope::Entitlement
    } else if path.contains("/providers/Microsoft.Authorization/") {
        // Azure Resource Manager: its own limits, nothing to do with Graph's.
        ThrottleScope::Arm
    } else if path.ends_with("/oauth2/v2.0/token") {
        ThrottleScope::Token
    } else {
        ThrottleScope::Directory
    }
}

/// A throttling budget: calls in one scope wait out each other's `Retry-After`, never
/// another scope's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, strum::IntoStaticStr, strum::Display)]
#[strum(serialize_all = "lowercase")]
pub(crate) enum ThrottleScope {
    /// Entitlement management (`/identityGovernance/...`).
    Entitlement,
    /// Azure Resource Manager.
    Arm,
    /// The token endpoint.
    Token,
    /// The directory: users, groups, service principals, roles.
    Directory,
}

/// How long ARM calls wait after an answer said no reads are left (ARM refills its read
/// bucket continuously, a few reads a second).
const ARM_QUOTA_PAUSE: Duration = Duration::from_secs(1);

/// Whether an ARM answer's `x-ms-ratelimit-remaining-subscription-reads` (or
/// `-tenant-reads`) says no read is left.
fn arm_reads_spent(headers: &HeaderMap) -> bool {
    [
        "x-ms-ratelimit-remaining-subscription-reads",
        "x-ms-ratelimit-remaining-tenant-reads",
    ]
    .iter()
    .filter_map(|name| {
        headers
            .get(*name)?
            .to_str()
            .ok()?
            .trim()
            .parse::<i64>()
            .ok()
    })
    .any(|left| left <= 0)
}

impl Http {
    pub(crate) fn new(config: &GraphConfig) -> Result<Self, GraphError> {
        // reqwest is built without a default crypto provider; installing ring is idempotent
        // (a second install reports an error we can ignore).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            // Graph does not redirect these calls; following one could carry the bearer
            // token somewhere unexpected.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("redeliver/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path).map_err(|e| GraphError::Config {
                message: format!("cannot read --ca-file {}: {e}", path.display()),
            })?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| GraphError::Config {
                    message: format!(
                        "--ca-file {} holds no valid PEM certificate: {e}",
                        path.display()
                    ),
                })?;
            if certs.is_empty() {
                return Err(GraphError::Config {
                    message: format!("--ca-file {} holds no PEM certificate", path.display()),
                });
            }
            builder = builder.tls_certs_merge(certs);
        }
        let client = builder.build().map_err(|e| GraphError::Config {
            message: format!("cannot build the HTTP client: {}", error_chain(&e)),
        })?;
        Ok(Self {
            client,
            limiter: Semaphore::new(config.concurrency),
            policy: RetryPolicy::new(
                config.max_retries,
                config.backoff_base,
                config.backoff_cap,
                config.max_retry_after,
            ),
            stats: Mutex::new(BTreeMap::new()),
            gates: Mutex::new(HashMap::new()),
        })
    }

    /// Sends the request built by `build` (called once per attempt), retrying per `mode`.
    /// Returns the final response whatever its status; `Err` only for transport failures.
    pub(crate) async fn execute(
        &self,
        operation: &'static str,
        mode: RetryMode,
        build: &(dyn Fn() -> RequestBuilder + Send + Sync),
    ) -> Result<RawResponse, GraphError> {
        let mut retries = self.retries();
        let mut attempt: u32 = 0;
        let first_started = Instant::now();
        loop {
            let mut request = build().build().map_err(|e| GraphError::InvalidArgument {
                operation,
                message: format!("cannot build request: {}", error_chain(&e)),
            })?;
            // A write the caller traces carries its own id on every attempt (recorded in the
            // object's status before it is sent); anything else gets a fresh one per attempt.
            let client_request_id = match request.headers().get("client-request-id") {
                Some(v) => v.to_str().unwrap_or_default().to_string(),
                None => {
                    let id = uuid::Uuid::new_v4().to_string();
                    if let Ok(v) = reqwest::header::HeaderValue::from_str(&id) {
                        request.headers_mut().insert("client-request-id", v);
                    }
                    id
                }
            };
            let scope = throttle_scope(request.url().path());
            self.wait_at_gate(operation, scope).await?;
            self.count(operation, |s| {
                s.requests += 1;
                if attempt > 0 {
                    s.retries += 1;
                }
            });
            let started = Instant::now();
            let exchange = {
                // The permit bounds in-flight exchanges only; it is released before any
                // backoff sleep so waiting callers do not starve others.
                let _permit = self.admit(operation, scope).await?;
                let sent = Sent {
                    operation,
                    scope,
                    attempt,
                    client_request_id: &client_request_id,
                    started,
                };
                self.exchange(&sent, request).await?
            };
            match retry_wait(mode, &exchange, &mut retries) {
                Some(wait) => {
                    let status = match &exchange {
                        Exchange::Answered(r) => Some(r.status.as_u16()),
                        Exchange::Failed { .. } => None,
                    };
                    self.back_off(operation, status, wait).await;
                    attempt += 1;
                }
                None => {
                    return match exchange {
                        Exchange::Answered(response) => Ok(response),
                        Exchange::Failed { error, target } => Err(GraphError::Transport {
                            operation,
                            message: transport_message(
                                &error,
                                &target,
                                attempt + 1,
                                first_started.elapsed(),
                            ),
                            target,
                            timeout: error.is_timeout(),
                        }),
                    };
                }
            }
        }
    }

    /// Waits out the `Retry-After` an earlier answer gave `scope`, or fails at once with
    /// that wait when it is longer than the client sleeps through.
    async fn wait_at_gate(
        &self,
        operation: &'static str,
        scope: ThrottleScope,
    ) -> Result<(), GraphError> {
        let Some(wait) = self.gate_wait(scope) else {
            return Ok(());
        };
        if wait > self.policy.max_retry_after() {
            self.count(operation, |s| s.throttled += 1);
            return Err(GraphError::Throttled {
                operation,
                retry_after: Some(wait),
                request_id: None,
            });
        }
        debug!(
            operation,
            gate = %scope,
            wait_ms = wait.as_millis() as u64,
            "waiting for an earlier Retry-After"
        );
        tokio::time::sleep(wait).await;
        Ok(())
    }

    /// A permit to send in `scope`, held only while its gate is open. A call may have
    /// queued for the permit while another call in its scope was throttled: it looks at the
    /// gate again now that it may go out, or it would be sent before the `Retry-After` the
    /// server just gave. It waits without the permit, so calls in other scopes go on.
    async fn admit(
        &self,
        operation: &'static str,
        scope: ThrottleScope,
    ) -> Result<Option<SemaphorePermit<'_>>, GraphError> {
        loop {
            // The semaphore is never closed; `None` would only mean no bound.
            let permit = self.limiter.acquire().await.ok();
            if self.gate_wait(scope).is_none() {
                return Ok(permit);
            }
            drop(permit);
            self.wait_at_gate(operation, scope).await?;
        }
    }

    /// One HTTP exchange: sends `request` and reads the body (at most [`MAX_BODY_BYTES`]),
    /// counts and logs the answer, and closes the scope's gate on a refusal with
    /// `Retry-After`. `Err` only for a body too large to be Graph's: that is not retried.
    async fn exchange(
        &self,
        sent: &Sent<'_>,
        request: reqwest::Request,
    ) -> Result<Exchange, GraphError> {
        let operation = sent.operation;
        let method = request.method().clone();
        let target = format!(
            "{}{}",
            request.url().host_str().unwrap_or_default(),
            request.url().path()
        );
        let path_and_query = match request.url().query() {
            Some(q) => format!("{}?{q}", request.url().path()),
            None => request.url().path().to_string(),
        };
        let answer = match self.client.execute(request).await {
            Ok(resp) => {
                let status = resp.status();
                let headers = resp.headers().clone();
                match read_bounded(resp, MAX_BODY_BYTES).await {
                    Ok(Some(body)) => Ok((status, headers, body)),
                    Ok(None) => {
                        return Err(GraphError::Decode {
                            operation,
                            message: format!(
                                "the response body is larger than {} MiB; Redeliver reads at most that per response (check --graph-url points at Microsoft Graph)",
                                MAX_BODY_BYTES / (1024 * 1024)
                            ),
                            request_id: header_str(&headers, "request-id"),
                        });
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        let (status, headers, body) = match answer {
            Ok(answer) => answer,
            Err(error) => {
                debug!(
                    operation,
                    %method,
                    path = %path_and_query,
                    client_request_id = %sent.client_request_id,
                    attempt = sent.attempt,
                    connect = error.is_connect(),
                    timeout = error.is_timeout(),
                    error = %error_chain(&error),
                    "graph http exchange failed"
                );
                return Ok(Exchange::Failed { error, target });
            }
        };
        let request_id = header_str(&headers, "request-id");
        let retry_after = headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        debug!(
            operation,
            %method,
            path = %path_and_query,
            status = status.as_u16(),
            request_id = request_id.as_deref().unwrap_or("-"),
            client_request_id = %sent.client_request_id,
            attempt = sent.attempt,
            elapsed_ms = sent.started.elapsed().as_millis() as u64,
            "graph http exchange"
        );
        self.count(operation, |s| {
            *s.by_status.entry(status.as_u16()).or_default() += 1;
            if status == StatusCode::TOO_MANY_REQUESTS {
                s.throttled += 1;
            }
        });
        if let Some(d) = retry_after {
            self.refused(sent.scope, status.as_u16(), d);
        } else if sent.scope == ThrottleScope::Arm && arm_reads_spent(&headers) {
            // ARM says how many reads are left before it throttles: at none, hold every
            // ARM call back briefly instead of spending a request on a certain 429.
            debug!(operation, "ARM read quota spent; holding ARM calls back");
            self.close_gate(sent.scope, ARM_QUOTA_PAUSE);
        }
        Ok(Exchange::Answered(RawResponse {
            status,
            headers,
            body,
            request_id,
            retry_after,
        }))
    }

    /// The retries of one call (or one `$batch`'s throttled items) under this client's
    /// policy.
    pub(crate) fn retries(&self) -> Retries {
        self.policy.start()
    }

    /// Sleeps before a retry of `operation` (after an answer with `status`, if any).
    pub(crate) async fn back_off(
        &self,
        operation: &'static str,
        status: Option<u16>,
        wait: Duration,
    ) {
        debug!(
            operation,
            status,
            wait_ms = wait.as_millis() as u64,
            "retrying after"
        );
        tokio::time::sleep(wait).await;
    }

    /// How long calls in `scope` must still wait because of an earlier `Retry-After`.
    fn gate_wait(&self, scope: ThrottleScope) -> Option<Duration> {
        let gates = self.gates.lock().ok()?;
        let until = *gates.get(&scope)?;
        until
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    }

    /// An answer with `Retry-After: after` to a call in `scope` (direct or inside a
    /// `$batch`): a 429 or 503 holds back every call of this client in that scope, since
    /// Graph throttles per app and tenant.
    pub(crate) fn refused(&self, scope: ThrottleScope, status: u16, after: Duration) {
        if matches!(status, 429 | 503) {
            self.close_gate(scope, after);
        }
    }

    /// Records that the server asked for no calls in `scope` for `after`.
    fn close_gate(&self, scope: ThrottleScope, after: Duration) {
        let until = Instant::now() + after;
        if let Ok(mut gates) = self.gates.lock() {
            let entry = gates.entry(scope).or_insert(until);
            *entry = (*entry).max(until);
        }
    }

    pub(crate) fn count(&self, operation: &'static str, f: impl FnOnce(&mut OperationStats)) {
        if let Ok(mut map) = self.stats.lock() {
            let entry = map.entry(operation).or_insert_with(|| OperationStats {
                operation,
                ..OperationStats::default()
            });
            f(entry);
        }
    }

    pub(crate) fn stats(&self) -> Vec<OperationStats> {
        self.stats
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The error and its sources on one line (reqwest's top-level message alone is vague).
/// A transport failure that no retry can fix: the same request would fail the same way
/// until a person changes the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unfixable {
    /// The server's certificate is not signed by a trusted CA (a private or intercepting CA).
    UnknownCa,
    /// The certificate is for another name (the URL names the wrong host).
    WrongName,
    /// Any other certificate refusal (expired, revoked, not for server use).
    BadCertificate,
    /// The host name does not resolve.
    Dns,
}

impl Unfixable {
    /// Classifies a failed exchange by the errors in its chain (rustls' certificate error
    /// sits inside `io::Error`s, whose `source()` skips their payload, so each is unwrapped).
    fn of(error: &reqwest::Error) -> Option<Self> {
        Self::find(error, 0)
    }

    fn find(e: &(dyn std::error::Error + 'static), depth: usize) -> Option<Self> {
        // Error chains are a handful deep; the bound only guards against a cycle.
        if depth > 16 {
            return None;
        }
        if let Some(rustls::Error::InvalidCertificate(cert)) = e.downcast_ref::<rustls::Error>() {
            return Some(match cert {
                rustls::CertificateError::UnknownIssuer => Self::UnknownCa,
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. } => Self::WrongName,
                _ => Self::BadCertificate,
            });
        }
        let text = e.to_string();
        if text.starts_with("dns error") || text.contains("failed to lookup address") {
            return Some(Self::Dns);
        }
        let payload = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        payload
            .and_then(|inner| Self::find(inner, depth + 1))
            .or_else(|| e.source().and_then(|s| Self::find(s, depth + 1)))
    }

    /// What to do about it, naming the flag or variable to set.
    fn hint(self) -> &'static str {
        match self {
            Self::UnknownCa => {
                "the server's certificate is not signed by a CA this machine trusts; if it uses \
                 a private CA (the simulator does), pass that CA's PEM file with --ca-file or \
                 REDELIVER_CA_FILE"
            }
            Self::WrongName => {
                "the server's certificate is for another host name; check --graph-url \
                 (REDELIVER_GRAPH_URL) and --authority-host (AZURE_AUTHORITY_HOST)"
            }
            Self::BadCertificate => {
                "the server's certificate was refused; check the certificate it serves, or \
                 --graph-url and --authority-host if this is the wrong server"
            }
            Self::Dns => {
                "the host name does not resolve; check --graph-url (REDELIVER_GRAPH_URL) and \
                 --authority-host (AZURE_AUTHORITY_HOST), and this machine's DNS"
            }
        }
    }
}

/// The message of a failed exchange: the error chain, then what to check. A failure no retry
/// can fix says so at once with a hint; one that was retried says for how long.
fn transport_message(
    error: &reqwest::Error,
    target: &str,
    attempts: u32,
    took: Duration,
) -> String {
    let chain = error_chain(error);
    if let Some(unfixable) = Unfixable::of(error) {
        return format!("{chain}; not retried: {}", unfixable.hint());
    }
    let tried = format!("tried {attempts} time(s) over {:.1}s", took.as_secs_f64());
    if error.is_connect() {
        format!(
            "{chain}; {tried}; nothing accepted the connection at {target}: check the URL \
             (--graph-url, --authority-host), that the server is running, and any proxy \
             (HTTPS_PROXY, NO_PROXY)"
        )
    } else {
        format!("{chain}; {tried}")
    }
}

pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Most bytes read from one response. Graph pages are far smaller (a page of 999 members is
/// about 50 KiB, a `$batch` of 20 expanded pages a few MiB); anything larger is not Graph,
/// and reading it whole would let a wrong or hostile endpoint exhaust the operator's memory.
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Reads the body, or `None` as soon as it exceeds `max` bytes (by `Content-Length` or
/// while streaming).
async fn read_bounded(
    mut resp: reqwest::Response,
    max: usize,
) -> Result<Option<bytes::Bytes>, reqwest::Error> {
    if resp
        .content_length()
        .is_some_and(|n| n > u64::try_from(max).unwrap_or(u64::MAX))
    {
        return Ok(None);
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > max {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body.freeze()))
}

/// A short, printable excerpt of a body for error messages.
pub(crate) fn excerpt(body: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX)]);
    let text: String = text.chars().filter(|c| !c.is_control()).collect();
    if body.len() > MAX {
        format!("{text}…")
    } else if text.is_empty() {
        "<empty body>".to_string()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::config::{GraphConfig, GraphSettings, Secret};

    fn http() -> Http {
        http_with(|_| {})
    }

    fn http_with(change: impl FnOnce(&mut GraphConfig)) -> Http {
        let mut config = GraphSettings {
            tenant_id: Some("contoso.onmicrosoft.com".into()),
            client_id: Some("00000000-0000-0000-0000-0000000000c1".into()),
            client_secret: Some(Secret::new("s3cr3t")),
            ..GraphSettings::with_defaults()
        }
        .validate()
        .expect("valid config");
        change(&mut config);
        Http::new(&config).expect("client builds")
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_closes_its_scope_until_retry_after_on_the_tokio_clock() {
        let http = http();
        http.refused(ThrottleScope::Directory, 429, Duration::from_secs(2));
        http.refused(ThrottleScope::Entitlement, 200, Duration::from_secs(2));
        assert_eq!(
            http.gate_wait(ThrottleScope::Directory),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            http.gate_wait(ThrottleScope::Entitlement),
            None,
            "only 429 and 503 close"
        );
        assert_eq!(
            http.gate_wait(ThrottleScope::Token),
            None,
            "scopes are independent"
        );
        // A shorter, later refusal does not reopen the gate early.
        http.refused(ThrottleScope::Directory, 503, Duration::from_millis(500));
        tokio::time::advance(Duration::from_millis(1_500)).await;
        assert_eq!(
            http.gate_wait(ThrottleScope::Directory),
            Some(Duration::from_millis(500))
        );
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(http.gate_wait(ThrottleScope::Directory), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_gate_is_waited_out_exactly_and_a_long_one_fails_at_once() {
        let http = http_with(|c| c.max_retry_after = Duration::from_secs(120));
        let t0 = Instant::now();
        let after = Duration::from_nanos(2_128_000_001);
        http.refused(ThrottleScope::Directory, 429, after);
        http.wait_at_gate("op", ThrottleScope::Directory)
            .await
            .unwrap();
        // Never earlier; tokio's timers round up to the millisecond.
        let waited = t0.elapsed();
        assert!(
            waited >= after && waited <= after + Duration::from_millis(1),
            "{waited:?}"
        );
        http.wait_at_gate("op", ThrottleScope::Directory)
            .await
            .unwrap();
        assert_eq!(t0.elapsed(), waited, "open now");

        http.refused(ThrottleScope::Entitlement, 429, Duration::from_secs(3600));
        let e = http
            .wait_at_gate("op", ThrottleScope::Entitlement)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), "throttled");
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3600)));
        assert_eq!(t0.elapsed(), waited, "no wait");
        let stats = http.stats();
        assert_eq!(stats[0].throttled, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_queued_while_its_scope_was_refused_waits_without_the_permit() {
        let http = http_with(|c| c.concurrency = 1);
        let t0 = Instant::now();
        let first = http.admit("op", ThrottleScope::Directory).await.unwrap();
        let queued = async {
            let permit = http.admit("op", ThrottleScope::Directory).await.unwrap();
            (t0.elapsed(), permit.is_some())
        };
        let meanwhile = async {
            // The call holding the permit is refused for a second, then finishes.
            http.refused(ThrottleScope::Directory, 429, Duration::from_secs(1));
            tokio::time::sleep(Duration::from_millis(10)).await;
            drop(first);
            // The queued call took the permit, found its gate closed and let go of it:
            // another scope's call goes out at once.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let other = http.admit("op", ThrottleScope::Entitlement).await.unwrap();
            (t0.elapsed(), other.is_some())
        };
        let (queued, other) = tokio::join!(queued, meanwhile);
        assert_eq!(other, (Duration::from_millis(110), true));
        assert_eq!(
            queued,
            (Duration::from_secs(1), true),
            "not before Retry-After"
        );
    }
}
