//! Graph v1.0 handlers: directory reads/writes and entitlement management. They run
//! under the simulator lock (no awaits); asynchronous processing is spawned.

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method};
use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

use super::odata::method_not_allowed;
use super::odata::ts;
use super::odata::{
    Expand, Filter, GResult, GraphError, Query, Reply, apply_select, directory_filter, em_filter,
    has_expand, is_guid, nested_expand, page, page_lazy, page_scan,
};
use super::server::{AddOutcome, PendingGuard, Shared, Sim};
use super::state::{
    Assignment, Grant, Package, Policy, Request, World, resource_id_for, role_id_for,
};
use super::states::{AssignmentState, RequestState, RequestType};

fn ts_opt(t: Option<Timestamp>) -> Value {
    t.map(|t| json!(ts(t))).unwrap_or(Value::Null)
}

fn eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// Dispatches `/v1.0/...` (segments already split and percent-decoded).
pub(crate) fn route(
    shared: &Arc<Shared>,
    sim: &mut Sim,
    method: &Method,
    segs: &[String],
    q: &Query,
    headers: &HeaderMap,
    body: &Bytes,
) -> GResult {
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let path = format!("/v1.0/{}", segs.join("/"));
    let base = shared.base_url.as_str();
    let get = *method == Method::GET;
    let post = *method == Method::POST;
    let del = *method == Method::DELETE;
    let wrong_method = || method_not_allowed(method, &path);
    match s.as_slice() {
        ["users", ..] if get && !sim.world.has_permission(USER_READ_ALL) => {
            Err(insufficient_privileges())
        }
        ["users"] if get => list_users(&sim.world, q, headers, base, &path),
        ["groups"] if get => list_groups(&sim.world, q, headers, base, &path),
        // Creating users or groups is not simulated.
        ["users" | "groups"] => Err(wrong_method()),
        ["users", id] if get => get_user(&sim.world, id, q, base),
        ["identityProtection", r, ..] if eq(r, "riskyUsers") && get => {
            super::risk::route(&sim.world, &s[2..], q, base, &path)
        }
        ["users", id, op] if eq(op, "checkMemberGroups") && post => {
            check_member_groups(&sim.world, id, body)
        }
        ["groups", d] if eq(d, "delta") && get => super::delta::group_delta(&sim.world, q, base),
        ["groups", id] if get => get_group(&sim.world, id, q),
        ["groups", id, rel]
            if (eq(rel, "members") || eq(rel, "owners") || eq(rel, "transitiveMembers")) && get =>
        {
            list_group_rel(&sim.world, id, rel, q, headers, base, &path)
        }
        ["groups", id, rel, r] if eq(rel, "members") && *r == "$ref" && post => {
            add_member_ref(&mut sim.world, id, body)
        }
        ["groups", id, rel, oid, r] if eq(rel, "members") && *r == "$ref" && del => {
            remove_member_ref(&mut sim.world, id, oid)
        }
        // Without `/$ref` Graph deletes the member object itself; an app holding only
        // group permissions gets 403. Surfacing that catches a dangerous client bug.
        ["groups", _, rel, _] if eq(rel, "members") && del => Err(GraphError::new(
            403,
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation. (DELETE without /$ref deletes the directory object, not the membership.)",
        )),
        [sp] if sp.to_ascii_lowercase().starts_with("serviceprincipals(") && get => {
            get_sp(&sim.world, &sp_key(sp)?, q)
        }
        [sp, rel]
            if sp.to_ascii_lowercase().starts_with("serviceprincipals(")
                && eq(rel, "appRoleAssignedTo")
                && get =>
        {
            list_app_role_assigned_to(&sim.world, &sp_key(sp)?, q, base, &path)
        }
        ["servicePrincipals", id] if get => get_sp(&sim.world, id, q),
        ["servicePrincipals", id, rel] if eq(rel, "appRoleAssignedTo") && get => {
            list_app_role_assigned_to(&sim.world, id, q, base, &path)
        }
        ["roleManagement", "directory", rel]
            if (eq(rel, "roleAssignments") || eq(rel, "roleEligibilitySchedules")) && get =>
        {
            list_directory_roles(
                &sim.world,
                eq(rel, "roleEligibilitySchedules"),
                q,
                base,
                &path,
            )
        }
        ["auditLogs", d] if eq(d, "directoryAudits") && get => {
            let now = sim.world.now();
            super::audit::list_directory_audits(&sim.world.audit, now, q, base, &path)
        }
        ["identityGovernance", "privilegedAccess", "group", rel]
            if eq(rel, "eligibilitySchedules") && get =>
        {
            if !sim.world.has_permission(PRIVILEGED_ELIGIBILITY_READ_GROUP) {
                return Err(GraphError::new(
                    403,
                    "Forbidden",
                    "The application does not have the permission PrivilegedEligibilitySchedule.Read.AzureADGroup required for this operation.",
                ));
            }
            list_group_eligibilities(&sim.world, q, base, &path)
        }
        ["identityGovernance", "entitlementManagement", rest @ ..] => {
            em_route(shared, sim, method, rest, q, body, &path)
        }
        ["users", ..] | ["groups", ..] | ["servicePrincipals", ..] => {
            if get || post || del {
                // `/groups/{id}/nosuch`: the segment after the id is the one not found.
                Err(segment_not_found(
                    s.get(2).or(s.last()).copied().unwrap_or_default(),
                ))
            } else {
                Err(wrong_method())
            }
        }
        _ => Err(segment_not_found(s.first().copied().unwrap_or_default())),
    }
}

/// Graph's answer to a path it does not serve under a version root: `400 BadRequest`,
/// "Resource not found for the segment 'x'." (not a 404, which Graph keeps for objects that
/// do not exist).
pub(crate) fn segment_not_found(segment: &str) -> GraphError {
    GraphError::bad_request(
        "BadRequest",
        format!("Resource not found for the segment '{segment}'."),
    )
}

/// Whether the request carries `ConsistencyLevel: eventual` (Graph's advanced queries).
fn eventual(headers: &HeaderMap) -> bool {
    headers
        .get("consistencylevel")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("eventual"))
}

/// `$count=true` on a directory collection: `@odata.count` (all matching items, not the
/// page) on the first page only, and only with `ConsistencyLevel: eventual`; without the
/// header Graph refuses the request.
fn with_count(mut reply: Reply, q: &Query, headers: &HeaderMap, count: usize) -> GResult {
    if q.get("count").is_some_and(|c| eq(c, "true")) && !q.has("skiptoken") {
        if !eventual(headers) {
            return Err(GraphError::bad_request(
                "Request_BadRequest",
                "$count requires the ConsistencyLevel: eventual header.",
            ));
        }
        if let Some(b) = reply.body.as_mut() {
            b["@odata.count"] = json!(count);
        }
    }
    Ok(reply)
}

/// `GET /groups`: `$filter` on `id`, `displayName` (`eq`, `startswith`, joined by
/// `and`/`or`), `$select`, `$top` (1–999, default 100) with `@odata.nextLink` paging, and
/// `$count=true` with `ConsistencyLevel: eventual`.
fn list_groups(w: &World, q: &Query, headers: &HeaderMap, base: &str, path: &str) -> GResult {
    let collection = Directory {
        context: "groups",
        props: &["id", "displayName"],
        functions: &[("startswith", "displayName")],
    };
    collection.list(
        w.groups.iter(),
        |g, p| match p {
            "id" => Some(g.id.clone()),
            "displayname" => Some(g.display_name.clone()),
            _ => None,
        },
        group_json,
        (q, headers, base, path),
    )
}

/// A directory collection as Graph lists it (`/users`, `/groups`): which properties
/// `$filter` may name, and the `@odata.context` of its pages.
struct Directory {
    context: &'static str,
    props: &'static [&'static str],
    functions: &'static [(&'static str, &'static str)],
}

impl Directory {
    /// The items `field` says match the request's `$filter`, rendered, `$select`ed, paged,
    /// and counted when `$count=true` asks.
    fn list<'a, T: 'a>(
        &self,
        items: impl Iterator<Item = &'a T>,
        field: impl Fn(&T, &str) -> Option<String>,
        render: impl Fn(&T) -> Value,
        (q, headers, base, path): (&Query, &HeaderMap, &str, &str),
    ) -> GResult {
        let filter = directory_filter(q, self.props, self.functions)?;
        let sel = q.select();
        let items: Vec<&T> = items
            .filter(|item| filter.as_ref().is_none_or(|f| f.eval(&|p| field(item, p))))
            .collect();
        let count = items.len();
        let reply = page_lazy(
            items,
            |item| apply_select(render(item), sel.as_deref(), &[]),
            q,
            base,
            path,
            self.context,
            "Request_BadRequest",
        )?;
        with_count(reply, q, headers, count)
    }
}

