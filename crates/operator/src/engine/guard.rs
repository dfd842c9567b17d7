//! Planning one sweep of an `AccessPackageGuard`: verify every assignment of the package
//! against the same snapshot, count, list the drifted ones (bounded), pick which to
//! reprocess, and report unmanaged members (never acted on).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::conditions::{self, ConditionType, Desired, Reason, Status, to_time};
use super::ledger::{
    self, Gate, LedgerUpdate, RepairKey, RepairLedger, RepairLimits, RepairRecord,
};
use super::safety::{SafetyPolicy, TargetGate, target_gate};
use super::{
    EngineEvent, EngineSettings, EventKind, PromisedResource, ResolveFailure, ResourceKind,
    Snapshot,
};
use crate::api::{
    AccessPackageGuardSpec, AccessPackageGuardStatus, AssignmentCounts, DriftedAssignment,
    GuardMode, MAX_DRIFTED_LISTED, MAX_UNMANAGED_SAMPLE, MIN_GUARD_INTERVAL, MassDriftStatus,
    ResourceState, UnmanagedMembers, parse_duration, validate_guard_spec,
};
use crate::domain::models::{Assignment, AssignmentState};

/// Everything one sweep needs.
#[derive(Debug, Clone)]
pub struct GuardInput<'a> {
    /// `metadata.generation`.
    pub generation: Option<i64>,
    pub spec: &'a AccessPackageGuardSpec,
    /// The status as currently stored.
    pub previous: Option<&'a AccessPackageGuardStatus>,
    /// The package's id and display name, or why it did not resolve.
    pub resolved: Result<(String, Option<String>), ResolveFailure>,
    /// Every assignment of the package, with `target` expanded (expired ones are skipped).
    pub assignments: &'a [Assignment],
    /// What the package promises.
    pub resources: &'a [PromisedResource],
    /// Memberships read for this sweep.
    pub snapshot: &'a Snapshot,
    pub settings: &'a EngineSettings,
    /// The shared reprocess histories ([`super::ledger`]).
    pub ledger: &'a RepairLedger,
    /// This guard, as the ledger names it: `AccessPackageGuard namespace/name`.
    pub who: &'a str,
    /// Reprocesses the operator allows right now (its global rate limit), when limited.
    pub reprocess_budget: Option<usize>,
    /// The operator reprocesses nothing (`--reprocess-rate 0`): report only, say why.
    pub operator_report_only: bool,
    /// The redeliver.dev/reprocess-requested-at annotation, when set: the sweep echoes it
    /// in `status.lastHandledRequest` (the watch already runs a sweep when it changes).
    pub reprocess_annotation: Option<&'a str>,
    /// The safety rails in force for this guard ([`super::safety`]).
    pub safety: &'a SafetyPolicy,
    /// The redeliver.dev/mass-drift-acknowledged-at annotation, when set.
    pub mass_drift_ack: Option<&'a str>,
    /// A person acknowledged any mass drift out of band (`redeliver audit
    /// --acknowledge-mass-drift`): repairs proceed even on the sweep that trips it.
    pub mass_drift_acknowledged: bool,
}

/// One drifted assignment found by the sweep (the full list, unbounded, for reports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardDrift {
    pub assignment_id: String,
    pub target_object_id: String,
    /// Principal name when known, otherwise the object id.
    pub target: String,
    pub missing: Vec<PromisedResource>,
}

/// The result of one sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardPlan {
    /// The status to write (compare with [`guard_status_changed`] first).
    pub status: AccessPackageGuardStatus,
    /// Assignment ids to reprocess now (empty in Audit mode), oldest drift first.
    pub reprocess: Vec<String>,
    /// Every drifted assignment.
    pub drifted: Vec<GuardDrift>,
    /// When to sweep again.
    pub requeue_after: Duration,
    /// Events to record.
    pub events: Vec<EngineEvent>,
    /// Changes to the shared repair ledger (see [`super::ledger`]); a `Requested` one is
    /// undone for every reprocess that is not sent.
    pub ledger: Vec<LedgerUpdate>,
    /// What the selection saw, for [`record_guard_outcome`].
    pub in_flight: InFlight,
    /// Targets of selected reprocesses whose accounts have not been read: the driver reads
    /// them in one batch, records them in the snapshot and plans again. Empty when nothing
    /// is to be reprocessed, so a healthy sweep costs no account read.
    pub needs_accounts: Vec<String>,
}

/// Reprocesses in flight that the plan did not send itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InFlight {
    /// Drifts within their cooldown (a reprocess sent earlier, by anyone).
    pub cooling: usize,
    /// Of those, sent by another object covering the assignment.
    pub by_others: usize,
    /// Eligible but held back by the operator's rate limit.
    pub postponed: usize,
}

fn elapsed(since: Timestamp, now: Timestamp) -> Duration {
    let d: SignedDuration = now.duration_since(since);
    d.try_into().unwrap_or(Duration::ZERO)
}

