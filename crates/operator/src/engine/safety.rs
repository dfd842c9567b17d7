//! Intent before repair: the questions a careful administrator asks before pressing
//! Reprocess, answered from observed data (README, "Safety").
//!
//! - [`target_gate`]: is the target still someone who should hold access? A disabled,
//!   deleted or (when asked) at-risk account gets no write; one that cannot be confirmed
//!   neither.
//! - [`removal_intent`]: who removed it? A removal by a respected actor is a decision, not a
//!   fault; while actors are respected, a removal nobody has attributed yet waits a bounded
//!   time for the audit log.
//! - [`BreakerPolicy`]: how much is missing at once? A mass removal stops automatic repair
//!   for the package until a person acknowledges it.

use std::collections::BTreeSet;
use std::time::Duration;

use jiff::Timestamp;

use super::attribution::Actor;
use super::conditions::Reason;
use super::{AccountState, Risk, Snapshot};
use crate::api::{SafetySpec, UnattributedRule, parse_duration};

/// The `Stalled` reasons of the safety rails: a repair held on purpose, not a failure.
pub const HOLD_REASONS: [Reason; 8] = [
    Reason::TargetDisabled,
    Reason::TargetDeleted,
    Reason::TargetAtRisk,
    Reason::TargetUnverified,
    Reason::AccountsHeld,
    Reason::RemovedDeliberately,
    Reason::AttributionUnavailable,
    Reason::MassDrift,
];

/// Whether `reason` is a safety rail's hold.
pub fn is_hold(reason: Reason) -> bool {
    HOLD_REASONS.contains(&reason)
}

/// Default of `safety.attributionWait`: three audit-log lookups five minutes apart fit in it.
pub const DEFAULT_ATTRIBUTION_WAIT: Duration = Duration::from_secs(10 * 60);
/// Default of `safety.massDrift.minSharePercent`.
pub const DEFAULT_MIN_SHARE_PERCENT: u32 = 10;
/// Default of `safety.massDrift.minCount`.
pub const DEFAULT_MIN_COUNT: u32 = 10;
/// Default of `safety.massDrift.maxPerHour`.
pub const DEFAULT_MAX_PER_HOUR: u32 = 250;

/// The safety rails in force for one object: its own `spec.safety` over its connection's,
/// over the defaults, with the respected groups' members as the driver read them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafetyPolicy {
    /// Hold grants to accounts Identity Protection flags.
    pub hold_risky: bool,
    pub respected: Respected,
    /// How long an unattributed removal waits for the audit log while actors are respected.
    pub attribution_wait: Duration,
    pub when_unattributed: UnattributedRule,
    pub breaker: BreakerPolicy,
}

impl Default for SafetyPolicy {
    fn default() -> Self {
        Self::from_spec(&SafetySpec::default())
    }
}

impl SafetyPolicy {
    /// The policy a spec asks for (respected groups' members still to be filled in by the
    /// driver with [`Respected::group_members`]).
    pub fn from_spec(spec: &SafetySpec) -> Self {
        let actors = spec.respected_actors.clone().unwrap_or_default();
        let lower = |v: &[String]| -> BTreeSet<String> {
            v.iter().map(|s| s.trim().to_ascii_lowercase()).collect()
        };
        let md = spec.mass_drift.clone().unwrap_or_default();
        Self {
            hold_risky: spec.hold_risky_users.unwrap_or(false),
            respected: Respected {
                upns: lower(&actors.user_principal_names),
                app_ids: lower(&actors.application_ids),
                group_ids: lower(&actors.group_ids).into_iter().collect(),
                group_members: BTreeSet::new(),
                unreadable_groups: Vec::new(),
            },
            attribution_wait: spec
                .attribution_wait
                .as_deref()
                .and_then(|s| parse_duration(s).ok())
                .unwrap_or(DEFAULT_ATTRIBUTION_WAIT),
            when_unattributed: spec.when_unattributed.unwrap_or_default(),
            breaker: BreakerPolicy {
                enabled: md.enabled.unwrap_or(true),
                min_share_percent: md.min_share_percent.unwrap_or(DEFAULT_MIN_SHARE_PERCENT),
                min_count: md.min_count.unwrap_or(DEFAULT_MIN_COUNT),
                max_per_hour: md.max_per_hour.unwrap_or(DEFAULT_MAX_PER_HOUR),
            },
        }
    }
}

