//! JSON batching (`POST /v1.0/$batch`, docs/graph.md "JSON batching"): every inner request
//! goes through the same pipeline as a direct call, so authentication, faults, metering and
//! logging apply per item.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde_json::{Map, Value, json};

use super::latency::RouteClass;
use super::odata::{GResult, GraphError, Reply};
use super::server::Shared;

/// Most requests one batch may carry.
pub(crate) const MAX_BATCH: usize = 20;

/// Inner response headers worth returning (Graph returns a small set).
const KEEP_HEADERS: &[&str] = &[
    "content-type",
    "retry-after",
    "location",
    "request-id",
    "client-request-id",
    "x-ms-resource-unit",
    "x-ms-throttle-scope",
    "x-ms-throttle-information",
    "x-ms-throttle-limit-percentage",
];

struct Item {
    id: String,
    method: Method,
    url: String,
    headers: HeaderMap,
    body: Bytes,
    depends_on: Vec<String>,
}

fn malformed(msg: impl Into<String>) -> GraphError {
    GraphError::bad_request("BadRequest", msg)
}

fn parse_items(body: &Bytes, outer: &HeaderMap) -> Result<Vec<Item>, GraphError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| malformed(format!("The batch body is not valid JSON: {e}")))?;
    let reqs = v
        .get("requests")
        .and_then(Value::as_array)
        .ok_or_else(|| malformed("The batch body must be {\"requests\": [...]}."))?;
    if reqs.is_empty() {
        return Err(malformed("The batch contains no requests."));
    }
    if reqs.len() > MAX_BATCH {
        return Err(malformed(format!(
            "The batch contains {} requests; the limit is {MAX_BATCH}.",
            reqs.len()
        )));
    }
    let mut seen = HashMap::new();
    let mut items = Vec::with_capacity(reqs.len());
    for (i, r) in reqs.iter().enumerate() {
        let id = match r.get("id") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err(malformed(format!("requests[{i}] has no 'id'."))),
        };
        if seen.insert(id.clone(), i).is_some() {
            return Err(malformed(format!(
                "Duplicate request id '{id}' in the batch."
            )));
        }
        let method = r
            .get("method")
            .and_then(Value::as_str)
            .and_then(|m| Method::from_bytes(m.to_ascii_uppercase().as_bytes()).ok())
            .ok_or_else(|| malformed(format!("requests[{i}] ('{id}') has no valid 'method'.")))?;
        let url = r
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| malformed(format!("requests[{i}] ('{id}') has no 'url'.")))?
            .to_string();
        let mut headers = HeaderMap::new();
        for name in ["authorization", "client-request-id"] {
            if let Some(v) = outer.get(name) {
                headers.insert(HeaderName::from_static(name), v.clone());
            }
        }
        if let Some(h) = r.get("headers").and_then(Value::as_object) {
            for (k, v) in h {
                if let (Ok(name), Some(Ok(val))) = (
                    HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()),
                    v.as_str().map(HeaderValue::from_str),
                ) {
                    headers.insert(name, val);
                }
            }
        }
        let body = match r.get("body") {
            None | Some(Value::Null) => Bytes::new(),
            Some(b) => {
                if !headers.contains_key("content-type") {
                    return Err(malformed(format!(
                        "requests[{i}] ('{id}') has a body but no Content-Type header."
                    )));
                }
                Bytes::from(b.to_string())
            }
        };
        let depends_on = r
            .get("dependsOn")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        items.push(Item {
            id,
            method,
            url,
            headers,
            body,
            depends_on,
        });
    }
    for it in &items {
        for d in &it.depends_on {
            if !seen.contains_key(d) {
                return Err(malformed(format!(
                    "Request '{}' depends on unknown request '{d}'.",
                    it.id
                )));
            }
        }
    }
    Ok(items)
}

fn split_url(base: &str, url: &str) -> (String, Option<String>) {
    let rel = url.strip_prefix(base).unwrap_or(url);
    let rel = rel.strip_prefix("/v1.0").unwrap_or(rel);
    let rel = if rel.starts_with('/') {
        rel.to_string()
    } else {
        format!("/{rel}")
    };
    match rel.split_once('?') {
        Some((p, q)) => (format!("/v1.0{p}"), Some(q.to_string())),
        None => (format!("/v1.0{rel}"), None),
    }
}

/// How long the items of a batch take under the latency model. Graph runs a batch's
/// items concurrently unless `dependsOn` orders them, so the batch waits for its longest
/// chain: an item finishes its own delay after the last of its dependencies.
fn batch_latency(shared: &Shared, items: &[Item]) -> Duration {
    let mut sim = shared.lock();
    if sim.latency.is_off() {
        return Duration::ZERO;
    }
    let mut finish: HashMap<&str, Duration> = HashMap::new();
    let mut longest = Duration::ZERO;
    for it in items {
        let (path, _) = split_url(&shared.base_url, &it.url);
        let own = sim.draw_latency(RouteClass::of_graph_path(&path));
        // `dependsOn` may only name earlier items for the order items run in here, so a
        // later dependency counts as already finished.
        let start = it
            .depends_on
            .iter()
            .filter_map(|d| finish.get(d.as_str()))
            .max()
            .copied()
            .unwrap_or_default();
        let done = start + own;
        longest = longest.max(done);
        finish.insert(&it.id, done);
    }
    longest
}

/// How a batch runs one of its items: the whole request pipeline (the dispatcher hands in
/// its own entry point, so this handler does not depend on the module that routes to it).
pub(crate) type Call = for<'a> fn(
    &'a Arc<Shared>,
    Method,
    String,
    Option<String>,
    HeaderMap,
    Bytes,
    bool,
) -> Pin<Box<dyn Future<Output = Reply> + Send + 'a>>;

/// Runs a batch. Items run in order, which honours `dependsOn`; a failed dependency
/// answers `424` for its dependents.
pub(crate) async fn handle(
    shared: &Arc<Shared>,
    outer: &HeaderMap,
    body: &Bytes,
    in_batch: bool,
    graph_call: Call,
) -> GResult {
    if in_batch {
        return Err(malformed("A batch cannot contain another $batch request."));
    }
    let items = parse_items(body, outer)?;
    let wait = batch_latency(shared, &items);
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    let mut statuses: HashMap<String, u16> = HashMap::new();
    let mut responses = Vec::with_capacity(items.len());
    for it in items {
        let failed_dep = it
            .depends_on
            .iter()
            .any(|d| statuses.get(d).is_none_or(|s| *s >= 400));
        if failed_dep {
            statuses.insert(it.id.clone(), 424);
            responses.push(json!({
                "id": it.id,
                "status": 424,
                "headers": {"content-type": "application/json"},
                "body": {"error": {"code": "FailedDependency",
                                   "message": "A request this one depends on failed."}},
            }));
            continue;
        }
        let (path, query) = split_url(&shared.base_url, &it.url);
        let reply = graph_call(shared, it.method, path, query, it.headers, it.body, true).await;
        statuses.insert(it.id.clone(), reply.status);
        let mut h = Map::new();
        for (k, v) in &reply.headers {
            let k = k.to_ascii_lowercase();
            if KEEP_HEADERS.contains(&k.as_str()) {
                h.insert(k, Value::String(v.clone()));
            }
        }
        if reply.body.is_some() {
            h.insert("content-type".into(), json!("application/json"));
        }
        responses.push(json!({
            "id": it.id,
            "status": reply.status,
            "headers": h,
            "body": reply.body.unwrap_or(Value::Null),
        }));
    }
    Ok(Reply::ok(json!({ "responses": responses })))
}
