//! The request pipeline every Graph call (direct or inside `$batch`) goes through:
//! correlation ids, latency, authentication, injected faults, resource-unit metering,
//! routing to the handlers, and the request log. The handlers never call back into it
//! (`$batch` is handed [`graph_call`] as a value), so the import graph has no circle.

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;

use super::latency::RouteClass;
use super::odata::{GraphError, Query, Reply, method_not_allowed};
use super::server::{
    FaultSpec, LogEntry, Shared, Sim, fmt_seconds, new_request_id, take_fault, take_latency,
};

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
            super::batch::handle(shared, headers, body, in_batch, graph_call).await,
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
