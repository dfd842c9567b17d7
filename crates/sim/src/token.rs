//! The Entra token endpoint (client credentials with a secret or a federated assertion)
//! and the OpenID/instance discovery documents MSAL-based SDKs fetch first.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use rand::Rng;
use serde_json::{Value, json};

use super::server::{
    FaultSpec, LogEntry, Shared, fmt_seconds, new_request_id, take_fault, take_latency,
};

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Graph roots whose `/.default` scope the simulator accepts, besides its own URL.
const GRAPH_RESOURCES: &[&str] = &[
    "https://graph.microsoft.com",
    "https://graph.microsoft.us",
    "https://dod-graph.microsoft.us",
    "https://microsoftgraph.chinacloudapi.cn",
    "00000003-0000-0000-c000-000000000000",
];

/// Azure Resource Manager roots whose `/.default` scope the simulator accepts (the ARM
/// audience), besides its own `{base}/arm`.
const ARM_RESOURCES: &[&str] = &[
    "https://management.azure.com",
    "https://management.core.windows.net",
    "https://management.usgovcloudapi.net",
    "https://management.chinacloudapi.cn",
];

/// Which API a token is for: Graph, or Azure Resource Manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Audience {
    Graph,
    Arm,
}

struct TokenError {
    status: StatusCode,
    error: &'static str,
    code: u32,
    description: String,
}

fn terr(status: u16, error: &'static str, code: u32, description: impl Into<String>) -> TokenError {
    TokenError {
        status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        error,
        code,
        description: description.into(),
    }
}

fn error_response(shared: &Shared, e: TokenError) -> (StatusCode, Value) {
    let trace = new_request_id();
    let correlation = new_request_id();
    let stamp = Timestamp::now().strftime("%Y-%m-%d %H:%M:%SZ").to_string();
    let body = json!({
        "error": e.error,
        "error_description": format!(
            "AADSTS{}: {} Trace ID: {trace} Correlation ID: {correlation} Timestamp: {stamp}",
            e.code, e.description
        ),
        "error_codes": [e.code],
        "timestamp": stamp,
        "trace_id": trace,
        "correlation_id": correlation,
        "error_uri": format!("{}/error?code={}", shared.base_url, e.code),
    });
    (e.status, body)
}

fn tenant_matches(shared: &Shared, tenant: &str) -> bool {
    let sim = shared.lock();
    let w = &sim.world;
    tenant.eq_ignore_ascii_case(&w.tenant_id)
        || tenant.eq_ignore_ascii_case(&w.tenant_domain)
        || tenant.eq_ignore_ascii_case(&w.tenant_name)
}

fn scope_audience(shared: &Shared, scope: &str) -> Option<Audience> {
    let scopes: Vec<&str> = scope.split_whitespace().collect();
    if scopes.len() != 1 {
        return None;
    }
    let resource = scopes[0].strip_suffix("/.default")?;
    let resource = resource.trim_end_matches('/');
    if resource.eq_ignore_ascii_case(&shared.base_url)
        || GRAPH_RESOURCES
            .iter()
            .any(|r| r.eq_ignore_ascii_case(resource))
    {
        return Some(Audience::Graph);
    }
    let own_arm = format!("{}/arm", shared.base_url);
    (resource.eq_ignore_ascii_case(&own_arm)
        || ARM_RESOURCES
            .iter()
            .any(|r| r.eq_ignore_ascii_case(resource)))
    .then_some(Audience::Arm)
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get("authorization")?.to_str().ok()?;
    let (scheme, b64) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = decode_base64(b64.trim())?;
    let text = String::from_utf8(raw).ok()?;
    let (id, secret) = text.split_once(':')?;
    let dec = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Some((dec(id), dec(secret)))
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        buf = (buf << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((buf >> bits) & 0xff) as u8);
        }
    }
    Some(out)
}

/// The app registration the simulator knows: its client id and the credentials it
/// accepts.
struct RegisteredClient {
    id: String,
    secret: String,
    /// The one federated assertion accepted; `None` accepts any non-empty one.
    assertion: Option<String>,
}

/// AADSTS900144: `name` missing from the request body.
fn missing_parameter(name: &str) -> TokenError {
    terr(
        400,
        "invalid_request",
        900144,
        format!("The request body must contain the following parameter: '{name}'."),
    )
}