/// Plans one sweep: count every assignment against the snapshot, carry each drift's
/// bookkeeping over, select what to reprocess, then build the status, conditions and events.
pub fn plan_guard_sweep(input: &GuardInput, now: Timestamp) -> GuardPlan {
    let prev = input.previous.cloned().unwrap_or_default();
    let interval = parse_duration(&input.spec.interval)
        .ok()
        .filter(|d| *d >= MIN_GUARD_INTERVAL)
        .unwrap_or(
            input
                .settings
                .default_verify_interval
                .max(MIN_GUARD_INTERVAL),
        );
    let mut status = prev.clone();
    status.observed_generation = input.generation;
    if let Some(request) = input.reprocess_annotation {
        status.last_handled_request = Some(request.to_string());
    }
    if let Some((why, message)) = declaration_failure(input) {
        return stalled_plan(input, &prev, status, why, message, interval, now);
    }
    let (package_id, package_name) = match &input.resolved {
        Ok((id, name)) => (id.clone(), name.clone()),
        Err(_) => (String::new(), None),
    };
    status.access_package_id = Some(package_id.clone());
    status.access_package_name = Some(package_name.unwrap_or(package_id));

    let mut census = count(input);
    let mut entries = carry_over(&prev, &census.drifted, now);
    status.mass_drift = breaker(input, &prev, &census.counts, now);
    let tripped = status
        .mass_drift
        .as_ref()
        .is_some_and(|m| m.acknowledged_time.is_none());
    let selection = select(input, &mut entries, now, tripped);
    census.counts.held = i32::try_from(selection.held).unwrap_or(i32::MAX);
    census.counts.reprocessing =
        i32::try_from(selection.cooling + selection.reprocess.len()).unwrap_or(i32::MAX);
    entries.truncate(MAX_DRIFTED_LISTED);
    status.drifted_not_listed =
        i32::try_from(census.drifted.len() - entries.len()).unwrap_or(i32::MAX);

    status.unmanaged_members = unmanaged(input, &census.assigned);
    status.assignments = census.counts.clone();
    status.drifted = entries;
    status.last_sweep_time = Some(to_time(now));
    status.conditions = conditions::build_conditions(
        &prev.conditions,
        desired_conditions(input, &census, &selection, status.mass_drift.as_ref()),
        input.generation,
        now,
    );
    let events = sweep_events(&prev, &status, &census.drifted, &selection.reprocess);

    // After a repair, look again soon (at the reprocess delay, then less and less often
    // until the cooldown ends), so the status settles once the repair has landed instead of
    // one interval later.
    let requeue_after = selection
        .next_check
        .map_or(interval, |c| c.min(interval))
        .max(Duration::from_secs(1));
    let mut ledger = census.verified;
    ledger.extend(selection.ledger);
    GuardPlan {
        status,
        reprocess: selection.reprocess,
        drifted: census.drifted,
        requeue_after,
        events,
        ledger,
        in_flight: InFlight {
            cooling: selection.cooling,
            by_others: selection.by_others,
            postponed: selection.postponed,
        },
        needs_accounts: selection.needs_accounts,
    }
}

/// The mass-drift breaker of an Enforce guard: trips when the sweep finds at least the
/// threshold drifted, stays tripped until the acknowledgement annotation gets a new value,
/// and clears once the drift falls back below the threshold.
fn breaker(
    input: &GuardInput,
    prev: &AccessPackageGuardStatus,
    counts: &AssignmentCounts,
    now: Timestamp,
) -> Option<MassDriftStatus> {
    let drifted = usize::try_from(counts.drifted).unwrap_or(0);
    let delivered = usize::try_from(counts.delivered + counts.drifted).unwrap_or(0);
    if input.spec.mode != GuardMode::Enforce || !input.safety.breaker.trips(drifted, delivered) {
        return None;
    }
    let ack = input.mass_drift_ack.map(str::to_string);
    match &prev.mass_drift {
        Some(m) if m.acknowledged_time.is_some() => Some(m.clone()),
        Some(m)
            if input.mass_drift_acknowledged
                || (ack.is_some() && m.acknowledgement_before != ack) =>
        {
            Some(MassDriftStatus {
                acknowledged_time: Some(to_time(now)),
                ..m.clone()
            })
        }
        Some(m) => Some(m.clone()),
        None => Some(MassDriftStatus {
            tripped_time: to_time(now),
            drifted: counts.drifted,
            delivered: counts.delivered + counts.drifted,
            acknowledgement_before: ack,
            acknowledged_time: input.mass_drift_acknowledged.then(|| to_time(now)),
        }),
    }
}

