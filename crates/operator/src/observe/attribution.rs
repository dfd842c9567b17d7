//! Drift attribution: who removed a missing resource, from Entra's directory audit log
//! (`GET /auditLogs/directoryAudits`, docs/graph.md "Drift attribution").
//!
//! Cost rules (README, "Drift attribution"):
//! - nothing is read for a healthy object, nor for a resource whose `lastChange` is already
//!   in its status (the engine keeps it until the resource is present again);
//! - one query per detection batch: the removals one delta poll reports are registered
//!   together ([`Attributor::detected`]) and answered by one query of the audit log since
//!   the poll before (its one group or app when they share it, the tenant's whole log for
//!   that window otherwise, at most [`AttributionSettings::max_batch_pages`] pages);
//! - a removal found outside a batch (a periodic verification, the first one after
//!   start-up) is asked about with one query per group (members or owners) or service
//!   principal, shared by every user removed from it for
//!   [`AttributionSettings::batch_window`];
//! - every query is single-flight (later callers wait for the first one's answer) and no
//!   lock is held across a Graph call;
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

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

// Tokio's clock (the system's monotonic clock but in tests that move it): the batch window
// and the retry pace are waits like any other.
use tokio::time::Instant;

use jiff::Timestamp;
use tokio::sync::OnceCell;

use crate::domain::clock::{Clock, SystemClock};
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
    /// Most pages (of 100 entries, newest first) one query for one group or app reads.
    pub max_pages: usize,
    /// Most pages one detection batch's query reads (a window of the whole tenant's log);
    /// a removal it did not reach is then asked about for its group or app alone.
    pub max_batch_pages: usize,
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
            max_batch_pages: 10,
        }
    }
}

/// One audit-log query, shared by every lookup that may use it (single-flight: the first
/// caller runs it, the others wait for its answer; no lock is held across the request).
struct Read {
    /// When it was asked for: a change visible in the audit log before this can be in it.
    started: Instant,
    answer: OnceCell<Answer>,
}

impl Read {
    fn new(started: Instant) -> Arc<Self> {
        Arc::new(Self {
            started,
            answer: OnceCell::new(),
        })
    }
}

/// What one query answered.
#[derive(Clone)]
enum Answer {
    /// The entries, newest first, and whether they reach as far back as the query asked
    /// (false when the page budget ran out first).
    Entries {
        entries: Arc<Vec<DirectoryAudit>>,
        complete: bool,
    },
    /// 403: the app lacks AuditLog.Read.All.
    Forbidden,
    /// Any other failure: counted like an empty answer, so a failing audit log costs a
    /// bounded number of requests too.
    Failed,
}

/// A detection batch: the removals one delta poll reported, with the time before which
/// none of them can have happened (the previous poll). One query (a time window, and the
/// one target when all of them share it) answers every one of them.
struct Batch {
    since: Timestamp,
    /// (target id, user id), lower-cased.
    pairs: HashSet<(String, String)>,
    /// The latest query made for the batch (a retry replaces it).
    read: Arc<Read>,
}

struct Tries {
    lookups: u32,
    last: Instant,
}

#[derive(Default)]
struct State {
    /// Detection batches, oldest first.
    batches: Vec<Batch>,
    /// Per-target queries (removals found outside a detection batch).
    targets: HashMap<ResourceRead, Arc<Read>>,
    tries: HashMap<(ResourceKind, String), Tries>,
    unavailable: Option<(Instant, String)>,
}

/// Audit-log queries made, by scope, for `redeliver_attribution_queries_total`.
#[derive(Debug, Default)]
pub struct AttributionStats {
    /// Queries answering a detection batch (one per batch, and one per retry of it).
    pub batch: AtomicU64,
    /// Queries for one group or app (a removal found outside a batch, or one a batch's
    /// page budget did not reach).
    pub target: AtomicU64,
}

/// The shared, bounded lookup cache: one per connection (tenant) in the controller, one
/// per `redeliver audit` run.
pub struct Attributor {
    settings: AttributionSettings,
    // Never held across a Graph call: queries run on their `Read`'s once-cell.
    state: std::sync::Mutex<State>,
    stats: Arc<AttributionStats>,
    /// Wall-clock time: a lookup outside a batch counts its look-back from it.
    clock: Arc<dyn Clock>,
}

