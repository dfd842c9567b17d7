//! Group delta (`GET /v1.0/groups/delta`, docs/graph.md "Group delta"): membership changes
//! since a delta token.
//!
//! Every membership change bumps a version counter; a delta token is that version. The
//! first round (no token) lists every selected group with all its members as additions;
//! later rounds list only groups with changes, removals carrying
//! `@removed: {"reason": "deleted"}`. `POST /_sim/delta/expire` expires every token issued
//! so far: using one then answers `410 Gone` (`resyncRequired`) with a `Location` to start
//! over, as Graph does when a sync state is lost.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::odata::{
    GResult, GraphError, Query, Reply, decode_skiptoken, encode_skiptoken, parse_filter,
};
use super::state::World;

/// Most ids a delta `$filter` may name.
pub(crate) const MAX_DELTA_IDS: usize = 50;
const GROUP_PAGE: usize = 100;

/// Delta tokens for directory objects are valid for 7 days.
const TOKEN_LIFETIME_SECS: i64 = 7 * 24 * 3600;

/// A delta token: the change version plus when it was issued (simulated time).
fn encode_token(version: u64, issued_secs: i64) -> String {
    format!("c3lOY1N0YXRl{version:x}.{issued_secs:x}")
}

fn decode_token(t: &str) -> Option<(u64, i64)> {
    let (v, issued) = t.strip_prefix("c3lOY1N0YXRl")?.split_once('.')?;
    Some((
        u64::from_str_radix(v, 16).ok()?,
        i64::from_str_radix(issued, 16).ok()?,
    ))
}

fn member_ref(w: &World, id: &str) -> Value {
    let ty = if w.user(id).is_some() {
        "#microsoft.graph.user"
    } else if w.group(id).is_some() {
        "#microsoft.graph.group"
    } else {
        "#microsoft.graph.servicePrincipal"
    };
    json!({"@odata.type": ty, "id": id})
}

fn link(base: &str, q: &Query, name: &str, value: &str) -> String {
    let mut params = q.encode_without(&["skiptoken", "deltatoken"]);
    params.push(format!("${name}={value}"));
    format!("{base}/v1.0/groups/delta?{}", params.join("&"))
}

pub(crate) fn group_delta(w: &World, q: &Query, base: &str) -> GResult {
    let unsupported = |m: String| GraphError::bad_request("Request_UnsupportedQuery", m);
    for opt in ["expand", "top", "orderby"] {
        if q.has(opt) {
            return Err(unsupported(format!(
                "${opt} is not supported with delta query on groups."
            )));
        }
    }
    let ids: Option<Vec<String>> = match q.get("filter") {
        None => None,
        Some(raw) => {
            let f = parse_filter(raw).map_err(|e| unsupported(format!("Invalid filter: {e}")))?;
            f.check(&["id"], &[], true).map_err(|leaf| {
                unsupported(format!(
                    "Only 'id eq' combined with 'or' is supported in delta filters, not '{leaf}'."
                ))
            })?;
            let mut ids = Vec::new();
            f.eq_values("id", &mut ids);
            if ids.len() > MAX_DELTA_IDS {
                return Err(unsupported(format!(
                    "The filter names {} ids; at most {MAX_DELTA_IDS} are allowed.",
                    ids.len()
                )));
            }
            Some(ids.into_iter().map(|i| i.to_ascii_lowercase()).collect())
        }
    };
    let selected = |gid: &str| ids.as_ref().is_none_or(|ids| ids.iter().any(|i| i == gid));
    let sel = q.select();
    let want = |p: &str| sel.as_ref().is_none_or(|s| s.iter().any(|x| x == p));
    let with_members = want("members");
    let context = format!("{base}/v1.0/$metadata#groups");
    let now_secs = w.now().as_second();

    let token = q.get("deltatoken");
    if token.is_some_and(|t| t.eq_ignore_ascii_case("latest")) {
        return Ok(Reply::ok(json!({
            "@odata.context": context,
            "value": [],
            "@odata.deltaLink": link(base, q, "deltatoken", &encode_token(w.delta_version, now_secs)),
        })));
    }
    if let Some(t) = token {
        let (since, issued) = decode_token(t)
            .filter(|(v, _)| *v <= w.delta_version)
            .ok_or_else(|| {
                GraphError::bad_request(
                    "syncStateNotFound",
                    "The delta token is not valid; start a new sync without $deltatoken.",
                )
            })?;
        let expired_by_admin = since < w.delta_floor;
        if expired_by_admin || now_secs - issued > TOKEN_LIFETIME_SECS {
            let mut params = q.encode_without(&["skiptoken", "deltatoken"]);
            if params.is_empty() {
                params.push("$select=members".into());
            }
            let restart = format!("{base}/v1.0/groups/delta?{}", params.join("&"));
            return Err(GraphError::new(
                410,
                "resyncRequired",
                if expired_by_admin {
                    "The sync state has expired; resynchronize from the Location URL."
                } else {
                    "The delta token has expired (older than 7 days); resynchronize from the Location URL."
                },
            )
            .header("Location", restart));
        }
        // Net change per (group, member): the last change wins.
        let mut net: BTreeMap<&str, BTreeMap<&str, bool>> = BTreeMap::new();
        for c in w.delta_log.iter().filter(|c| c.version > since) {
            if selected(&c.group_id) {
                net.entry(c.group_id.as_str())
                    .or_default()
                    .insert(c.member_id.as_str(), c.added);
            }
        }
        let value: Vec<Value> = net
            .into_iter()
            .map(|(gid, members)| {
                let mut g = json!({"id": gid});
                if want("displayname") {
                    g["displayName"] = json!(w.group(gid).map(|g| g.display_name.clone()));
                }
                if with_members {
                    let list: Vec<Value> = members
                        .into_iter()
                        .map(|(m, added)| {
                            let mut v = member_ref(w, m);
                            if !added {
                                v["@removed"] = json!({"reason": "deleted"});
                            }
                            v
                        })
                        .collect();
                    g["members@delta"] = Value::Array(list);
                }
                g
            })
            .collect();
        return Ok(Reply::ok(json!({
            "@odata.context": context,
            "value": value,
            "@odata.deltaLink": link(base, q, "deltatoken", &encode_token(w.delta_version, now_secs)),
        })));
    }

    // Initial round: every selected group, paged.
    let groups: Vec<_> = w.groups.iter().filter(|g| selected(&g.id)).collect();
    let offset = match q.get("skiptoken") {
        None => 0,
        Some(t) => decode_skiptoken(t).ok_or_else(|| {
            GraphError::bad_request("Request_BadRequest", "The $skiptoken is not valid.")
        })?,
    };
    let value: Vec<Value> = groups
        .iter()
        .skip(offset)
        .take(GROUP_PAGE)
        .map(|g| {
            let mut v = json!({"id": g.id});
            if want("displayname") {
                v["displayName"] = json!(g.display_name);
            }
            if want("description") {
                v["description"] = json!(g.description);
            }
            if with_members {
                v["members@delta"] =
                    Value::Array(g.members.iter().map(|m| member_ref(w, m)).collect());
            }
            v
        })
        .collect();
    let mut body = json!({"@odata.context": context, "value": value});
    if offset + GROUP_PAGE < groups.len() {
        body["@odata.nextLink"] = json!(link(
            base,
            q,
            "skiptoken",
            &encode_skiptoken(offset + GROUP_PAGE)
        ));
    } else {
        body["@odata.deltaLink"] = json!(link(
            base,
            q,
            "deltatoken",
            &encode_token(w.delta_version, now_secs)
        ));
    }
    Ok(Reply::ok(body))
}