/// Actors whose removals are never undone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Respected {
    /// Lower-cased user principal names.
    pub upns: BTreeSet<String>,
    /// Lower-cased application (client) ids.
    pub app_ids: BTreeSet<String>,
    /// Lower-cased group object ids whose direct members are respected.
    pub group_ids: Vec<String>,
    /// Lower-cased object ids of those groups' members, as the driver read them.
    pub group_members: BTreeSet<String>,
    /// Respected groups whose members could not be read, with why: their members' removals
    /// cannot be recognised, so removals wait as if unattributed.
    pub unreadable_groups: Vec<(String, String)>,
}

impl Respected {
    /// Whether anyone is respected.
    pub fn is_empty(&self) -> bool {
        self.upns.is_empty() && self.app_ids.is_empty() && self.group_ids.is_empty()
    }

    /// Why `actor`'s removals are respected, or `None`.
    pub fn respects(&self, actor: &Actor) -> Option<String> {
        match actor {
            Actor::User { id, name } => {
                if let Some(n) = name
                    && self.upns.contains(&n.to_ascii_lowercase())
                {
                    return Some(format!("{n} is a respected actor"));
                }
                id.as_ref()
                    .filter(|id| self.group_members.contains(&id.to_ascii_lowercase()))
                    .map(|_| format!("{} is a member of a respected group", actor.describe()))
            }
            Actor::App { app_id, .. } => self
                .app_ids
                .contains(&app_id.to_ascii_lowercase())
                .then(|| format!("application {app_id} is a respected actor")),
            Actor::Unknown => None,
        }
    }
}

/// When drift counts as a mass removal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerPolicy {
    pub enabled: bool,
    pub min_share_percent: u32,
    pub min_count: u32,
    /// Drifted assignments one connection may repair automatically per hour.
    pub max_per_hour: u32,
}

impl BreakerPolicy {
    /// Whether `drifted` of a package's `delivered` assignments (Graph's count: drifted ones
    /// included) found at once is a mass removal: at least `min_count`, and at least
    /// `min_share_percent` of them.
    pub fn trips(&self, drifted: usize, delivered: usize) -> bool {
        self.enabled
            && drifted >= self.min_count as usize
            && drifted.saturating_mul(100)
                >= (self.min_share_percent as usize).saturating_mul(delivered)
    }

    /// Whether a connection that has seen `in_last_hour` drifted assignments is past its
    /// hourly cap.
    pub fn over_hourly_cap(&self, in_last_hour: usize) -> bool {
        self.enabled && in_last_hour > self.max_per_hour as usize
    }

    /// The threshold in words, for messages.
    pub fn describe(&self) -> String {
        format!(
            "at least {} assignments and {}% of the package's delivered ones",
            self.min_count, self.min_share_percent
        )
    }
}

/// A tripped breaker as the driver hands it to [`super::plan_assignment`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MassDriftHold {
    /// A sentence with the numbers, e.g. "300 of 1000 delivered assignments of Finance
    /// Analysts drifted within one delta interval (threshold: ...)".
    pub message: String,
}