/// `GET /roleManagement/directory/roleAssignments` or `.../roleEligibilitySchedules`,
/// filtered by `roleDefinitionId`, `principalId`, `directoryScopeId` (`eq`, joined by `and`).
fn list_directory_roles(w: &World, eligible: bool, q: &Query, base: &str, path: &str) -> GResult {
    let f = em_filter(
        q,
        &["roleDefinitionId", "principalId", "directoryScopeId"],
        &[],
    )?;
    if let Some(f) = &f
        && matches!(f, Filter::Or(_))
    {
        return Err(GraphError::bad_request(
            "InvalidFilter",
            "OData query is invalid: 'or' is not supported on role assignments.",
        ));
    }
    let sel = q.select();
    let list = if eligible {
        &w.role_eligibilities
    } else {
        &w.role_assignments
    };
    // Paged by position in the whole list, filtering from the page's start only: a
    // 50,000-holder role would otherwise cost the simulator a full scan per page.
    let start = skip_position(q);
    let items = list.iter().enumerate().skip(start).filter(|(_, g)| {
        f.as_ref().is_none_or(|f| {
            f.eval(&|k| match k {
                "roledefinitionid" => Some(g.role_definition_id.clone()),
                "principalid" => Some(g.principal_id.clone()),
                "directoryscopeid" => Some(g.directory_scope_id.clone()),
                _ => None,
            })
        })
    });
    let render = |g: &super::state::DirectoryRoleGrant| {
        let mut v = json!({
            "id": g.id,
            "roleDefinitionId": g.role_definition_id,
            "principalId": g.principal_id,
            "directoryScopeId": g.directory_scope_id,
            "appScopeId": null,
        });
        if eligible {
            v["memberType"] = json!("Direct");
            v["status"] = json!("Provisioned");
            v["createdDateTime"] = json!(ts(g.created));
            v["scheduleInfo"] = json!({
                "startDateTime": ts(g.created),
                "expiration": {"type": "noExpiration"},
            });
        }
        apply_select(v, sel.as_deref(), &[])
    };
    let context = if eligible {
        "roleManagement/directory/roleEligibilitySchedules"
    } else {
        "roleManagement/directory/roleAssignments"
    };
    page_scan(items, render, q, base, path, context, "BadRequest")
}

/// `GET /identityGovernance/privilegedAccess/group/eligibilitySchedules`, filtered by
/// `groupId`, `accessId`, `principalId` (`eq`, joined by `and`). Graph requires a filter on
/// `groupId` or `principalId` for this list; so does the simulator.
fn list_group_eligibilities(w: &World, q: &Query, base: &str, path: &str) -> GResult {
    let f = em_filter(q, &["groupId", "accessId", "principalId"], &[])?;
    let Some(f) = f else {
        return Err(GraphError::bad_request(
            "BadRequest",
            "The request is missing a required filter: groupId or principalId.",
        ));
    };
    if matches!(f, Filter::Or(_)) {
        return Err(GraphError::bad_request(
            "InvalidFilter",
            "OData query is invalid: 'or' is not supported on eligibility schedules.",
        ));
    }
    let sel = q.select();
    let start = skip_position(q);
    let items = w
        .group_eligibilities
        .iter()
        .enumerate()
        .skip(start)
        .filter(|(_, e)| {
            f.eval(&|k| match k {
                "groupid" => Some(e.group_id.clone()),
                "accessid" => Some(if e.owner { "owner" } else { "member" }.to_string()),
                "principalid" => Some(e.principal_id.clone()),
                _ => None,
            })
        });
    let render = |e: &super::state::GroupEligibility| {
        let expiration = match e.end {
            Some(end) => json!({"type": "afterDateTime", "endDateTime": ts(end), "duration": null}),
            None => json!({"type": "noExpiration", "endDateTime": null, "duration": null}),
        };
        let v = json!({
            "id": e.id,
            "groupId": e.group_id,
            "principalId": e.principal_id,
            "accessId": if e.owner { "owner" } else { "member" },
            "memberType": "direct",
            "status": "Provisioned",
            "createdDateTime": ts(e.created),
            "modifiedDateTime": null,
            "createdUsing": e.id,
            "scheduleInfo": {
                "startDateTime": ts(e.created),
                "recurrence": null,
                "expiration": expiration,
            },
        });
        apply_select(v, sel.as_deref(), &[])
    };
    page_scan(
        items,
        render,
        q,
        base,
        path,
        "identityGovernance/privilegedAccess/group/eligibilitySchedules",
        "BadRequest",
    )
}

fn sp_key(seg: &str) -> Result<String, GraphError> {
    // servicePrincipals(appId='...')
    let inner = seg
        .split_once('(')
        .map(|(_, r)| r.trim_end_matches(')'))
        .unwrap_or_default();
    match inner.split_once('=') {
        Some((k, v)) if eq(k.trim(), "appId") => Ok(v.trim().trim_matches('\'').to_string()),
        _ => Err(GraphError::bad_request(
            "Request_BadRequest",
            format!("Unsupported key in '{seg}'; use servicePrincipals(appId='...')."),
        )),
    }
}

// ---------------------------------------------------------------- directory

fn dir_not_found(id: &str) -> GraphError {
    GraphError::not_found(
        "Request_ResourceNotFound",
        format!(
            "Resource '{id}' does not exist or one of its queried reference-property objects are not present."
        ),
    )
}

fn require_dir_guid(id: &str) -> Result<(), GraphError> {
    if is_guid(id) {
        Ok(())
    } else {
        Err(GraphError::bad_request(
            "Request_BadRequest",
            format!("Invalid object identifier '{id}'."),
        ))
    }
}

/// The application permission the simulator asks of every `/users` read (Graph's least
/// privileged one for `accountEnabled`; docs/graph.md "Account state").
pub(crate) const USER_READ_ALL: &str = "User.Read.All";

/// The least privileged application permission for PIM for Groups eligibility schedules
/// (Microsoft Graph docs, "List eligibilitySchedules"); revoked, the list answers 403.
pub(crate) const PRIVILEGED_ELIGIBILITY_READ_GROUP: &str =
    "PrivilegedEligibilitySchedule.Read.AzureADGroup";

/// Graph's answer to an app that lacks the permission a directory read needs.
pub(crate) fn insufficient_privileges() -> GraphError {
    GraphError::new(
        403,
        "Authorization_RequestDenied",
        "Insufficient privileges to complete the operation.",
    )
}

fn user_json(w: &World, u: &super::state::User) -> Value {
    let _ = w;
    json!({
        "@odata.type": "#microsoft.graph.user",
        "id": u.id,
        "displayName": u.display_name,
        "userPrincipalName": u.upn,
        "mail": u.upn,
        "accountEnabled": u.account_enabled,
        "businessPhones": [],
        "givenName": null,
        "surname": null,
        "jobTitle": null,
    })
}

fn strip_type(mut v: Value) -> Value {
    if let Value::Object(m) = &mut v {
        m.remove("@odata.type");
    }
    v
}

fn list_users(w: &World, q: &Query, headers: &HeaderMap, base: &str, path: &str) -> GResult {
    let collection = Directory {
        context: "users",
        props: &["id", "userPrincipalName", "displayName", "mail"],
        functions: &[
            ("startswith", "displayName"),
            ("startswith", "userPrincipalName"),
        ],
    };
    collection.list(
        w.users.iter(),
        |u, p| match p {
            "id" => Some(u.id.clone()),
            "userprincipalname" | "mail" => Some(u.upn.clone()),
            "displayname" => Some(u.display_name.clone()),
            _ => None,
        },
        |u| strip_type(user_json(w, u)),
        (q, headers, base, path),
    )
}

fn get_user(w: &World, key: &str, q: &Query, base: &str) -> GResult {
    let u = if key.contains('@') {
        w.user_by_upn(key)
    } else {
        require_dir_guid(key)?;
        w.user(key)
    }
    .ok_or_else(|| dir_not_found(key))?;
    let mut v = strip_type(user_json(w, u));
    v["@odata.context"] = json!(format!("{base}/v1.0/$metadata#users/$entity"));
    Ok(Reply::ok(apply_select(v, q.select().as_deref(), &[])))
}

