//! The directory audit log (`GET /v1.0/auditLogs/directoryAudits`): an entry for every
//! membership and app role change, whether an outside change made through the admin API
//! (with its `actor`) or entitlement management's own delivery and removal.
//!
//! Entries can be held back for a while (`PUT /_sim/auditLog {"lag": "5m"}`), as Entra's
//! audit log shows entries minutes after the change.

use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

use super::odata::{GResult, GraphError, Query, page};
use super::scenario::derive_id;

/// Who made a change, as `initiatedBy` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Actor {
    /// A user (an administrator in the portal, a delegated script).
    User {
        id: String,
        upn: String,
        display_name: String,
    },
    /// An application (a sync job, entitlement management itself).
    App {
        app_id: String,
        display_name: String,
    },
}

/// Display name of the service principal entitlement management's own changes are logged
/// under.
pub(crate) const GOVERNANCE_APP: &str = "Azure AD Identity Governance";
/// Its app id (fixed, so tests can name it).
pub(crate) const GOVERNANCE_APP_ID: &str = "bf26f092-3426-4a99-abfb-97dad74e661a";

impl Actor {
    /// Entitlement management's own changes.
    pub(crate) fn governance() -> Actor {
        Actor::App {
            app_id: GOVERNANCE_APP_ID.into(),
            display_name: GOVERNANCE_APP.into(),
        }
    }

    fn json(&self) -> Value {
        match self {
            Actor::User {
                id,
                upn,
                display_name,
            } => json!({
                "user": {"id": id, "displayName": display_name, "userPrincipalName": upn,
                         "ipAddress": "", "userType": null},
                "app": null,
            }),
            Actor::App {
                app_id,
                display_name,
            } => json!({
                "user": null,
                "app": {"appId": app_id, "displayName": display_name,
                        "servicePrincipalId": null, "servicePrincipalName": null},
            }),
        }
    }
}

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    MemberAdded,
    MemberRemoved,
    OwnerAdded,
    OwnerRemoved,
    AppRoleAdded,
    AppRoleRemoved,
}

impl Change {
    fn activity(&self) -> &'static str {
        match self {
            Change::MemberAdded => "Add member to group",
            Change::MemberRemoved => "Remove member from group",
            Change::OwnerAdded => "Add owner to group",
            Change::OwnerRemoved => "Remove owner from group",
            Change::AppRoleAdded => "Add app role assignment grant to user",
            Change::AppRoleRemoved => "Remove app role assignment from user",
        }
    }

    fn is_group(&self) -> bool {
        !matches!(self, Change::AppRoleAdded | Change::AppRoleRemoved)
    }
}

/// The object a change was made to: a group, or a service principal and one of its roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub id: String,
    pub display_name: String,
    /// The app role, for app role changes.
    pub app_role_id: Option<String>,
}

/// One entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub id: String,
    pub at: Timestamp,
    pub change: Change,
    pub actor: Actor,
    pub target: Target,
    pub user_id: String,
    pub user_upn: String,
}

/// The tenant's audit log, oldest first.
#[derive(Debug, Clone, Default)]
pub(crate) struct AuditLog {
    pub entries: Vec<Entry>,
    /// Entries become visible this long after the change (simulated time).
    pub lag: SignedDuration,
    /// Makes entry ids unique and stable for a seed.
    pub counter: u64,
}

impl AuditLog {
    /// Records one change.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record(
        &mut self,
        seed: u64,
        at: Timestamp,
        change: Change,
        actor: Actor,
        target: Target,
        user_id: &str,
        user_upn: &str,
    ) {
        self.counter += 1;
        let id = derive_id(seed, "audit", &self.counter.to_string());
        self.entries.push(Entry {
            id,
            at,
            change,
            actor,
            target,
            user_id: user_id.to_string(),
            user_upn: user_upn.to_string(),
        });
    }
}

