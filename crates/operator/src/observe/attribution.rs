//! Drift attribution: who removed a missing resource, from Entra's directory audit log
//! (`GET /auditLogs/directoryAudits`, docs/graph.md "Drift attribution").
//!
//! Cost rules (README, "Drift attribution"):
//! - nothing is read for a healthy object, nor for a resource whose `lastChange` is already
//!   in its status (the engine keeps it until the resource is present again);
//! - one query per group (members or owners) or service principal answers every user
//!   removed from it: objects detected together (one delta poll, one verification round)
//!   share it for [`AttributionSettings::batch_window`], and the lookups are single-flight;
//! - audit entries can appear minutes late: a removal not found yet is looked up again at
//!   most [`AttributionSettings::max_lookups`] times in all, at least
//!   [`AttributionSettings::retry_after`] apart, then reported "not found";
//! - a 403 (no `AuditLog.Read.All`) is remembered for
//!   [`AttributionSettings::unavailable_for`]: meanwhile every lookup answers
//!   "unavailable" without a request.
//!
//! What is tracked is bounded: the pending lookups of at most
//! [`AttributionSettings::max_tracked`] (resource, user) pairs, and query results only for
//! as long as they may be reused.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use tokio::sync::Mutex;

use crate::engine::attribution::Actor;
use crate::engine::{Attribution, PromisedResource, ResourceKind, ResourceRead};
use crate::graph::GraphClient;
use crate::graph::error::GraphError;
use crate::graph::models::DirectoryAudit;

/// How attribution looks things up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributionSettings {
    /// Look removals up at all (`--drift-attribution`).
    pub enabled: bool,
    /// How far back a query looks (`activityDateTime ge now - lookback`).
    pub lookback: Duration,
    /// One query result serves every user whose removal is looked up within this long.
    pub batch_window: Duration,
    /// Least time between two lookups for the same removal.
    pub retry_after: Duration,
    /// Lookups for one removal before "not found in the audit log yet".
    pub max_lookups: u32,
    /// After a 403, how long every lookup answers "unavailable" without asking.
    pub unavailable_for: Duration,
    /// Most (resource, user) pairs whose pending lookups are remembered.
    pub max_tracked: usize,
    /// Most pages (of 100 entries, newest first) one query reads.
    pub max_pages: usize,
}

impl Default for AttributionSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            // Entra keeps audit entries 7 days without a P1/P2 licence.
            lookback: Duration::from_secs(7 * 24 * 3600),
            // Long enough for the reconciles one delta poll triggers, short enough that a
            // result cannot predate a later removal of the same resource by much.
            batch_window: Duration::from_secs(5),
            // Three lookups over about ten minutes cover the usual audit log delay.
            retry_after: Duration::from_secs(5 * 60),
            max_lookups: 3,
            unavailable_for: Duration::from_secs(3600),
            max_tracked: 10_000,
            max_pages: 3,
        }
    }
}

struct Fetched {
    at: Instant,
    entries: Arc<Vec<DirectoryAudit>>,
}

struct Tries {
    lookups: u32,
    last: Instant,
}

#[derive(Default)]
struct State {
    fetched: HashMap<ResourceRead, Fetched>,
    tries: HashMap<(ResourceKind, String), Tries>,
    unavailable: Option<(Instant, String)>,
}

/// The shared, bounded lookup cache: one per controller process (or audit run).
pub struct Attributor {
    settings: AttributionSettings,
    // Held across the Graph call on purpose: concurrent lookups of a batch wait for the
    // first one's answer instead of asking again (drift is rare, so this never queues much).
    state: Mutex<State>,
}

/// The audit activities that (add, remove) `kind`.
fn activities(kind: &ResourceKind) -> Option<(&'static str, &'static str)> {
    match kind {
        ResourceKind::GroupMember { .. } => {
            Some(("Add member to group", "Remove member from group"))
        }
        ResourceKind::GroupOwner { .. } => Some(("Add owner to group", "Remove owner from group")),
        ResourceKind::AppRole { .. } => Some((
            "Add app role assignment grant to user",
            "Remove app role assignment from user",
        )),
        // Role changes are logged by PIM under other activities; not looked up yet.
        ResourceKind::EntraRole { .. }
        | ResourceKind::AzureRole { .. }
        | ResourceKind::GroupEligible { .. }
        | ResourceKind::Unverifiable => None,
    }
}