fn issue(
    shared: &Shared,
    tenant: &str,
    form: &[(String, String)],
    headers: &HeaderMap,
) -> Result<Value, TokenError> {
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    if !tenant_matches(shared, tenant) {
        return Err(terr(
            400,
            "invalid_request",
            90002,
            format!(
                "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
            ),
        ));
    }
    let basic = basic_credentials(headers);
    check_grant_type(&get("grant_type").unwrap_or_default())?;
    let client_id = get("client_id").or_else(|| basic.as_ref().map(|b| b.0.clone()));
    let Some(client_id) = client_id.filter(|c| !c.is_empty()) else {
        return Err(missing_parameter("client_id"));
    };
    let client = {
        let sim = shared.lock();
        RegisteredClient {
            id: sim.world.client_id.clone(),
            secret: sim.world.client_secret.clone(),
            assertion: sim.world.client_assertion.clone(),
        }
    };
    if !client_id.eq_ignore_ascii_case(&client.id) {
        return Err(terr(
            400,
            "unauthorized_client",
            700016,
            format!(
                "Application with identifier '{client_id}' was not found in the directory '{tenant}'."
            ),
        ));
    }
    let Some(scope) = get("scope") else {
        return Err(missing_parameter("scope"));
    };
    let Some(audience) = scope_audience(shared, &scope) else {
        return Err(terr(
            400,
            "invalid_scope",
            1002012,
            format!(
                "The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
            ),
        ));
    };
    let secret = get("client_secret").or_else(|| basic.map(|b| b.1));
    check_credential(
        &client,
        secret,
        get("client_assertion_type"),
        get("client_assertion"),
    )?;
    let token = new_token();
    remember_token(shared, &token, audience);
    let secs = shared.opts.token_lifetime.as_secs().max(1);
    Ok(json!({
        "token_type": "Bearer",
        "expires_in": secs,
        "ext_expires_in": secs,
        "access_token": token,
    }))
}

/// Only the client credentials grant.
fn check_grant_type(grant: &str) -> Result<(), TokenError> {
    if grant.is_empty() {
        return Err(missing_parameter("grant_type"));
    }
    if grant != "client_credentials" {
        return Err(terr(
            400,
            "unsupported_grant_type",
            70003,
            format!(
                "The app requested an unsupported grant type '{grant}'. The simulator supports client_credentials."
            ),
        ));
    }
    Ok(())
}

/// The client's secret, or else its federated assertion, must be the registered one.
fn check_credential(
    client: &RegisteredClient,
    secret: Option<String>,
    assertion_type: Option<String>,
    assertion: Option<String>,
) -> Result<(), TokenError> {
    let expected_id = &client.id;
    match (secret, assertion_type, assertion) {
        (Some(s), _, _) => {
            if s != client.secret {
                return Err(terr(
                    401,
                    "invalid_client",
                    7000215,
                    format!(
                        "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{expected_id}'."
                    ),
                ));
            }
        }
        (None, Some(t), Some(a)) => {
            if t != JWT_BEARER {
                return Err(terr(
                    400,
                    "invalid_request",
                    700003,
                    format!("client_assertion_type '{t}' is not supported; use {JWT_BEARER}."),
                ));
            }
            if a.trim().is_empty() || client.assertion.as_ref().is_some_and(|e| *e != a) {
                return Err(terr(
                    400,
                    "invalid_client",
                    700213,
                    format!(
                        "No matching federated identity record found for presented assertion subject for app '{expected_id}'."
                    ),
                ));
            }
        }
        _ => {
            return Err(terr(
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            ));
        }
    }
    Ok(())
}

/// A fresh opaque access token: `sim.` and 48 random letters and digits.
fn new_token() -> String {
    let mut rng = rand::rng();
    let chars: String = (0..48)
        .map(|_| {
            let i = rng.random_range(0..62u8);
            (match i {
                0..=25 => b'A' + i,
                26..=51 => b'a' + i - 26,
                _ => b'0' + i - 52,
            }) as char
        })
        .collect();
    format!("sim.{chars}")
}

/// Records `token` as valid for the token lifetime and for `audience` (pruning expired
/// tokens once there are many).
fn remember_token(shared: &Shared, token: &str, audience: Audience) {
    let lifetime = shared.opts.token_lifetime;
    let mut sim = shared.lock();
    let exp = sim.world.now()
        + jiff::SignedDuration::try_from(lifetime).unwrap_or(jiff::SignedDuration::from_hours(1));
    if sim.tokens.len() > 10_000 {
        let now = sim.world.now();
        sim.tokens.retain(|_, e| *e > now);
    }
    sim.tokens.insert(token.to_string(), exp);
    if audience == Audience::Arm {
        sim.arm_tokens.insert(token.to_string());
    } else {
        sim.arm_tokens.remove(token);
    }
}

