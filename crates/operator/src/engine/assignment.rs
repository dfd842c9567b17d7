//! Planning for one `AccessPackageAssignment`.
//!
//! Decisions (docs/architecture.md maps where the others live):
//! - `Delivered=True` only when Graph says `delivered` and every verifiable resource is
//!   Present. Unverifiable resources never block and never trigger a reprocess; a failed read
//!   (Unknown) means delivery cannot be claimed (`Delivered=Unknown`).
//! - No assignment and nothing in flight: request one (`adminAdd`). This is *Ensure*, not a
//!   reprocess, so `reprocess.mode` does not gate it. While our request is not visible or in
//!   flight we wait; past `stuck_after` we report `DeliveryStuck` instead of requesting again
//!   (identical `adminAdd`s are known to wedge assignments).
//! - Delivered but missing resources: reprocess the assignment (mode Auto), bounded by
//!   `maxAttempts` and spaced by `cooldown`; mode Manual waits for the annotation; mode
//!   Disabled reports only. The annotation `redeliver.dev/reprocess-requested-at` asks for one
//!   reprocess even without drift, is honoured after exhaustion, and is echoed in
//!   `status.reprocess.lastHandledRequest` once handled. Cooldown still applies.
//! - `deliveryFailed`/`partiallyDelivered`: reprocess the latest failed request within the
//!   reprocess window, under the same gates; outside it `Stalled=DeliveryFailed` explains
//!   cancel + new request.
//! - Expired: the policy's expiry is respected, never silently renewed: `Stalled=Expired`. A new
//!   annotation value requests a fresh assignment.
//! - `spec.suspend` blocks every write; the status says what would have been done.
//! - Attempts reset to 0 once the assignment is verified delivered again.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::conditions::{self, ConditionType, Desired, Reason, Status, to_time};
use super::ledger::{
    self, Gate, LedgerUpdate, RepairKey, RepairLedger, RepairLimits, RepairRecord,
};
use super::safety::{
    Intent, MassDriftHold, MissingResource, Removed, SafetyPolicy, TargetGate, removal_intent,
    target_gate,
};
use super::{
    Action, Attribution, EngineEvent, EngineSettings, EventKind, Plan, PromisedResource,
    ResolveFailure, ResolvedIds, Snapshot, Write,
};
use crate::api::{
    AccessPackageAssignmentSpec, AccessPackageAssignmentStatus, MIN_VERIFY_INTERVAL, ReprocessMode,
    ReprocessOutcome, ResourceState, ResourceStatus, SharedStr, format_duration, parse_duration,
    validate_assignment_spec,
};
use crate::domain::models::{Assignment, AssignmentRequest, AssignmentState, RequestState};

/// Everything the engine needs to plan one assignment.
#[derive(Debug, Clone)]
pub struct AssignmentInput<'a> {
    /// `metadata.generation`.
    pub generation: Option<i64>,
    pub spec: &'a AccessPackageAssignmentSpec,
    /// The status as currently stored.
    pub previous: Option<&'a AccessPackageAssignmentStatus>,
    /// Value of the `redeliver.dev/reprocess-requested-at` annotation.
    pub reprocess_annotation: Option<&'a str>,
    /// Resolved ids, or why the declaration did not resolve.
    pub resolved: Result<ResolvedIds, ResolveFailure>,
    /// The target's current assignment of the package (prefer a non-expired one; pass an
    /// expired one only when there is no other).
    pub assignment: Option<&'a Assignment>,
    /// The latest assignment request for package + target, if known.
    pub latest_request: Option<&'a AssignmentRequest>,
    /// What the package promises ([`super::promised_resources`]).
    pub resources: &'a [PromisedResource],
    /// Memberships read for this pass.
    pub snapshot: &'a Snapshot,
    pub settings: &'a EngineSettings,
    /// The shared reprocess histories ([`super::ledger`]): a reprocess another object sent
    /// for the same Graph assignment gates this one too.
    pub ledger: &'a RepairLedger,
    /// This object, as the ledger names it: `AccessPackageAssignment namespace/name`.
    pub who: &'a str,
    /// The operator reprocesses nothing (`--reprocess-rate 0`): report drift, say why.
    pub operator_report_only: bool,
    /// The safety rails in force for this object ([`super::safety`]).
    pub safety: &'a SafetyPolicy,
    /// The package's mass-drift breaker, when it is tripped and not acknowledged: automatic
    /// repair waits for a person (the annotation still asks for one reprocess).
    pub mass_drift: Option<&'a MassDriftHold>,
}

/// What went wrong when the driver performed a write action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionFailure {
    pub kind: ActionFailureKind,
    /// Graph's error code and message (never a token).
    pub message: String,
}

/// Kinds of [`ActionFailure`]. Transient failures (429, 5xx, network) are not reported
/// here: the driver retries them with backoff without writing status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionFailureKind {
    /// 403: the operator lacks a permission or catalog role.
    Forbidden,
    /// Any other non-retryable 4xx (policy requirements not met, window closed, ...).
    Rejected,
}

/// Intermediate decision before conditions are assembled.
struct Outcome {
    action: Action,
    delivered: Desired,
    reconciling: Option<Desired>,
    stalled: Option<Desired>,
    requeue: Duration,
}

/// What a plan does beyond its outcome: changes to the shared repair ledger, and an event
/// that is not a condition transition (a repair in flight by another object).
#[derive(Default)]
struct Effects {
    ledger: Vec<LedgerUpdate>,
    note: Option<EngineEvent>,
    /// The target whose account must be read before the plan can grant anything.
    needs_account: Option<String>,
}

struct Ctx<'a, 'b> {
    input: &'b AssignmentInput<'a>,
    prev: &'b AccessPackageAssignmentStatus,
    now: Timestamp,
    verify_interval: Duration,
    annotation_new: Option<&'a str>,
    effects: std::cell::RefCell<Effects>,
}

impl Ctx<'_, '_> {
    fn settings(&self) -> &EngineSettings {
        self.input.settings
    }

    fn prev_reconciling_reason(&self) -> Option<Reason> {
        conditions::true_reason(&self.prev.conditions, ConditionType::Reconciling)
    }

    fn prev_stalled_reason(&self) -> Option<Reason> {
        conditions::true_reason(&self.prev.conditions, ConditionType::Stalled)
    }

    /// Since when work has been in flight: the earliest of the request's creation time and
    /// the moment `Reconciling` turned True, but never before the last reprocess sent for
    /// it. A reprocess restarts delivery: a failed request created days ago and reprocessed
    /// a minute ago has been in flight for a minute, not for days.
    fn in_flight_since(&self, request: Option<&AssignmentRequest>) -> Timestamp {
        let reconciling_since = conditions::find(&self.prev.conditions, ConditionType::Reconciling)
            .filter(|c| c.status == Status::True)
            .map(|c| c.last_transition_time.0);
        let started = [request.and_then(|r| r.created_date_time), reconciling_since]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(self.now);
        let restarted = self
            .prev
            .reprocess
            .last_requested_time
            .as_ref()
            .map(|t| t.0);
        restarted.map_or(started, |r| started.max(r.min(self.now)))
    }

    fn is_stuck(&self, since: Timestamp) -> bool {
        self.prev_stalled_reason() == Some(Reason::DeliveryStuck)
            || elapsed(since, self.now) > self.settings().stuck_after
    }

    /// Whether the annotation asks for an action this pass.
    fn forced(&self) -> bool {
        self.annotation_new.is_some()
            && self.input.spec.reprocess.mode != ReprocessMode::Disabled
            && !self.input.operator_report_only
    }
}

fn elapsed(since: Timestamp, now: Timestamp) -> Duration {
    let d: SignedDuration = now.duration_since(since);
    d.try_into().unwrap_or(Duration::ZERO)
}

fn fmt_ts(ts: Timestamp) -> String {
    to_time(ts).0.to_string()
}

