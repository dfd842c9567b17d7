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
    let round = Round {
        w,
        q,
        base,
        ids: filter_ids(q)?,
        select: q.select(),
        now_secs: w.now().as_second(),
    };
    match q.get("deltatoken") {
        Some(t) if t.eq_ignore_ascii_case("latest") => Ok(Reply::ok(json!({
            "@odata.context": round.context(),
            "value": [],
            "@odata.deltaLink": round.delta_link(),
        }))),
        Some(t) => round.changes_since(t),
        None => round.initial(),
    }
}

/// `Request_UnsupportedQuery` with `message`.
fn unsupported(message: String) -> GraphError {
    GraphError::bad_request("Request_UnsupportedQuery", message)
}

/// The lower-cased group ids a `$filter` of `id eq` terms names (`None`: every group);
/// rejects the query options delta does not support on groups.
fn filter_ids(q: &Query) -> Result<Option<Vec<String>>, GraphError> {
    for opt in ["expand", "top", "orderby"] {
        if q.has(opt) {
            return Err(unsupported(format!(
                "${opt} is not supported with delta query on groups."
            )));
        }
    }
    let Some(raw) = q.get("filter") else {
        return Ok(None);
    };
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
    Ok(Some(
        ids.into_iter().map(|i| i.to_ascii_lowercase()).collect(),
    ))
}

/// One delta request: what it selects and asks for.
struct Round<'a> {
    w: &'a World,
    q: &'a Query,
    base: &'a str,
    /// The groups the `$filter` names (`None`: all).
    ids: Option<Vec<String>>,
    /// `$select`, lower-cased (`None`: every property).
    select: Option<Vec<String>>,
    now_secs: i64,
}

impl Round<'_> {
    fn selected(&self, gid: &str) -> bool {
        self.ids
            .as_ref()
            .is_none_or(|ids| ids.iter().any(|i| i == gid))
    }

    fn want(&self, p: &str) -> bool {
        self.select
            .as_ref()
            .is_none_or(|s| s.iter().any(|x| x == p))
    }

    fn context(&self) -> String {
        format!("{}/v1.0/$metadata#groups", self.base)
    }

    /// The link to the next round: a token for the current version.
    fn delta_link(&self) -> String {
        link(
            self.base,
            self.q,
            "deltatoken",
            &encode_token(self.w.delta_version, self.now_secs),
        )
    }

    /// A later round: the net membership changes since delta token `t`, removals marked
    /// `@removed`; `410 Gone` for an expired token.
    fn changes_since(&self, t: &str) -> GResult {
        let w = self.w;
        let since = self.token_version(t)?;
        // Net change per (group, member): the last change wins.
        let mut net: BTreeMap<&str, BTreeMap<&str, bool>> = BTreeMap::new();
        for c in w.delta_log.iter().filter(|c| c.version > since) {
            if self.selected(&c.group_id) {
                net.entry(c.group_id.as_str())
                    .or_default()
                    .insert(c.member_id.as_str(), c.added);
            }
        }
        let value: Vec<Value> = net
            .into_iter()
            .map(|(gid, members)| {
                let mut g = json!({"id": gid});
                if self.want("displayname") {
                    g["displayName"] = json!(w.group(gid).map(|g| g.display_name.clone()));
                }
                if self.want("members") {
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
        Ok(Reply::ok(json!({
            "@odata.context": self.context(),
            "value": value,
            "@odata.deltaLink": self.delta_link(),
        })))
    }

    /// The change version delta token `t` was issued at; `410 Gone` with a `Location` to
    /// start over when it has expired (by the admin API or by age).
    fn token_version(&self, t: &str) -> Result<u64, GraphError> {
        let (since, issued) = decode_token(t)
            .filter(|(v, _)| *v <= self.w.delta_version)
            .ok_or_else(|| {
                GraphError::bad_request(
                    "syncStateNotFound",
                    "The delta token is not valid; start a new sync without $deltatoken.",
                )
            })?;
        let expired_by_admin = since < self.w.delta_floor;
        if expired_by_admin || self.now_secs - issued > TOKEN_LIFETIME_SECS {
            let mut params = self.q.encode_without(&["skiptoken", "deltatoken"]);
            if params.is_empty() {
                params.push("$select=members".into());
            }
            let restart = format!("{}/v1.0/groups/delta?{}", self.base, params.join("&"));
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
        Ok(since)
    }

    /// The initial round: every selected group with all its members, paged.
    fn initial(&self) -> GResult {
        let w = self.w;
        let groups: Vec<_> = w.groups.iter().filter(|g| self.selected(&g.id)).collect();
        let offset = match self.q.get("skiptoken") {
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
                if self.want("displayname") {
                    v["displayName"] = json!(g.display_name);
                }
                if self.want("description") {
                    v["description"] = json!(g.description);
                }
                if self.want("members") {
                    v["members@delta"] =
                        Value::Array(g.members.iter().map(|m| member_ref(w, m)).collect());
                }
                v
            })
            .collect();
        let mut body = json!({"@odata.context": self.context(), "value": value});
        if offset + GROUP_PAGE < groups.len() {
            body["@odata.nextLink"] = json!(link(
                self.base,
                self.q,
                "skiptoken",
                &encode_skiptoken(offset + GROUP_PAGE)
            ));
        } else {
            body["@odata.deltaLink"] = json!(self.delta_link());
        }
        Ok(Reply::ok(body))
    }
}