/// The mass-drift breaker of one connection's `AccessPackageAssignment`s: what drifted,
/// package by package and across the connection in the last hour. Fed by the drivers as
/// drift is found (a group delta window registers everything it found before any object
/// is reconciled, so a mass removal trips the breaker before the first repair), pure data
/// with time passed in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MassDriftBoard {
    packages: std::collections::BTreeMap<String, PackageDrift>,
    /// (first seen, package, assignment) of drift found in the last hour, oldest first.
    recent: std::collections::VecDeque<(Timestamp, String, String)>,
    /// The last acknowledgement value seen (the connection's annotation).
    acknowledgement: Option<String>,
    /// Every trip is acknowledged as it happens ([`MassDriftBoard::acknowledge_all`]).
    acknowledged_all: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct PackageDrift {
    drifted: BTreeSet<String>,
    delivered: usize,
    tripped: Option<Trip>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Trip {
    at: Timestamp,
    drifted: usize,
    delivered: usize,
    hourly: bool,
    acknowledged: bool,
}

impl MassDriftBoard {
    /// Records drift found in `package` (`delivered` delivered assignments, drifted ones
    /// included) for `assignments`; trips the package's breaker when the drift, or the
    /// connection's drift in the last hour, is past `policy`. Returns whether it is tripped.
    pub fn record<'a>(
        &mut self,
        policy: &BreakerPolicy,
        package: &str,
        assignments: impl IntoIterator<Item = &'a str>,
        delivered: usize,
        now: Timestamp,
    ) -> bool {
        self.expire(now);
        let p = self.packages.entry(package.to_string()).or_default();
        p.delivered = delivered.max(p.delivered);
        for a in assignments {
            if p.drifted.insert(a.to_string()) {
                self.recent
                    .push_back((now, package.to_string(), a.to_string()));
            }
        }
        let hourly = policy.over_hourly_cap(self.recent.len());
        let p = self.packages.entry(package.to_string()).or_default();
        if p.tripped.is_none() && (policy.trips(p.drifted.len(), p.delivered) || hourly) {
            p.tripped = Some(Trip {
                at: now,
                drifted: p.drifted.len(),
                delivered: p.delivered,
                hourly: !policy.trips(p.drifted.len(), p.delivered),
                acknowledged: self.acknowledged_all,
            });
        }
        p.tripped.is_some()
    }

    /// `assignment` of `package` is delivered again (or gone): it no longer counts, and a
    /// breaker whose drift fell back below the threshold clears.
    /// (The connection's hourly count only trips a breaker: a package whose own drift is
    /// repaired clears, and more drift within the hour trips it again.)
    /// Returns whether this lifted the package's hold (a tripped, unacknowledged breaker
    /// cleared): its held objects should then be looked at now, not at their next check.
    pub fn repaired(&mut self, policy: &BreakerPolicy, package: &str, assignment: &str) -> bool {
        let Some(p) = self.packages.get_mut(package) else {
            return false;
        };
        p.drifted.remove(assignment);
        let mut lifted = false;
        if !policy.trips(p.drifted.len(), p.delivered) {
            lifted = p.tripped.take().is_some_and(|t| !t.acknowledged);
        }
        if p.drifted.is_empty() && p.tripped.is_none() {
            self.packages.remove(package);
        }
        lifted
    }

    /// A person acknowledged (the connection's annotation has a value not seen before):
    /// every tripped package resumes automatic repair until its drift falls back below the
    /// threshold. Returns the packages whose hold this lifted.
    pub fn acknowledge(&mut self, value: Option<&str>) -> Vec<String> {
        let Some(value) = value else {
            return Vec::new();
        };
        if self.acknowledgement.as_deref() == Some(value) {
            return Vec::new();
        }
        let first = self.acknowledgement.is_none();
        self.acknowledgement = Some(value.to_string());
        // The value present when the board started is no acknowledgement of a later trip.
        if first {
            return Vec::new();
        }
        let mut lifted = Vec::new();
        for (package, p) in &mut self.packages {
            if let Some(t) = &mut p.tripped
                && !std::mem::replace(&mut t.acknowledged, true)
            {
                lifted.push(package.clone());
            }
        }
        lifted
    }

    /// Acknowledges every tripped breaker, now and for the rest of this board's life (a
    /// one-shot `redeliver audit --acknowledge-mass-drift`).
    pub fn acknowledge_all(&mut self) {
        self.acknowledgement = Some(String::new());
        self.acknowledged_all = true;
        for p in self.packages.values_mut() {
            if let Some(t) = &mut p.tripped {
                t.acknowledged = true;
            }
        }
    }

    /// Acknowledges one package's breaker (its guard's annotation changed). Returns whether
    /// this lifted its hold.
    pub fn acknowledge_package(&mut self, package: &str) -> bool {
        self.packages
            .get_mut(package)
            .and_then(|p| p.tripped.as_mut())
            .is_some_and(|t| !std::mem::replace(&mut t.acknowledged, true))
    }

    /// The hold for objects of `package` (named `name` in messages) while its breaker is
    /// tripped and not acknowledged.
    pub fn hold(&self, policy: &BreakerPolicy, package: &str, name: &str) -> Option<MassDriftHold> {
        let t = self.packages.get(package)?.tripped.as_ref()?;
        if t.acknowledged {
            return None;
        }
        let message = if t.hourly {
            format!(
                "Mass drift: more than {} drifted assignments in this connection within an hour \
                 ({} of {name}'s {} delivered ones), so automatic repair of {name} stopped at {}.",
                policy.max_per_hour,
                t.drifted,
                t.delivered,
                super::conditions::to_time(t.at).0
            )
        } else {
            format!(
                "Mass drift: {} of {} delivered assignments of {name} drifted at once \
                 (threshold: {}), so automatic repair of {name} stopped at {}.",
                t.drifted,
                t.delivered,
                policy.describe(),
                super::conditions::to_time(t.at).0
            )
        };
        Some(MassDriftHold { message })
    }

    /// Packages whose breaker is tripped and not acknowledged (for the metric).
    pub fn tripped(&self) -> usize {
        self.packages
            .values()
            .filter(|p| p.tripped.as_ref().is_some_and(|t| !t.acknowledged))
            .count()
    }

    /// Entries held (packages with drift, and the last hour's drift), for the size metric.
    pub fn len(&self) -> usize {
        self.packages.len() + self.recent.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn expire(&mut self, now: Timestamp) {
        let hour = jiff::SignedDuration::from_secs(3600);
        while self
            .recent
            .front()
            .is_some_and(|(at, _, _)| *at + hour <= now)
        {
            self.recent.pop_front();
        }
    }
}

/// Whether a grant to the target may go ahead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetGate {
    /// The account is confirmed: grant. `note` says what could not be checked (a risk that
    /// could not be read), to be shown without holding anything.
    Confirmed { note: Option<String> },
    /// The driver has not read the account yet: read it, then plan again.
    Unconfirmed,
    /// No grant: the `Delivered`/`Stalled` reason and a sentence that says what to do.
    Held { reason: Reason, message: String },
}