fn labels(resources: &[&PromisedResource]) -> String {
    resources
        .iter()
        .map(|r| r.label())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Plans one pass for one `AccessPackageAssignment`.
pub fn plan_assignment(input: &AssignmentInput, now: Timestamp) -> Plan {
    let prev = input.previous.cloned().unwrap_or_default();
    let verify_interval = input
        .spec
        .verify_interval
        .as_deref()
        .and_then(|v| parse_duration(v).ok())
        .filter(|d| *d >= MIN_VERIFY_INTERVAL)
        .unwrap_or(input.settings.default_verify_interval);
    let annotation_new = input
        .reprocess_annotation
        .filter(|v| !v.trim().is_empty())
        .filter(|v| prev.reprocess.last_handled_request.as_deref() != Some(*v));
    let ctx = Ctx {
        input,
        prev: &prev,
        now,
        verify_interval,
        annotation_new,
        effects: Default::default(),
    };
    let mut status = prev.clone();
    status.observed_generation = input.generation;
    let mut missing: Vec<PromisedResource> = Vec::new();

    let outcome = match (validate_assignment_spec(input.spec), &input.resolved) {
        (Err(e), _) => {
            clear_observations(input.spec, &mut status);
            stalled_outcome(
                &ctx,
                Reason::InvalidSpec,
                format!("Invalid declaration: {e}."),
            )
        }
        (Ok(()), Err(failure)) => {
            clear_observations(input.spec, &mut status);
            stalled_outcome(&ctx, failure.kind.reason(), failure.message.clone())
        }
        (Ok(()), Ok(ids)) => {
            let observed = observe(&ctx, ids, &mut status);
            missing = observed.missing.iter().map(|r| (*r).clone()).collect();
            decide(&ctx, ids, &observed, &mut status)
        }
    };
    finish(&ctx, status, outcome, missing)
}

/// Drops what was observed for a declaration that no longer resolves (it may name another
/// package now), keeping labels for `kubectl get`.
fn clear_observations(
    spec: &AccessPackageAssignmentSpec,
    status: &mut AccessPackageAssignmentStatus,
) {
    status
        .access_package_name
        .get_or_insert_with(|| spec.access_package.label().into());
    status
        .target_name
        .get_or_insert_with(|| spec.target.label());
    status.assignment_id = None;
    status.graph_state = None;
    status.graph_status = None;
    status.resources.clear();
    status.resources_summary = None;
}

fn stalled_outcome(ctx: &Ctx, why: Reason, message: String) -> Outcome {
    Outcome {
        action: Action::GiveUp { reason: why },
        delivered: Desired::new(
            ConditionType::Delivered,
            Status::Unknown,
            Reason::NotVerified,
            "Delivery cannot be verified until the declaration resolves.",
        ),
        reconciling: None,
        stalled: Some(Desired::new(
            ConditionType::Stalled,
            Status::True,
            why,
            message,
        )),
        requeue: ctx.verify_interval,
    }
}

struct Observed<'r> {
    missing: Vec<&'r PromisedResource>,
    unknown: Vec<(&'r PromisedResource, String)>,
}

/// What the observation resolved, recorded in the status: package, policy, target and the
/// assignment Graph holds (or none).
fn record_ids(
    input: &AssignmentInput<'_>,
    ids: &ResolvedIds,
    status: &mut AccessPackageAssignmentStatus,
) {
    status.access_package_id = Some(ids.access_package_id.as_str().into());
    status.access_package_name = Some(
        ids.access_package_name
            .as_deref()
            .unwrap_or(&ids.access_package_id)
            .into(),
    );
    status.policy_id = ids.policy.as_deref().ok().map(SharedStr::from);
    status.target_object_id = Some(ids.target_object_id.clone());
    status.target_name = Some(
        ids.target_name
            .clone()
            .or_else(|| input.spec.target.user_principal_name.clone())
            .unwrap_or_else(|| ids.target_object_id.clone()),
    );
    match input.assignment {
        Some(a) => {
            status.assignment_id = Some(a.id.clone());
            status.graph_state = Some(a.state.as_str().into());
            status.graph_status = a.status.as_deref().map(SharedStr::from);
        }
        None => {
            status.assignment_id = None;
            status.graph_state = None;
            status.graph_status = None;
        }
    }
}

fn observe<'r>(
    ctx: &Ctx<'r, '_>,
    ids: &ResolvedIds,
    status: &mut AccessPackageAssignmentStatus,
) -> Observed<'r> {
    let input = ctx.input;
    record_ids(input, ids, status);
    let mut observed = Observed {
        missing: Vec::new(),
        unknown: Vec::new(),
    };
    let mut verifiable = 0;
    let mut present = 0;
    status.resources = input
        .resources
        .iter()
        .map(|r| {
            let check = input.snapshot.check_detail(&r.kind, &ids.target_object_id);
            match check.state {
                ResourceState::Present => {
                    verifiable += 1;
                    present += 1;
                }
                ResourceState::Missing => {
                    verifiable += 1;
                    observed.missing.push(r);
                }
                ResourceState::Unknown => {
                    verifiable += 1;
                    observed
                        .unknown
                        .push((r, check.note.clone().unwrap_or_default()));
                }
                ResourceState::Unverifiable => {}
            }
            // Who removed it: looked up once by the driver, then kept from the stored
            // status until the resource is present again, so the text does not churn.
            let is_missing = check.state == ResourceState::Missing;
            let found = input.snapshot.change(&r.kind, &ids.target_object_id);
            let last_change = is_missing
                .then(|| previous_change(ctx.prev, r).or_else(|| found.map(Attribution::describe)))
                .flatten();
            let before = previous_missing(ctx.prev, r);
            let removed_by = is_missing
                .then(|| {
                    before
                        .and_then(|p| p.removed_by.clone())
                        .or_else(|| match found {
                            Some(Attribution::Found {
                                actor,
                                at,
                                activity,
                            }) => Some(Box::new(actor.to_removal(*at, activity))),
                            _ => None,
                        })
                })
                .flatten();
            let missing_since = is_missing.then(|| {
                before
                    .and_then(|p| p.missing_since.clone())
                    .unwrap_or_else(|| to_time(ctx.now))
            });
            ResourceStatus {
                last_change,
                origin_system: r.origin_system.clone(),
                origin_id: r.origin_id.as_str().into(),
                kind: r.role_kind(),
                mode: r.mode(),
                scope: r.scope().map(SharedStr::from),
                display_name: Some(r.display_name.as_str())
                    .filter(|s| !s.is_empty())
                    .map(SharedStr::from),
                role: Some(r.role.as_str())
                    .filter(|s| !s.is_empty())
                    .map(SharedStr::from),
                role_id: match &r.kind {
                    super::ResourceKind::AppRole { app_role_id, .. } => {
                        Some(app_role_id.as_str().into())
                    }
                    // The role's GUID, so a poll can check the role from status alone.
                    super::ResourceKind::AzureRole {
                        role_definition_guid,
                        ..
                    } => Some(role_definition_guid.as_str().into()),
                    _ => None,
                },
                state: check.state,
                note: r.note.clone().or(check.note).map(SharedStr::from),
                removed_by,
                missing_since,
            }
        })
        .collect();
    status.resources_summary = Some(format!("{present}/{verifiable}").into());
    status.last_verified_time = Some(to_time(ctx.now));
    observed
}

fn same_resource(rs: &ResourceStatus, r: &PromisedResource) -> bool {
    rs.origin_system == r.origin_system
        && rs.origin_id == r.origin_id
        && rs.role.as_deref().unwrap_or_default() == r.role
        // One Azure role at one scope may be promised both eligible and active.
        && rs.mode == r.mode()
}

/// `r` as the previous status recorded it, if it was already missing then.
fn previous_missing<'p>(
    prev: &'p AccessPackageAssignmentStatus,
    r: &PromisedResource,
) -> Option<&'p ResourceStatus> {
    prev.resources
        .iter()
        .find(|rs| same_resource(rs, r) && rs.state == ResourceState::Missing)
}

/// The `lastChange` stored for `r` while it was already missing.
fn previous_change(prev: &AccessPackageAssignmentStatus, r: &PromisedResource) -> Option<String> {
    previous_missing(prev, r).and_then(|rs| rs.last_change.clone())
}