/// Where one lookup is answered from.
enum Source {
    Batch(Arc<Read>, Option<String>, Timestamp),
    Target(Arc<Read>),
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

/// The group or service principal a removal of `kind` is logged against, for the kinds
/// attribution looks up (group membership and ownership, app roles).
pub fn attributable_target(kind: &ResourceKind) -> Option<&str> {
    activities(kind)?;
    target_id(kind)
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

/// Whether a detection batch answers one removal.
enum FromBatch {
    /// Yes, with this query.
    Use(Source),
    /// Yes, but it was asked after the last query and the next is not due yet.
    Wait,
    /// The removal is in no batch.
    No,
}

/// Runs one query; the answer is shared by everyone waiting on the same `Read`.
async fn fetch(graph: &GraphClient, filter: &str, max_pages: usize) -> Answer {
    match graph.directory_audits(filter, max_pages).await {
        Ok((entries, complete)) => Answer::Entries {
            entries: Arc::new(entries),
            complete,
        },
        Err(GraphError::Forbidden { .. }) => {
            tracing::info!(
                "drift attribution unavailable: the audit log answered 403; grant AuditLog.Read.All to name who removed a resource"
            );
            Answer::Forbidden
        }
        Err(e) => {
            tracing::warn!(error = %e, "audit log lookup failed");
            Answer::Failed
        }
    }
}

/// `activityDateTime ge` a whole second at or before `since` (Graph compares to the second).
fn since_clause(since: Timestamp) -> String {
    let floor = since
        .round(
            jiff::TimestampRound::new()
                .smallest(jiff::Unit::Second)
                .mode(jiff::RoundMode::Floor),
        )
        .unwrap_or(since);
    format!("activityDateTime ge {floor}")
}

/// The `$filter` of a detection batch's query: the window since the batch's previous poll
/// (with [`BATCH_SLACK`] for clock skew), and its target when all its removals share one.
pub fn batch_filter(target: Option<&str>, since: Timestamp) -> String {
    let window = since_clause(since - BATCH_SLACK);
    match target {
        Some(t) => format!(
            "targetResources/any(t: t/id eq '{}') and {window}",
            t.replace('\'', "''")
        ),
        None => window,
    }
}

/// How far before a batch's previous poll its query looks: the operator's and Entra's
/// clocks may disagree a little.
pub const BATCH_SLACK: jiff::SignedDuration = jiff::SignedDuration::from_secs(120);

impl Attributor {
    /// A lookup cache with these settings.
    pub fn new(settings: AttributionSettings) -> Self {
        Self {
            settings,
            state: std::sync::Mutex::new(State::default()),
            stats: Arc::default(),
            clock: Arc::new(SystemClock),
        }
    }

    /// The same cache reading wall-clock time from `clock` (the controller's).
    pub fn with_clock(self, clock: Arc<dyn Clock>) -> Self {
        Self { clock, ..self }
    }

    /// A lookup cache counting its queries into `stats` (shared by every connection's).
    pub fn with_stats(settings: AttributionSettings, stats: Arc<AttributionStats>) -> Self {
        Self {
            stats,
            ..Self::new(settings)
        }
    }

    /// Whether lookups are made at all.
    pub fn enabled(&self) -> bool {
        self.settings.enabled
    }

    /// Entries tracked (pending lookups, detection batches' removals, per-target answers),
    /// for the state-size metric.
    pub fn tracked(&self) -> usize {
        let state = self.lock();
        state.tries.len()
            + state.targets.len()
            + state.batches.iter().map(|b| b.pairs.len()).sum::<usize>()
    }

    /// The queries made so far (of every connection, when the stats are shared).
    pub fn stats(&self) -> Arc<AttributionStats> {
        self.stats.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a detection batch: removals one delta poll reported, as (target, user)
    /// pairs (a group or service principal id, and a user id), none of them earlier than
    /// `since` (the poll before). Their lookups then share one query, made by the first
    /// reconcile that needs it; nothing is read if none does.
    pub fn detected(&self, since: Timestamp, pairs: impl IntoIterator<Item = (String, String)>) {
        if !self.settings.enabled {
            return;
        }
        let pairs: HashSet<(String, String)> = pairs
            .into_iter()
            .map(|(t, u)| (t.to_ascii_lowercase(), u.to_ascii_lowercase()))
            .collect();
        if pairs.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut state = self.lock();
        state.batches.push(Batch {
            since,
            pairs,
            read: Read::new(now),
        });
        self.prune(&mut state, now);
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
        let now = Instant::now();
        let user = user_id.to_ascii_lowercase();
        let mut out = Vec::new();
        let mut asks = Vec::new();
        {
            let mut state = self.lock();
            self.prune(&mut state, now);
            for (r, continuing) in missing {
                let kind = &r.kind;
                let (Some(read), Some(target)) = (ResourceRead::for_kind(kind), target_id(kind))
                else {
                    continue;
                };
                if activities(kind).is_none() {
                    continue;
                }
                if let Some((since, reason)) = &state.unavailable
                    && now.duration_since(*since) < self.settings.unavailable_for
                {
                    let reason = reason.clone();
                    out.push((kind.clone(), Attribution::Unavailable { reason }));
                    continue;
                }
                let key = (kind.clone(), user.clone());
                if !continuing {
                    state.tries.remove(&key);
                }
                let last = match state.tries.get(&key) {
                    Some(t) if t.lookups >= self.settings.max_lookups => {
                        // Given up: said once, and not asked again while remembered.
                        let lookups = t.lookups;
                        out.push((kind.clone(), Attribution::NotFound { lookups }));
                        continue;
                    }
                    Some(t) => Some(t.last),
                    None => None,
                };
                let source = match self.batch_source(&mut state, target, &user, last, now) {
                    FromBatch::Use(s) => s,
                    FromBatch::Wait => continue,
                    FromBatch::No => match self.target_source(&mut state, read, last, now) {
                        Some(s) => s,
                        None => continue,
                    },
                };
                asks.push((kind, last, source));
            }
        }
        for (kind, last, source) in asks {
            let mut answer = self.run(graph, &source, kind).await;
            let mut search_result = match &answer {
                Answer::Entries { entries, .. } => search(entries, kind, &user),
                _ => Search::Nothing,
            };
            // A batch whose page budget ran out before its window began, or a shared
            // answer older than this lookup that shows the resource given back, cannot
            // say "not there yet": ask about this group or app alone.
            let inconclusive = match (&source, &answer, &search_result) {
                (_, _, Search::Removed(_)) => false,
                (Source::Batch(..), Answer::Entries { complete, .. }, _) => !complete,
                (Source::Target(r), Answer::Entries { .. }, Search::Restored) => {
                    last.is_none() && r.started < now
                }
                _ => false,
            };
            if inconclusive
                && let Some(read) = ResourceRead::for_kind(kind)
                && let Some(target) = {
                    let mut state = self.lock();
                    self.refresh_target(&mut state, read, now)
                }
            {
                answer = self.run(graph, &target, kind).await;
                search_result = match &answer {
                    Answer::Entries { entries, .. } => search(entries, kind, &user),
                    _ => Search::Nothing,
                };
            }
            let mut state = self.lock();
            let key = (kind.clone(), user.clone());
            if let Answer::Forbidden = answer {
                let reason = "the app lacks AuditLog.Read.All".to_string();
                state.unavailable = Some((now, reason.clone()));
                out.push((kind.clone(), Attribution::Unavailable { reason }));
                continue;
            }
            if let Search::Removed(found) = search_result {
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
            if t.lookups >= self.settings.max_lookups {
                out.push((kind.clone(), Attribution::NotFound { lookups: t.lookups }));
            }
        }
        out
    }

    /// The newest detection batch holding (`target`, `user`): its query if that was asked
    /// after this removal's last lookup, a new one for the whole batch once `retry_after`
    /// has passed, or wait.
    fn batch_source(
        &self,
        state: &mut State,
        target: &str,
        user: &str,
        last: Option<Instant>,
        now: Instant,
    ) -> FromBatch {
        let pair = (target.to_ascii_lowercase(), user.to_string());
        let Some(batch) = state
            .batches
            .iter_mut()
            .rev()
            .find(|b| b.pairs.contains(&pair))
        else {
            return FromBatch::No;
        };
        if last.is_some_and(|l| batch.read.started <= l) {
            if last.is_some_and(|l| now.duration_since(l) < self.settings.retry_after) {
                return FromBatch::Wait;
            }
            // Every removal of the batch still unanswered shares this retry.
            batch.read = Read::new(now);
        }
        let mut targets = batch.pairs.iter().map(|(t, _)| t.as_str());
        let first = targets.next();
        let one = first
            .filter(|f| targets.all(|t| t == *f))
            .map(str::to_string);
        FromBatch::Use(Source::Batch(batch.read.clone(), one, batch.since))
    }

    /// This group's or app's own query: one made within `batch_window` after this removal's
    /// last lookup, or a new one unless the last lookup was less than `retry_after` ago.
    fn target_source(
        &self,
        state: &mut State,
        read: ResourceRead,
        last: Option<Instant>,
        now: Instant,
    ) -> Option<Source> {
        if let Some(r) = state.targets.get(&read)
            && now.duration_since(r.started) < self.settings.batch_window
            && last.is_none_or(|l| l < r.started)
        {
            return Some(Source::Target(r.clone()));
        }
        if last.is_some_and(|l| now.duration_since(l) < self.settings.retry_after) {
            return None;
        }
        self.refresh_target(state, read, now)
    }

    /// A new query of this group or app, unless one was started at or after `now`.
    fn refresh_target(
        &self,
        state: &mut State,
        read: ResourceRead,
        now: Instant,
    ) -> Option<Source> {
        let r = match state.targets.get(&read) {
            Some(r) if r.started >= now => r.clone(),
            _ => {
                let r = Read::new(Instant::now().max(now));
                state.targets.insert(read.clone(), r.clone());
                r
            }
        };
        Some(Source::Target(r))
    }

    /// Runs (or waits for) the query behind `source`.
    async fn run(&self, graph: &GraphClient, source: &Source, kind: &ResourceKind) -> Answer {
        let s = &self.settings;
        match source {
            Source::Batch(read, target, since) => read
                .answer
                .get_or_init(|| async {
                    self.stats.batch.fetch_add(1, Ordering::Relaxed);
                    fetch(
                        graph,
                        &batch_filter(target.as_deref(), *since),
                        s.max_batch_pages,
                    )
                    .await
                })
                .await
                .clone(),
            Source::Target(read) => read
                .answer
                .get_or_init(|| async {
                    let Some(filter) = filter_for(kind, self.clock.now() - s.lookback) else {
                        return Answer::Failed;
                    };
                    self.stats.target.fetch_add(1, Ordering::Relaxed);
                    fetch(graph, &filter, s.max_pages).await
                })
                .await
                .clone(),
        }
    }

    /// Drops what can no longer be used, and the oldest pending lookups and batches beyond
    /// the bound.
    fn prune(&self, state: &mut State, now: Instant) {
        let s = &self.settings;
        state
            .targets
            .retain(|_, r| now.duration_since(r.started) < s.batch_window);
        let keep = s.retry_after.saturating_mul(s.max_lookups.max(1) + 1);
        state.tries.retain(|_, t| now.duration_since(t.last) < keep);
        state
            .batches
            .retain(|b| now.duration_since(b.read.started) < keep);
        let mut pairs: usize = state.batches.iter().map(|b| b.pairs.len()).sum();
        while pairs > s.max_tracked && !state.batches.is_empty() {
            pairs -= state.batches.remove(0).pairs.len();
        }
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
        // A detection batch: its window (less the slack), and its one target if it has one.
        assert_eq!(
            batch_filter(None, since),
            "activityDateTime ge 2026-11-24T09:58:00Z"
        );
        assert_eq!(
            batch_filter(Some("g'1"), since),
            "targetResources/any(t: t/id eq 'g''1') and activityDateTime ge 2026-11-24T09:58:00Z"
        );
    }
}