/// Whether a write that grants `target` access may be sent, from the account facts in the
/// snapshot.
pub fn target_gate(
    policy: &SafetyPolicy,
    snapshot: &Snapshot,
    target_object_id: &str,
    target: &str,
) -> TargetGate {
    let Some(account) = snapshot.account(target_object_id) else {
        return TargetGate::Unconfirmed;
    };
    let held = |reason, message: String| TargetGate::Held { reason, message };
    match &account.state {
        AccountState::Disabled => {
            return held(
                Reason::TargetDisabled,
                format!(
                    "{target}'s account is disabled (accountEnabled is false), so Redeliver grants \
                     nothing back. Re-enable the account to let the repair proceed, or remove \
                     this declaration if the user has left."
                ),
            );
        }
        AccountState::Deleted => {
            return held(
                Reason::TargetDeleted,
                format!(
                    "{target} no longer exists in the directory, so Redeliver grants nothing. \
                     Remove this declaration."
                ),
            );
        }
        AccountState::Unreadable { reason } => {
            return held(
                Reason::TargetUnverified,
                format!(
                    "Redeliver could not confirm that {target}'s account is enabled ({reason}), \
                     so it grants nothing back. Grant the application User.Read.All, or repair \
                     it in the Entra admin center."
                ),
            );
        }
        AccountState::Enabled => {}
    }
    if !policy.hold_risky {
        return TargetGate::Confirmed { note: None };
    }
    match &account.risk {
        Risk::AtRisk { level, state } => held(
            Reason::TargetAtRisk,
            format!(
                "Microsoft Entra ID Protection reports {target} at risk (riskLevel {level}, \
                 riskState {state}), so Redeliver grants nothing back. Remediate or dismiss the \
                 risk to let the repair proceed."
            ),
        ),
        Risk::Unavailable { reason } => TargetGate::Confirmed {
            note: Some(format!("risk not checked: {reason}")),
        },
        Risk::None | Risk::NotChecked => TargetGate::Confirmed { note: None },
    }
}