/// `POST /{tenant}/oauth2/v2.0/token`.
pub(crate) async fn token(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let arrived = shared.elapsed_ms();
    let t0 = Instant::now();
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let fault_path = "/oauth2/v2.0/token";
    let latency = take_latency(&shared, &Method::POST, fault_path)
        + shared
            .lock()
            .draw_latency(Some(super::latency::RouteClass::Token));
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let want: fn(&FaultSpec) -> bool =
        |s| matches!(s, FaultSpec::Throttle { .. } | FaultSpec::Error { .. });
    let fault = take_fault(&mut shared.lock(), &Method::POST, fault_path, want);
    let mut retry_after = None;
    let (status, body) = match fault {
        Some(FaultSpec::Throttle {
            retry_after: ra, ..
        }) => {
            retry_after = Some(ra);
            error_response(
                &shared,
                terr(
                    429,
                    "temporarily_unavailable",
                    50196,
                    "The server is throttling requests (injected by the simulator).",
                ),
            )
        }
        Some(FaultSpec::Error {
            status,
            retry_after: ra,
            ..
        }) => {
            retry_after = ra;
            error_response(
                &shared,
                terr(
                    status,
                    "temporarily_unavailable",
                    90033,
                    "A transient error has occurred (injected by the simulator). Please try again.",
                ),
            )
        }
        _ => match issue(&shared, &tenant, &form, &headers) {
            Ok(v) => (StatusCode::OK, v),
            Err(e) => error_response(&shared, e),
        },
    };
    let request_id = new_request_id();
    shared.record(LogEntry {
        method: "POST".into(),
        path: format!("/{tenant}/oauth2/v2.0/token"),
        status: status.as_u16(),
        time_ms: arrived,
        duration_ms: u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX),
        ru: None,
        batch: false,
        request_id: request_id.clone(),
        client_request_id: headers
            .get("client-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    });
    let mut resp = (status, Json(body)).into_response();
    if let Ok(v) = request_id.parse() {
        resp.headers_mut().insert("x-ms-request-id", v);
    }
    if let Some(Ok(v)) = retry_after.map(|ra| fmt_seconds(ra).parse()) {
        resp.headers_mut().insert("retry-after", v);
    }
    if let Ok(v) = "no-store".parse() {
        resp.headers_mut().insert("cache-control", v);
    }
    resp
}

/// `GET /{tenant}/v2.0/.well-known/openid-configuration`.
pub(crate) async fn openid_configuration(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<String>,
) -> Response {
    let (tenant_id, known) = {
        let sim = shared.lock();
        let w = &sim.world;
        (
            w.tenant_id.clone(),
            tenant.eq_ignore_ascii_case(&w.tenant_id)
                || tenant.eq_ignore_ascii_case(&w.tenant_domain)
                || ["common", "organizations"].contains(&tenant.to_ascii_lowercase().as_str()),
        )
    };
    if !known {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_tenant", "error_description": format!("AADSTS90002: Tenant '{tenant}' not found.")})),
        )
            .into_response();
    }
    let a = &shared.base_url;
    let host = a.split("://").nth(1).unwrap_or(a);
    Json(json!({
        "token_endpoint": format!("{a}/{tenant}/oauth2/v2.0/token"),
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "jwks_uri": format!("{a}/{tenant}/discovery/v2.0/keys"),
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": format!("{a}/{tenant_id}/v2.0"),
        "request_uri_parameter_supported": false,
        "userinfo_endpoint": format!("{a}/oidc/userinfo"),
        "authorization_endpoint": format!("{a}/{tenant}/oauth2/v2.0/authorize"),
        "device_authorization_endpoint": format!("{a}/{tenant}/oauth2/v2.0/devicecode"),
        "http_logout_supported": true,
        "frontchannel_logout_supported": true,
        "end_session_endpoint": format!("{a}/{tenant}/oauth2/v2.0/logout"),
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf", "tid", "oid", "roles"],
        "kerberos_endpoint": format!("{a}/{tenant}/kerberos"),
        "tenant_region_scope": "WW",
        "cloud_instance_name": host,
        "cloud_graph_host_name": host,
        "msgraph_host": host,
        "rbac_url": a,
    }))
    .into_response()
}

/// `GET /{tenant}/discovery/v2.0/keys`: the simulator signs nothing, so no keys.
pub(crate) async fn jwks() -> Json<Value> {
    Json(json!({"keys": []}))
}

/// `GET /common/discovery/instance?api-version=1.1&authorization_endpoint=...`.
pub(crate) async fn instance_discovery(
    State(shared): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
) -> Json<Value> {
    let a = &shared.base_url;
    let host = a.split("://").nth(1).unwrap_or(a).to_string();
    let tenant = query
        .as_deref()
        .and_then(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "authorization_endpoint")
                .map(|(_, v)| v.into_owned())
        })
        .and_then(|ep| {
            let rest = ep
                .strip_prefix(a.as_str())?
                .trim_start_matches('/')
                .to_string();
            rest.split('/').next().map(str::to_string)
        })
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| shared.lock().world.tenant_id.clone());
    Json(json!({
        "tenant_discovery_endpoint": format!("{a}/{tenant}/v2.0/.well-known/openid-configuration"),
        "api-version": "1.1",
        "metadata": [{
            "preferred_network": host,
            "preferred_cache": host,
            "aliases": [host],
        }],
    }))
}

#[cfg(test)]
mod tests {
    use super::decode_base64;

    #[test]
    fn base64_decodes_basic_credentials() {
        assert_eq!(decode_base64("aWQ6c2VjcmV0").unwrap(), b"id:secret");
        assert_eq!(decode_base64("YQ==").unwrap(), b"a");
    }
}