/// `$select` nested in an expand item, e.g. `members($select=id)`.
fn nested_select(ex: &[Expand], name: &str) -> Option<Vec<String>> {
    ex.iter()
        .find(|e| e.name.eq_ignore_ascii_case(name))
        .and_then(|e| e.select.clone())
}

fn group_json(g: &super::state::Group) -> Value {
    json!({
        "id": g.id,
        "displayName": g.display_name,
        "description": g.description,
        "mailEnabled": false,
        "securityEnabled": true,
        "groupTypes": [],
        "createdDateTime": ts(g.created),
    })
}

fn get_group(w: &World, id: &str, q: &Query) -> GResult {
    require_dir_guid(id)?;
    let g = w.group(id).ok_or_else(|| dir_not_found(id))?;
    let mut v = group_json(g);
    let ex = q.expand();
    // `$expand=members` is the documented way to see service principal members on v1.0;
    // Graph returns at most 20 expanded items.
    for rel in ["members", "owners"] {
        if has_expand(&ex, rel) {
            let set = if rel == "members" {
                &g.members
            } else {
                &g.owners
            };
            let nested_sel: Option<Vec<String>> = nested_select(&ex, rel);
            v[rel] = Value::Array(
                set.iter()
                    .take(20)
                    .map(|m| apply_select(directory_object_json(w, m), nested_sel.as_deref(), &[]))
                    .collect(),
            );
        }
    }
    Ok(Reply::ok(apply_select(
        v,
        q.select().as_deref(),
        &["members", "owners"],
    )))
}

fn directory_object_json(w: &World, oid: &str) -> Value {
    if let Some(u) = w.user(oid) {
        return user_json(w, u);
    }
    if let Some(sp) = w.sp(oid) {
        return json!({"@odata.type": "#microsoft.graph.servicePrincipal", "id": sp.id,
                      "displayName": sp.display_name, "appId": sp.app_id});
    }
    if let Some(g) = w.group(oid) {
        let mut v = group_json(g);
        v["@odata.type"] = json!("#microsoft.graph.group");
        return v;
    }
    json!({"@odata.type": "#microsoft.graph.directoryObject", "id": oid})
}

fn list_group_rel(
    w: &World,
    id: &str,
    rel: &str,
    q: &Query,
    headers: &HeaderMap,
    base: &str,
    path: &str,
) -> GResult {
    require_dir_guid(id)?;
    let g = w.group(id).ok_or_else(|| dir_not_found(id))?;
    let eventual = eventual(headers);
    if q.has("filter") || q.has("search") || q.has("orderby") {
        return Err(GraphError::bad_request(
            "Request_UnsupportedQuery",
            if eventual {
                "The simulator does not implement advanced queries on members; page the whole collection with $select=id."
            } else {
                "Advanced queries ($filter/$search/$orderby) on members need ConsistencyLevel: eventual and $count=true."
            },
        ));
    }
    let transitive;
    let set = if eq(rel, "owners") {
        &g.owners
    } else if eq(rel, "transitiveMembers") {
        transitive = w.transitive_members(&g.id);
        &transitive
    } else {
        &g.members
    };
    let sel = q.select();
    let items: Vec<&String> = set.iter().collect();
    let count = set.len();
    let reply = page_lazy(
        items,
        |oid| apply_select(directory_object_json(w, oid), sel.as_deref(), &[]),
        q,
        base,
        path,
        "directoryObjects",
        "Request_BadRequest",
    )?;
    with_count(reply, q, headers, count)
}

fn parse_body(body: &Bytes) -> Result<Value, GraphError> {
    serde_json::from_slice(body).map_err(|e| {
        GraphError::bad_request(
            "BadRequest",
            format!("The request body is not valid JSON: {e}"),
        )
    })
}

fn add_member_ref(w: &mut World, gid: &str, body: &Bytes) -> GResult {
    require_dir_guid(gid)?;
    if w.group(gid).is_none() {
        return Err(dir_not_found(gid));
    }
    let v = parse_body(body)?;
    let odata_id = v.get("@odata.id").and_then(Value::as_str).ok_or_else(|| {
        GraphError::bad_request(
            "Request_BadRequest",
            "The request body must contain '@odata.id' with a directoryObjects URL.",
        )
    })?;
    let oid = odata_id.rsplit('/').next().unwrap_or_default().to_string();
    let oid = oid
        .trim_start_matches("directoryObjects(")
        .trim_end_matches(')')
        .trim_matches('\'')
        .to_string();
    let known = w.user(&oid).is_some() || w.sp(&oid).is_some() || w.group(&oid).is_some();
    if !known {
        return Err(dir_not_found(&oid));
    }
    let oid = w
        .user(&oid)
        .map(|u| u.id.clone())
        .unwrap_or_else(|| oid.to_ascii_lowercase());
    if !w.add_member(gid, &oid) {
        return Err(GraphError::bad_request(
            "Request_BadRequest",
            "One or more added object references already exist for the following modified properties: 'members'.",
        ));
    }
    Ok(Reply::empty(204))
}

fn remove_member_ref(w: &mut World, gid: &str, oid: &str) -> GResult {
    require_dir_guid(gid)?;
    require_dir_guid(oid)?;
    if w.group(gid).is_none() {
        return Err(dir_not_found(gid));
    }
    if !w.remove_member(gid, &oid.to_ascii_lowercase()) {
        return Err(dir_not_found(oid));
    }
    Ok(Reply::empty(204))
}

fn check_member_groups(w: &World, key: &str, body: &Bytes) -> GResult {
    let u = if key.contains('@') {
        w.user_by_upn(key)
    } else {
        require_dir_guid(key)?;
        w.user(key)
    }
    .ok_or_else(|| dir_not_found(key))?;
    let v = parse_body(body)?;
    let ids: Vec<String> = v
        .get("groupIds")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            GraphError::bad_request(
                "Request_BadRequest",
                "The body must contain 'groupIds' (an array of up to 20 group ids).",
            )
        })?
        .iter()
        .filter_map(|x| x.as_str().map(str::to_string))
        .collect();
    if ids.len() > 20 {
        return Err(GraphError::bad_request(
            "Request_BadRequest",
            format!("'groupIds' has {} ids; at most 20 are allowed.", ids.len()),
        ));
    }
    let value: Vec<&String> = ids
        .iter()
        .filter(|g| {
            w.group(g)
                .is_some_and(|g| w.transitive_members(&g.id).contains(&u.id))
        })
        .collect();
    Ok(Reply::ok(json!({
        "@odata.context": "$metadata#Collection(Edm.String)",
        "value": value,
    })))
}

fn get_sp(w: &World, key: &str, q: &Query) -> GResult {
    let sp = w
        .sps
        .iter()
        .find(|s| eq(&s.id, key) || eq(&s.app_id, key))
        .ok_or_else(|| dir_not_found(key))?;
    let roles: Vec<Value> = sp
        .app_roles
        .iter()
        .map(|r| {
            json!({"id": r.id, "value": r.value, "displayName": r.display_name,
                        "allowedMemberTypes": ["User"], "isEnabled": true})
        })
        .collect();
    let v =
        json!({"id": sp.id, "appId": sp.app_id, "displayName": sp.display_name, "appRoles": roles});
    Ok(Reply::ok(apply_select(v, q.select().as_deref(), &[])))
}

fn list_app_role_assigned_to(w: &World, key: &str, q: &Query, base: &str, path: &str) -> GResult {
    let sp = w
        .sps
        .iter()
        .find(|s| eq(&s.id, key) || eq(&s.app_id, key))
        .ok_or_else(|| {
            if is_guid(key) {
                dir_not_found(key)
            } else {
                GraphError::bad_request(
                    "Request_BadRequest",
                    format!("Invalid object identifier '{key}'."),
                )
            }
        })?;
    let sel = q.select();
    let items: Vec<Value> = sp
        .assigned_to
        .iter()
        .map(|a| {
            let name = w.user(&a.principal_id).map(|u| u.display_name.clone());
            let v = json!({
                "id": a.id,
                "appRoleId": a.app_role_id,
                "principalId": a.principal_id,
                "principalType": "User",
                "principalDisplayName": name,
                "resourceId": sp.id,
                "resourceDisplayName": sp.display_name,
                "createdDateTime": ts(a.created),
                "deletedDateTime": null,
            });
            apply_select(v, sel.as_deref(), &[])
        })
        .collect();
    page(
        items,
        q,
        base,
        path,
        "appRoleAssignments",
        "Request_BadRequest",
    )
}

// ---------------------------------------------------------------- entitlement management