/// Applies what became of a sweep's reprocesses (the guard's counterpart of
/// [`super::record_action_failure`]): `sent` were accepted by Graph; every other selected one
/// did not happen (the rate limit ran out, Graph throttled, refused or failed it). Those
/// entries get back the bookkeeping they had before the plan claimed them (from `undo`, in
/// status and in `ledger`), and the counts, the Reconciling/Ready conditions and the
/// reprocess event say what really happened.
pub fn record_guard_outcome(
    plan: &mut GuardPlan,
    sent: &[String],
    undo: &mut super::ledger::Undo,
    ledger: &mut RepairLedger,
    who: &str,
    now: Timestamp,
) {
    let not_sent: Vec<String> = plan
        .reprocess
        .iter()
        .filter(|id| !sent.contains(id))
        .cloned()
        .collect();
    let previous = |key: &RepairKey| undo.previous(key).cloned();
    restore_unsent(plan, &not_sent, previous, who);
    for id in &not_sent {
        undo.restore(ledger, Some(&RepairKey::assignment(id)));
    }
    settle_sweep(plan, sent, not_sent.len(), now);
}

/// What became of a sweep's reprocesses, for the transaction's `Repair::record`
/// (`engine::transaction`): what Graph `accepted` is in flight; what it refused (`refused`
/// of them) stays counted (a refused reprocess cannot loop) but is not in flight; what was
/// `not_sent` (the budget, throttling, a failure in transit) gets back the bookkeeping the
/// claim replaced (`claimed_before`) and the client-request-id its entry had in
/// `previous`.
pub fn record_sweep_outcome(
    plan: &mut GuardPlan,
    accepted: &[String],
    refused: usize,
    not_sent: &[String],
    claimed_before: impl Fn(&RepairKey) -> Option<RepairRecord>,
    previous: Option<&AccessPackageGuardStatus>,
    now: Timestamp,
) {
    let who = plan
        .ledger
        .iter()
        .find_map(|u| match u {
            LedgerUpdate::Requested { record, .. } => Some(record.by.clone()),
            LedgerUpdate::Verified { .. } => None,
        })
        .unwrap_or_default();
    let before = |id: &str| {
        previous.and_then(|p| {
            p.drifted
                .iter()
                .find(|d| d.assignment_id == id)
                .and_then(|d| d.last_client_request_id.clone())
        })
    };
    restore_unsent(plan, not_sent, claimed_before, &who);
    for entry in plan.status.drifted.iter_mut() {
        if not_sent.contains(&entry.assignment_id) {
            entry.last_client_request_id = before(&entry.assignment_id);
        }
    }
    settle_sweep(plan, accepted, not_sent.len() + refused, now);
    // Traceable: the event names each reprocess sent with its client-request-id.
    let named: Vec<String> = plan
        .status
        .drifted
        .iter()
        .filter(|d| accepted.contains(&d.assignment_id))
        .filter_map(|d| {
            Some(format!(
                "{} {}",
                d.target,
                d.last_client_request_id.as_ref()?
            ))
        })
        .take(10)
        .collect();
    if !named.is_empty() {
        for e in &mut plan.events {
            if e.kind == EventKind::ReprocessRequested {
                e.message = format!("{} client-request-ids: {}.", e.message, named.join(", "));
            }
        }
    }
}

/// Gives the drift entries of `not_sent` back the bookkeeping they had before the plan
/// claimed them (`previous` names it).
fn restore_unsent(
    plan: &mut GuardPlan,
    not_sent: &[String],
    previous: impl Fn(&RepairKey) -> Option<RepairRecord>,
    who: &str,
) {
    for entry in plan.status.drifted.iter_mut() {
        if !not_sent.contains(&entry.assignment_id) {
            continue;
        }
        let old = previous(&RepairKey::assignment(&entry.assignment_id));
        entry.last_reprocess_time = old.as_ref().map(|r| to_time(r.last_requested));
        entry.reprocess_attempts = old.as_ref().map_or(0, |r| r.attempts);
        entry.reprocessed_by = old.filter(|r| r.by != who).map(|r| r.by);
    }
}