/// The actor named by the admin API's `actor` (a UPN names a user, anything else an app);
/// `known` resolves a UPN to an existing user's (id, display name).
pub(crate) fn actor_named(
    seed: u64,
    name: &str,
    known: impl Fn(&str) -> Option<(String, String)>,
) -> Actor {
    if name.contains('@') {
        let (id, display_name) = known(name).unwrap_or_else(|| {
            (
                derive_id(seed, "audit-actor", name),
                name.split('@').next().unwrap_or(name).to_string(),
            )
        });
        Actor::User {
            id,
            upn: name.to_string(),
            display_name,
        }
    } else {
        Actor::App {
            app_id: derive_id(seed, "audit-app", name),
            display_name: name.to_string(),
        }
    }
}

fn entry_json(e: &Entry) -> Value {
    // Full precision, as Graph's audit entries carry (7 digits there): changes made in the
    // same second keep their order.
    let ts = e.at.to_string();
    let user = json!({
        "id": e.user_id, "displayName": null, "type": "User",
        "userPrincipalName": e.user_upn, "groupType": null, "modifiedProperties": [],
    });
    let target = if e.change.is_group() {
        json!({
            "id": e.target.id, "displayName": e.target.display_name, "type": "Group",
            "userPrincipalName": null, "groupType": "azureAD", "modifiedProperties": [],
        })
    } else {
        json!({
            "id": e.target.id, "displayName": e.target.display_name, "type": "ServicePrincipal",
            "userPrincipalName": null, "groupType": null,
            "modifiedProperties": [
                {"displayName": "AppRole.Id", "oldValue": null,
                 "newValue": format!("\"{}\"", e.target.app_role_id.as_deref().unwrap_or_default())},
            ],
        })
    };
    // Graph lists the user first for group changes, the service principal first for app
    // role changes.
    let targets = if e.change.is_group() {
        json!([user, target])
    } else {
        json!([target, user])
    };
    json!({
        "id": e.id,
        "category": if e.change.is_group() { "GroupManagement" } else { "UserManagement" },
        "correlationId": e.id,
        "result": "success",
        "resultReason": "",
        "activityDisplayName": e.change.activity(),
        "activityDateTime": ts,
        "loggedByService": "Core Directory",
        "operationType": match e.change {
            Change::MemberAdded | Change::OwnerAdded | Change::AppRoleAdded => "Assign",
            _ => "Unassign",
        },
        "initiatedBy": e.actor.json(),
        "targetResources": targets,
        "additionalDetails": [],
    })
}

/// One clause of the `$filter` forms Graph documents for directoryAudits that the
/// simulator understands (docs/graph.md, "Drift attribution").
#[derive(Debug, Clone, PartialEq)]
enum Clause {
    ActivityGe(Timestamp),
    ActivityLe(Timestamp),
    Activity(String),
    Category(String),
    Result(String),
    Target(String),
    InitiatorUpn(String),
    InitiatorAppId(String),
}

/// Splits on ` and ` outside quotes.
fn split_and(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        if c == '\'' {
            quoted = !quoted;
        }
        if !quoted && rest.len() >= 5 && rest[..5].eq_ignore_ascii_case(" and ") {
            out.push(cur.trim().to_string());
            cur.clear();
            rest = &rest[5..];
            continue;
        }
        cur.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out.push(cur.trim().to_string());
    out
}

fn literal(s: &str) -> Option<String> {
    let s = s.trim();
    let inner = s.strip_prefix('\'')?.strip_suffix('\'')?;
    Some(inner.replace("''", "'"))
}