fn em_not_found(kind: &str, id: &str) -> GraphError {
    GraphError::not_found(
        "ResourceNotFound",
        format!("The {kind} '{id}' was not found."),
    )
}

fn require_em_guid(id: &str) -> Result<(), GraphError> {
    if is_guid(id) {
        Ok(())
    } else {
        Err(GraphError::bad_request(
            "BadRequest",
            format!("'{id}' is not a valid identifier; expected a GUID."),
        ))
    }
}

/// The entitlement-management object `id` names, found by `lookup`: 400 for an id that is
/// not a GUID, 404 for none.
fn em_object<'w, T>(
    id: &str,
    kind: &str,
    lookup: impl FnOnce(&str) -> Option<&'w T>,
) -> Result<&'w T, GraphError> {
    require_em_guid(id)?;
    lookup(id).ok_or_else(|| em_not_found(kind, id))
}

fn em_route(
    shared: &Arc<Shared>,
    sim: &mut Sim,
    method: &Method,
    rest: &[&str],
    q: &Query,
    body: &Bytes,
    path: &str,
) -> GResult {
    let base = shared.base_url.as_str();
    let get = *method == Method::GET;
    let post = *method == Method::POST;
    let w = &sim.world;
    match rest {
        ["catalogs"] if get => list_catalogs(w, q, base, path),
        ["catalogs", id] if get => {
            let c = em_object(id, "catalog", |id| w.catalog(id))?;
            Ok(Reply::ok(apply_select(
                catalog_json(c),
                q.select().as_deref(),
                &[],
            )))
        }
        ["catalogs", id, rel] if get && eq(rel, "resources") => {
            let c = em_object(id, "catalog", |id| w.catalog(id))?;
            list_catalog_resources(w, &c.id, q, base, path)
        }
        ["catalogs", id, rel] if get && eq(rel, "resourceRoles") => {
            let c = em_object(id, "catalog", |id| w.catalog(id))?;
            list_catalog_resource_roles(w, &c.id, q, base, path)
        }
        ["accessPackages"] if get => list_packages(w, q, base, path),
        ["accessPackages", id] if get => {
            let p = em_object(id, "access package", |id| w.package(id))?;
            Ok(Reply::ok(package_json(w, p, q)))
        }
        ["accessPackages", id, rel]
            if get && (eq(rel, "resourceRoleScopes") || eq(rel, "assignmentPolicies")) =>
        {
            let p = em_object(id, "access package", |id| w.package(id))?;
            list_package_children(w, p, rel, q, base, path)
        }
        ["assignmentPolicies"] if get => list_policies(w, q, base, path),
        ["assignmentPolicies", id] if get => {
            let p = em_object(id, "assignment policy", |id| w.policy(id))?;
            Ok(Reply::ok(apply_select(
                policy_json(w, p, &q.expand()),
                q.select().as_deref(),
                &["accessPackage", "catalog"],
            )))
        }
        ["assignments"] if get => list_assignments(w, q, base, path),
        ["assignments", id] if get => {
            let a = em_object(id, "assignment", |id| w.assignment(id))?;
            Ok(Reply::ok(assignment_select(w, a, q)))
        }
        ["assignments", id, op] if post && eq(op, "reprocess") => {
            reprocess_assignment(shared, sim, id)
        }
        ["assignmentRequests"] if get => list_requests(w, q, base, path),
        ["assignmentRequests"] if post => create_request(shared, sim, body),
        ["assignmentRequests", id] if get => {
            let r = em_object(id, "assignment request", |id| w.request(id))?;
            Ok(Reply::ok(request_select(w, r, q)))
        }
        ["assignmentRequests", id, op] if post && eq(op, "reprocess") => {
            reprocess_request(shared, sim, id)
        }
        ["assignmentRequests", id, op] if post && eq(op, "cancel") => cancel_request(sim, id),
        _ => Err(em_unrouted(method, rest, path)),
    }
}

/// A package's `resourceRoleScopes` or `assignmentPolicies` (`rel`), paged.
fn list_package_children(
    w: &World,
    p: &Package,
    rel: &str,
    q: &Query,
    base: &str,
    path: &str,
) -> GResult {
    let items: Vec<Value> = if eq(rel, "resourceRoleScopes") {
        let ex = q.expand();
        p.role_scopes
            .iter()
            .map(|rs| role_scope_json(w, p, rs, &ex))
            .collect()
    } else {
        w.policies
            .iter()
            .filter(|x| x.package_id == p.id)
            .map(|x| policy_json(w, x, &q.expand()))
            .collect()
    };
    page(items, q, base, path, rel, "BadRequest")
}

/// The error for an entitlement-management path no route serves: 405 for a method other
/// than GET and POST on a collection, else 404 naming the segment not found.
fn em_unrouted(method: &Method, rest: &[&str], path: &str) -> GraphError {
    const COLLECTIONS: [&str; 5] = [
        "catalogs",
        "accessPackages",
        "assignmentPolicies",
        "assignments",
        "assignmentRequests",
    ];
    let get_or_post = *method == Method::GET || *method == Method::POST;
    match rest {
        [collection, ..] if !get_or_post && COLLECTIONS.contains(collection) => {
            method_not_allowed(method, path)
        }
        // `.../catalogs/{id}/nosuch`: the segment after the id; `.../nosuch`: itself.
        [collection, ..] if COLLECTIONS.iter().any(|c| eq(c, collection)) => {
            segment_not_found(rest.get(2).or(rest.last()).copied().unwrap_or_default())
        }
        _ => segment_not_found(rest.first().copied().unwrap_or("entitlementManagement")),
    }
}

fn catalog_json(c: &super::state::Catalog) -> Value {
    json!({
        "id": c.id,
        "displayName": c.display_name,
        "description": c.description,
        "catalogType": "userManaged",
        "state": "published",
        "isExternallyVisible": false,
        "createdDateTime": ts(c.created),
        "modifiedDateTime": ts(c.created),
    })
}

fn list_catalogs(w: &World, q: &Query, base: &str, path: &str) -> GResult {
    let f = em_filter(
        q,
        &["displayName", "id"],
        &[("contains", "displayName"), ("startswith", "displayName")],
    )?;
    let sel = q.select();
    let items = w
        .catalogs
        .iter()
        .filter(|c| {
            f.as_ref().is_none_or(|f| {
                f.eval(&|p| match p {
                    "displayname" => Some(c.display_name.clone()),
                    "id" => Some(c.id.clone()),
                    _ => None,
                })
            })
        })
        .map(|c| apply_select(catalog_json(c), sel.as_deref(), &[]))
        .collect();
    page(
        items,
        q,
        base,
        path,
        "identityGovernance/entitlementManagement/catalogs",
        "BadRequest",
    )
}

/// A resource added to a catalog, as derived from the catalog's packages.
struct CatalogResource {
    id: String,
    system: &'static str,
    origin: String,
    name: String,
    created: Timestamp,
    scope_id: String,
    /// (role id, display name, origin id)
    roles: Vec<(String, String, String)>,
}

