//! A small Azure Resource Manager: role assignments and role eligibility schedule
//! instances at subscription and resource-group scopes, served under `{base}/arm`. Its own
//! token audience (a Graph token is refused, and an ARM token is refused by Graph), its own
//! paging (`nextLink` with `$skipToken`), its own read quota
//! (`x-ms-ratelimit-remaining-subscription-reads`, 429 with `Retry-After` when spent) and
//! ARM's 403 `AuthorizationFailed` where the app lacks Reader.

use std::sync::Arc;

use axum::http::{HeaderMap, Method};
use serde_json::{Value, json};

use super::odata::{GResult, GraphError, Query, Reply, decode_skiptoken, encode_skiptoken, ts};
use super::server::{FaultSpec, Shared, fmt_seconds, take_fault};
use super::state::{ArmRoleGrant, Subscription, World};

/// Role assignments and eligibility instances per page (ARM pages by its own size; small
/// enough here that paging is exercised by modest tenants).
const ARM_PAGE: usize = 100;

fn arm_error(status: u16, code: &str, message: impl Into<String>) -> GraphError {
    GraphError::new(status, code, message)
}

/// Handles `{base}/arm/{path}` (the part after `/arm/`).
pub(crate) fn handle(
    shared: &Arc<Shared>,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> GResult {
    let mut sim = shared.lock();
    check_arm_auth(&sim, headers)?;
    let full_path = format!("/arm/{path}");
    let want_err: fn(&FaultSpec) -> bool =
        |s| matches!(s, FaultSpec::Throttle { .. } | FaultSpec::Error { .. });
    match take_fault(&mut sim, method, &full_path, want_err) {
        Some(FaultSpec::Throttle { retry_after, .. }) => {
            return Err(arm_error(
                429,
                "TooManyRequests",
                "The request is being throttled (injected by the simulator).",
            )
            .header("Retry-After", fmt_seconds(retry_after)));
        }
        Some(FaultSpec::Error {
            status,
            retry_after,
            ..
        }) => {
            let mut e = arm_error(
                status,
                "InternalServerError",
                "The service is temporarily unavailable (injected by the simulator).",
            );
            if let Some(ra) = retry_after {
                e = e.header("Retry-After", fmt_seconds(ra));
            }
            return Err(e);
        }
        _ => {}
    }
    if *method != Method::GET {
        return Err(arm_error(
            405,
            "MethodNotAllowed",
            format!("The simulator's Resource Manager only serves GET ('{method}' on /{path})."),
        ));
    }
    let remaining = match sim.arm_reads.as_mut().map(super::server::ReadQuota::take) {
        None => None,
        Some(Ok(left)) => Some(left),
        Some(Err(wait)) => {
            let secs = wait.as_secs_f64().ceil().max(1.0);
            return Err(arm_error(
                429,
                "TooManyRequests",
                "The request is being throttled as the limit has been reached for operation type - Read_ObservationWindow_00:05:00.",
            )
            .header("Retry-After", fmt_seconds(secs))
            .header("x-ms-ratelimit-remaining-subscription-reads", "0"));
        }
    };
    let q = Query::parse(query);
    let mut reply = route(&sim.world, path, &q, &shared.base_url)?;
    if let Some(left) = remaining {
        reply = reply.header(
            "x-ms-ratelimit-remaining-subscription-reads",
            left.to_string(),
        );
    }
    Ok(reply)
}

fn check_arm_auth(sim: &super::server::Sim, headers: &HeaderMap) -> Result<(), GraphError> {
    let err = |m: &str| {
        arm_error(401, "InvalidAuthenticationToken", m).header(
            "WWW-Authenticate",
            "Bearer authorization_uri=\"https://login.microsoftonline.com/common\", error=\"invalid_token\"",
        )
    };
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .ok_or_else(|| err("The access token is missing."))?;
    match sim.tokens.get(token) {
        None => Err(err("The access token is invalid.")),
        Some(_) if !sim.arm_tokens.contains(token) => Err(err(
            "The access token has been obtained for wrong audience or resource. It should exactly match one of the allowed audiences 'https://management.core.windows.net/','https://management.azure.com/'.",
        )),
        Some(exp) if *exp <= sim.world.now() => Err(arm_error(
            401,
            "ExpiredAuthenticationToken",
            "The access token expiry UTC time is earlier than current UTC time.",
        )),
        Some(_) => Ok(()),
    }
}

fn eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// A role list at an ARM scope:
/// `/subscriptions/{id}[/resourceGroups/{name}]/providers/Microsoft.Authorization/{list}`.
struct ListPath<'a> {
    segs: Vec<&'a str>,
    /// Path segments that make the scope: 2 (subscription) or 4 (resource group).
    scope_len: usize,
    /// `roleAssignments` or `roleEligibilityScheduleInstances`, as requested.
    list: &'a str,
    /// The list is of eligibility schedule instances.
    eligible: bool,
}