/// Keeps in flight only what was `sent`, and makes the counts, the Reconciling/Ready
/// conditions and the reprocess event say it (`unsent` selected ones did not go out).
fn settle_sweep(plan: &mut GuardPlan, sent: &[String], unsent: usize, now: Timestamp) {
    if unsent == 0 {
        return;
    }
    plan.reprocess.retain(|id| sent.contains(id));
    let f = plan.in_flight;
    let in_flight = f.cooling + plan.reprocess.len();
    plan.status.assignments.reprocessing = i32::try_from(in_flight).unwrap_or(i32::MAX);
    let generation = plan.status.observed_generation;
    let conds = &mut plan.status.conditions;
    if in_flight > 0 || f.postponed > 0 || unsent > 0 {
        let message = reconciling_message(
            in_flight,
            plan.reprocess.len(),
            f.by_others,
            f.postponed,
            unsent,
        );
        let reconciling = Desired::new(
            ConditionType::Reconciling,
            Status::True,
            Reason::Reprocessing,
            message,
        );
        if conditions::find(conds, ConditionType::Stalled).is_none() {
            conditions::set_condition(
                conds,
                Desired::new(
                    ConditionType::Ready,
                    Status::False,
                    reconciling.reason,
                    reconciling.message.clone(),
                ),
                generation,
                now,
            );
        }
        conditions::set_condition(conds, reconciling, generation, now);
    }
    let sent_targets: Vec<&str> = plan
        .drifted
        .iter()
        .filter(|d| plan.reprocess.contains(&d.assignment_id))
        .take(10)
        .map(|d| d.target.as_str())
        .collect();
    let more = plan.reprocess.len().saturating_sub(sent_targets.len());
    let sent_count = plan.reprocess.len();
    plan.events.retain_mut(|e| {
        if e.kind != EventKind::ReprocessRequested {
            return true;
        }
        e.message = format!(
            "Reprocessing {}: {}{} ({} not sent: the reprocess rate limit, or Graph throttled or refused them).",
            count_of(sent_count, "drifted assignment"),
            sent_targets.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            },
            unsent
        );
        sent_count > 0
    });
}

/// The Reprocessing message: how many drifts are in flight and why.
fn reconciling_message(
    in_flight: usize,
    this_sweep: usize,
    by_others: usize,
    postponed: usize,
    not_sent: usize,
) -> String {
    let mut details = vec![format!("{this_sweep} this sweep")];
    if by_others > 0 {
        details.push(format!("{by_others} by other objects covering them"));
    }
    if postponed > 0 {
        details.push(format!(
            "{postponed} postponed by the operator's reprocess rate limit"
        ));
    }
    if not_sent > 0 {
        details.push(format!(
            "{not_sent} not sent (rate limit or Graph throttling), retried at the next sweep"
        ));
    }
    format!(
        "{} {} being reprocessed ({}).",
        count_of(in_flight, "drifted assignment"),
        if in_flight == 1 { "is" } else { "are" },
        details.join(", ")
    )
}

/// An invalid spec or a package that did not resolve: the reason and the message.
fn declaration_failure(input: &GuardInput) -> Option<(Reason, String)> {
    match validate_guard_spec(input.spec) {
        Err(e) => Some((Reason::InvalidSpec, format!("Invalid declaration: {e}."))),
        Ok(()) => input
            .resolved
            .as_ref()
            .err()
            .map(|f| (f.kind.reason(), f.message.clone())),
    }
}

fn stalled_plan(
    input: &GuardInput,
    prev: &AccessPackageGuardStatus,
    mut status: AccessPackageGuardStatus,
    why: Reason,
    message: String,
    interval: Duration,
    now: Timestamp,
) -> GuardPlan {
    let desired = vec![
        Desired::new(ConditionType::Ready, Status::False, why, message.clone()),
        Desired::new(
            ConditionType::Delivered,
            Status::Unknown,
            Reason::NotVerified,
            "Assignments cannot be verified until the declaration resolves.",
        ),
        Desired::new(ConditionType::Stalled, Status::True, why, message),
    ];
    status.conditions =
        conditions::build_conditions(&prev.conditions, desired, input.generation, now);
    let events = stalled_event(prev, &status);
    GuardPlan {
        status,
        reprocess: Vec::new(),
        drifted: Vec::new(),
        requeue_after: interval,
        events,
        ledger: Vec::new(),
        in_flight: InFlight::default(),
        needs_accounts: Vec::new(),
    }
}

/// What the sweep found, assignment by assignment.
struct Census<'a> {
    counts: AssignmentCounts,
    /// Every drifted assignment (unbounded).
    drifted: Vec<GuardDrift>,
    /// Resources whose read failed.
    unreadable: BTreeSet<String>,
    /// Users holding a live assignment (only looked up in, so hashed: one insert per
    /// assignment of the package).
    assigned: HashSet<&'a str>,
    /// Assignments verified delivered again with reprocess attempts pending in the ledger.
    verified: Vec<LedgerUpdate>,
}