fn parse_clause(c: &str) -> Option<Clause> {
    let lower = c.to_ascii_lowercase();
    if lower.starts_with("targetresources/any(") {
        // targetResources/any(t: t/id eq '...'); the prefix is ASCII, so byte offsets agree.
        let inner = c["targetresources/any(".len()..]
            .trim_end()
            .strip_suffix(')')?;
        let (var, cond) = inner.split_once(':')?;
        let (lhs, lit) = cond.trim().split_once(" eq ")?;
        if !lhs
            .trim()
            .eq_ignore_ascii_case(&format!("{}/id", var.trim()))
        {
            return None;
        }
        return literal(lit).map(Clause::Target);
    }
    let mut words = c.splitn(3, ' ');
    let (field, op, value) = (words.next()?, words.next()?, words.next()?);
    let field = field.to_ascii_lowercase();
    let op = op.to_ascii_lowercase();
    match (field.as_str(), op.as_str()) {
        ("activitydatetime", "ge") => value.trim().parse().ok().map(Clause::ActivityGe),
        ("activitydatetime", "le") => value.trim().parse().ok().map(Clause::ActivityLe),
        ("activitydisplayname", "eq") => literal(value).map(Clause::Activity),
        ("category", "eq") => literal(value).map(Clause::Category),
        ("result", "eq") => literal(value).map(Clause::Result),
        ("initiatedby/user/userprincipalname", "eq") => literal(value).map(Clause::InitiatorUpn),
        ("initiatedby/app/appid", "eq") => literal(value).map(Clause::InitiatorAppId),
        _ => None,
    }
}

fn matches(e: &Entry, clause: &Clause) -> bool {
    let eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    match clause {
        Clause::ActivityGe(t) => e.at >= *t,
        Clause::ActivityLe(t) => e.at <= *t,
        Clause::Activity(a) => eq(e.change.activity(), a),
        Clause::Category(c) => eq(
            if e.change.is_group() {
                "GroupManagement"
            } else {
                "UserManagement"
            },
            c,
        ),
        Clause::Result(r) => eq("success", r),
        Clause::Target(id) => eq(&e.target.id, id) || eq(&e.user_id, id),
        Clause::InitiatorUpn(u) => matches!(&e.actor, Actor::User { upn, .. } if eq(upn, u)),
        Clause::InitiatorAppId(a) => matches!(&e.actor, Actor::App { app_id, .. } if eq(app_id, a)),
    }
}

/// `GET /auditLogs/directoryAudits`: newest first, only entries older than the lag,
/// filtered, paged.
pub(crate) fn list_directory_audits(
    log: &AuditLog,
    now: Timestamp,
    q: &Query,
    base: &str,
    path: &str,
) -> GResult {
    let clauses = match q.get("filter") {
        None => Vec::new(),
        Some(raw) => split_and(raw)
            .iter()
            .map(|c| {
                parse_clause(c).ok_or_else(|| {
                    GraphError::bad_request(
                        "BadRequest",
                        format!("Invalid filter clause: '{c}' is not supported."),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    let visible_until = now - log.lag;
    let items: Vec<Value> = log
        .entries
        .iter()
        .rev()
        .filter(|e| e.at <= visible_until)
        .filter(|e| clauses.iter().all(|c| matches(e, c)))
        .map(entry_json)
        .collect();
    page(
        items,
        q,
        base,
        path,
        "auditLogs/directoryAudits",
        "BadRequest",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        let f = "activityDisplayName eq 'Remove member from group' and targetResources/any(t: t/id eq '0a1B') and activityDateTime ge 2026-12-01T10:00:00Z";
        let cs: Vec<_> = split_and(f).iter().map(|c| parse_clause(c)).collect();
        assert_eq!(
            cs,
            vec![
                Some(Clause::Activity("Remove member from group".into())),
                Some(Clause::Target("0a1B".into())),
                Some(Clause::ActivityGe("2026-12-01T10:00:00Z".parse().unwrap())),
            ]
        );
        assert_eq!(
            parse_clause("targetResources/any(x:x/id eq 'abc')"),
            Some(Clause::Target("abc".into()))
        );
        assert_eq!(
            split_and("activityDisplayName eq 'a and b' and result eq 'success'").len(),
            2
        );
        assert_eq!(parse_clause("loggedByService eq 'Core Directory'"), None);
        assert_eq!(
            parse_clause("activityDateTime gt 2026-12-01T10:00:00Z"),
            None
        );
    }
}