/// The resources of a delivered assignment whose removal the driver should look up in the
/// audit log: missing now and without a `lastChange` stored from an earlier pass (once
/// stored, it is kept until the resource is present again, so it is never looked up twice).
/// A resource missing while the assignment is still being delivered is not drift: nothing.
/// Each comes with whether it was already missing on the previous pass (a lookup still
/// pending) rather than newly removed.
///
/// With `respecting` (respected actors are set), a resource is asked about on every pass
/// until the actor is recorded in `removedBy`: the repair decision needs this pass's answer
/// ("unavailable", "not found yet"), which the lookup cache gives without a new request.
pub fn attribution_needed<'r>(
    resources: &'r [PromisedResource],
    snapshot: &Snapshot,
    target_object_id: &str,
    assignment: Option<&Assignment>,
    previous: Option<&AccessPackageAssignmentStatus>,
    respecting: bool,
) -> Vec<(&'r PromisedResource, bool)> {
    if assignment.is_none_or(|a| a.state != AssignmentState::Delivered) {
        return Vec::new();
    }
    resources
        .iter()
        .filter(|r| r.is_verifiable())
        .filter(|r| {
            snapshot.check_detail(&r.kind, target_object_id).state == ResourceState::Missing
        })
        .filter(|r| {
            previous.is_none_or(|p| match previous_missing(p, r) {
                Some(rs) if respecting => rs.removed_by.is_none(),
                Some(rs) => rs.last_change.is_none(),
                None => true,
            })
        })
        .map(|r| {
            let continuing = previous.is_some_and(|p| {
                p.resources
                    .iter()
                    .any(|rs| same_resource(rs, r) && rs.state == ResourceState::Missing)
            });
            (r, continuing)
        })
        .collect()
}