/// Counts every live assignment of the package against the snapshot.
fn count<'a>(input: &GuardInput<'a>) -> Census<'a> {
    let mut census = Census {
        counts: AssignmentCounts::default(),
        drifted: Vec::new(),
        unreadable: BTreeSet::new(),
        assigned: HashSet::with_capacity(input.assignments.len()),
        verified: Vec::new(),
    };
    // Each resource's check prepared once for the whole package, not per assignment.
    let checkers: Vec<_> = input
        .resources
        .iter()
        .map(|r| (r, input.snapshot.checker(&r.kind)))
        .collect();
    let mut unread_noted = vec![false; checkers.len()];
    let counts = &mut census.counts;
    for a in input.assignments {
        let target = a.target.as_ref();
        let object_id = target.and_then(|t| t.object_id.as_deref());
        if a.state == AssignmentState::Expired {
            continue;
        }
        if let Some(id) = object_id {
            census.assigned.insert(id);
        }
        counts.total += 1;
        match a.state {
            AssignmentState::Delivered => {}
            AssignmentState::DeliveryFailed | AssignmentState::PartiallyDelivered => {
                counts.failed += 1;
                continue;
            }
            _ => {
                counts.pending += 1;
                continue;
            }
        }
        let Some(object_id) = object_id else {
            // Without an object id (subject not yet in the tenant) nothing can be checked.
            counts.pending += 1;
            continue;
        };
        let mut missing = Vec::new();
        let mut unknown = false;
        for (i, (r, checker)) in checkers.iter().enumerate() {
            match checker.check(object_id) {
                ResourceState::Missing => missing.push((*r).clone()),
                ResourceState::Unknown => {
                    unknown = true;
                    if !unread_noted[i] {
                        unread_noted[i] = true;
                        census.unreadable.insert(r.label());
                    }
                }
                ResourceState::Present | ResourceState::Unverifiable => {}
            }
        }
        if !missing.is_empty() {
            counts.drifted += 1;
            census.drifted.push(GuardDrift {
                assignment_id: a.id.clone(),
                target_object_id: object_id.to_string(),
                target: target
                    .and_then(|t| t.principal_name.clone())
                    .unwrap_or_else(|| object_id.to_string()),
                missing,
            });
        } else if unknown {
            counts.pending += 1;
        } else {
            counts.delivered += 1;
            if !input.ledger.is_empty() {
                let key = RepairKey::assignment(&a.id);
                if input.ledger.get(&key).is_some_and(|r| r.attempts > 0) {
                    census.verified.push(LedgerUpdate::Verified { key });
                }
            }
        }
    }
    census
}

/// One status entry per drift, with its bookkeeping (first seen, reprocesses) carried over
/// from the previous status; oldest drift first.
fn carry_over(
    prev: &AccessPackageGuardStatus,
    drifted: &[GuardDrift],
    now: Timestamp,
) -> Vec<DriftedAssignment> {
    let previous: BTreeMap<&str, &DriftedAssignment> = prev
        .drifted
        .iter()
        .map(|d| (d.assignment_id.as_str(), d))
        .collect();
    let mut entries: Vec<DriftedAssignment> = drifted
        .iter()
        .map(|d| {
            let old = previous.get(d.assignment_id.as_str());
            DriftedAssignment {
                target: d.target.clone(),
                target_object_id: d.target_object_id.clone(),
                assignment_id: d.assignment_id.clone(),
                missing: d.missing.iter().map(PromisedResource::label).collect(),
                since: old.map(|o| o.since.clone()).unwrap_or_else(|| to_time(now)),
                last_reprocess_time: old.and_then(|o| o.last_reprocess_time.clone()),
                reprocess_attempts: old.map(|o| o.reprocess_attempts).unwrap_or(0),
                reprocessed_by: old.and_then(|o| o.reprocessed_by.clone()),
                last_client_request_id: old.and_then(|o| o.last_client_request_id.clone()),
                held: None,
            }
        })
        .collect();
    entries.sort_by(|a, b| {
        a.since
            .cmp(&b.since)
            .then_with(|| a.assignment_id.cmp(&b.assignment_id))
    });
    entries
}

/// What [`select`] chose, and what it saw.
struct Selection {
    reprocess: Vec<String>,
    /// Claims of the selected reprocesses.
    ledger: Vec<LedgerUpdate>,
    /// Drifts within their cooldown (a reprocess is in flight), `by_others` of them sent by
    /// another covering object.
    cooling: usize,
    by_others: usize,
    exhausted: usize,
    /// Eligible but held back by the operator's rate limit.
    postponed: usize,
    /// maxReprocessPerSweep as it applies (0 in Audit mode or at `--reprocess-rate 0`).
    spec_budget: usize,
    /// When the earliest repair should be checked.
    next_check: Option<Duration>,
    /// Drifts held by the account gate.
    held: usize,
    /// Targets to confirm before the selection can stand.
    needs_accounts: Vec<String>,
}