/// The object the audit entry names as target: the group or the service principal.
fn target_id(kind: &ResourceKind) -> Option<&str> {
    match kind {
        ResourceKind::GroupMember { group_id } | ResourceKind::GroupOwner { group_id } => {
            Some(group_id)
        }
        ResourceKind::AppRole {
            service_principal_id,
            ..
        } => Some(service_principal_id),
        ResourceKind::EntraRole { .. }
        | ResourceKind::AzureRole { .. }
        | ResourceKind::GroupEligible { .. }
        | ResourceKind::Unverifiable => None,
    }
}

/// The `$filter` of one query: every change to `kind`'s group or app since `since`
/// (docs/graph.md "Drift attribution"). Additions are read too: a resource restored after
/// an earlier removal shows that removal is not the one being looked up.
pub fn filter_for(kind: &ResourceKind, since: Timestamp) -> Option<String> {
    activities(kind)?;
    let target = target_id(kind)?;
    let since = since.round(jiff::Unit::Second).unwrap_or(since);
    // Ids are GUIDs from Graph, but quote-escape anyway: the filter is built from data.
    Some(format!(
        "targetResources/any(t: t/id eq '{}') and activityDateTime ge {since}",
        target.replace('\'', "''")
    ))
}

/// What a query result says about one user's resource.
#[derive(Debug, PartialEq)]
enum Search {
    /// Its latest change is this removal.
    Removed(Attribution),
    /// Its latest change gave it back: the removal being looked up came later (and is not
    /// in this result).
    Restored,
    /// Nothing about it.
    Nothing,
}

fn unquote(v: &str) -> &str {
    v.trim().trim_matches('"')
}

/// The latest change of `kind` for `user_id` among `entries`.
fn search(entries: &[DirectoryAudit], kind: &ResourceKind, user_id: &str) -> Search {
    let Some((added, removed)) = activities(kind) else {
        return Search::Nothing;
    };
    let eq = |a: Option<&str>, b: &str| a.is_some_and(|a| a.eq_ignore_ascii_case(b));
    let latest = entries
        .iter()
        .filter(|e| {
            e.activity_display_name.eq_ignore_ascii_case(added)
                || e.activity_display_name.eq_ignore_ascii_case(removed)
        })
        .filter(|e| {
            e.result
                .as_deref()
                .is_none_or(|r| r.eq_ignore_ascii_case("success"))
        })
        .filter(|e| {
            e.target_resources
                .iter()
                .any(|t| eq(t.id.as_deref(), user_id))
        })
        .filter(|e| match kind {
            // The role is checked only where the entry names one.
            ResourceKind::AppRole { app_role_id, .. } => e
                .target_resources
                .iter()
                .flat_map(|t| &t.modified_properties)
                .filter(|p| eq(p.display_name.as_deref(), "AppRole.Id"))
                .filter_map(|p| p.new_value.as_deref().or(p.old_value.as_deref()))
                .map(unquote)
                .filter(|v| !v.is_empty())
                .all(|v| v.eq_ignore_ascii_case(app_role_id)),
            _ => true,
        })
        .filter_map(|e| e.activity_date_time.map(|at| (at, e)))
        // Newest first as asked ($orderby), so of equal times the first is the latest.
        .reduce(|best, x| if x.0 > best.0 { x } else { best });
    let Some((at, e)) = latest else {
        return Search::Nothing;
    };
    if !e.activity_display_name.eq_ignore_ascii_case(removed) {
        return Search::Restored;
    }
    let init = &e.initiated_by;
    let actor = if let Some(u) = &init.user {
        let name = u
            .user_principal_name
            .clone()
            .or_else(|| u.display_name.clone());
        if name.is_none() && u.id.is_none() {
            Actor::Unknown
        } else {
            Actor::User {
                id: u.id.clone(),
                name,
            }
        }
    } else if let Some(app) = &init.app {
        Actor::App {
            display_name: app.display_name.clone().unwrap_or_default(),
            app_id: app.app_id.clone().unwrap_or_default(),
        }
    } else {
        Actor::Unknown
    };
    Search::Removed(Attribution::Found {
        actor,
        at,
        activity: e.activity_display_name.clone(),
    })
}