impl<'a> ListPath<'a> {
    fn parse(path: &'a str) -> Result<Self, GraphError> {
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let (scope_len, list) = match segs.as_slice() {
            [s, _, p, ms, what]
                if eq(s, "subscriptions")
                    && eq(p, "providers")
                    && eq(ms, "Microsoft.Authorization") =>
            {
                (2, *what)
            }
            [s, _, r, _, p, ms, what]
                if eq(s, "subscriptions")
                    && eq(r, "resourceGroups")
                    && eq(p, "providers")
                    && eq(ms, "Microsoft.Authorization") =>
            {
                (4, *what)
            }
            _ => {
                return Err(arm_error(
                    404,
                    "NotFound",
                    format!(
                        "The simulator's Resource Manager serves /subscriptions/{{id}}[/resourceGroups/{{name}}]/providers/Microsoft.Authorization/roleAssignments and .../roleEligibilityScheduleInstances, not /{path}."
                    ),
                ));
            }
        };
        let eligible = if eq(list, "roleAssignments") {
            false
        } else if eq(list, "roleEligibilityScheduleInstances") {
            true
        } else {
            return Err(arm_error(
                400,
                "InvalidResourceType",
                format!(
                    "The resource type '{list}' could not be found in the namespace 'Microsoft.Authorization'."
                ),
            ));
        };
        Ok(ListPath {
            segs,
            scope_len,
            list,
            eligible,
        })
    }

    /// `/subscriptions/{id}` or `/subscriptions/{id}/resourceGroups/{name}`, as requested.
    fn scope(&self) -> String {
        format!("/{}", self.segs[..self.scope_len].join("/"))
    }

    /// The `api-version` the query gives, which must be the one the list is served at.
    fn api_version<'q>(&self, q: &'q Query) -> Result<&'q str, GraphError> {
        let api = q.get("api-version").unwrap_or_default();
        let expected = if self.eligible {
            "2020-10-01"
        } else {
            "2022-04-01"
        };
        if api.is_empty() {
            return Err(arm_error(
                400,
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            ));
        }
        if api != expected {
            return Err(arm_error(
                400,
                "InvalidApiVersionParameter",
                format!(
                    "The simulator serves api-version '{expected}' for {}, not '{api}'.",
                    self.list
                ),
            ));
        }
        Ok(api)
    }

    /// The scope's subscription, which must exist with the resource group named.
    fn subscription<'w>(&self, w: &'w World) -> Result<&'w Subscription, GraphError> {
        let segs = &self.segs;
        let Some(sub) = w.subscriptions.iter().find(|s| eq(&s.id, segs[1])) else {
            return Err(arm_error(
                404,
                "SubscriptionNotFound",
                format!("The subscription '{}' could not be found.", segs[1]),
            ));
        };
        if self.scope_len == 4 && !sub.resource_groups.iter().any(|g| eq(g, segs[3])) {
            return Err(arm_error(
                404,
                "ResourceGroupNotFound",
                format!("Resource group '{}' could not be found.", segs[3]),
            ));
        }
        Ok(sub)
    }
}