/// Reprocess selection over every drifted assignment (not only the listed ones), oldest
/// drift first: Enforce only, within maxReprocessPerSweep and the operator's rate limit,
/// skipping those within their cooldown (whoever reprocessed them) and those whose shared
/// attempts are used up. Mirrors the shared history into each entry.
fn select(
    input: &GuardInput,
    entries: &mut [DriftedAssignment],
    now: Timestamp,
    tripped: bool,
) -> Selection {
    let settings = input.settings;
    let who = input.who;
    let limits = RepairLimits {
        cooldown: settings.guard_reprocess_cooldown,
        max_attempts: settings.guard_max_attempts,
    };
    let spec_budget = match input.spec.mode {
        _ if input.operator_report_only || tripped => 0,
        GuardMode::Enforce => usize::try_from(input.spec.max_reprocess_per_sweep).unwrap_or(0),
        GuardMode::Audit => 0,
    };
    let budget = spec_budget.min(input.reprocess_budget.unwrap_or(usize::MAX));
    let mut out = Selection {
        reprocess: Vec::new(),
        ledger: Vec::new(),
        cooling: 0,
        by_others: 0,
        exhausted: 0,
        postponed: 0,
        spec_budget,
        next_check: None,
        held: 0,
        needs_accounts: Vec::new(),
    };
    let check_at = |next: &mut Option<Duration>, d: Duration| {
        *next = Some(next.map_or(d, |c| c.min(d)));
    };
    for e in entries.iter_mut() {
        let key = RepairKey::assignment(&e.assignment_id);
        let own = e.last_reprocess_time.as_ref().map(|t| RepairRecord {
            attempts: e.reprocess_attempts,
            last_requested: t.0,
            by: e.reprocessed_by.clone().unwrap_or_else(|| who.to_string()),
        });
        let history = input.ledger.history(&key, own.as_ref()).cloned();
        if let Some(h) = &history {
            e.last_reprocess_time = Some(to_time(h.last_requested));
            e.reprocess_attempts = h.attempts;
            e.reprocessed_by = (h.by != who).then(|| h.by.clone());
        }
        match ledger::gate(history.as_ref(), limits, now, false) {
            Gate::CoolingDown { record, next } => {
                out.cooling += 1;
                if record.by != who {
                    out.by_others += 1;
                }
                let d = recheck_after(record.last_requested, next, now, settings.poll_interval);
                check_at(&mut out.next_check, d);
            }
            Gate::Exhausted { .. } => {
                if input.spec.mode == GuardMode::Enforce {
                    out.exhausted += 1;
                }
            }
            Gate::Open { attempts } => {
                // An account still to be confirmed takes its place in the budget, so a sweep
                // asks for no more accounts than it may repair.
                if out.reprocess.len() + out.needs_accounts.len() < budget {
                    match target_gate(input.safety, input.snapshot, &e.target_object_id, &e.target)
                    {
                        TargetGate::Confirmed { .. } => e.held = None,
                        TargetGate::Unconfirmed => {
                            out.needs_accounts.push(e.target_object_id.clone());
                            continue;
                        }
                        TargetGate::Held { reason, message } => {
                            e.held = Some(format!("{reason}: {message}"));
                            out.held += 1;
                            check_at(&mut out.next_check, settings.hold_recheck);
                            continue;
                        }
                    }
                    let record = RepairRecord {
                        attempts: attempts.saturating_add(1),
                        last_requested: now,
                        by: who.to_string(),
                    };
                    e.last_reprocess_time = Some(to_time(now));
                    e.reprocess_attempts = record.attempts;
                    e.reprocessed_by = None;
                    out.ledger.push(LedgerUpdate::Requested { key, record });
                    out.reprocess.push(e.assignment_id.clone());
                    check_at(&mut out.next_check, settings.poll_interval);
                } else if out.reprocess.len() < spec_budget {
                    out.postponed += 1;
                }
            }
        }
    }
    out
}

/// Users in a promised group without a live (non-expired) assignment. An expired
/// assignment should have removed the user, so one still in the group counts.
fn unmanaged(input: &GuardInput, assigned: &HashSet<&str>) -> UnmanagedMembers {
    let mut unmanaged: BTreeSet<&str> = BTreeSet::new();
    for r in input.resources {
        if let ResourceKind::GroupMember { group_id } = &r.kind
            && let Some(members) = input.snapshot.group_members.get(group_id)
        {
            unmanaged.extend(
                members
                    .iter()
                    .map(String::as_str)
                    .filter(|m| !assigned.contains(m)),
            );
        }
    }
    UnmanagedMembers {
        count: i32::try_from(unmanaged.len()).unwrap_or(i32::MAX),
        sample: unmanaged
            .iter()
            .take(MAX_UNMANAGED_SAMPLE)
            .map(|s| s.to_string())
            .collect(),
    }
}

/// Ready, Delivered, and Reconciling/Stalled while true.
fn desired_conditions(
    input: &GuardInput,
    census: &Census,
    sel: &Selection,
    mass_drift: Option<&MassDriftStatus>,
) -> Vec<Desired> {
    let delivered = delivered_condition(census);
    let reconciling = reconciling_condition(sel);
    let stalled = stalled_condition(input, sel, mass_drift);
    let ready = ready_condition(
        input,
        census,
        sel,
        &delivered,
        stalled.as_ref().or(reconciling.as_ref()),
    );
    let mut desired = vec![ready, delivered];
    desired.extend(reconciling);
    desired.extend(stalled);
    desired
}