fn catalog_resources(w: &World, catalog_id: &str) -> Vec<CatalogResource> {
    let seed = w.seed_value;
    let mut out: Vec<CatalogResource> = Vec::new();
    for p in w.packages.iter().filter(|p| p.catalog_id == catalog_id) {
        for rs in &p.role_scopes {
            let info = w.grant_info(&rs.grant);
            let idx = match out
                .iter()
                .position(|r| r.system == info.origin_system && r.origin == info.scope_origin)
            {
                Some(i) => i,
                None => {
                    // Groups offer both roles and apps all their app roles, whatever the
                    // packages use; SharePoint sites only the roles packages reference.
                    let roles: Vec<(String, String)> = match &rs.grant {
                        Grant::GroupMember(g) | Grant::GroupOwner(g) => vec![
                            ("Member".into(), format!("Member_{g}")),
                            ("Owner".into(), format!("Owner_{g}")),
                        ],
                        Grant::AppRole { sp_id, .. } => {
                            let mut r: Vec<(String, String)> = w
                                .sp(sp_id)
                                .map(|s| {
                                    s.app_roles
                                        .iter()
                                        .map(|ar| (ar.display_name.clone(), ar.id.clone()))
                                        .collect()
                                })
                                .unwrap_or_default();
                            if r.is_empty() {
                                r.push((
                                    "Default Access".into(),
                                    super::state::DEFAULT_ACCESS_ROLE.into(),
                                ));
                            }
                            r
                        }
                        Grant::SharePoint { .. } | Grant::AzureRole { .. } => Vec::new(),
                        // A group governed by PIM for Groups also offers its eligible
                        // roles.
                        Grant::GroupEligible { group_id: g, .. } => vec![
                            ("Member".into(), format!("Member_{g}")),
                            ("Owner".into(), format!("Owner_{g}")),
                            ("Eligible Member".into(), format!("EligibleMember_{g}")),
                            ("Eligible Owner".into(), format!("EligibleOwner_{g}")),
                        ],
                        Grant::EntraRole { .. } => vec![
                            ("Eligible Member".into(), "Eligible".into()),
                            ("Active Member".into(), "Active".into()),
                        ],
                    };
                    out.push(CatalogResource {
                        id: resource_id_for(seed, catalog_id, &info.scope_origin),
                        system: info.origin_system,
                        origin: info.scope_origin.clone(),
                        name: info.resource_name.clone(),
                        created: p.created,
                        scope_id: rs.scope_id.clone(),
                        roles: roles
                            .into_iter()
                            .map(|(name, origin)| {
                                (
                                    role_id_for(seed, catalog_id, info.origin_system, &origin),
                                    name,
                                    origin,
                                )
                            })
                            .collect(),
                    });
                    out.len() - 1
                }
            };
            let r = &mut out[idx];
            if !r.roles.iter().any(|(id, _, _)| *id == rs.role_id) {
                r.roles.push((
                    rs.role_id.clone(),
                    info.role_name.clone(),
                    info.role_origin.clone(),
                ));
            }
        }
    }
    out
}

fn catalog_resource_json(r: &CatalogResource) -> Value {
    json!({
        "id": r.id,
        "displayName": r.name,
        "description": null,
        "originId": r.origin,
        "originSystem": r.system,
        "attributes": [],
        "createdDateTime": ts(r.created),
        "modifiedDateTime": ts(r.created),
    })
}

fn resource_role_json(r: &CatalogResource, role: &(String, String, String)) -> Value {
    json!({
        "id": role.0,
        "displayName": role.1,
        "description": null,
        "originId": role.2,
        "originSystem": r.system,
    })
}

fn resource_scope_json(r: &CatalogResource) -> Value {
    json!({
        "id": r.scope_id,
        "displayName": r.name,
        "description": null,
        "originId": r.origin,
        "originSystem": r.system,
        "isRootScope": true,
    })
}

fn list_catalog_resources(
    w: &World,
    catalog_id: &str,
    q: &Query,
    base: &str,
    path: &str,
) -> GResult {
    let f = em_filter(
        q,
        &["originSystem", "originId", "displayName", "id"],
        &[("contains", "displayName"), ("startswith", "displayName")],
    )?;
    let ex = q.expand();
    let sel = q.select();
    let items: Vec<Value> = catalog_resources(w, catalog_id)
        .iter()
        .filter(|r| {
            f.as_ref().is_none_or(|f| {
                f.eval(&|k| match k {
                    "originsystem" => Some(r.system.to_string()),
                    "originid" => Some(r.origin.clone()),
                    "displayname" => Some(r.name.clone()),
                    "id" => Some(r.id.clone()),
                    _ => None,
                })
            })
        })
        .map(|r| {
            let mut v = catalog_resource_json(r);
            if has_expand(&ex, "roles") {
                v["roles"] =
                    Value::Array(r.roles.iter().map(|x| resource_role_json(r, x)).collect());
            }
            if has_expand(&ex, "scopes") {
                v["scopes"] = json!([resource_scope_json(r)]);
            }
            apply_select(v, sel.as_deref(), &["roles", "scopes"])
        })
        .collect();
    page(
        items,
        q,
        base,
        path,
        "identityGovernance/entitlementManagement/catalogs/resources",
        "BadRequest",
    )
}

fn list_catalog_resource_roles(
    w: &World,
    catalog_id: &str,
    q: &Query,
    base: &str,
    path: &str,
) -> GResult {
    let f = em_filter(
        q,
        &[
            "originSystem",
            "originId",
            "displayName",
            "id",
            "resource/id",
        ],
        &[],
    )?;
    let ex = q.expand();
    let sel = q.select();
    let resources = catalog_resources(w, catalog_id);
    let items: Vec<Value> = resources
        .iter()
        .flat_map(|r| r.roles.iter().map(move |role| (r, role)))
        .filter(|(r, role)| {
            f.as_ref().is_none_or(|f| {
                f.eval(&|k| match k {
                    "originsystem" => Some(r.system.to_string()),
                    "originid" => Some(role.2.clone()),
                    "displayname" => Some(role.1.clone()),
                    "id" => Some(role.0.clone()),
                    "resource/id" => Some(r.id.clone()),
                    _ => None,
                })
            })
        })
        .map(|(r, role)| {
            let mut v = resource_role_json(r, role);
            if has_expand(&ex, "resource") {
                v["resource"] = catalog_resource_json(r);
            }
            apply_select(v, sel.as_deref(), &["resource"])
        })
        .collect();
    page(
        items,
        q,
        base,
        path,
        "identityGovernance/entitlementManagement/catalogs/resourceRoles",
        "BadRequest",
    )
}

fn package_base_json(p: &Package) -> Value {
    json!({
        "id": p.id,
        "displayName": p.display_name,
        "description": p.description,
        "isHidden": false,
        "createdDateTime": ts(p.created),
        "modifiedDateTime": ts(p.created),
    })
}

fn role_scope_json(w: &World, p: &Package, rs: &super::state::RoleScope, ex: &[Expand]) -> Value {
    let nested = nested_expand(ex, "resourceRoleScopes");
    let info = w.grant_info(&rs.grant);
    let mut v = json!({
        "id": format!("{}_{}", rs.role_id, rs.scope_id),
        "createdDateTime": ts(p.created),
    });
    // An expand of resourceRoleScopes without nested options still gets role and scope:
    // clients that forget the nested expand would otherwise see nothing useful.
    let all = nested.is_empty();
    if all || has_expand(nested, "role") {
        v["role"] = json!({
            "id": rs.role_id,
            "displayName": info.role_name,
            "description": null,
            "originId": info.role_origin,
            "originSystem": info.origin_system,
        });
        if let Some(t) = info.role_type {
            v["role"]["type"] = json!(t);
        }
        // `role($expand=resource)`: the catalog resource the role belongs to.
        if has_expand(nested_expand(nested, "role"), "resource") {
            v["role"]["resource"] = json!({
                "id": resource_id_for(w.seed_value, &p.catalog_id, &info.scope_origin),
                "displayName": info.resource_name,
                "originId": info.resource_origin,
                "originSystem": info.origin_system,
            });
        }
    }
    if all || has_expand(nested, "scope") {
        v["scope"] = json!({
            "id": rs.scope_id,
            "displayName": info.scope_name,
            "description": null,
            "originId": info.scope_origin,
            "originSystem": info.origin_system,
            "isRootScope": true,
        });
    }
    v
}

fn package_json(w: &World, p: &Package, q: &Query) -> Value {
    let ex = q.expand();
    let mut v = package_base_json(p);
    if has_expand(&ex, "catalog")
        && let Some(c) = w.catalog(&p.catalog_id)
    {
        v["catalog"] = catalog_json(c);
    }
    if has_expand(&ex, "resourceRoleScopes") {
        v["resourceRoleScopes"] = Value::Array(
            p.role_scopes
                .iter()
                .map(|rs| role_scope_json(w, p, rs, &ex))
                .collect(),
        );
    }
    if has_expand(&ex, "assignmentPolicies") {
        v["assignmentPolicies"] = Value::Array(
            w.policies
                .iter()
                .filter(|x| x.package_id == p.id)
                .map(|x| policy_json(w, x, &[]))
                .collect(),
        );
    }
    apply_select(
        v,
        q.select().as_deref(),
        &["catalog", "resourceRoleScopes", "assignmentPolicies"],
    )
}

fn list_packages(w: &World, q: &Query, base: &str, path: &str) -> GResult {
    let f = em_filter(
        q,
        &["displayName", "id", "catalog/id"],
        &[("contains", "displayName"), ("startswith", "displayName")],
    )?;
    let items = w
        .packages
        .iter()
        .filter(|p| {
            f.as_ref().is_none_or(|f| {
                f.eval(&|k| match k {
                    "displayname" => Some(p.display_name.clone()),
                    "id" => Some(p.id.clone()),
                    "catalog/id" => Some(p.catalog_id.clone()),
                    _ => None,
                })
            })
        })
        .map(|p| package_json(w, p, q))
        .collect();
    page(
        items,
        q,
        base,
        path,
        "identityGovernance/entitlementManagement/accessPackages",
        "BadRequest",
    )
}