/// `fin-writers (Member)`, with who removed it when the audit log named them:
/// `fin-writers (Member) [removed by admin@contoso.com at … via "Remove member from group"]`.
fn missing_labels<'a>(
    status: &AccessPackageAssignmentStatus,
    missing: impl IntoIterator<Item = &'a PromisedResource>,
) -> String {
    missing
        .into_iter()
        .map(|r| {
            let who = status
                .resources
                .iter()
                .find(|rs| same_resource(rs, r))
                // Named only when the audit log named who: the structured record says so.
                .filter(|rs| rs.removed_by.is_some())
                .and_then(|rs| rs.last_change.as_deref());
            match who {
                Some(who) => format!("{} [{who}]", r.label()),
                None => r.label(),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether a reprocess Redeliver asked for is still to be verified: the next pass must
/// read memberships fresh, since a copy cached before Graph applied the reprocess (it lands
/// asynchronously) would report the resource still missing.
pub fn awaiting_reprocess(status: Option<&AccessPackageAssignmentStatus>) -> bool {
    status.is_some_and(|s| s.reprocess.last_outcome == Some(ReprocessOutcome::Requested))
}

/// The membership reads a check of this object must have made after a moment, and that
/// moment: while a reprocess is awaited, the reads of the resources it was sent to restore
/// (those the status lists `Missing`; every verifiable one when it lists none), made after
/// the reprocess was sent — a copy from before would still show them missing. Any read
/// made since serves every object waiting on the same resource, so a repair costs the
/// re-read of what it changed, not of the package.
pub fn fresh_reads(
    status: Option<&AccessPackageAssignmentStatus>,
    resources: &[PromisedResource],
) -> Option<super::FreshAfter> {
    let status = status.filter(|s| awaiting_reprocess(Some(s)))?;
    // Status times have whole seconds: the reprocess went out somewhere within that
    // second, so only a read started after it is surely later.
    let since = status.reprocess.last_requested_time.as_ref()?.0 + SignedDuration::from_secs(1);
    let was_missing = |r: &&PromisedResource| {
        status.resources.iter().any(|s| {
            s.state == ResourceState::Missing
                && s.origin_system == r.origin_system
                && s.origin_id.eq_ignore_ascii_case(&r.origin_id)
                && s.role.as_deref().unwrap_or_default() == r.role
                && s.mode == r.mode()
        })
    };
    let mut reads = super::reads_needed(resources.iter().filter(was_missing));
    if reads.is_empty() {
        reads = super::reads_needed(resources);
    }
    Some(super::FreshAfter { since, reads })
}

/// Whether [`plan_assignment`] can look at the target's latest request: only when there
/// is no assignment, when it is not delivered yet, or when it is delivered but a promised
/// resource is missing (a request in flight is then waited for rather than reprocessed).
/// A caller that would read a package's requests only for this may skip the read when it
/// returns `false`: the plan is the same with or without the request.
pub fn needs_latest_request(
    assignment: Option<&Assignment>,
    resources: &[PromisedResource],
    snapshot: &Snapshot,
    target_object_id: &str,
) -> bool {
    match assignment.map(|a| a.state) {
        None
        | Some(
            AssignmentState::Delivering
            | AssignmentState::DeliveryFailed
            | AssignmentState::PartiallyDelivered,
        ) => true,
        Some(AssignmentState::Delivered) => resources
            .iter()
            .any(|r| snapshot.check(&r.kind, target_object_id) == ResourceState::Missing),
        Some(AssignmentState::Expired | AssignmentState::Unknown) => false,
    }
}

fn decide(
    ctx: &Ctx,
    ids: &ResolvedIds,
    observed: &Observed,
    status: &mut AccessPackageAssignmentStatus,
) -> Outcome {
    let input = ctx.input;
    let request = input.latest_request;
    let Some(a) = input.assignment else {
        return not_assigned(ctx, ids, status);
    };
    match a.state {
        AssignmentState::Delivered => delivered_state(ctx, a, observed, status),
        AssignmentState::Delivering => {
            let in_flight = request.filter(|r| r.state.is_in_flight());
            if let Some(r) = in_flight {
                status.last_request_id = Some(r.id.clone());
            }
            let reconciling_reason = if ctx.prev_reconciling_reason() == Some(Reason::Reprocessing)
            {
                Reason::Reprocessing
            } else {
                Reason::Requesting
            };
            wait_in_flight(
                ctx,
                in_flight,
                &format!("assignment {}", a.id),
                reconciling_reason,
                Desired::new(
                    ConditionType::Delivered,
                    Status::False,
                    Reason::AwaitingDelivery,
                    format!("Entitlement management is delivering assignment {}.", a.id),
                ),
            )
        }
        AssignmentState::DeliveryFailed | AssignmentState::PartiallyDelivered => {
            let delivered = Desired::new(
                ConditionType::Delivered,
                Status::False,
                Reason::DeliveryFailed,
                format!("Graph reports assignment {} as {}.", a.id, a.state.as_str()),
            );
            failed_delivery(ctx, request, delivered, status)
        }
        AssignmentState::Expired => expired(ctx, ids, a, status),
        AssignmentState::Unknown => Outcome {
            action: Action::None,
            delivered: Desired::new(
                ConditionType::Delivered,
                Status::Unknown,
                Reason::UnknownState,
                format!(
                    "Graph reports assignment {} in a state Redeliver does not know ({}).",
                    a.id,
                    a.status.as_deref().unwrap_or("no status text")
                ),
            ),
            reconciling: None,
            stalled: None,
            requeue: ctx.verify_interval,
        },
    }
}

fn delivered_state(
    ctx: &Ctx,
    a: &Assignment,
    observed: &Observed,
    status: &mut AccessPackageAssignmentStatus,
) -> Outcome {
    let input = ctx.input;
    let unknown_msg = || {
        observed
            .unknown
            .iter()
            .map(|(r, note)| format!("{} ({note})", r.label()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !observed.missing.is_empty() {
        let delivered = Desired::new(
            ConditionType::Delivered,
            Status::False,
            Reason::ResourcesMissing,
            format!(
                "Graph says assignment {} is delivered, but the user is missing: {}.",
                a.id,
                missing_labels(status, observed.missing.iter().copied())
            ),
        );
        if let Some(r) = input.latest_request.filter(|r| r.state.is_in_flight()) {
            status.last_request_id = Some(r.id.clone());
            return wait_in_flight(
                ctx,
                Some(r),
                &format!("request {}", r.id),
                Reason::Requesting,
                delivered,
            );
        }
        let what = format!("resources missing: {}", labels(&observed.missing));
        if !ctx.forced()
            && let Some(held) = hold_for_intent(ctx, observed, status, &delivered)
        {
            return held;
        }
        return repair(
            ctx,
            Action::Write(Write::ReprocessAssignment {
                assignment_id: a.id.clone(),
            }),
            &what,
            delivered,
            status,
        );
    }
    // Nothing missing: delivered, or unknown when a read failed.
    let delivered = if observed.unknown.is_empty() {
        Desired::new(
            ConditionType::Delivered,
            Status::True,
            Reason::Delivered,
            format!(
                "Assignment {} is delivered and every verifiable resource is present.",
                a.id
            ),
        )
    } else {
        Desired::new(
            ConditionType::Delivered,
            Status::Unknown,
            Reason::VerificationFailed,
            format!(
                "Graph says assignment {} is delivered, but these could not be read: {}.",
                a.id,
                unknown_msg()
            ),
        )
    };
    if ctx.forced() {
        return repair(
            ctx,
            Action::Write(Write::ReprocessAssignment {
                assignment_id: a.id.clone(),
            }),
            "requested by annotation",
            delivered,
            status,
        );
    }
    if delivered.status == Status::True {
        let key = RepairKey::assignment(&a.id);
        if input.ledger.get(&key).is_some_and(|r| r.attempts > 0) {
            ctx.effects
                .borrow_mut()
                .ledger
                .push(LedgerUpdate::Verified { key });
        }
        if status.reprocess.attempts > 0 {
            status.reprocess.attempts = 0;
            status.reprocess.last_outcome = Some(ReprocessOutcome::Repaired);
        }
        status.last_request_id = None;
        return Outcome {
            action: Action::None,
            delivered,
            reconciling: None,
            stalled: None,
            requeue: ctx.verify_interval,
        };
    }
    Outcome {
        action: Action::None,
        delivered,
        reconciling: None,
        stalled: None,
        requeue: ctx.settings().read_failure_retry.min(ctx.verify_interval),
    }
}

/// Waits for something Graph is working on, or reports it stuck.
fn wait_in_flight(
    ctx: &Ctx,
    request: Option<&AssignmentRequest>,
    what: &str,
    reconciling_reason: Reason,
    delivered: Desired,
) -> Outcome {
    let since = ctx.in_flight_since(request);
    if ctx.is_stuck(since) {
        let id = request
            .map(|r| format!("request {}", r.id))
            .unwrap_or_else(|| what.to_string());
        let state = request.map(|r| r.state.as_str()).unwrap_or("in progress");
        return Outcome {
            action: Action::GiveUp {
                reason: Reason::DeliveryStuck,
            },
            delivered,
            reconciling: None,
            stalled: Some(Desired::new(
                ConditionType::Stalled,
                Status::True,
                Reason::DeliveryStuck,
                // No timestamp derived from `since` here: after the stall `since` can no
                // longer be recovered, and the message must stay identical on later passes.
                format!(
                    "{} has been {state} for longer than {}; check it in the Entra admin \
                     center and cancel it if it does not move.{}",
                    capitalize(&id),
                    format_duration(ctx.settings().stuck_after),
                    if ctx.input.assignment.is_none() {
                        format!(
                            " Set the annotation {} to a new value to submit a new request.",
                            crate::api::REPROCESS_ANNOTATION
                        )
                    } else {
                        String::new()
                    }
                ),
            )),
            requeue: ctx.verify_interval,
        };
    }
    Outcome {
        action: Action::Wait {
            reason: reconciling_reason,
        },
        reconciling: Some(Desired::new(
            ConditionType::Reconciling,
            Status::True,
            reconciling_reason,
            format!("Waiting for entitlement management to finish {what}."),
        )),
        delivered,
        stalled: None,
        requeue: ctx.settings().poll_interval,
    }
}

fn noun(key: &RepairKey) -> &'static str {
    match key {
        RepairKey::Assignment(_) => "assignment",
        RepairKey::Request(_) => "request",
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// The gates every reprocess passes: mode, annotation, attempts, cooldown.
fn repair(
    ctx: &Ctx,
    action: Action,
    what: &str,
    delivered: Desired,
    status: &mut AccessPackageAssignmentStatus,
) -> Outcome {
    if let Some(why) = reprocess_not_allowed(ctx) {
        return report_only(ctx, delivered, &why);
    }
    let key = repair_key(&action, status);
    let history = shared_history(ctx, &key, status);
    let attempts = match ledger::gate(history.as_ref(), repair_limits(ctx), ctx.now, ctx.forced()) {
        Gate::Exhausted { record } => return exhausted(ctx, &record, what, delivered, status),
        Gate::CoolingDown { record, next } => {
            return cooling_down(ctx, &key, &record, next, what, delivered, status);
        }
        Gate::Open { attempts } => attempts,
    };
    let gate_note = match gate_target(ctx, status, &delivered) {
        Ok(note) => note,
        Err(held) => return *held,
    };
    record_request(ctx, key, attempts, &action, status);
    requested(ctx, action, what, delivered, gate_note, status)
}

/// Why nothing may be reprocessed at all (the operator's rate is 0, the mode is Disabled,
/// or Manual without the annotation), as the sentence that ends the Delivered message.
fn reprocess_not_allowed(ctx: &Ctx) -> Option<String> {
    if ctx.input.operator_report_only {
        return Some(
            "Reprocessing is disabled for the whole operator (--reprocess-rate 0), so \
             Redeliver only reports; reprocess it in the Entra admin center or raise the rate."
                .into(),
        );
    }
    match ctx.input.spec.reprocess.mode {
        ReprocessMode::Disabled => Some(
            "reprocess.mode is Disabled, so Redeliver only reports; reprocess it in the \
             Entra admin center or change the mode."
                .into(),
        ),
        ReprocessMode::Manual if !ctx.forced() => Some(format!(
            "reprocess.mode is Manual: set the annotation {} to a new value to reprocess.",
            crate::api::REPROCESS_ANNOTATION
        )),
        _ => None,
    }
}

/// Reports the drift without acting on it: `why` is appended to the Delivered message.
fn report_only(ctx: &Ctx, delivered: Desired, why: &str) -> Outcome {
    Outcome {
        action: Action::None,
        delivered: Desired {
            message: format!("{} {why}", delivered.message),
            ..delivered
        },
        reconciling: None,
        stalled: None,
        requeue: ctx.verify_interval,
    }
}

/// The ledger entry the reprocess is counted under: the request or assignment it writes
/// to, else the assignment the status names.
fn repair_key(action: &Action, status: &AccessPackageAssignmentStatus) -> RepairKey {
    match action {
        Action::Write(Write::ReprocessRequest { request_id }) => RepairKey::request(request_id),
        Action::Write(Write::ReprocessAssignment { assignment_id }) => {
            RepairKey::assignment(assignment_id)
        }
        _ => RepairKey::assignment(status.assignment_id.as_deref().unwrap_or_default()),
    }
}

/// The spec's attempts and cooldown; a cooldown that does not parse or is below the
/// minimum counts as the minimum.
fn repair_limits(ctx: &Ctx) -> RepairLimits {
    let spec = &ctx.input.spec.reprocess;
    RepairLimits {
        cooldown: parse_duration(&spec.cooldown)
            .ok()
            .filter(|d| *d >= crate::api::MIN_COOLDOWN)
            .unwrap_or(crate::api::MIN_COOLDOWN),
        max_attempts: spec.max_attempts,
    }
}

/// The reprocess history of `key` as the ledger and this object's own status tell it,
/// mirrored into the status.
fn shared_history(
    ctx: &Ctx,
    key: &RepairKey,
    status: &mut AccessPackageAssignmentStatus,
) -> Option<RepairRecord> {
    let who = ctx.input.who;
    let own = status
        .reprocess
        .last_requested_time
        .as_ref()
        .map(|t| RepairRecord {
            attempts: status.reprocess.attempts,
            last_requested: t.0,
            by: status
                .reprocess
                .last_requested_by
                .clone()
                .unwrap_or_else(|| who.to_string()),
        });
    let history = ctx.input.ledger.history(key, own.as_ref()).cloned();
    // Every object that covers the assignment tells the same story: the shared history.
    if let Some(h) = &history {
        status.reprocess.attempts = h.attempts;
        status.reprocess.last_requested_time = Some(to_time(h.last_requested));
        status.reprocess.last_requested_by = (h.by != who).then(|| h.by.clone());
    }
    history
}

/// Claims the next attempt in the ledger and writes it into the status ahead of the send.
fn record_request(
    ctx: &Ctx,
    key: RepairKey,
    attempts: i32,
    action: &Action,
    status: &mut AccessPackageAssignmentStatus,
) {
    ctx.effects
        .borrow_mut()
        .ledger
        .push(LedgerUpdate::Requested {
            key,
            record: RepairRecord {
                attempts: attempts.saturating_add(1),
                last_requested: ctx.now,
                by: ctx.input.who.to_string(),
            },
        });
    status.reprocess.last_requested_by = None;
    status.reprocess.attempts = attempts.saturating_add(1);
    status.reprocess.last_requested_time = Some(to_time(ctx.now));
    status.reprocess.last_outcome = Some(ReprocessOutcome::Requested);
    if ctx.forced()
        && let Some(v) = ctx.annotation_new
    {
        status.reprocess.last_handled_request = Some(v.to_string());
    }
    if let Action::Write(Write::ReprocessRequest { request_id }) = action {
        status.last_request_id = Some(request_id.clone());
    }
}

/// The reprocess goes out: `Reconciling=Reprocessing` counting the attempt, with the
/// account gate's note if it had one.
fn requested(
    ctx: &Ctx,
    action: Action,
    what: &str,
    delivered: Desired,
    gate_note: Option<String>,
    status: &AccessPackageAssignmentStatus,
) -> Outcome {
    let target = match &action {
        Action::Write(Write::ReprocessRequest { request_id }) => format!("request {request_id}"),
        Action::Write(Write::ReprocessAssignment { assignment_id }) => {
            format!("assignment {assignment_id}")
        }
        _ => String::from("assignment"),
    };
    Outcome {
        action,
        reconciling: Some(Desired::new(
            ConditionType::Reconciling,
            Status::True,
            Reason::Reprocessing,
            format!(
                "Reprocess {} of {} requested for {target} ({what}).{}",
                status.reprocess.attempts,
                ctx.input.spec.reprocess.max_attempts,
                gate_note
                    .map(|n| format!(" Note: {n}."))
                    .unwrap_or_default()
            ),
        )),
        delivered,
        stalled: None,
        requeue: ctx.settings().poll_interval,
    }
}

/// The shared attempts are used up: `Stalled=ReprocessExhausted`, naming who sent the last
/// one when it was another object.
fn exhausted(
    ctx: &Ctx,
    record: &RepairRecord,
    what: &str,
    delivered: Desired,
    status: &mut AccessPackageAssignmentStatus,
) -> Outcome {
    let who = ctx.input.who;
    status.reprocess.last_outcome = Some(ReprocessOutcome::Exhausted);
    let last_by = if record.by == who {
        String::new()
    } else {
        format!(" (the last one sent by {})", record.by)
    };
    Outcome {
        action: Action::GiveUp {
            reason: Reason::ReprocessExhausted,
        },
        stalled: Some(Desired::new(
            ConditionType::Stalled,
            Status::True,
            Reason::ReprocessExhausted,
            format!(
                "{} reprocess attempt(s){last_by} did not repair it ({what}); find what \
                 keeps removing the access, then set the annotation {} to a new value to \
                 retry.",
                record.attempts,
                crate::api::REPROCESS_ANNOTATION
            ),
        )),
        delivered,
        reconciling: None,
        requeue: ctx.verify_interval,
    }
}

/// The last reprocess (whoever sent it) is within this object's cooldown: wait for it. When
/// another object covering the assignment sent it, say so, once as an event.
fn cooling_down(
    ctx: &Ctx,
    key: &RepairKey,
    record: &RepairRecord,
    next: Timestamp,
    what: &str,
    delivered: Desired,
    status: &mut AccessPackageAssignmentStatus,
) -> Outcome {
    let who = ctx.input.who;
    let remaining = elapsed(ctx.now, next).max(Duration::from_secs(1));
    let message = if record.by == who {
        format!(
            "Reprocess requested at {}; the next one is allowed at {} ({what}).",
            fmt_ts(record.last_requested),
            fmt_ts(next)
        )
    } else {
        // Another object covering the same Graph assignment sent it: wait for it
        // (and check its effect with fresh reads) instead of sending a second one.
        status.reprocess.last_outcome = Some(ReprocessOutcome::Requested);
        let first_seen = ctx.prev.reprocess.last_requested_by.as_deref()
            != Some(record.by.as_str())
            || ctx.prev.reprocess.last_requested_time.as_ref().map(|t| t.0)
                != Some(record.last_requested);
        if first_seen {
            ctx.effects.borrow_mut().note = Some(EngineEvent {
                kind: EventKind::ReprocessInFlight,
                message: format!(
                    "{} {} is already being reprocessed: {} requested it at {}; not \
                     reprocessing it again before {}.",
                    capitalize(noun(key)),
                    key.id(),
                    record.by,
                    fmt_ts(record.last_requested),
                    fmt_ts(next)
                ),
            });
        }
        format!(
            "Reprocess requested by {} at {}; the next one is allowed at {} ({what}).",
            record.by,
            fmt_ts(record.last_requested),
            fmt_ts(next)
        )
    };
    Outcome {
        action: Action::Wait {
            reason: Reason::Reprocessing,
        },
        reconciling: Some(Desired::new(
            ConditionType::Reconciling,
            Status::True,
            Reason::Reprocessing,
            message,
        )),
        delivered,
        stalled: None,
        requeue: remaining,
    }
}

fn failed_delivery(
    ctx: &Ctx,
    request: Option<&AssignmentRequest>,
    delivered: Desired,
    status: &mut AccessPackageAssignmentStatus,
) -> Outcome {
    match request {
        Some(r) if r.state.is_in_flight() => {
            status.last_request_id = Some(r.id.clone());
            wait_in_flight(
                ctx,
                Some(r),
                &format!("request {}", r.id),
                Reason::Reprocessing,
                delivered,
            )
        }
        Some(r)
            if matches!(
                r.state,
                RequestState::DeliveryFailed | RequestState::PartiallyDelivered
            ) =>
        {
            status.last_request_id = Some(r.id.clone());
            let window = ctx.settings().request_reprocess_window;
            if let Some(done) = r.completed_date_time
                && elapsed(done, ctx.now) > window
            {
                return Outcome {
                    action: Action::GiveUp {
                        reason: Reason::DeliveryFailed,
                    },
                    stalled: Some(Desired::new(
                        ConditionType::Stalled,
                        Status::True,
                        Reason::DeliveryFailed,
                        format!(
                            "Request {} failed ({}) at {}, more than {} ago, so Graph no longer \
                             allows reprocessing it; cancel the request and submit a new one in \
                             the Entra admin center.",
                            r.id,
                            r.state.as_str(),
                            fmt_ts(done),
                            format_duration(window)
                        ),
                    )),
                    delivered,
                    reconciling: None,
                    requeue: ctx.verify_interval,
                };
            }
            let what = format!("request {} is {}", r.id, r.state.as_str());
            repair(
                ctx,
                Action::Write(Write::ReprocessRequest {
                    request_id: r.id.clone(),
                }),
                &what,
                delivered,
                status,
            )
        }
        _ => Outcome {
            action: Action::GiveUp {
                reason: Reason::DeliveryFailed,
            },
            stalled: Some(Desired::new(
                ConditionType::Stalled,
                Status::True,
                Reason::DeliveryFailed,
                "Delivery failed and no failed assignment request was found to reprocess; \
                 inspect the assignment's requests in the Entra admin center.",
            )),
            delivered,
            reconciling: None,
            requeue: ctx.verify_interval,
        },
    }
}

fn expired(
    ctx: &Ctx,
    ids: &ResolvedIds,
    a: &Assignment,
    status: &mut AccessPackageAssignmentStatus,
) -> Outcome {
    let when = a
        .expired_date_time
        .map(|t| format!(" on {}", fmt_ts(t)))
        .unwrap_or_default();
    let delivered = Desired::new(
        ConditionType::Delivered,
        Status::False,
        Reason::Expired,
        format!("Assignment {} expired{when}.", a.id),
    );
    if ctx.annotation_new.is_some() {
        return request_assignment(ctx, ids, delivered, status);
    }
    Outcome {
        action: Action::GiveUp {
            reason: Reason::Expired,
        },
        stalled: Some(Desired::new(
            ConditionType::Stalled,
            Status::True,
            Reason::Expired,
            format!(
                "Assignment {} expired{when} under its policy; Redeliver does not renew it on its \
                 own. Set the annotation {} to a new value to request it again.",
                a.id,
                crate::api::REPROCESS_ANNOTATION
            ),
        )),
        delivered,
        reconciling: None,
        requeue: ctx.verify_interval,
    }
}

fn not_assigned(
    ctx: &Ctx,
    ids: &ResolvedIds,
    status: &mut AccessPackageAssignmentStatus,
) -> Outcome {
    let delivered = Desired::new(
        ConditionType::Delivered,
        Status::False,
        Reason::NotAssigned,
        "The user holds no assignment of this access package.",
    );
    if let Some(r) = ctx.input.latest_request
        && let Some(outcome) = latest_request_decides(ctx, r, &delivered, status)
    {
        return outcome;
    }
    if let Some(outcome) = refusal_holds(ctx, &delivered) {
        return outcome;
    }
    if let Some(outcome) = awaiting_our_request(ctx, &delivered) {
        return outcome;
    }
    request_assignment(ctx, ids, delivered, status)
}

/// The latest request settles it while it is in flight (wait), failed delivery (reprocess
/// it) or was denied (stall until a human asks again).
fn latest_request_decides(
    ctx: &Ctx,
    r: &AssignmentRequest,
    delivered: &Desired,
    status: &mut AccessPackageAssignmentStatus,
) -> Option<Outcome> {
    if r.state.is_in_flight() {
        status.last_request_id = Some(r.id.clone());
        return Some(wait_in_flight(
            ctx,
            Some(r),
            &format!("request {}", r.id),
            Reason::Requesting,
            Desired {
                reason: Reason::AwaitingDelivery,
                message: format!("Request {} is {}.", r.id, r.state.as_str()),
                ..delivered.clone()
            },
        ));
    }
    if r.request_type.is_add()
        && matches!(
            r.state,
            RequestState::DeliveryFailed | RequestState::PartiallyDelivered
        )
    {
        let failed = Desired {
            reason: Reason::DeliveryFailed,
            message: format!("Request {} is {}.", r.id, r.state.as_str()),
            ..delivered.clone()
        };
        return Some(failed_delivery(ctx, Some(r), failed, status));
    }
    if r.request_type.is_add() && r.state == RequestState::Denied && !ctx.forced() {
        status.last_request_id = Some(r.id.clone());
        return Some(give_up(
            ctx,
            Reason::RequestDenied,
            format!(
                "Request {} was denied; Redeliver does not ask again on its own. Set the \
                 annotation {} to a new value to submit a new request.",
                r.id,
                crate::api::REPROCESS_ANNOTATION
            ),
            delivered.clone(),
        ));
    }
    None
}

/// Graph refused our last request: asking again unchanged would be refused again, so hold
/// the stall until the declaration changes or a human asks through the annotation.
fn refusal_holds(ctx: &Ctx, delivered: &Desired) -> Option<Outcome> {
    let (why, message) = conditions::find(&ctx.prev.conditions, ConditionType::Stalled)
        .filter(|c| c.status == Status::True)
        .and_then(|c| {
            [Reason::Rejected, Reason::Forbidden]
                .into_iter()
                .find(|r| c.reason == *r)
                .map(|r| (r, c.message.clone()))
        })?;
    (ctx.prev.observed_generation == ctx.input.generation && ctx.annotation_new.is_none())
        .then(|| give_up(ctx, why, message, delivered.clone()))
}

/// We asked before and the assignment has not shown up: wait (listing lags), never ask
/// twice, unless a human asks through the annotation.
fn awaiting_our_request(ctx: &Ctx, delivered: &Desired) -> Option<Outcome> {
    let ours = ctx.prev_reconciling_reason() == Some(Reason::Requesting)
        || (ctx.prev_stalled_reason() == Some(Reason::DeliveryStuck)
            && ctx.prev.assignment_id.is_none());
    let our_request_ended = match (
        ctx.input.latest_request,
        ctx.prev.last_request_id.as_deref(),
    ) {
        (Some(r), Some(id)) => {
            r.id == id && matches!(r.state, RequestState::Canceled | RequestState::Denied)
        }
        _ => false,
    };
    if !ours || our_request_ended || ctx.annotation_new.is_some() {
        return None;
    }
    let what = ctx
        .prev
        .last_request_id
        .as_ref()
        .map(|id| format!("request {id}"))
        .unwrap_or_else(|| String::from("the assignment request"));
    Some(wait_in_flight(
        ctx,
        None,
        &what,
        Reason::Requesting,
        Desired {
            reason: Reason::AwaitingDelivery,
            message: format!("Waiting for {what} to produce an assignment."),
            ..delivered.clone()
        },
    ))
}

/// No write and nothing to wait for: `Stalled` with `reason` until a human acts; Delivered
/// as given.
fn give_up(ctx: &Ctx, reason: Reason, message: String, delivered: Desired) -> Outcome {
    Outcome {
        action: Action::GiveUp { reason },
        stalled: Some(Desired::new(
            ConditionType::Stalled,
            Status::True,
            reason,
            message,
        )),
        delivered,
        reconciling: None,
        requeue: ctx.verify_interval,
    }
}

fn request_assignment(
    ctx: &Ctx,
    ids: &ResolvedIds,
    delivered: Desired,
    status: &mut AccessPackageAssignmentStatus,
) -> Outcome {
    let policy_id = match &ids.policy {
        Ok(p) => p.clone(),
        Err(f) => {
            return Outcome {
                action: Action::GiveUp {
                    reason: f.kind.reason(),
                },
                stalled: Some(Desired::new(
                    ConditionType::Stalled,
                    Status::True,
                    f.kind.reason(),
                    format!(
                        "The assignment must be requested, but no policy can be chosen: {}",
                        f.message
                    ),
                )),
                delivered,
                reconciling: None,
                requeue: ctx.verify_interval,
            };
        }
    };
    if let Err(held) = gate_target(ctx, status, &delivered) {
        return *held;
    }
    if let Some(v) = ctx.annotation_new {
        status.reprocess.last_handled_request = Some(v.to_string());
    }
    status.last_request_id = None;
    Outcome {
        action: Action::Write(Write::RequestAssignment {
            access_package_id: ids.access_package_id.clone(),
            policy_id,
            target_object_id: ids.target_object_id.clone(),
        }),
        reconciling: Some(Desired::new(
            ConditionType::Reconciling,
            Status::True,
            Reason::Requesting,
            "Requesting the assignment (adminAdd).",
        )),
        delivered,
        stalled: None,
        requeue: ctx.settings().poll_interval,
    }
}

/// A hold: no write; `Stalled` with `reason`, and `Delivered` (unless it is True) says the
/// same reason, keeping what it reported.
fn held(ctx: &Ctx, reason: Reason, message: String, delivered: &Desired) -> Outcome {
    let delivered = if delivered.status == Status::True {
        delivered.clone()
    } else {
        Desired {
            reason,
            message: format!("{} {message}", delivered.message),
            ..delivered.clone()
        }
    };
    Outcome {
        action: Action::GiveUp { reason },
        delivered,
        reconciling: None,
        stalled: Some(Desired::new(
            ConditionType::Stalled,
            Status::True,
            reason,
            message,
        )),
        // Re-checked on the poll interval, so a re-enabled account or an acknowledgement is
        // acted on within about one delta interval.
        requeue: ctx.settings().hold_recheck.min(ctx.verify_interval),
    }
}

/// The account gate before any grant: `Ok` with a note to show (a risk that could not be
/// read), or the outcome that holds. An account not read yet asks the driver to read it.
fn gate_target(
    ctx: &Ctx,
    status: &AccessPackageAssignmentStatus,
    delivered: &Desired,
) -> Result<Option<String>, Box<Outcome>> {
    let Ok(ids) = &ctx.input.resolved else {
        return Ok(None);
    };
    let target = status
        .target_name
        .clone()
        .unwrap_or_else(|| ids.target_object_id.clone());
    match target_gate(
        ctx.input.safety,
        ctx.input.snapshot,
        &ids.target_object_id,
        &target,
    ) {
        TargetGate::Confirmed { note } => Ok(note),
        TargetGate::Unconfirmed => {
            ctx.effects.borrow_mut().needs_account = Some(ids.target_object_id.clone());
            Err(Box::new(Outcome {
                action: Action::Wait {
                    reason: Reason::Verifying,
                },
                delivered: delivered.clone(),
                reconciling: Some(Desired::new(
                    ConditionType::Reconciling,
                    Status::True,
                    Reason::Verifying,
                    format!("Confirming {target}'s account before granting access back."),
                )),
                stalled: None,
                requeue: ctx.settings().poll_interval,
            }))
        }
        TargetGate::Held { reason, message } => {
            Err(Box::new(held(ctx, reason, message, delivered)))
        }
    }
}

/// Before repairing missing resources: a removal by a respected actor, one still waiting
/// for the audit log, or a tripped mass-drift breaker holds the repair.
fn hold_for_intent(
    ctx: &Ctx,
    observed: &Observed,
    status: &AccessPackageAssignmentStatus,
    delivered: &Desired,
) -> Option<Outcome> {
    let input = ctx.input;
    let target = input
        .resolved
        .as_ref()
        .map(|ids| ids.target_object_id.as_str())
        .unwrap_or_default();
    let missing: Vec<MissingResource> = observed
        .missing
        .iter()
        .map(|r| {
            let rs = status.resources.iter().find(|rs| same_resource(rs, r));
            let removed = match (
                rs.and_then(|rs| rs.removed_by.as_ref()),
                input.snapshot.change(&r.kind, target),
            ) {
                (Some(by), _) => Removed::By {
                    actor: super::attribution::Actor::from_removal(by),
                    at: by.time.0,
                    activity: &by.activity,
                },
                (None, Some(Attribution::Unavailable { reason })) => {
                    Removed::Unavailable { reason }
                }
                _ => Removed::Unknown,
            };
            MissingResource {
                label: r.label(),
                removed,
                since: rs
                    .and_then(|rs| rs.missing_since.as_ref())
                    .map_or(ctx.now, |t| t.0),
            }
        })
        .collect();
    match removal_intent(input.safety, &missing, ctx.now) {
        Intent::Repair => {}
        Intent::Deliberate { message } => {
            return Some(held(ctx, Reason::RemovedDeliberately, message, delivered));
        }
        Intent::HoldUnattributed { message } => {
            return Some(held(
                ctx,
                Reason::AttributionUnavailable,
                message,
                delivered,
            ));
        }
        Intent::Await { until, message } => {
            return Some(Outcome {
                action: Action::Wait {
                    reason: Reason::AwaitingAttribution,
                },
                delivered: delivered.clone(),
                reconciling: Some(Desired::new(
                    ConditionType::Reconciling,
                    Status::True,
                    Reason::AwaitingAttribution,
                    message,
                )),
                stalled: None,
                requeue: elapsed(ctx.now, until)
                    .min(ctx.settings().poll_interval)
                    .max(Duration::from_secs(1)),
            });
        }
    }
    input.mass_drift.map(|hold| {
        let held = held(
            ctx,
            Reason::MassDrift,
            format!(
                "{} Automatic repair of this package is stopped until a person acknowledges it \
                 (annotate the package's AccessPackageGuard or this object's connection with {} \
                 = a new value, e.g. kubectl redeliver ack), or the drift falls back below the \
                 threshold. Set the annotation {} on this object to repair it alone.",
                hold.message,
                crate::api::MASS_DRIFT_ACK_ANNOTATION,
                crate::api::REPROCESS_ANNOTATION
            ),
            delivered,
        );
        // Not re-checked every delta interval like the other holds: what lifts this one (an
        // acknowledgement, or the package's drift repaired below the threshold) wakes the
        // package's held objects when it happens, and a mass removal holds many objects at
        // once; re-checking them all each interval starved first verifications at scale.
        Outcome {
            requeue: ctx.verify_interval,
            ..held
        }
    })
}

fn ready_from(outcome: &Outcome) -> Desired {
    if let Some(s) = &outcome.stalled {
        return Desired::new(
            ConditionType::Ready,
            Status::False,
            s.reason,
            s.message.clone(),
        );
    }
    if let Some(r) = &outcome.reconciling {
        return Desired::new(
            ConditionType::Ready,
            Status::False,
            r.reason,
            r.message.clone(),
        );
    }
    let d = &outcome.delivered;
    Desired::new(ConditionType::Ready, d.status, d.reason, d.message.clone())
}

fn finish(
    ctx: &Ctx,
    mut status: AccessPackageAssignmentStatus,
    mut outcome: Outcome,
    missing: Vec<PromisedResource>,
) -> Plan {
    let prev = ctx.prev;
    let mut ready = ready_from(&outcome);
    let Effects {
        ledger: mut ledger_updates,
        note,
        needs_account,
    } = ctx.effects.take();
    if ctx.input.spec.suspend && outcome.action.is_write() {
        ledger_updates.retain(|u| !matches!(u, LedgerUpdate::Requested { .. }));
        // Suspend blocks every write: undo the bookkeeping the write would have done.
        status.reprocess = prev.reprocess.clone();
        status.last_request_id = prev.last_request_id.clone();
        let would = describe(&outcome.action);
        outcome.action = Action::None;
        outcome.reconciling = None;
        outcome.requeue = ctx.verify_interval;
        ready = Desired::new(
            ConditionType::Ready,
            Status::False,
            Reason::Suspended,
            format!(
                "spec.suspend is true, so Redeliver did not {would}. {}",
                outcome.delivered.message
            ),
        );
    }
    let mut desired = vec![ready, outcome.delivered.clone()];
    desired.extend(outcome.reconciling.clone());
    desired.extend(outcome.stalled.clone());
    status.conditions =
        conditions::build_conditions(&prev.conditions, desired, ctx.input.generation, ctx.now);
    let mut events = events_for(ctx, &status, &outcome.action, &missing);
    events.extend(note);
    Plan {
        action: outcome.action,
        status,
        requeue_after: outcome.requeue.max(Duration::from_secs(1)),
        events,
        missing,
        ledger: ledger_updates,
        needs_account,
    }
}

fn describe(action: &Action) -> String {
    match action {
        Action::Write(Write::RequestAssignment { .. }) => "request the assignment".into(),
        Action::Write(Write::ReprocessAssignment { assignment_id }) => {
            format!("reprocess assignment {assignment_id}")
        }
        Action::Write(Write::ReprocessRequest { request_id }) => {
            format!("reprocess request {request_id}")
        }
        Action::None | Action::Wait { .. } | Action::GiveUp { .. } => "act".into(),
    }
}

fn events_for(
    ctx: &Ctx,
    status: &AccessPackageAssignmentStatus,
    action: &Action,
    missing: &[PromisedResource],
) -> Vec<EngineEvent> {
    let prev = &ctx.prev.conditions;
    let new = &status.conditions;
    let mut events = Vec::new();
    let mut push = |kind: EventKind, message: String| {
        if !events.iter().any(|e: &EngineEvent| e.kind == kind) {
            events.push(EngineEvent { kind, message });
        }
    };
    let prev_delivered = conditions::find(prev, ConditionType::Delivered);
    let new_delivered = conditions::find(new, ConditionType::Delivered);
    if let Some(d) = new_delivered {
        let prev_reason = conditions::reason_of(prev, ConditionType::Delivered);
        // Only a recovery is news: delivered after drift, a failure or a request. The first
        // verification of a healthy object (from nothing, `Verifying` or a failed read) says
        // nothing a human needs, and at 10,000 objects those events weighed on the API server.
        let prev_false = prev_delivered.is_some_and(|c| c.status == Status::False);
        if d.status == Status::True && prev_false {
            push(EventKind::DeliveryVerified, d.message.clone());
        }
        if !missing.is_empty()
            && d.reason.parse().is_ok_and(is_drift_reason)
            && !prev_reason.is_some_and(is_drift_reason)
        {
            push(
                EventKind::DriftDetected,
                format!(
                    "Drift detected: missing {}.",
                    missing_labels(status, missing)
                ),
            );
        }
        if d.reason == Reason::DeliveryFailed && prev_reason != Some(Reason::DeliveryFailed) {
            push(EventKind::DeliveryFailed, d.message.clone());
        }
    }
    match action {
        Action::Write(Write::RequestAssignment {
            access_package_id,
            target_object_id,
            ..
        }) => push(
            EventKind::AssignmentRequested,
            format!(
                "Requesting access package {} for {} (adminAdd).",
                status
                    .access_package_name
                    .as_deref()
                    .unwrap_or(access_package_id),
                status.target_name.as_deref().unwrap_or(target_object_id)
            ),
        ),
        Action::Write(Write::ReprocessAssignment { .. })
        | Action::Write(Write::ReprocessRequest { .. }) => {
            let message = conditions::find(new, ConditionType::Reconciling)
                .map(|c| c.message.clone())
                .unwrap_or_else(|| describe(action));
            push(EventKind::ReprocessRequested, message);
        }
        _ => {}
    }
    let prev_stalled = conditions::find(prev, ConditionType::Stalled).map(|c| c.reason.as_str());
    if let Some(s) = conditions::find(new, ConditionType::Stalled)
        && prev_stalled != Some(s.reason.as_str())
    {
        push(EventKind::for_stalled(s), s.message.clone());
    }
    events
}

/// Delivered reasons that report missing resources: drift, whether repaired or held.
fn is_drift_reason(r: Reason) -> bool {
    matches!(
        r,
        Reason::ResourcesMissing
            | Reason::RemovedDeliberately
            | Reason::AttributionUnavailable
            | Reason::MassDrift
            | Reason::TargetDisabled
            | Reason::TargetDeleted
            | Reason::TargetAtRisk
            | Reason::TargetUnverified
    )
}

/// Rewrites a plan whose reprocess cannot be sent now because the connection's reprocess
/// budget is spent (the next slot in `wait`): the drift is reported at once (`Delivered`
/// and its event as planned), `Reconciling=True (RateLimited)` says the reprocess waits and
/// roughly when, and nothing claims a reprocess (attempts, times and the write's id stay as
/// they were). The message keeps its first wording while the object keeps waiting, so
/// retries until a slot frees rewrite nothing.
pub fn postpone_for_budget(
    plan: &mut Plan,
    previous: Option<&AccessPackageAssignmentStatus>,
    wait: Duration,
    per_minute: u32,
    generation: Option<i64>,
    now: Timestamp,
) {
    let prev = previous.cloned().unwrap_or_default();
    plan.status.reprocess = prev.reprocess.clone();
    plan.status.last_request_id = prev.last_request_id.clone();
    plan.status.last_client_request_id = prev.last_client_request_id.clone();
    let kept = conditions::find(&prev.conditions, ConditionType::Reconciling)
        .filter(|c| c.status == Status::True && c.reason == Reason::RateLimited.as_str())
        .map(|c| c.message.clone());
    let message = kept.unwrap_or_else(|| {
        let at = now + SignedDuration::try_from(wait).unwrap_or_default();
        format!(
            "Drift found; the reprocess waits for this connection's reprocess budget \
             ({per_minute} a minute, all objects together): next slot at about {}.",
            fmt_ts(at.round(jiff::Unit::Second).unwrap_or(at))
        )
    });
    for (type_, status) in [
        (ConditionType::Reconciling, Status::True),
        (ConditionType::Ready, Status::False),
    ] {
        conditions::set_condition(
            &mut plan.status.conditions,
            Desired::new(type_, status, Reason::RateLimited, message.clone()),
            generation,
            now,
        );
    }
    plan.events
        .retain(|e| e.kind != EventKind::ReprocessRequested);
    plan.ledger.clear();
    plan.action = Action::Wait {
        reason: Reason::RateLimited,
    };
    plan.requeue_after = wait.max(Duration::from_secs(1));
}

/// Records the id of the request the driver just created for a
/// [`Write::RequestAssignment`], so later passes recognise it (and report it if it sticks).
pub fn record_request_submitted(status: &mut AccessPackageAssignmentStatus, request_id: &str) {
    status.last_request_id = Some(request_id.to_string());
}

/// Rewrites a plan whose write action Graph refused (403 or another non-retryable 4xx):
/// `Stalled` with the reason, no `Reconciling`, the attempt still counted (so a refused
/// reprocess cannot loop), and a warning event instead of the success event.
pub fn record_action_failure(
    plan: &mut Plan,
    failure: &ActionFailure,
    retry_after: Duration,
    now: Timestamp,
) {
    let what = describe(&plan.action);
    let why = match failure.kind {
        ActionFailureKind::Forbidden => Reason::Forbidden,
        ActionFailureKind::Rejected => Reason::Rejected,
    };
    let retry = if matches!(plan.action, Action::Write(Write::RequestAssignment { .. })) {
        format!(
            " Redeliver will not ask again until the spec changes or the annotation {} gets a \
             new value.",
            crate::api::REPROCESS_ANNOTATION
        )
    } else {
        String::new()
    };
    let message = match failure.kind {
        ActionFailureKind::Forbidden => format!(
            "Graph refused to {what} for lack of permission ({}); grant the operator \
             EntitlementManagement.ReadWrite.All or the Access package assignment manager role \
             on the catalog.{retry}",
            failure.message
        ),
        ActionFailureKind::Rejected => format!(
            "Graph rejected the attempt to {what} ({}); check the policy and the user in the \
             Entra admin center.{retry}",
            failure.message
        ),
    };
    let status = &mut plan.status;
    if plan.action.is_reprocess() {
        status.reprocess.last_outcome = Some(ReprocessOutcome::Rejected);
    }
    let generation = status.observed_generation;
    let mut conds = status.conditions.clone();
    conditions::remove_condition(&mut conds, ConditionType::Reconciling);
    conditions::set_condition(
        &mut conds,
        Desired::new(ConditionType::Stalled, Status::True, why, message.clone()),
        generation,
        now,
    );
    conditions::set_condition(
        &mut conds,
        Desired::new(ConditionType::Ready, Status::False, why, message.clone()),
        generation,
        now,
    );
    status.conditions = conds;
    plan.events.retain(|e| {
        !matches!(
            e.kind,
            EventKind::ReprocessRequested | EventKind::AssignmentRequested
        )
    });
    plan.events.push(EngineEvent {
        kind: match failure.kind {
            ActionFailureKind::Forbidden => EventKind::PermissionDenied,
            ActionFailureKind::Rejected => EventKind::ActionFailed,
        },
        message,
    });
    plan.action = Action::GiveUp { reason: why };
    plan.requeue_after = retry_after.max(Duration::from_secs(1));
}

/// Whether `new` differs from `old` in anything but condition transition times and
/// `lastVerifiedTime` (which moves on every pass, so it records when the result last
/// changed): write the status only when this is true.
pub fn assignment_status_changed(
    old: Option<&AccessPackageAssignmentStatus>,
    new: &AccessPackageAssignmentStatus,
) -> bool {
    let Some(old) = old else { return true };
    let strip = |s: &AccessPackageAssignmentStatus| AccessPackageAssignmentStatus {
        last_verified_time: None,
        conditions: Vec::new(),
        ..s.clone()
    };
    strip(old) != strip(new)
        || !conditions::conditions_equal_ignoring_transition_times(&old.conditions, &new.conditions)
}

#[cfg(test)]
#[path = "assignment_tests.rs"]
mod tests;