impl Attributor {
    /// A lookup cache with these settings.
    pub fn new(settings: AttributionSettings) -> Self {
        Self {
            settings,
            state: Mutex::new(State::default()),
        }
    }

    /// Whether lookups are made at all.
    pub fn enabled(&self) -> bool {
        self.settings.enabled
    }

    /// What the audit log says about each of `missing` (resources `user_id` lacks, each
    /// with whether it was already missing on the previous pass: a new removal starts its
    /// lookups afresh). A removal not found yet that will be looked up again is left out:
    /// its status says nothing until there is an answer.
    pub async fn attribute(
        &self,
        graph: &GraphClient,
        missing: &[(&PromisedResource, bool)],
        user_id: &str,
    ) -> Vec<(ResourceKind, Attribution)> {
        if !self.settings.enabled || missing.is_empty() {
            return Vec::new();
        }
        let s = &self.settings;
        let mut state = self.state.lock().await;
        let now = Instant::now();
        self.prune(&mut state, now);
        let mut out = Vec::new();
        for (r, continuing) in missing {
            let kind = &r.kind;
            let Some(read) = ResourceRead::for_kind(kind) else {
                continue;
            };
            if let Some((since, reason)) = &state.unavailable
                && now.duration_since(*since) < s.unavailable_for
            {
                let reason = reason.clone();
                out.push((kind.clone(), Attribution::Unavailable { reason }));
                continue;
            }
            let key = (kind.clone(), user_id.to_string());
            if !continuing {
                state.tries.remove(&key);
            }
            if let Some(t) = state.tries.get(&key)
                && t.lookups >= s.max_lookups
            {
                // Given up: said once, and not asked again while remembered.
                out.push((kind.clone(), Attribution::NotFound { lookups: t.lookups }));
                continue;
            }
            let last = state.tries.get(&key).map(|t| t.last);
            // A result fetched for another user of this batch answers this one too, unless
            // it shows the resource given back after the removal it holds.
            let cached = state
                .fetched
                .get(&read)
                .filter(|f| now.duration_since(f.at) < s.batch_window)
                .map(|f| (f.at, search(&f.entries, kind, user_id)));
            let answer = match cached {
                Some((_, Search::Removed(found))) => Some(Search::Removed(found)),
                Some((at, Search::Nothing)) if last.is_none_or(|l| l < at) => Some(Search::Nothing),
                _ => None,
            };
            let answer = match answer {
                Some(a) => a,
                None => {
                    if last.is_some_and(|l| now.duration_since(l) < s.retry_after) {
                        continue;
                    }
                    let Some(filter) = filter_for(kind, Timestamp::now() - s.lookback) else {
                        continue;
                    };
                    match graph.list_directory_audits(&filter, s.max_pages).await {
                        Ok(entries) => {
                            let a = search(&entries, kind, user_id);
                            let entries = Arc::new(entries);
                            state.fetched.insert(read, Fetched { at: now, entries });
                            a
                        }
                        Err(GraphError::Forbidden { .. }) => {
                            let reason = "the app lacks AuditLog.Read.All".to_string();
                            tracing::info!(
                                "drift attribution unavailable: the audit log answered 403; grant AuditLog.Read.All to name who removed a resource"
                            );
                            state.unavailable = Some((now, reason.clone()));
                            out.push((kind.clone(), Attribution::Unavailable { reason }));
                            continue;
                        }
                        Err(e) => {
                            // Counted like an empty answer, so a failing audit log costs
                            // a bounded number of requests too.
                            tracing::warn!(error = %e, "audit log lookup failed");
                            Search::Nothing
                        }
                    }
                }
            };
            if let Search::Removed(found) = answer {
                state.tries.remove(&key);
                out.push((kind.clone(), found));
                continue;
            }
            let t = state.tries.entry(key).or_insert(Tries {
                lookups: 0,
                last: now,
            });
            t.lookups += 1;
            t.last = now;
            if t.lookups >= s.max_lookups {
                out.push((kind.clone(), Attribution::NotFound { lookups: t.lookups }));
            }
        }
        out
    }