fn policy_json(w: &World, p: &Policy, ex: &[Expand]) -> Value {
    let mut v = json!({
        "id": p.id,
        "displayName": p.display_name,
        "description": p.description,
        "allowedTargetScope": "notSpecified",
        "specificAllowedTargets": [],
        "expiration": {"endDateTime": null, "duration": null, "type": "noExpiration"},
        "requestorSettings": {"enableTargetsToSelfAddAccess": false, "enableTargetsToSelfUpdateAccess": false,
                              "enableTargetsToSelfRemoveAccess": false, "allowCustomAssignmentSchedule": true,
                              "enableOnBehalfRequestorsToAddAccess": false, "enableOnBehalfRequestorsToUpdateAccess": false,
                              "enableOnBehalfRequestorsToRemoveAccess": false, "onBehalfRequestors": []},
        "requestApprovalSettings": {"isApprovalRequiredForAdd": false, "isApprovalRequiredForUpdate": false, "stages": []},
        "createdDateTime": ts(p.created),
        "modifiedDateTime": ts(p.created),
    });
    if has_expand(ex, "accessPackage")
        && let Some(pkg) = w.package(&p.package_id)
    {
        v["accessPackage"] = package_base_json(pkg);
    }
    if has_expand(ex, "catalog")
        && let Some(c) = w
            .package(&p.package_id)
            .and_then(|pkg| w.catalog(&pkg.catalog_id))
    {
        v["catalog"] = catalog_json(c);
    }
    v
}

fn list_policies(w: &World, q: &Query, base: &str, path: &str) -> GResult {
    let f = em_filter(
        q,
        &["displayName", "id", "accessPackage/id"],
        &[("contains", "displayName")],
    )?;
    let ex = q.expand();
    let sel = q.select();
    let items = w
        .policies
        .iter()
        .filter(|p| {
            f.as_ref().is_none_or(|f| {
                f.eval(&|k| match k {
                    "displayname" => Some(p.display_name.clone()),
                    "id" => Some(p.id.clone()),
                    "accesspackage/id" => Some(p.package_id.clone()),
                    _ => None,
                })
            })
        })
        .map(|p| {
            apply_select(
                policy_json(w, p, &ex),
                sel.as_deref(),
                &["accessPackage", "catalog"],
            )
        })
        .collect();
    page(
        items,
        q,
        base,
        path,
        "identityGovernance/entitlementManagement/assignmentPolicies",
        "BadRequest",
    )
}

fn subject_json(w: &World, user_id: &str) -> Value {
    match w.user(user_id) {
        Some(u) => json!({
            "id": u.subject_id,
            "objectId": u.id,
            "displayName": u.display_name,
            "email": u.upn,
            "principalName": u.upn,
            "onPremisesSecurityIdentifier": null,
            "subjectType": "user",
        }),
        None => json!({"id": null, "objectId": user_id, "subjectType": "user"}),
    }
}

fn schedule_json(start: Option<Timestamp>, kind: &str) -> Value {
    json!({
        "startDateTime": ts_opt(start),
        "recurrence": null,
        "expiration": {"endDateTime": null, "duration": null, "type": kind},
    })
}

fn assignment_json(w: &World, a: &Assignment, ex: &[Expand]) -> Value {
    let mut v = json!({
        "id": a.id,
        "state": a.state,
        "status": a.state.status(),
        "expiredDateTime": ts_opt(a.expired),
        "schedule": schedule_json(Some(a.start), "noExpiration"),
        "customExtensionCalloutInstances": [],
    });
    if has_expand(ex, "target") {
        v["target"] = subject_json(w, &a.target_id);
    }
    if has_expand(ex, "accessPackage")
        && let Some(p) = w.package(&a.package_id)
    {
        v["accessPackage"] = package_base_json(p);
    }
    if has_expand(ex, "assignmentPolicy")
        && let Some(p) = w.policy(&a.policy_id)
    {
        v["assignmentPolicy"] = policy_json(w, p, &[]);
    }
    v
}

fn assignment_select(w: &World, a: &Assignment, q: &Query) -> Value {
    apply_select(
        assignment_json(w, a, &q.expand()),
        q.select().as_deref(),
        &["target", "accessPackage", "assignmentPolicy"],
    )
}

/// Where a `page_scan` page starts in its whole list (0 for the first page, or a token
/// that does not decode: `page_scan` refuses that one).
fn skip_position(q: &Query) -> usize {
    q.get("skiptoken")
        .and_then(super::odata::decode_skiptoken)
        .unwrap_or(0)
}

fn list_assignments(w: &World, q: &Query, base: &str, path: &str) -> GResult {
    let f = em_filter(
        q,
        &[
            "accessPackage/id",
            "target/objectId",
            "state",
            "assignmentPolicy/id",
            "id",
            "target/id",
        ],
        &[],
    )?;
    // Skip to the page's start before filtering: the filter clones strings per item.
    let start = skip_position(q);
    let items = w
        .assignments
        .iter()
        .enumerate()
        .skip(start)
        .filter(|(_, a)| {
            f.as_ref().is_none_or(|f| {
                f.eval(&|k| match k {
                    "accesspackage/id" => Some(a.package_id.clone()),
                    "target/objectid" => Some(a.target_id.clone()),
                    "target/id" => w.user(&a.target_id).map(|u| u.subject_id.clone()),
                    "state" => Some(a.state.as_str().to_string()),
                    "assignmentpolicy/id" => Some(a.policy_id.clone()),
                    "id" => Some(a.id.clone()),
                    _ => None,
                })
            })
        });
    page_scan(
        items,
        |a| assignment_select(w, a, q),
        q,
        base,
        path,
        "identityGovernance/entitlementManagement/assignments",
        "BadRequest",
    )
}

fn request_json(w: &World, r: &Request, ex: &[Expand]) -> Value {
    let mut v = json!({
        "id": r.id,
        "requestType": r.request_type,
        "state": r.state,
        "status": r.state.status(),
        "createdDateTime": ts_opt(r.created),
        "completedDateTime": ts_opt(r.completed),
        "justification": r.justification,
        "schedule": schedule_json(r.created, "notSpecified"),
        "answers": [],
        "customExtensionCalloutInstances": [],
    });
    if has_expand(ex, "accessPackage")
        && let Some(p) = w.package(&r.package_id)
    {
        v["accessPackage"] = package_base_json(p);
    }
    if has_expand(ex, "assignment") {
        v["assignment"] = match r.assignment_id.as_deref().and_then(|id| w.assignment(id)) {
            Some(a) => {
                let mut nested = nested_expand(ex, "assignment").to_vec();
                // Expanded assignments always carry their target: that is what callers want.
                if !has_expand(&nested, "target") {
                    nested.push(Expand {
                        name: "target".into(),
                        nested: Vec::new(),
                        select: None,
                    });
                }
                assignment_json(w, a, &nested)
            }
            None => json!({"id": null, "target": subject_json(w, &r.target_id)}),
        };
    }
    if has_expand(ex, "requestor") {
        v["requestor"] = json!({
            "id": w.client_sp_id,
            "objectId": w.client_sp_id,
            "displayName": w.client_display_name,
            "email": null,
            "principalName": null,
            "onPremisesSecurityIdentifier": null,
            "subjectType": "servicePrincipal",
        });
    }
    v
}

fn request_select(w: &World, r: &Request, q: &Query) -> Value {
    apply_select(
        request_json(w, r, &q.expand()),
        q.select().as_deref(),
        &["accessPackage", "assignment", "requestor"],
    )
}

fn list_requests(w: &World, q: &Query, base: &str, path: &str) -> GResult {
    let f: Option<Filter> = em_filter(q, &["accessPackage/id", "state", "requestType", "id"], &[])?;
    let start = skip_position(q);
    let items = w.requests.iter().enumerate().skip(start).filter(|(_, r)| {
        f.as_ref().is_none_or(|f| {
            f.eval(&|k| match k {
                "accesspackage/id" => Some(r.package_id.clone()),
                "state" => Some(r.state.as_str().to_string()),
                "requesttype" => Some(r.request_type.as_str().to_string()),
                "id" => Some(r.id.clone()),
                _ => None,
            })
        })
    });
    page_scan(
        items,
        |r| request_select(w, r, q),
        q,
        base,
        path,
        "identityGovernance/entitlementManagement/assignmentRequests",
        "BadRequest",
    )
}

