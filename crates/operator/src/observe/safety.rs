//! What the safety rails need read before a grant (README, "Safety"): the target accounts
//! of a plan's writes ([`super::accounts`]) and the members of respected groups. One
//! [`SafetyReads`] per connection (tenant), shared by the controller's objects, and one per
//! `redeliver audit` connection.
//!
//! Cost: nothing for a healthy object; one batched account read per repair (shared by the
//! repairs of one delta window); one member read per respected group per `group_ttl`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use super::AssignmentObservation;
use super::accounts::{AccountReader, AccountSettings};
use super::attribution::Attributor;
use crate::api::{AccessPackageAssignmentStatus, SafetySpec};
use crate::engine::{Attribution, SafetyPolicy, Snapshot, attribution_needed};
use crate::graph::GraphClient;

/// How long a respected group's members are trusted: one delta interval.
pub const RESPECTED_GROUP_TTL: Duration = Duration::from_secs(60);

type Members = Result<Arc<BTreeSet<String>>, String>;
/// One group's last read, behind its own lock (single-flight per group).
type Slot = Arc<Mutex<Option<(Instant, Members)>>>;

/// The per-connection reads of the safety rails.
pub struct SafetyReads {
    /// Accounts without Identity Protection's view.
    accounts: AccountReader,
    /// Accounts with it, for objects that hold risky users.
    with_risk: AccountReader,
    group_ttl: Duration,
    /// Single-flight per group: the entry's lock is held across that group's read only.
    groups: Mutex<HashMap<String, Slot>>,
}

impl SafetyReads {
    /// Reads with these account settings (`check_risk` is chosen per object).
    pub fn new(accounts: AccountSettings, group_ttl: Duration) -> Self {
        Self {
            accounts: AccountReader::new(AccountSettings {
                check_risk: false,
                ..accounts.clone()
            }),
            with_risk: AccountReader::new(AccountSettings {
                check_risk: true,
                ..accounts
            }),
            group_ttl,
            groups: Mutex::new(HashMap::new()),
        }
    }

    /// The policy in force for an object: its own `spec.safety` over its connection's,
    /// with the respected groups' members read (cached for one interval).
    pub async fn policy(
        &self,
        graph: &GraphClient,
        connection: Option<&SafetySpec>,
        own: Option<&SafetySpec>,
    ) -> SafetyPolicy {
        let spec = connection.cloned().unwrap_or_default().overlay(own);
        let mut policy = SafetyPolicy::from_spec(&spec);
        for group in policy.respected.group_ids.clone() {
            match self.members(graph, &group).await {
                Ok(members) => policy
                    .respected
                    .group_members
                    .extend(members.iter().cloned()),
                Err(why) => policy.respected.unreadable_groups.push((group, why)),
            }
        }
        policy
    }

    /// Reads the accounts of `ids` (one coalesced, batched read for what is not cached)
    /// and records them in `snapshot` for the engine's gate.
    pub async fn confirm(
        &self,
        graph: &GraphClient,
        policy: &SafetyPolicy,
        snapshot: &mut Snapshot,
        ids: &[String],
    ) {
        if ids.is_empty() {
            return;
        }
        let reader = if policy.hold_risky {
            &self.with_risk
        } else {
            &self.accounts
        };
        for (id, account) in reader.accounts(graph, ids).await {
            snapshot.record_account(id, account);
        }
    }

    /// `(answered from the cache, read from Graph)` account lookups so far.
    pub fn account_stats(&self) -> (u64, u64) {
        let (a, b) = self.accounts.stats();
        let (c, d) = self.with_risk.stats();
        (a + c, b + d)
    }

    async fn members(&self, graph: &GraphClient, group: &str) -> Members {
        let slot = self
            .groups
            .lock()
            .await
            .entry(group.to_string())
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        if let Some((at, members)) = slot.as_ref()
            && at.elapsed() < self.group_ttl
        {
            return members.clone();
        }
        let members = match graph.list_group_members(group).await {
            Ok(ids) => Ok(Arc::new(
                ids.into_iter().map(|i| i.to_ascii_lowercase()).collect(),
            )),
            Err(e) => {
                tracing::warn!(group, error = %e, "cannot read a respected group's members; removals by them wait as unattributed");
                Err(crate::observe::stable_message(&e))
            }
        };
        *slot = Some((Instant::now(), members.clone()));
        members
    }
}

impl Default for SafetyReads {
    fn default() -> Self {
        Self::new(AccountSettings::default(), RESPECTED_GROUP_TTL)
    }
}

/// Looks up who removed what this object's user newly misses (nothing for a healthy
/// object, nor for a removal already named in its status) and hands the answer to the
/// engine in the snapshot. While actors are respected, a removal is asked about until its
/// actor is known (the cache answers "unavailable" or "not found yet" without a request),
/// and with lookups turned off (`--drift-attribution=false`) it is recorded as
/// unavailable, so the engine's rule for unattributed removals decides.
pub async fn attribute_drift(
    attributor: &Attributor,
    graph: &GraphClient,
    observed: &mut AssignmentObservation,
    previous: Option<&AccessPackageAssignmentStatus>,
    safety: &SafetyPolicy,
) {
    let respecting = !safety.respected.is_empty();
    let Ok(ids) = &observed.resolved else {
        return;
    };
    if !attributor.enabled() && !respecting {
        return;
    }
    let target = ids.target_object_id.clone();
    let wanted = attribution_needed(
        observed.resources(),
        &observed.snapshot,
        &target,
        observed.assignment.as_ref(),
        previous,
        respecting,
    );
    if wanted.is_empty() {
        return;
    }
    if !attributor.enabled() {
        let kinds: Vec<_> = wanted.into_iter().map(|(r, _)| r.kind.clone()).collect();
        for kind in kinds {
            observed.snapshot.record_change(
                kind,
                target.clone(),
                Attribution::Unavailable {
                    reason: "drift attribution is turned off (--drift-attribution)".into(),
                },
            );
        }
        return;
    }
    let found = attributor.attribute(graph, &wanted, &target).await;
    for (kind, attribution) in found {
        observed
            .snapshot
            .record_change(kind, target.clone(), attribution);
    }
}