/// Delivered: the worst state among the assignments wins (drifted, then failed, then
/// unreadable, then still pending).
fn delivered_condition(census: &Census) -> Desired {
    let counts = &census.counts;
    if counts.drifted > 0 {
        Desired::new(
            ConditionType::Delivered,
            Status::False,
            Reason::ResourcesMissing,
            format!(
                "{} of {} assignments are drifted (Graph says delivered, resources missing).",
                counts.drifted, counts.total
            ),
        )
    } else if counts.failed > 0 {
        Desired::new(
            ConditionType::Delivered,
            Status::False,
            Reason::DeliveryFailed,
            format!(
                "{} of {} assignments failed delivery.",
                counts.failed, counts.total
            ),
        )
    } else if !census.unreadable.is_empty() {
        Desired::new(
            ConditionType::Delivered,
            Status::Unknown,
            Reason::VerificationFailed,
            format!(
                "Could not read: {}.",
                census
                    .unreadable
                    .iter()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    } else if counts.pending > 0 {
        Desired::new(
            ConditionType::Delivered,
            Status::False,
            Reason::AwaitingDelivery,
            format!(
                "{} of {} assignments are still being delivered.",
                counts.pending, counts.total
            ),
        )
    } else {
        Desired::new(
            ConditionType::Delivered,
            Status::True,
            Reason::AllDelivered,
            format!(
                "All {} assignments are delivered and verified.",
                counts.total
            ),
        )
    }
}

/// Reconciling while a reprocess is in flight or held back by the rate limit.
fn reconciling_condition(sel: &Selection) -> Option<Desired> {
    let in_flight = sel.cooling + sel.reprocess.len();
    (in_flight > 0 || sel.postponed > 0).then(|| {
        Desired::new(
            ConditionType::Reconciling,
            Status::True,
            Reason::Reprocessing,
            reconciling_message(
                in_flight,
                sel.reprocess.len(),
                sel.by_others,
                sel.postponed,
                0,
            ),
        )
    })
}

/// Stalled when nothing more will be repaired without a person: an unacknowledged mass
/// drift first, then drifts held by the account gate (only while nothing else is moving),
/// then drifts whose reprocess attempts are used up.
fn stalled_condition(
    input: &GuardInput,
    sel: &Selection,
    mass_drift: Option<&MassDriftStatus>,
) -> Option<Desired> {
    let tripped = mass_drift.filter(|m| m.acknowledged_time.is_none());
    let stalled = if let Some(m) = tripped {
        Some(Desired::new(
            ConditionType::Stalled,
            Status::True,
            Reason::MassDrift,
            format!(
                "Mass drift: {} of {} delivered assignments drifted (threshold: {}), so automatic \
                 repair of this package stopped at {}. Find out whether the removal was \
                 intended; to resume repairs, set the annotation {} to a new value (kubectl \
                 redeliver ack apg/<name>). Repairs also resume once the drift falls below the \
                 threshold.",
                m.drifted,
                m.delivered,
                input.safety.breaker.describe(),
                m.tripped_time.0,
                crate::api::MASS_DRIFT_ACK_ANNOTATION
            ),
        ))
    } else if sel.held > 0 && sel.reprocess.is_empty() && sel.cooling == 0 && sel.exhausted == 0 {
        Some(Desired::new(
            ConditionType::Stalled,
            Status::True,
            Reason::AccountsHeld,
            format!(
                "{} held: their accounts are disabled, deleted, at risk or could not be \
                 confirmed, so nothing is granted back (status.drifted[].held says which).",
                count_of(sel.held, "drifted assignment")
            ),
        ))
    } else {
        None
    };
    stalled.or_else(|| {
        (sel.exhausted > 0).then(|| {
            Desired::new(
                ConditionType::Stalled,
                Status::True,
                Reason::ReprocessExhausted,
                format!(
                    "{} still drifted after {} reprocess attempts each; find what keeps removing \
                 the access.",
                    count_of(sel.exhausted, "drifted assignment"),
                    input.settings.guard_max_attempts
                ),
            )
        })
    })
}

/// Ready: false with the reason of a stall or reconcile in progress (`blocking`, stall
/// first); otherwise it follows Delivered, except that drift nobody will repair says so.
fn ready_condition(
    input: &GuardInput,
    census: &Census,
    sel: &Selection,
    delivered: &Desired,
    blocking: Option<&Desired>,
) -> Desired {
    if let Some(b) = blocking {
        Desired::new(
            ConditionType::Ready,
            Status::False,
            b.reason,
            b.message.clone(),
        )
    } else if census.counts.drifted > 0 {
        if input.operator_report_only {
            Desired::new(
                ConditionType::Ready,
                Status::False,
                Reason::ReportOnly,
                format!(
                    "{} Reprocessing is disabled for the whole operator (--reprocess-rate 0).",
                    delivered.message
                ),
            )
        } else {
            let why = if input.spec.mode == GuardMode::Audit || sel.spec_budget == 0 {
                Reason::ReportOnly
            } else {
                Reason::ResourcesMissing
            };
            Desired::new(
                ConditionType::Ready,
                Status::False,
                why,
                delivered.message.clone(),
            )
        }
    } else {
        Desired::new(
            ConditionType::Ready,
            delivered.status,
            delivered.reason,
            delivered.message.clone(),
        )
    }
}

/// Only what is new since the previous sweep: new drift, reprocesses sent, delivery
/// verified, a new stall.
fn sweep_events(
    prev: &AccessPackageGuardStatus,
    status: &AccessPackageGuardStatus,
    drifted: &[GuardDrift],
    reprocess: &[String],
) -> Vec<EngineEvent> {
    let mut events = Vec::new();
    let known: BTreeSet<&str> = prev
        .drifted
        .iter()
        .map(|d| d.assignment_id.as_str())
        .collect();
    let new_ids: Vec<&GuardDrift> = drifted
        .iter()
        .filter(|d| !known.contains(d.assignment_id.as_str()))
        .collect();
    if !new_ids.is_empty() {
        let shown: Vec<String> = new_ids
            .iter()
            .take(10)
            .map(|d| {
                let names: Vec<String> = d.missing.iter().map(PromisedResource::label).collect();
                format!("{} missing {}", d.target, names.join(", "))
            })
            .collect();
        let more = new_ids.len().saturating_sub(shown.len());
        let suffix = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        events.push(EngineEvent {
            kind: EventKind::DriftDetected,
            message: format!(
                "{} newly drifted: {}{suffix}.",
                count_of(new_ids.len(), "assignment"),
                shown.join("; ")
            ),
        });
    }
    if !reprocess.is_empty() {
        let targets: Vec<&str> = drifted
            .iter()
            .filter(|d| reprocess.contains(&d.assignment_id))
            .take(10)
            .map(|d| d.target.as_str())
            .collect();
        let more = reprocess.len().saturating_sub(targets.len());
        events.push(EngineEvent {
            kind: EventKind::ReprocessRequested,
            message: format!(
                "Reprocessing {}: {}{}.",
                count_of(reprocess.len(), "drifted assignment"),
                targets.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            ),
        });
    }
    // Only a recovery is news (see the assignment planner): not a guard's first sweep.
    let prev_false = conditions::find(&prev.conditions, ConditionType::Delivered)
        .is_some_and(|c| c.status == Status::False);
    if let Some(d) = conditions::find(&status.conditions, ConditionType::Delivered)
        && d.status == Status::True
        && prev_false
    {
        events.push(EngineEvent {
            kind: EventKind::DeliveryVerified,
            message: d.message.clone(),
        });
    }
    events.extend(stalled_event(prev, status));
    events
}

/// When to verify a reprocessed assignment again: `poll` after the reprocess, then at
/// doubling spacing (`poll`, `2·poll`, `4·poll`, … after it), never later than the end of
/// its cooldown. A handful of sweeps per repair, not one every `poll`.
fn recheck_after(
    last: Timestamp,
    cooldown_end: Timestamp,
    now: Timestamp,
    poll: Duration,
) -> Duration {
    let since = elapsed(last, now);
    let poll = poll.max(Duration::from_secs(1));
    let mut step = poll;
    while step <= since {
        step = step.saturating_mul(2);
    }
    let until_step = step - since;
    until_step
        .min(elapsed(now, cooldown_end))
        .max(Duration::from_secs(1))
}

/// `1 drifted assignment`, `2 drifted assignments`.
fn count_of(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn stalled_event(
    prev: &AccessPackageGuardStatus,
    status: &AccessPackageGuardStatus,
) -> Vec<EngineEvent> {
    let before =
        conditions::find(&prev.conditions, ConditionType::Stalled).map(|c| c.reason.as_str());
    match conditions::find(&status.conditions, ConditionType::Stalled) {
        Some(s) if before != Some(s.reason.as_str()) => vec![EngineEvent {
            kind: EventKind::for_stalled(s),
            message: s.message.clone(),
        }],
        _ => Vec::new(),
    }
}

/// Whether `new` differs from `old` in anything but condition transition times and
/// `lastSweepTime`: write the status only when this is true.
pub fn guard_status_changed(
    old: Option<&AccessPackageGuardStatus>,
    new: &AccessPackageGuardStatus,
) -> bool {
    let Some(old) = old else { return true };
    let strip = |s: &AccessPackageGuardStatus| AccessPackageGuardStatus {
        last_sweep_time: None,
        conditions: Vec::new(),
        ..s.clone()
    };
    strip(old) != strip(new)
        || !conditions::conditions_equal_ignoring_transition_times(&old.conditions, &new.conditions)
}

#[cfg(test)]
#[path = "guard_tests.rs"]
mod tests;