fn bad(msg: impl Into<String>) -> GraphError {
    GraphError::bad_request("BadRequest", msg)
}

fn create_request(shared: &Arc<Shared>, sim: &mut Sim, body: &Bytes) -> GResult {
    let v = parse_body(body)?;
    let rtype_raw = v
        .get("requestType")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            bad("The request body must contain 'requestType' (adminAdd or adminRemove).")
        })?;
    let rtype: RequestType = rtype_raw
        .parse()
        .map_err(|_| bad(format!("'{rtype_raw}' is not a valid requestType.")))?;
    let asg = v.get("assignment").cloned().unwrap_or(Value::Null);
    let justification = v
        .get("justification")
        .and_then(Value::as_str)
        .map(str::to_string);
    match rtype {
        RequestType::AdminAdd => create_add_request(shared, sim, &asg, justification),
        RequestType::AdminRemove => create_remove_request(shared, sim, &asg, justification),
        other => Err(bad(format!(
            "requestType '{}' is not supported by the simulator; use adminAdd or adminRemove.",
            other.as_str()
        ))),
    }
}

/// A string field of a request body's `assignment`.
fn assignment_field(asg: &Value, k: &str) -> Option<String> {
    asg.get(k).and_then(Value::as_str).map(str::to_string)
}

/// `adminAdd`: a request to deliver a package to a user, delivered (or failed) in the
/// background.
fn create_add_request(
    shared: &Arc<Shared>,
    sim: &mut Sim,
    asg: &Value,
    justification: Option<String>,
) -> GResult {
    let epoch = sim.epoch;
    let w = &mut sim.world;
    let now = w.now();
    let (user_id, pkg, pol) = add_request_parties(w, asg)?;
    if w.assignments.iter().any(|a| {
        a.target_id == user_id && a.package_id == pkg && a.state != AssignmentState::Expired
    }) {
        return Err(bad(
            "The target already has an active assignment for this access package (ExistingAssignment).",
        ));
    }
    if w.requests
        .iter()
        .any(|r| r.target_id == user_id && r.package_id == pkg && r.state.is_open())
    {
        return Err(bad(
            "The target already has an open request for this access package (ExistingOpenRequest).",
        ));
    }
    let id = submit_request(
        w,
        now,
        RequestType::AdminAdd,
        (pkg, pol, user_id),
        None,
        justification,
    );
    let body = created_json(w, &id, &shared.base_url);
    let outcome = sim.next_add_outcome();
    sim.planned.insert(id.clone(), outcome);
    spawn_add(shared.clone(), epoch, id);
    Ok(Reply::json(201, body))
}