    /// Drops what can no longer be used, and the oldest pending lookups beyond the bound.
    fn prune(&self, state: &mut State, now: Instant) {
        let s = &self.settings;
        state
            .fetched
            .retain(|_, f| now.duration_since(f.at) < s.batch_window);
        let keep_tries = s.retry_after.saturating_mul(s.max_lookups.max(1) + 1);
        state
            .tries
            .retain(|_, t| now.duration_since(t.last) < keep_tries);
        while state.tries.len() > s.max_tracked {
            let Some(oldest) = state
                .tries
                .iter()
                .min_by_key(|(_, t)| t.last)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            state.tries.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::models::{AuditApp, AuditInitiator, AuditTarget, AuditUser};

    fn entry(
        user: &str,
        at: &str,
        by_user: Option<&str>,
        by_app: Option<(&str, &str)>,
    ) -> DirectoryAudit {
        DirectoryAudit {
            id: at.into(),
            activity_date_time: Some(at.parse().unwrap()),
            activity_display_name: "Remove member from group".into(),
            result: Some("success".into()),
            initiated_by: AuditInitiator {
                user: by_user.map(|u| AuditUser {
                    user_principal_name: Some(u.into()),
                    ..Default::default()
                }),
                app: by_app.map(|(n, id)| AuditApp {
                    display_name: Some(n.into()),
                    app_id: Some(id.into()),
                }),
            },
            target_resources: vec![
                AuditTarget {
                    id: Some(user.into()),
                    kind: Some("User".into()),
                    ..Default::default()
                },
                AuditTarget {
                    id: Some("g1".into()),
                    kind: Some("Group".into()),
                    ..Default::default()
                },
            ],
        }
    }

    #[test]
    fn the_latest_removal_of_that_user_wins() {
        let kind = ResourceKind::GroupMember {
            group_id: "g1".into(),
        };
        let entries = vec![
            entry("u1", "2026-12-01T10:00:00Z", Some("old@contoso.com"), None),
            entry(
                "u1",
                "2026-12-01T11:00:00Z",
                None,
                Some(("Payroll Sync", "app-1")),
            ),
            entry(
                "u2",
                "2026-12-01T12:00:00Z",
                Some("other@contoso.com"),
                None,
            ),
        ];
        let Search::Removed(found) = search(&entries, &kind, "U1") else {
            panic!("found");
        };
        assert_eq!(
            found.describe(),
            "removed by Payroll Sync (app app-1) at 2026-12-01T11:00:00Z via \"Remove member from group\""
        );
        assert_eq!(search(&entries, &kind, "u3"), Search::Nothing);
        let owner = ResourceKind::GroupOwner {
            group_id: "g1".into(),
        };
        assert_eq!(
            search(&entries, &owner, "u1"),
            Search::Nothing,
            "another activity"
        );
        // Given back after that removal: the removal looked up is a later one.
        let mut restored = entries.clone();
        let mut add = entry("u1", "2026-12-01T11:30:00Z", None, Some(("IGA", "app-2")));
        add.activity_display_name = "Add member to group".into();
        restored.push(add);
        assert_eq!(search(&restored, &kind, "u1"), Search::Restored);
    }

    #[test]
    fn the_filter_uses_the_documented_forms() {
        let kind = ResourceKind::AppRole {
            service_principal_id: "sp-1".into(),
            app_role_id: "r".into(),
        };
        let since: Timestamp = "2026-11-24T10:00:00.7Z".parse().unwrap();
        assert_eq!(
            filter_for(&kind, since).unwrap(),
            "targetResources/any(t: t/id eq 'sp-1') and activityDateTime ge 2026-11-24T10:00:01Z"
        );
        assert_eq!(filter_for(&ResourceKind::Unverifiable, since), None);
    }
}