fn route(w: &World, path: &str, q: &Query, base: &str) -> GResult {
    let target = ListPath::parse(path)?;
    let api = target.api_version(q)?;
    let scope = target.scope();
    let sub = target.subscription(w)?;
    let scope_lc = scope.to_ascii_lowercase();
    check_reader(w, &scope, target.eligible)?;
    // `atScope()`: assignments at the scope or above it (ARM's documented filter); none:
    // at, above and below.
    let at_scope = match q.get("filter") {
        None => false,
        Some(f) if f.trim().eq_ignore_ascii_case("atScope()") => true,
        Some(f) => {
            return Err(arm_error(
                400,
                "InvalidFilter",
                format!("The filter '{f}' is not supported by the simulator; use atScope()."),
            ));
        }
    };
    let applies = |g: &ArmRoleGrant| {
        let gs = g.scope.to_ascii_lowercase();
        let above_or_at = scope_lc == gs || scope_lc.starts_with(&format!("{gs}/"));
        let below = gs.starts_with(&format!("{scope_lc}/"));
        above_or_at || (!at_scope && below)
    };
    let source = if target.eligible {
        &w.arm_eligibilities
    } else {
        &w.arm_assignments
    };
    // `$skipToken` is the position in the whole list where the page starts, so each page
    // scans only from there (a scan per page would make large scopes quadratic).
    let start = match q.get("skiptoken") {
        None => 0,
        Some(t) => decode_skiptoken(t)
            .ok_or_else(|| arm_error(400, "InvalidSkipToken", "The $skipToken is not valid."))?,
    };
    let mut value = Vec::new();
    let mut next = None;
    for (at, g) in source
        .iter()
        .enumerate()
        .skip(start)
        .filter(|(_, g)| applies(g))
    {
        if value.len() == ARM_PAGE {
            next = Some(at);
            break;
        }
        value.push(grant_json(g, &sub.id, target.list, target.eligible));
    }
    let mut body = json!({ "value": value });
    if let Some(at) = next {
        let mut params = vec![format!("api-version={api}")];
        if at_scope {
            params.push("$filter=atScope()".into());
        }
        params.push(format!("$skipToken={}", encode_skiptoken(at)));
        body["nextLink"] = json!(format!("{base}/arm/{path}?{}", params.join("&")));
    }
    Ok(Reply::ok(body))
}

/// 403 `AuthorizationFailed` where the app has no Reader at or above `scope`.
fn check_reader(w: &World, scope: &str, eligible: bool) -> Result<(), GraphError> {
    let scope_lc = scope.to_ascii_lowercase();
    if !w
        .arm_denied
        .iter()
        .any(|d| scope_lc == *d || scope_lc.starts_with(&format!("{d}/")))
    {
        return Ok(());
    }
    let action = if eligible {
        "Microsoft.Authorization/roleEligibilityScheduleInstances/read"
    } else {
        "Microsoft.Authorization/roleAssignments/read"
    };
    Err(arm_error(
        403,
        "AuthorizationFailed",
        format!(
            "The client '{}' with object id '{}' does not have authorization to perform action '{action}' over scope '{scope}' or the scope is invalid. If access was recently granted, please refresh your credentials.",
            w.client_id, w.client_sp_id
        ),
    ))
}

fn grant_json(g: &ArmRoleGrant, sub_id: &str, list: &str, eligible: bool) -> Value {
    let role_definition_id = format!(
        "/subscriptions/{sub_id}/providers/Microsoft.Authorization/roleDefinitions/{}",
        g.role_guid
    );
    let mut properties = json!({
        "roleDefinitionId": role_definition_id,
        "principalId": g.principal_id,
        "principalType": "User",
        "scope": g.scope,
        "createdOn": ts(g.created),
    });
    if eligible {
        properties["status"] = json!("Provisioned");
        properties["memberType"] = json!("Direct");
        properties["startDateTime"] = json!(ts(g.created));
    }
    json!({
        "id": format!("{}/providers/Microsoft.Authorization/{list}/{}", g.scope, g.name),
        "name": g.name,
        "type": format!("Microsoft.Authorization/{list}"),
        "properties": properties,
    })
}