/// What is known about who removed one missing resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removed<'a> {
    /// The audit log names the actor.
    By {
        actor: Actor,
        at: Timestamp,
        activity: &'a str,
    },
    /// The audit log cannot be read.
    Unavailable { reason: &'a str },
    /// Not found (yet), or not looked up yet.
    Unknown,
}

/// One missing resource, as [`removal_intent`] weighs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingResource<'a> {
    /// How messages name it: `fin-writers (Member)`.
    pub label: String,
    pub removed: Removed<'a>,
    /// When Redeliver first saw it missing.
    pub since: Timestamp,
}

/// Whether to repair what is missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intent {
    /// A fault: repair it.
    Repair,
    /// A decision by a respected actor: leave it. A sentence naming the actor, the time and
    /// the activity.
    Deliberate { message: String },
    /// Actors are respected and the removal is not attributed yet: wait for the audit log
    /// until `until`.
    Await { until: Timestamp, message: String },
    /// Actors are respected, the audit log cannot be read, and the rule is Hold.
    HoldUnattributed { message: String },
}

/// Whether the missing resources are a fault to repair or a decision to respect.
pub fn removal_intent(
    policy: &SafetyPolicy,
    missing: &[MissingResource],
    now: Timestamp,
) -> Intent {
    if policy.respected.is_empty() {
        return Intent::Repair;
    }
    for m in missing {
        if let Removed::By {
            actor,
            at,
            activity,
        } = &m.removed
            && let Some(why) = policy.respected.respects(actor)
        {
            let at = at.round(jiff::Unit::Second).unwrap_or(*at);
            return Intent::Deliberate {
                message: format!(
                    "{} was removed by {} at {at} (\"{activity}\"), and {why}, so Redeliver \
                     does not undo it. Remove this declaration, or set the annotation {} to a \
                     new value to grant it back.",
                    m.label,
                    actor.describe(),
                    crate::api::REPROCESS_ANNOTATION
                ),
            };
        }
    }
    // A user named by the audit log whose membership of a respected group cannot be read
    // is as unknown as an unattributed removal.
    let unreadable_group = policy
        .respected
        .unreadable_groups
        .first()
        .map(|(g, why)| format!("the members of respected group {g} cannot be read: {why}"));
    let unclear = missing
        .iter()
        .find_map(|m| match (&m.removed, &unreadable_group) {
            (Removed::Unavailable { reason }, _) => Some((m, reason.to_string())),
            (
                Removed::By {
                    actor: Actor::User { .. },
                    ..
                },
                Some(why),
            ) => Some((m, why.clone())),
            _ => None,
        });
    if let Some((m, reason)) = unclear {
        return match policy.when_unattributed {
            UnattributedRule::Repair => Intent::Repair,
            UnattributedRule::Hold => Intent::HoldUnattributed {
                message: format!(
                    "Respected actors are set, but who removed {} cannot be read ({reason}), so \
                     Redeliver leaves it (safety.whenUnattributed: Hold). Grant the application \
                     AuditLog.Read.All, set whenUnattributed to Repair, or set the annotation {} \
                     to a new value to repair it now.",
                    m.label,
                    crate::api::REPROCESS_ANNOTATION
                ),
            },
        };
    }
    let wait = jiff::SignedDuration::try_from(policy.attribution_wait).unwrap_or_default();
    let pending: Vec<&MissingResource> = missing
        .iter()
        .filter(|m| matches!(m.removed, Removed::Unknown))
        .collect();
    let until = pending.iter().map(|m| m.since + wait).max();
    match until {
        Some(until) if now < until => Intent::Await {
            until,
            message: format!(
                "Waiting until {} for Entra's audit log to say who removed {} (respected actors \
                 are set; entries can appear minutes late); it is repaired then unless a \
                 respected actor removed it.",
                super::conditions::to_time(until).0,
                pending
                    .iter()
                    .map(|m| m.label.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
        _ => Intent::Repair,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::TargetAccount;

    fn policy(json: serde_json::Value) -> SafetyPolicy {
        SafetyPolicy::from_spec(&serde_json::from_value(json).unwrap())
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn defaults_hold_accounts_and_trip_on_mass_drift_but_respect_nobody() {
        let p = SafetyPolicy::default();
        assert!(p.respected.is_empty());
        assert!(!p.hold_risky);
        assert_eq!(p.attribution_wait, DEFAULT_ATTRIBUTION_WAIT);
        assert_eq!(p.when_unattributed, UnattributedRule::Hold);
        // 300 of 1000: a mass removal; 1 of 3: a small package, never.
        assert!(p.breaker.trips(300, 1000));
        assert!(!p.breaker.trips(1, 3));
        assert!(!p.breaker.trips(9, 20));
        assert!(p.breaker.trips(10, 100));
        assert!(!p.breaker.trips(10, 101));
        assert!(!p.breaker.over_hourly_cap(250));
        assert!(p.breaker.over_hourly_cap(251));
        let off = policy(serde_json::json!({"massDrift": {"enabled": false}}));
        assert!(!off.breaker.trips(1000, 1000));
    }

    #[test]
    fn the_gate_holds_disabled_deleted_unreadable_and_risky_accounts() {
        let mut snap = Snapshot::new();
        let p = SafetyPolicy::default();
        assert_eq!(
            target_gate(&p, &snap, "U1", "alice"),
            TargetGate::Unconfirmed
        );
        snap.record_account("u1", TargetAccount::enabled());
        assert_eq!(
            target_gate(&p, &snap, "U1", "alice"),
            TargetGate::Confirmed { note: None }
        );
        let mut reason_of = |state: AccountState, risk: Risk, p: &SafetyPolicy| {
            snap.record_account("u1", TargetAccount { state, risk });
            match target_gate(p, &snap, "u1", "alice") {
                TargetGate::Held { reason, message } => {
                    assert!(message.contains("alice"), "{message}");
                    Some(reason)
                }
                _ => None,
            }
        };
        assert_eq!(
            reason_of(AccountState::Disabled, Risk::NotChecked, &p),
            Some(Reason::TargetDisabled)
        );
        assert_eq!(
            reason_of(AccountState::Deleted, Risk::NotChecked, &p),
            Some(Reason::TargetDeleted)
        );
        assert_eq!(
            reason_of(
                AccountState::Unreadable {
                    reason: "403".into()
                },
                Risk::NotChecked,
                &p
            ),
            Some(Reason::TargetUnverified)
        );
        let at_risk = Risk::AtRisk {
            level: "high".into(),
            state: "atRisk".into(),
        };
        // Risk holds only where the policy asks for it.
        assert_eq!(reason_of(AccountState::Enabled, at_risk.clone(), &p), None);
        let risky = policy(serde_json::json!({"holdRiskyUsers": true}));
        assert_eq!(
            reason_of(AccountState::Enabled, at_risk, &risky),
            Some(Reason::TargetAtRisk)
        );
        snap.record_account(
            "u1",
            TargetAccount {
                state: AccountState::Enabled,
                risk: Risk::Unavailable {
                    reason: "the app lacks IdentityRiskyUser.Read.All".into(),
                },
            },
        );
        assert!(matches!(
            target_gate(&risky, &snap, "u1", "alice"),
            TargetGate::Confirmed { note: Some(n) } if n.contains("IdentityRiskyUser.Read.All")
        ));
    }

    #[test]
    fn the_board_trips_on_a_mass_removal_before_any_object_acts_and_clears_below() {
        let p = SafetyPolicy::default().breaker;
        let now = ts("2026-12-04T10:00:00Z");
        let mut board = MassDriftBoard::default();
        board.acknowledge(Some("initial"));
        let ids: Vec<String> = (0..300).map(|i| format!("a{i}")).collect();
        assert!(board.record(&p, "pkg", ids.iter().map(String::as_str), 1000, now));
        let hold = board.hold(&p, "pkg", "Finance").unwrap();
        assert!(hold.message.contains("300 of 1000"), "{}", hold.message);
        assert!(board.hold(&p, "other", "Other").is_none());
        // The value present at start is no acknowledgement; a new one is, and says which
        // package's hold it lifted (so its held objects are looked at at once).
        assert!(board.acknowledge(Some("initial")).is_empty());
        assert!(board.hold(&p, "pkg", "Finance").is_some());
        assert_eq!(board.acknowledge(Some("2026-12-04T10:05:00Z")), ["pkg"]);
        assert!(board.hold(&p, "pkg", "Finance").is_none());
        // Repaired below the threshold: cleared (nothing was held any more, so no repair
        // lifted a hold), and a new mass removal trips it again.
        for id in &ids[..295] {
            assert!(!board.repaired(&p, "pkg", id));
        }
        let more: Vec<String> = (300..600).map(|i| format!("a{i}")).collect();
        assert!(board.record(&p, "pkg", more.iter().map(String::as_str), 1000, now));
        assert!(board.hold(&p, "pkg", "Finance").is_some());
    }

    /// What lifts a hold says so exactly once: the repair that brings the drift below the
    /// threshold, or the first acknowledgement of the package.
    #[test]
    fn the_change_that_lifts_a_hold_reports_it_once() {
        let p = SafetyPolicy::default().breaker;
        let now = ts("2026-12-04T10:00:00Z");
        let ids: Vec<String> = (0..300).map(|i| format!("a{i}")).collect();
        let mut board = MassDriftBoard::default();
        assert!(board.record(&p, "pkg", ids.iter().map(String::as_str), 1000, now));
        let lifted: Vec<usize> = (0..300)
            .filter(|i| board.repaired(&p, "pkg", &ids[*i]))
            .collect();
        // 10 % of 1,000 trips: the 201st repair leaves 99 drifted, below it.
        assert_eq!(lifted, [200]);
        assert!(board.hold(&p, "pkg", "Finance").is_none());

        assert!(board.record(&p, "pkg", ids.iter().map(String::as_str), 1000, now));
        assert!(board.acknowledge_package("pkg"));
        assert!(!board.acknowledge_package("pkg"), "lifted already");
        assert!(!board.acknowledge_package("other"), "never tripped");
    }

    #[test]
    fn the_board_trips_on_the_connections_hourly_cap_and_forgets_after_an_hour() {
        let mut p = SafetyPolicy::default().breaker;
        p.max_per_hour = 20;
        let t0 = ts("2026-12-04T10:00:00Z");
        let mut board = MassDriftBoard::default();
        // 21 packages, one small drift each: no package trips on its own share.
        for i in 0..20 {
            assert!(!board.record(&p, &format!("p{i}"), [format!("a{i}").as_str()], 1000, t0));
        }
        assert!(board.record(&p, "p20", ["a20"], 1000, t0));
        assert!(
            board
                .hold(&p, "p20", "P20")
                .unwrap()
                .message
                .contains("more than 20")
        );
        let later = ts("2026-12-04T11:00:01Z");
        assert!(!board.record(&p, "p21", ["a21"], 1000, later));
        assert!(board.len() < 30);
    }

    fn missing<'a>(removed: Removed<'a>, since: &str) -> MissingResource<'a> {
        MissingResource {
            label: "fin-writers (Member)".into(),
            removed,
            since: ts(since),
        }
    }

    #[test]
    fn respected_actors_by_upn_app_id_and_group_membership() {
        let mut p = policy(serde_json::json!({"respectedActors": {
            "userPrincipalNames": ["SOC-Lead@contoso.com"],
            "applicationIds": ["11111111-1111-1111-1111-111111111111"],
            "groupIds": ["22222222-2222-2222-2222-222222222222"]
        }}));
        p.respected.group_members.insert("responder-id".into());
        let now = ts("2026-12-04T10:00:00Z");
        let by = |actor: Actor| {
            removal_intent(
                &p,
                &[missing(
                    Removed::By {
                        actor,
                        at: ts("2026-12-04T09:59:00Z"),
                        activity: "Remove member from group",
                    },
                    "2026-12-04T09:59:30Z",
                )],
                now,
            )
        };
        let user = |id: &str, name: &str| Actor::User {
            id: Some(id.into()),
            name: Some(name.into()),
        };
        assert!(
            matches!(by(user("x", "soc-lead@contoso.com")), Intent::Deliberate { message } if message.contains("soc-lead@contoso.com"))
        );
        assert!(
            matches!(by(user("RESPONDER-ID", "r@contoso.com")), Intent::Deliberate { message } if message.contains("member of a respected group"))
        );
        assert!(matches!(
            by(Actor::App {
                display_name: "Leaver workflow".into(),
                app_id: "11111111-1111-1111-1111-111111111111".into()
            }),
            Intent::Deliberate { .. }
        ));
        assert_eq!(by(user("y", "intern@contoso.com")), Intent::Repair);
        assert_eq!(by(Actor::Unknown), Intent::Repair);
    }

    #[test]
    fn unattributed_removals_wait_a_bounded_time_and_unavailable_follows_the_rule() {
        let mut p = policy(serde_json::json!({
            "respectedActors": {"userPrincipalNames": ["soc@contoso.com"]},
            "attributionWait": "5m"
        }));
        let since = "2026-12-04T10:00:00Z";
        let pending = [missing(Removed::Unknown, since)];
        assert!(matches!(
            removal_intent(&p, &pending, ts("2026-12-04T10:04:59Z")),
            Intent::Await { until, .. } if until == ts("2026-12-04T10:05:00Z")
        ));
        assert_eq!(
            removal_intent(&p, &pending, ts("2026-12-04T10:05:00Z")),
            Intent::Repair
        );
        let unavailable = [missing(
            Removed::Unavailable {
                reason: "the app lacks AuditLog.Read.All",
            },
            since,
        )];
        let now = ts("2026-12-04T10:00:01Z");
        assert!(matches!(
            removal_intent(&p, &unavailable, now),
            Intent::HoldUnattributed { message } if message.contains("AuditLog.Read.All")
        ));
        p.when_unattributed = UnattributedRule::Repair;
        assert_eq!(removal_intent(&p, &unavailable, now), Intent::Repair);
        // Nobody respected: nothing waits.
        assert_eq!(
            removal_intent(&SafetyPolicy::default(), &pending, now),
            Intent::Repair
        );
    }
}