/// The user, package and policy an `adminAdd` names, as (user id, package id, policy
/// id): each must exist and the policy must be the package's.
fn add_request_parties(w: &World, asg: &Value) -> Result<(String, String, String), GraphError> {
    let field = |k: &str| assignment_field(asg, k);
    // SDK snippets send targetId; some callers send target.objectId instead.
    let target = field("targetId")
        .or_else(|| {
            asg.pointer("/target/objectId")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .ok_or_else(|| bad("adminAdd needs assignment.targetId (the user's object id)."))?;
    let policy_id = field("assignmentPolicyId")
        .ok_or_else(|| bad("adminAdd needs assignment.assignmentPolicyId."))?;
    let package_id = field("accessPackageId")
        .ok_or_else(|| bad("adminAdd needs assignment.accessPackageId."))?;
    for (name, id) in [
        ("targetId", &target),
        ("assignmentPolicyId", &policy_id),
        ("accessPackageId", &package_id),
    ] {
        if !is_guid(id) {
            return Err(bad(format!("assignment.{name} '{id}' is not a GUID.")));
        }
    }
    let user_id = w.user(&target).map(|u| u.id.clone()).ok_or_else(|| {
        bad(format!(
            "The target user '{target}' was not found in the directory."
        ))
    })?;
    let pkg = w
        .package(&package_id)
        .map(|p| p.id.clone())
        .ok_or_else(|| bad(format!("The access package '{package_id}' was not found.")))?;
    let pol = w.policy(&policy_id).ok_or_else(|| {
        bad(format!(
            "The assignment policy '{policy_id}' was not found."
        ))
    })?;
    if pol.package_id != pkg {
        return Err(bad(format!(
            "The assignment policy '{policy_id}' does not belong to access package '{package_id}'."
        )));
    }
    Ok((user_id, pkg, pol.id.clone()))
}

/// Records a request submitted at `now` for (package, policy, target) and returns its id.
fn submit_request(
    w: &mut World,
    now: Timestamp,
    request_type: RequestType,
    (package_id, policy_id, target_id): (String, String, String),
    assignment_id: Option<String>,
    justification: Option<String>,
) -> String {
    let id = w.next_id();
    w.requests.push(Request {
        id: id.clone(),
        request_type,
        state: RequestState::Submitted,
        created: Some(now),
        completed: None,
        package_id,
        policy_id,
        target_id,
        assignment_id,
        justification,
        rev: 0,
    });
    id
}

/// `adminRemove`: a request to remove an assignment, carried out in the background.
fn create_remove_request(
    shared: &Arc<Shared>,
    sim: &mut Sim,
    asg: &Value,
    justification: Option<String>,
) -> GResult {
    let epoch = sim.epoch;
    let w = &mut sim.world;
    let now = w.now();
    let aid = assignment_field(asg, "id").ok_or_else(|| bad("adminRemove needs assignment.id."))?;
    if !is_guid(&aid) {
        return Err(bad(format!("assignment.id '{aid}' is not a GUID.")));
    }
    let a = w
        .assignment(&aid)
        .ok_or_else(|| bad(format!("The assignment '{aid}' was not found.")))?;
    if a.state == AssignmentState::Expired {
        return Err(bad(format!("The assignment '{aid}' is already expired.")));
    }
    let (pkg, pol, target, aid) = (
        a.package_id.clone(),
        a.policy_id.clone(),
        a.target_id.clone(),
        a.id.clone(),
    );
    if w.requests.iter().any(|r| {
        r.assignment_id.as_deref() == Some(aid.as_str())
            && r.request_type == RequestType::AdminRemove
            && matches!(r.state, RequestState::Submitted | RequestState::Delivering)
    }) {
        return Err(bad(
            "A removal of this assignment is already in progress (ExistingOpenRequest).",
        ));
    }
    let id = submit_request(
        w,
        now,
        RequestType::AdminRemove,
        (pkg, pol, target),
        Some(aid),
        justification,
    );
    spawn_remove(shared.clone(), epoch, id.clone());
    Ok(Reply::json(201, created_json(w, &id, &shared.base_url)))
}

fn created_json(w: &World, id: &str, base: &str) -> Value {
    let r = w.request(id);
    json!({
        "@odata.context": format!("{}/v1.0/$metadata#identityGovernance/entitlementManagement/assignmentRequests/$entity", base),
        "id": id,
        "requestType": r.map(|r| r.request_type),
        "state": RequestState::Submitted,
        "status": RequestState::Submitted.status(),
        "createdDateTime": null,
        "completedDateTime": null,
        "justification": r.and_then(|r| r.justification.clone()),
        "schedule": schedule_json(None, "notSpecified"),
        "answers": [],
    })
}

/// Runs `f` under the lock if no reset happened since `epoch`.
fn with_epoch(shared: &Shared, epoch: u64, f: impl FnOnce(&mut Sim)) {
    let mut sim = shared.lock();
    if sim.epoch == epoch {
        f(&mut sim);
    }
}

fn request_rev(w: &World, id: &str) -> Option<(u64, RequestState)> {
    w.request(id).map(|r| (r.rev, r.state))
}

fn spawn_add(shared: Arc<Shared>, epoch: u64, req_id: String) {
    let pending = PendingGuard::new(&shared);
    tokio::spawn(async move {
        let _pending = pending;
        let delay = shared.opts.request_delay;
        tokio::time::sleep(delay).await;
        let mut proceed = false;
        with_epoch(&shared, epoch, |sim| {
            let w = &mut sim.world;
            if request_rev(w, &req_id) != Some((0, RequestState::Submitted)) {
                return;
            }
            let aid = w.next_id();
            let now = w.now();
            let Some(r) = w.request_mut(&req_id) else {
                return;
            };
            r.state = RequestState::Delivering;
            r.assignment_id = Some(aid.clone());
            let (pkg, pol, target) = (
                r.package_id.clone(),
                r.policy_id.clone(),
                r.target_id.clone(),
            );
            w.assignments.push(Assignment {
                id: aid,
                package_id: pkg,
                policy_id: pol,
                target_id: target,
                state: AssignmentState::Delivering,
                start: now,
                expired: None,
                rev: 0,
            });
            proceed = true;
        });
        if !proceed {
            return;
        }
        tokio::time::sleep(delay).await;
        with_epoch(&shared, epoch, |sim| {
            let outcome = sim.planned.remove(&req_id).unwrap_or(AddOutcome::Deliver);
            let w = &mut sim.world;
            if request_rev(w, &req_id) != Some((0, RequestState::Delivering)) {
                return;
            }
            let Some(r) = w.request(&req_id) else { return };
            let (pkg, target, aid) = (
                r.package_id.clone(),
                r.target_id.clone(),
                r.assignment_id.clone().unwrap_or_default(),
            );
            let asg_ok = w
                .assignment(&aid)
                .is_some_and(|a| a.rev == 0 && a.state == AssignmentState::Delivering);
            if !asg_ok {
                return;
            }
            let state = match outcome {
                // Stays delivering forever, as Graph sometimes does.
                AddOutcome::Stuck => return,
                AddOutcome::Fail => AssignmentState::DeliveryFailed,
                AddOutcome::Partial => {
                    w.deliver_package_except_first(&pkg, &target);
                    AssignmentState::PartiallyDelivered
                }
                AddOutcome::Deliver => {
                    w.deliver_package(&pkg, &target);
                    AssignmentState::Delivered
                }
            };
            let now = w.now();
            if let Some(a) = w.assignment_mut(&aid) {
                a.state = state;
            }
            if let Some(r) = w.request_mut(&req_id) {
                r.state = RequestState::creating(state);
                r.completed = Some(now);
            }
        });
    });
}

fn spawn_remove(shared: Arc<Shared>, epoch: u64, req_id: String) {
    let pending = PendingGuard::new(&shared);
    tokio::spawn(async move {
        let _pending = pending;
        let delay = shared.opts.request_delay;
        tokio::time::sleep(delay).await;
        let mut proceed = false;
        with_epoch(&shared, epoch, |sim| {
            let w = &mut sim.world;
            if request_rev(w, &req_id) != Some((0, RequestState::Submitted)) {
                return;
            }
            if let Some(r) = w.request_mut(&req_id) {
                r.state = RequestState::Delivering;
                proceed = true;
            }
        });
        if !proceed {
            return;
        }
        tokio::time::sleep(delay).await;
        with_epoch(&shared, epoch, |sim| {
            let w = &mut sim.world;
            if request_rev(w, &req_id) != Some((0, RequestState::Delivering)) {
                return;
            }
            let Some(r) = w.request(&req_id) else { return };
            let (pkg, target, aid) = (
                r.package_id.clone(),
                r.target_id.clone(),
                r.assignment_id.clone().unwrap_or_default(),
            );
            let now = w.now();
            // Mark first so revoke_package does not count this assignment as still promising.
            if let Some(a) = w.assignment_mut(&aid) {
                a.state = AssignmentState::Expired;
                a.expired = Some(now);
            }
            w.revoke_package(&pkg, &target, &aid);
            if let Some(r) = w.request_mut(&req_id) {
                r.state = RequestState::Delivered;
                r.completed = Some(now);
            }
        });
    });
}

fn reprocess_assignment(shared: &Arc<Shared>, sim: &mut Sim, id: &str) -> GResult {
    require_em_guid(id)?;
    let a = sim
        .world
        .assignment(id)
        .ok_or_else(|| em_not_found("assignment", id))?;
    if a.state != AssignmentState::Delivered {
        return Err(bad(format!(
            "The assignment '{}' is in state '{}'; only delivered assignments can be reprocessed.",
            a.id,
            a.state.as_str()
        )));
    }
    let aid = a.id.clone();
    let epoch = sim.epoch;
    let shared = shared.clone();
    let pending = PendingGuard::new(&shared);
    tokio::spawn(async move {
        let _pending = pending;
        tokio::time::sleep(shared.opts.reprocess_delay).await;
        with_epoch(&shared, epoch, |sim| {
            if sim.is_silent(&[&aid]) {
                return;
            }
            let w = &mut sim.world;
            let Some(a) = w.assignment(&aid) else { return };
            if a.state != AssignmentState::Delivered {
                return;
            }
            let (pkg, target) = (a.package_id.clone(), a.target_id.clone());
            w.deliver_package(&pkg, &target);
        });
    });
    Ok(Reply::empty(202))
}

/// How long after `completedDateTime` a failed request can still be reprocessed.
const REQUEST_REPROCESS_WINDOW: SignedDuration = SignedDuration::from_hours(24 * 14);

fn reprocess_request(shared: &Arc<Shared>, sim: &mut Sim, id: &str) -> GResult {
    require_em_guid(id)?;
    let epoch = sim.epoch;
    let w = &mut sim.world;
    let now = w.now();
    let r = w
        .request(id)
        .ok_or_else(|| em_not_found("assignment request", id))?;
    if !r.state.is_failed() {
        return Err(bad(format!(
            "The request '{}' is in state '{}'; only deliveryFailed or partiallyDelivered requests can be reprocessed.",
            r.id,
            r.state.as_str()
        )));
    }
    let in_window = r
        .completed
        .is_some_and(|c| now - REQUEST_REPROCESS_WINDOW <= c);
    if !in_window {
        return Err(bad(format!(
            "The request '{}' completed more than 14 days ago; cancel it and create a new request.",
            r.id
        )));
    }
    let rid = r.id.clone();
    let prev_state = r.state;
    let aid = r.assignment_id.clone();
    let prev_asg_state = aid
        .as_deref()
        .and_then(|a| w.assignment(a))
        .map(|a| a.state);
    if let Some(r) = w.request_mut(&rid) {
        r.state = RequestState::Delivering;
    }
    if let Some(a) = aid.as_deref().and_then(|a| w.assignment_mut(a)) {
        a.state = AssignmentState::Delivering;
    }
    let rev = w.request(&rid).map(|r| r.rev).unwrap_or_default();
    let shared = shared.clone();
    let pending = PendingGuard::new(&shared);
    tokio::spawn(async move {
        let _pending = pending;
        tokio::time::sleep(shared.opts.reprocess_delay).await;
        with_epoch(&shared, epoch, |sim| {
            let silent = sim.is_silent(&[&rid, aid.as_deref().unwrap_or("")]);
            let w = &mut sim.world;
            let Some(r) = w.request(&rid) else { return };
            if r.rev != rev || r.state != RequestState::Delivering {
                return;
            }
            let (pkg, pol, target) = (
                r.package_id.clone(),
                r.policy_id.clone(),
                r.target_id.clone(),
            );
            if silent {
                if let Some(r) = w.request_mut(&rid) {
                    r.state = prev_state;
                }
                if let (Some(a), Some(s)) = (
                    aid.as_deref().and_then(|a| w.assignment_mut(a)),
                    prev_asg_state,
                ) {
                    a.state = s;
                }
                return;
            }
            let now = w.now();
            let aid = match aid {
                Some(a) if w.assignment(&a).is_some() => a,
                _ => {
                    let a = w.next_id();
                    w.assignments.push(Assignment {
                        id: a.clone(),
                        package_id: pkg.clone(),
                        policy_id: pol,
                        target_id: target.clone(),
                        state: AssignmentState::Delivering,
                        start: now,
                        expired: None,
                        rev: 0,
                    });
                    a
                }
            };
            w.deliver_package(&pkg, &target);
            if let Some(a) = w.assignment_mut(&aid) {
                a.state = AssignmentState::Delivered;
            }
            if let Some(r) = w.request_mut(&rid) {
                r.state = RequestState::Delivered;
                r.completed = Some(now);
                r.assignment_id = Some(aid);
            }
        });
    });
    Ok(Reply::empty(202))
}

fn cancel_request(sim: &mut Sim, id: &str) -> GResult {
    require_em_guid(id)?;
    let w = &mut sim.world;
    let now = w.now();
    let r = w
        .request_mut(id)
        .ok_or_else(|| em_not_found("assignment request", id))?;
    if !(r.state.is_open() || r.state.is_failed()) {
        return Err(bad(format!(
            "The request '{}' in state '{}' cannot be canceled.",
            r.id,
            r.state.as_str()
        )));
    }
    r.state = RequestState::Canceled;
    r.completed = Some(now);
    r.rev += 1;
    Ok(Reply::empty(200))
}
