//! Every decision and condition transition of [`plan_assignment`], as small scenarios.

use super::*;
use crate::api::{AccessPackageAssignmentSpec, ReprocessMode, ReprocessOutcome};
use crate::domain::models::{RequestType, ResourceRole, ResourceRoleScope, ResourceScope};
use crate::engine::conditions::{ConditionType, Reason, find};
use crate::engine::{
    AccountState, MassDriftHold, ResolveFailureKind, ResourceRead, Risk, SafetyPolicy,
    TargetAccount, promised_resources,
};

const PKG: &str = "9f1c0c7e-0000-4000-8000-000000000001";
const POLICY: &str = "2264bf65-76ba-417b-a27d-54d291f0cbc8";
const USER: &str = "7deff43e-1f17-44ef-9e5f-d516b0ba11d4";
const A1: &str = "5b1e8f4a-0c6e-4b39-9d8e-2d0f5b7c9a11";
const R1: &str = "b7a6c2d0-0000-4000-8000-000000000009";

fn at(minutes: i64) -> Timestamp {
    Timestamp::from_second(1_795_860_000 + minutes * 60).unwrap()
}

fn scope(
    system: &str,
    scope_origin: &str,
    name: &str,
    role_origin: &str,
    role: &str,
) -> ResourceRoleScope {
    ResourceRoleScope {
        id: format!("{role_origin}_{scope_origin}"),
        role: Some(ResourceRole {
            display_name: Some(role.into()),
            origin_id: Some(role_origin.into()),
            origin_system: Some(system.into()),
            ..Default::default()
        }),
        scope: Some(ResourceScope {
            display_name: Some(name.into()),
            origin_id: Some(scope_origin.into()),
            origin_system: Some(system.into()),
            ..Default::default()
        }),
    }
}

fn assignment(state: AssignmentState) -> Assignment {
    serde_json::from_value(serde_json::json!({
        "id": A1, "state": state.as_str(),
        "status": match state {
            AssignmentState::Delivered => "Delivered",
            AssignmentState::Delivering => "Delivering",
            _ => "Other",
        },
        "expiredDateTime": if state == AssignmentState::Expired { Some("2026-11-01T00:00:00Z") } else { None },
    }))
    .unwrap()
}

fn request(
    state: RequestState,
    created: Option<Timestamp>,
    completed: Option<Timestamp>,
) -> AssignmentRequest {
    AssignmentRequest {
        id: R1.into(),
        request_type: RequestType::AdminAdd,
        state,
        status: None,
        created_date_time: created,
        completed_date_time: completed,
        access_package: None,
        assignment: None,
        requestor: None,
    }
}

/// A scenario: Finance Analysts grants fin-readers and fin-writers (Member) and a SharePoint
/// site; Alice holds a delivered assignment and both memberships.
struct Fx {
    generation: Option<i64>,
    spec: AccessPackageAssignmentSpec,
    previous: Option<AccessPackageAssignmentStatus>,
    annotation: Option<String>,
    resolved: Result<ResolvedIds, ResolveFailure>,
    assignment: Option<Assignment>,
    request: Option<AssignmentRequest>,
    resources: Vec<PromisedResource>,
    snapshot: Snapshot,
    settings: EngineSettings,
    ledger: RepairLedger,
    safety: SafetyPolicy,
    mass_drift: Option<MassDriftHold>,
}

const WHO: &str = "AccessPackageAssignment access/alice-finance";

impl Fx {
    fn new() -> Self {
        let resources = promised_resources(&[
            scope("AadGroup", "g1", "fin-readers", "Member_g1", "Member"),
            scope("AadGroup", "g2", "fin-writers", "Member_g2", "Member"),
            scope(
                "SharePointOnline",
                "https://contoso.sharepoint.com/sites/fin",
                "Finance site",
                "4",
                "Visitors",
            ),
        ]);
        let mut snapshot = Snapshot::new();
        snapshot.record_group_members("g1", [USER, "other"]);
        snapshot.record_group_members("g2", [USER]);
        // The account gate's read, as a driver records it before any grant.
        snapshot.record_account(USER, TargetAccount::enabled());
        Self {
            generation: Some(1),
            spec: serde_json::from_value(serde_json::json!({
                "accessPackage": {"displayName": "Finance Analysts"},
                "target": {"userPrincipalName": "alice@contoso.com"}
            }))
            .unwrap(),
            previous: None,
            annotation: None,
            resolved: Ok(ResolvedIds {
                access_package_id: PKG.into(),
                access_package_name: Some("Finance Analysts".into()),
                policy: Ok(POLICY.into()),
                target_object_id: USER.into(),
                target_name: Some("alice@contoso.com".into()),
            }),
            assignment: Some(assignment(AssignmentState::Delivered)),
            request: None,
            resources,
            snapshot,
            settings: EngineSettings::default(),
            ledger: RepairLedger::new(),
            safety: SafetyPolicy::default(),
            mass_drift: None,
        }
    }

    fn plan(&self, now: Timestamp) -> Plan {
        plan_assignment(
            &AssignmentInput {
                generation: self.generation,
                spec: &self.spec,
                previous: self.previous.as_ref(),
                reprocess_annotation: self.annotation.as_deref(),
                resolved: self.resolved.clone(),
                assignment: self.assignment.as_ref(),
                latest_request: self.request.as_ref(),
                resources: &self.resources,
                snapshot: &self.snapshot,
                settings: &self.settings,
                ledger: &self.ledger,
                who: WHO,
                operator_report_only: false,
                safety: &self.safety,
                mass_drift: self.mass_drift.as_ref(),
            },
            now,
        )
    }

    /// Plans, applies its ledger updates (as a driver does) and stores the status as the
    /// next pass's previous one.
    fn step(&mut self, now: Timestamp) -> Plan {
        let plan = self.plan(now);
        for u in &plan.ledger {
            self.ledger.apply(u);
        }
        self.previous = Some(plan.status.clone());
        plan
    }

    fn remove_from_g2(&mut self) {
        self.snapshot
            .record_group_members("g2", Vec::<String>::new());
    }

    fn restore_g2(&mut self) {
        self.snapshot.record_group_members("g2", [USER]);
    }
}

fn cond(
    plan: &Plan,
    type_: ConditionType,
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    find(&plan.status.conditions, type_)
}

fn assert_cond(plan: &Plan, type_: ConditionType, status: &str, why: Reason) {
    let c = cond(plan, type_)
        .unwrap_or_else(|| panic!("{type_} missing: {:#?}", plan.status.conditions));
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        (status, why.as_str()),
        "{type_}: {}",
        c.message
    );
}

fn kinds(plan: &Plan) -> Vec<EventKind> {
    plan.events.iter().map(|e| e.kind).collect()
}

fn types(plan: &Plan) -> Vec<&str> {
    plan.status
        .conditions
        .iter()
        .map(|c| c.type_.as_str())
        .collect()
}

// ---- Delivered and steady state ----

#[test]
fn delivered_and_present_is_ready() {
    let p = Fx::new().plan(at(0));
    assert_eq!(p.action, Action::None);
    assert_cond(&p, ConditionType::Ready, "True", Reason::Delivered);
    assert_cond(&p, ConditionType::Delivered, "True", Reason::Delivered);
    assert_eq!(types(&p), [ConditionType::Ready, ConditionType::Delivered]);
    assert_eq!(p.requeue_after, Duration::from_secs(600));
    assert_eq!(p.status.resources_summary.as_deref(), Some("2/2"));
    assert_eq!(p.status.assignment_id.as_deref(), Some(A1));
    assert_eq!(p.status.graph_state.as_deref(), Some("delivered"));
    assert_eq!(p.status.graph_status.as_deref(), Some("Delivered"));
    assert_eq!(
        p.status.access_package_name.as_deref(),
        Some("Finance Analysts")
    );
    assert_eq!(p.status.target_name.as_deref(), Some("alice@contoso.com"));
    assert_eq!(p.status.policy_id.as_deref(), Some(POLICY));
    assert_eq!(p.status.observed_generation, Some(1));
    assert!(
        p.status
            .conditions
            .iter()
            .all(|c| c.observed_generation == Some(1))
    );
    // The first verification of a healthy object is no news: no event.
    assert!(p.events.is_empty(), "{:?}", p.events);
    assert!(p.missing.is_empty());
}

#[test]
fn first_verification_after_verifying_or_a_failed_read_emits_nothing() {
    // From the first-visit status (Verifying) and from a failed read (Unknown): Delivered
    // turning True is not a recovery a human needs to hear about.
    let mut fx = Fx::new();
    fx.previous = Some(AccessPackageAssignmentStatus {
        conditions: crate::engine::conditions::first_visit_conditions(Some(1), at(0)),
        ..Default::default()
    });
    let p = fx.step(at(1));
    assert_cond(&p, ConditionType::Delivered, "True", Reason::Delivered);
    assert!(p.events.is_empty(), "{:?}", p.events);

    let mut fx = Fx::new();
    fx.snapshot
        .record_failure(ResourceRead::GroupMembers("g2".into()), "503");
    let failed = fx.step(at(0));
    assert_cond(
        &failed,
        ConditionType::Delivered,
        "Unknown",
        Reason::VerificationFailed,
    );
    fx.restore_g2();
    let p = fx.step(at(5));
    assert_cond(&p, ConditionType::Delivered, "True", Reason::Delivered);
    assert!(p.events.is_empty(), "{:?}", p.events);
}

#[test]
fn steady_state_changes_nothing_and_emits_nothing() {
    let mut fx = Fx::new();
    let first = fx.step(at(0));
    let second = fx.plan(at(10));
    assert!(second.events.is_empty());
    assert!(!assignment_status_changed(
        Some(&first.status),
        &second.status
    ));
    assert_eq!(second.status.conditions, first.status.conditions);
    // Only lastVerifiedTime moved.
    assert_ne!(
        second.status.last_verified_time,
        first.status.last_verified_time
    );
    assert_eq!(second.status.reprocess, first.status.reprocess);
}

#[test]
fn unverifiable_resources_never_block_or_trigger() {
    let mut fx = Fx::new();
    let p = fx.plan(at(0));
    let site = p
        .status
        .resources
        .iter()
        .find(|r| r.origin_system == crate::engine::OriginSystem::SharePointOnline)
        .unwrap();
    assert_eq!(site.state, ResourceState::Unverifiable);
    assert!(site.note.as_deref().unwrap().contains("cannot be verified"));
    fx.resources.retain(|r| !r.is_verifiable());
    let p = fx.plan(at(0));
    assert_cond(&p, ConditionType::Delivered, "True", Reason::Delivered);
    assert_eq!(p.status.resources_summary.as_deref(), Some("0/0"));
    assert_eq!(p.action, Action::None);
}

// ---- Drift and repair ----

#[test]
fn drift_in_auto_mode_reprocesses_the_assignment() {
    let mut fx = Fx::new();
    fx.step(at(0));
    fx.remove_from_g2();
    let p = fx.plan(at(10));
    assert_eq!(
        p.action,
        Action::Write(Write::ReprocessAssignment {
            assignment_id: A1.into()
        })
    );
    assert_cond(
        &p,
        ConditionType::Delivered,
        "False",
        Reason::ResourcesMissing,
    );
    assert_cond(&p, ConditionType::Reconciling, "True", Reason::Reprocessing);
    assert_cond(&p, ConditionType::Ready, "False", Reason::Reprocessing);
    assert!(cond(&p, ConditionType::Stalled).is_none());
    assert_eq!(p.status.reprocess.attempts, 1);
    assert_eq!(
        p.status.reprocess.last_requested_time,
        Some(to_time(at(10)))
    );
    assert_eq!(
        p.status.reprocess.last_outcome,
        Some(ReprocessOutcome::Requested)
    );
    assert!(awaiting_reprocess(Some(&p.status)));
    assert!(!awaiting_reprocess(None));
    assert_eq!(p.status.resources_summary.as_deref(), Some("1/2"));
    assert_eq!(p.missing.len(), 1);
    assert_eq!(p.missing[0].label(), "fin-writers (Member)");
    assert_eq!(
        kinds(&p),
        [EventKind::DriftDetected, EventKind::ReprocessRequested]
    );
    assert!(p.events[0].message.contains("fin-writers (Member)"));
    assert_eq!(p.requeue_after, Duration::from_secs(30));
    // Delivered flipped, so its transition time moved.
    assert_eq!(
        cond(&p, ConditionType::Delivered)
            .unwrap()
            .last_transition_time,
        to_time(at(10))
    );
}

#[test]
fn within_cooldown_waits_until_it_ends_without_changing_status() {
    let mut fx = Fx::new();
    fx.remove_from_g2();
    let first = fx.step(at(0));
    assert_eq!(first.status.reprocess.attempts, 1);
    let p = fx.plan(at(1));
    assert_eq!(
        p.action,
        Action::Wait {
            reason: Reason::Reprocessing
        }
    );
    assert_eq!(p.requeue_after, Duration::from_secs(4 * 60));
    assert_cond(&p, ConditionType::Reconciling, "True", Reason::Reprocessing);
    assert_eq!(p.status.reprocess.attempts, 1);
    assert!(p.events.is_empty(), "{:?}", p.events);
    // The waiting message is deterministic, so a second wait is not a status change.
    fx.previous = Some(p.status.clone());
    let again = fx.plan(at(2));
    assert!(!assignment_status_changed(Some(&p.status), &again.status));
    assert_eq!(
        cond(&again, ConditionType::Reconciling)
            .unwrap()
            .last_transition_time,
        to_time(at(0))
    );
}

#[test]
fn after_cooldown_reprocesses_again_without_new_drift_event() {
    let mut fx = Fx::new();
    fx.remove_from_g2();
    fx.step(at(0));
    fx.step(at(1));
    let p = fx.plan(at(5));
    assert_eq!(
        p.action,
        Action::Write(Write::ReprocessAssignment {
            assignment_id: A1.into()
        })
    );
    assert_eq!(p.status.reprocess.attempts, 2);
    assert_eq!(kinds(&p), [EventKind::ReprocessRequested]);
}

#[test]
fn exhausted_attempts_give_up_and_stall_once() {
    let mut fx = Fx::new();
    fx.remove_from_g2();
    for i in 0..3 {
        let p = fx.step(at(i * 5));
        assert!(
            matches!(p.action, Action::Write(Write::ReprocessAssignment { .. })),
            "pass {i}"
        );
    }
    let p = fx.step(at(15));
    assert_eq!(
        p.action,
        Action::GiveUp {
            reason: Reason::ReprocessExhausted
        }
    );
    assert_cond(
        &p,
        ConditionType::Stalled,
        "True",
        Reason::ReprocessExhausted,
    );
    assert_cond(
        &p,
        ConditionType::Ready,
        "False",
        Reason::ReprocessExhausted,
    );
    assert!(cond(&p, ConditionType::Reconciling).is_none());
    assert_eq!(
        types(&p),
        [
            ConditionType::Ready,
            ConditionType::Delivered,
            ConditionType::Stalled
        ]
    );
    let msg = &cond(&p, ConditionType::Stalled).unwrap().message;
    assert!(msg.contains("fin-writers (Member)"), "{msg}");
    assert!(msg.contains(crate::api::REPROCESS_ANNOTATION), "{msg}");
    assert_eq!(p.status.reprocess.attempts, 3);
    assert_eq!(
        p.status.reprocess.last_outcome,
        Some(ReprocessOutcome::Exhausted)
    );
    assert_eq!(kinds(&p), [EventKind::ReprocessExhausted]);
    assert_eq!(p.requeue_after, Duration::from_secs(600));
    let again = fx.plan(at(30));
    assert!(again.events.is_empty());
    assert!(!assignment_status_changed(Some(&p.status), &again.status));
}

#[test]
fn verified_delivery_resets_attempts() {
    let mut fx = Fx::new();
    fx.remove_from_g2();
    fx.step(at(0));
    fx.step(at(5));
    fx.restore_g2();
    let p = fx.step(at(6));
    assert_eq!(p.action, Action::None);
    assert_cond(&p, ConditionType::Delivered, "True", Reason::Delivered);
    assert_cond(&p, ConditionType::Ready, "True", Reason::Delivered);
    assert!(cond(&p, ConditionType::Reconciling).is_none());
    assert_eq!(p.status.reprocess.attempts, 0);
    assert_eq!(
        p.status.reprocess.last_outcome,
        Some(ReprocessOutcome::Repaired)
    );
    assert_eq!(kinds(&p), [EventKind::DeliveryVerified]);
    // And the next pass is quiet.
    let q = fx.plan(at(20));
    assert!(q.events.is_empty());
    assert!(!assignment_status_changed(Some(&p.status), &q.status));
}

#[test]
fn exhaustion_clears_after_repair_by_hand() {
    let mut fx = Fx::new();
    fx.remove_from_g2();
    for i in 0..4 {
        fx.step(at(i * 5));
    }
    fx.restore_g2();
    let p = fx.plan(at(40));
    assert!(cond(&p, ConditionType::Stalled).is_none());
    assert_cond(&p, ConditionType::Ready, "True", Reason::Delivered);
}

#[test]
fn a_failed_read_makes_delivery_unknown_without_reprocessing() {
    let mut fx = Fx::new();
    fx.snapshot.record_failure(
        ResourceRead::GroupMembers("g2".into()),
        "503 serviceNotAvailable",
    );
    let p = fx.plan(at(0));
    assert_eq!(p.action, Action::None);
    assert_cond(
        &p,
        ConditionType::Delivered,
        "Unknown",
        Reason::VerificationFailed,
    );
    assert_cond(
        &p,
        ConditionType::Ready,
        "Unknown",
        Reason::VerificationFailed,
    );
    assert!(
        cond(&p, ConditionType::Delivered)
            .unwrap()
            .message
            .contains("fin-writers")
    );
    assert_eq!(p.requeue_after, Duration::from_secs(60));
    assert_eq!(p.status.reprocess.attempts, 0);
    let g2 = p
        .status
        .resources
        .iter()
        .find(|r| r.origin_id == "g2")
        .unwrap();
    assert_eq!(g2.state, ResourceState::Unknown);
    assert!(g2.note.as_deref().unwrap().contains("503"));
}

#[test]
fn a_known_missing_resource_is_repaired_even_if_another_read_failed() {
    let mut fx = Fx::new();
    fx.remove_from_g2();
    fx.snapshot
        .record_failure(ResourceRead::GroupMembers("g1".into()), "timeout");
    let p = fx.plan(at(0));
    assert!(matches!(
        p.action,
        Action::Write(Write::ReprocessAssignment { .. })
    ));
    assert_cond(
        &p,
        ConditionType::Delivered,
        "False",
        Reason::ResourcesMissing,
    );
}

#[test]
fn disabled_mode_only_reports() {
    let mut fx = Fx::new();
    fx.spec.reprocess.mode = ReprocessMode::Disabled;
    fx.remove_from_g2();
    let p = fx.plan(at(0));
    assert_eq!(p.action, Action::None);
    assert_cond(
        &p,
        ConditionType::Delivered,
        "False",
        Reason::ResourcesMissing,
    );
    assert_cond(&p, ConditionType::Ready, "False", Reason::ResourcesMissing);
    assert!(
        cond(&p, ConditionType::Reconciling).is_none()
            && cond(&p, ConditionType::Stalled).is_none()
    );
    assert!(
        cond(&p, ConditionType::Delivered)
            .unwrap()
            .message
            .contains("Disabled")
    );
    assert_eq!(kinds(&p), [EventKind::DriftDetected]);
    assert_eq!(p.status.reprocess.attempts, 0);
}

#[test]
fn disabled_mode_ignores_the_annotation() {
    let mut fx = Fx::new();
    fx.spec.reprocess.mode = ReprocessMode::Disabled;
    fx.annotation = Some("2026-11-28T10:00:00Z".into());
    let p = fx.plan(at(0));
    assert_eq!(p.action, Action::None);
    assert_eq!(p.status.reprocess.last_handled_request, None);
}

#[test]
fn manual_mode_waits_for_the_annotation_then_handles_it_once() {
    let mut fx = Fx::new();
    fx.spec.reprocess.mode = ReprocessMode::Manual;
    fx.remove_from_g2();
    let p = fx.step(at(0));
    assert_eq!(p.action, Action::None);
    assert!(
        cond(&p, ConditionType::Delivered)
            .unwrap()
            .message
            .contains(crate::api::REPROCESS_ANNOTATION)
    );
    fx.annotation = Some("first".into());
    let p = fx.step(at(1));
    assert_eq!(
        p.action,
        Action::Write(Write::ReprocessAssignment {
            assignment_id: A1.into()
        })
    );
    assert_eq!(
        p.status.reprocess.last_handled_request.as_deref(),
        Some("first")
    );
    // Same value again: handled already, so nothing happens even after the cooldown.
    let p = fx.step(at(30));
    assert_eq!(p.action, Action::None);
    assert_eq!(p.status.reprocess.attempts, 1);
    // A new value asks again.
    fx.annotation = Some("second".into());
    let p = fx.step(at(31));
    assert!(matches!(
        p.action,
        Action::Write(Write::ReprocessAssignment { .. })
    ));
    assert_eq!(
        p.status.reprocess.last_handled_request.as_deref(),
        Some("second")
    );
}

#[test]
fn annotation_requests_one_reprocess_without_drift() {
    let mut fx = Fx::new();
    fx.step(at(0));
    fx.annotation = Some("now".into());
    let p = fx.step(at(1));
    assert_eq!(
        p.action,
        Action::Write(Write::ReprocessAssignment {
            assignment_id: A1.into()
        })
    );
    assert_eq!(
        p.status.reprocess.last_handled_request.as_deref(),
        Some("now")
    );
    assert_cond(&p, ConditionType::Delivered, "True", Reason::Delivered);
    assert_cond(&p, ConditionType::Reconciling, "True", Reason::Reprocessing);
    assert_eq!(kinds(&p), [EventKind::ReprocessRequested]);
    let q = fx.step(at(2));
    assert_eq!(q.action, Action::None);
    assert_eq!(
        q.status.reprocess.attempts, 0,
        "verified delivered resets the count"
    );
}

#[test]
fn annotation_respects_the_cooldown() {
    let mut fx = Fx::new();
    fx.remove_from_g2();
    fx.step(at(0));
    fx.annotation = Some("again".into());
    let p = fx.step(at(1));
    assert_eq!(
        p.action,
        Action::Wait {
            reason: Reason::Reprocessing
        }
    );
    assert_eq!(
        p.status.reprocess.last_handled_request, None,
        "not handled yet"
    );
    let p = fx.step(at(5));
    assert!(matches!(
        p.action,
        Action::Write(Write::ReprocessAssignment { .. })
    ));
    assert_eq!(
        p.status.reprocess.last_handled_request.as_deref(),
        Some("again")
    );
}

#[test]
fn annotation_overrides_exhaustion() {
    let mut fx = Fx::new();
    fx.remove_from_g2();
    for i in 0..4 {
        fx.step(at(i * 5));
    }
    fx.annotation = Some("retry".into());
    let p = fx.plan(at(60));
    assert!(matches!(
        p.action,
        Action::Write(Write::ReprocessAssignment { .. })
    ));
    assert_eq!(p.status.reprocess.attempts, 4);
    assert!(cond(&p, ConditionType::Stalled).is_none());
}

#[test]
fn in_flight_request_blocks_reprocess() {
    let mut fx = Fx::new();
    fx.remove_from_g2();
    fx.request = Some(request(RequestState::Delivering, Some(at(-1)), None));
    let p = fx.plan(at(0));
    assert_eq!(
        p.action,
        Action::Wait {
            reason: Reason::Requesting
        }
    );
    assert_cond(&p, ConditionType::Reconciling, "True", Reason::Requesting);
    assert_eq!(p.status.last_request_id.as_deref(), Some(R1));
    assert_eq!(p.status.reprocess.attempts, 0);
}

// ---- Ensure: missing assignment ----

#[test]
fn missing_assignment_is_requested() {
    let mut fx = Fx::new();
    fx.assignment = None;
    fx.snapshot.record_group_members("g1", Vec::<String>::new());
    fx.remove_from_g2();
    let p = fx.plan(at(0));
    assert_eq!(
        p.action,
        Action::Write(Write::RequestAssignment {
            access_package_id: PKG.into(),
            policy_id: POLICY.into(),
            target_object_id: USER.into()
        })
    );
    assert_cond(&p, ConditionType::Delivered, "False", Reason::NotAssigned);
    assert_cond(&p, ConditionType::Reconciling, "True", Reason::Requesting);
    assert_cond(&p, ConditionType::Ready, "False", Reason::Requesting);
    assert_eq!(p.status.assignment_id, None);
    assert_eq!(p.status.graph_status, None);
    assert_eq!(kinds(&p), [EventKind::AssignmentRequested]);
    assert!(
        p.missing.len() == 2,
        "not-assigned still reports what is missing"
    );
    assert_eq!(p.status.reprocess.attempts, 0, "ensure is not a reprocess");
}

#[test]
fn requesting_is_not_gated_by_reprocess_mode() {
    let mut fx = Fx::new();
    fx.assignment = None;
    fx.spec.reprocess.mode = ReprocessMode::Disabled;
    assert!(matches!(
        fx.plan(at(0)).action,
        Action::Write(Write::RequestAssignment { .. })
    ));
}

#[test]
fn a_submitted_request_is_awaited_not_repeated_then_reported_stuck() {
    let mut fx = Fx::new();
    fx.assignment = None;
    let mut p = fx.plan(at(0));
    record_request_submitted(&mut p.status, R1);
    fx.previous = Some(p.status.clone());
    // The list lags: no request, no assignment yet.
    let w = fx.step(at(1));
    assert_eq!(
        w.action,
        Action::Wait {
            reason: Reason::Requesting
        }
    );
    assert!(w.events.is_empty());
    assert_eq!(w.status.last_request_id.as_deref(), Some(R1));
    let w = fx.step(at(29));
    assert_eq!(
        w.action,
        Action::Wait {
            reason: Reason::Requesting
        }
    );
    let s = fx.step(at(31));
    assert_eq!(
        s.action,
        Action::GiveUp {
            reason: Reason::DeliveryStuck
        }
    );
    assert_cond(&s, ConditionType::Stalled, "True", Reason::DeliveryStuck);
    assert!(
        cond(&s, ConditionType::Stalled)
            .unwrap()
            .message
            .contains(R1)
    );
    assert!(cond(&s, ConditionType::Reconciling).is_none());
    assert_eq!(kinds(&s), [EventKind::DeliveryStuck]);
    // Stays stuck (no flapping back to Reconciling), quietly.
    let again = fx.plan(at(40));
    assert_eq!(
        again.action,
        Action::GiveUp {
            reason: Reason::DeliveryStuck
        }
    );
    assert!(again.events.is_empty());
    assert!(!assignment_status_changed(Some(&s.status), &again.status));
}

#[test]
fn in_flight_request_without_assignment_waits_and_sticks_by_creation_time() {
    let mut fx = Fx::new();
    fx.assignment = None;
    fx.request = Some(request(RequestState::Delivering, Some(at(0)), None));
    let p = fx.plan(at(5));
    assert_eq!(
        p.action,
        Action::Wait {
            reason: Reason::Requesting
        }
    );
    assert_cond(
        &p,
        ConditionType::Delivered,
        "False",
        Reason::AwaitingDelivery,
    );
    assert_eq!(p.requeue_after, Duration::from_secs(30));
    let p = fx.plan(at(45));
    assert_eq!(
        p.action,
        Action::GiveUp {
            reason: Reason::DeliveryStuck
        }
    );
    let msg = &cond(&p, ConditionType::Stalled).unwrap().message;
    assert!(msg.contains(R1) && msg.contains("delivering"), "{msg}");
}

#[test]
fn canceled_request_is_requested_again() {
    let mut fx = Fx::new();
    fx.assignment = None;
    fx.request = Some(request(
        RequestState::Canceled,
        Some(at(-60)),
        Some(at(-50)),
    ));
    assert!(matches!(
        fx.plan(at(0)).action,
        Action::Write(Write::RequestAssignment { .. })
    ));
}

#[test]
fn denied_request_stalls_until_the_annotation_asks_again() {
    let mut fx = Fx::new();
    fx.assignment = None;
    fx.request = Some(request(RequestState::Denied, Some(at(-60)), Some(at(-50))));
    let p = fx.step(at(0));
    assert_eq!(
        p.action,
        Action::GiveUp {
            reason: Reason::RequestDenied
        }
    );
    assert_cond(&p, ConditionType::Stalled, "True", Reason::RequestDenied);
    assert_eq!(kinds(&p), [EventKind::RequestDenied]);
    fx.annotation = Some("ask-again".into());
    let p = fx.plan(at(1));
    assert!(matches!(
        p.action,
        Action::Write(Write::RequestAssignment { .. })
    ));
    assert_eq!(
        p.status.reprocess.last_handled_request.as_deref(),
        Some("ask-again")
    );
    assert!(cond(&p, ConditionType::Stalled).is_none());
}

#[test]
fn ambiguous_policy_only_matters_when_requesting() {
    let mut fx = Fx::new();
    if let Ok(ids) = fx.resolved.as_mut() {
        ids.policy = Err(ResolveFailure::new(
            ResolveFailureKind::PolicyAmbiguous,
            "spec.assignmentPolicy is not set and the package has 2 policies: Direct, Self-service",
        ));
    }
    let p = fx.plan(at(0));
    assert_cond(&p, ConditionType::Ready, "True", Reason::Delivered);
    assert_eq!(p.status.policy_id, None);
    fx.assignment = None;
    let p = fx.plan(at(0));
    assert_eq!(
        p.action,
        Action::GiveUp {
            reason: Reason::PolicyAmbiguous
        }
    );
    assert_cond(&p, ConditionType::Stalled, "True", Reason::PolicyAmbiguous);
    assert!(
        cond(&p, ConditionType::Stalled)
            .unwrap()
            .message
            .contains("Self-service")
    );
    assert_eq!(kinds(&p), [EventKind::ResolveFailed]);
}

// ---- Failed delivery ----

/// An assignment in `state` whose latest request, created two hours ago, failed 20 minutes
/// later: within the reprocess window.
fn failed_two_hours_ago(state: AssignmentState) -> Fx {
    let mut fx = Fx::new();
    fx.assignment = Some(assignment(state));
    fx.request = Some(request(
        RequestState::DeliveryFailed,
        Some(at(-120)),
        Some(at(-100)),
    ));
    fx
}

#[test]
fn delivery_failed_reprocesses_the_failed_request_within_the_window() {
    for state in [
        AssignmentState::DeliveryFailed,
        AssignmentState::PartiallyDelivered,
    ] {
        let fx = failed_two_hours_ago(state);
        let p = fx.plan(at(0));
        assert_eq!(
            p.action,
            Action::Write(Write::ReprocessRequest {
                request_id: R1.into()
            })
        );
        assert_cond(
            &p,
            ConditionType::Delivered,
            "False",
            Reason::DeliveryFailed,
        );
        assert_cond(&p, ConditionType::Reconciling, "True", Reason::Reprocessing);
        assert_eq!(p.status.last_request_id.as_deref(), Some(R1));
        assert_eq!(p.status.reprocess.attempts, 1);
        assert_eq!(
            kinds(&p),
            [EventKind::DeliveryFailed, EventKind::ReprocessRequested]
        );
    }
}

#[test]
fn a_reprocessed_request_is_in_flight_since_the_reprocess_not_its_creation() {
    // The request was created two hours ago, failed, and is reprocessed now: the service
    // works on it again from now on, so it is not stuck until `stuck_after` from now.
    let mut fx = failed_two_hours_ago(AssignmentState::DeliveryFailed);
    let p = fx.step(at(0));
    assert_eq!(
        p.action,
        Action::Write(Write::ReprocessRequest {
            request_id: R1.into()
        })
    );
    for state in [AssignmentState::Delivering, AssignmentState::DeliveryFailed] {
        fx.assignment = Some(assignment(state));
        fx.request = Some(request(RequestState::Delivering, Some(at(-120)), None));
        let p = fx.plan(at(1));
        assert_eq!(
            p.action,
            Action::Wait {
                reason: Reason::Reprocessing
            },
            "{state:?}"
        );
        assert!(cond(&p, ConditionType::Stalled).is_none(), "{state:?}");
    }
    // Past `stuck_after` from the reprocess it is stuck, as any request would be.
    fx.assignment = Some(assignment(AssignmentState::Delivering));
    fx.step(at(20));
    let p = fx.step(at(31));
    assert_eq!(
        p.action,
        Action::GiveUp {
            reason: Reason::DeliveryStuck
        }
    );
}

#[test]
fn failed_request_outside_the_window_explains_cancel_and_new_request() {
    let mut fx = Fx::new();
    fx.assignment = Some(assignment(AssignmentState::DeliveryFailed));
    fx.request = Some(request(
        RequestState::DeliveryFailed,
        Some(at(-15 * 24 * 60 - 10)),
        Some(at(-15 * 24 * 60)),
    ));
    let p = fx.plan(at(0));
    assert_eq!(
        p.action,
        Action::GiveUp {
            reason: Reason::DeliveryFailed
        }
    );
    assert_cond(&p, ConditionType::Stalled, "True", Reason::DeliveryFailed);
    let msg = &cond(&p, ConditionType::Stalled).unwrap().message;
    assert!(msg.contains("cancel") && msg.contains(R1), "{msg}");
    assert_eq!(kinds(&p), [EventKind::DeliveryFailed]);
}

#[test]
fn failed_request_reprocess_uses_cooldown_and_attempts() {
    let mut fx = Fx::new();
    fx.assignment = Some(assignment(AssignmentState::DeliveryFailed));
    fx.request = Some(request(RequestState::DeliveryFailed, None, Some(at(-10))));
    fx.step(at(0));
    let p = fx.step(at(1));
    assert_eq!(
        p.action,
        Action::Wait {
            reason: Reason::Reprocessing
        }
    );
    fx.step(at(5));
    fx.step(at(10));
    let p = fx.step(at(15));
    assert_eq!(
        p.action,
        Action::GiveUp {
            reason: Reason::ReprocessExhausted
        }
    );
}

#[test]
fn failed_delivery_while_the_service_retries_waits() {
    let mut fx = Fx::new();
    fx.assignment = Some(assignment(AssignmentState::DeliveryFailed));
    fx.request = Some(request(RequestState::Delivering, Some(at(-2)), None));
    let p = fx.plan(at(0));
    assert_eq!(
        p.action,
        Action::Wait {
            reason: Reason::Reprocessing
        }
    );
}

#[test]
fn failed_delivery_without_a_request_stalls() {
    let mut fx = Fx::new();
    fx.assignment = Some(assignment(AssignmentState::DeliveryFailed));
    let p = fx.plan(at(0));
    assert_eq!(
        p.action,
        Action::GiveUp {
            reason: Reason::DeliveryFailed
        }
    );
    assert_cond(&p, ConditionType::Stalled, "True", Reason::DeliveryFailed);
}

#[test]
fn failed_add_request_without_assignment_is_reprocessed() {
    let mut fx = Fx::new();
    fx.assignment = None;
    fx.request = Some(request(
        RequestState::PartiallyDelivered,
        Some(at(-10)),
        Some(at(-5)),
    ));
    let p = fx.plan(at(0));
    assert_eq!(
        p.action,
        Action::Write(Write::ReprocessRequest {
            request_id: R1.into()
        })
    );
    assert_cond(
        &p,
        ConditionType::Delivered,
        "False",
        Reason::DeliveryFailed,
    );
}

// ---- Delivering, expired, unknown ----

#[test]
fn delivering_waits_then_reports_stuck() {
    let mut fx = Fx::new();
    fx.assignment = Some(assignment(AssignmentState::Delivering));
    let p = fx.step(at(0));
    assert_eq!(
        p.action,
        Action::Wait {
            reason: Reason::Requesting
        }
    );
    assert_cond(
        &p,
        ConditionType::Delivered,
        "False",
        Reason::AwaitingDelivery,
    );
    assert_cond(&p, ConditionType::Ready, "False", Reason::Requesting);
    assert_eq!(p.status.graph_status.as_deref(), Some("Delivering"));
    let p = fx.step(at(20));
    assert_eq!(
        p.action,
        Action::Wait {
            reason: Reason::Requesting
        }
    );
    let p = fx.step(at(31));
    assert_eq!(
        p.action,
        Action::GiveUp {
            reason: Reason::DeliveryStuck
        }
    );
    assert!(
        cond(&p, ConditionType::Stalled)
            .unwrap()
            .message
            .contains(A1)
    );
    // Delivery completes: the stall clears.
    fx.assignment = Some(assignment(AssignmentState::Delivered));
    let p = fx.plan(at(40));
    assert!(cond(&p, ConditionType::Stalled).is_none());
    assert_cond(&p, ConditionType::Ready, "True", Reason::Delivered);
}

#[test]
fn delivering_after_a_reprocess_keeps_reprocessing_reason() {
    let mut fx = Fx::new();
    fx.remove_from_g2();
    fx.step(at(0));
    fx.assignment = Some(assignment(AssignmentState::Delivering));
    let p = fx.plan(at(1));
    assert_eq!(
        p.action,
        Action::Wait {
            reason: Reason::Reprocessing
        }
    );
}

#[test]
fn expired_is_reported_not_renewed() {
    let mut fx = Fx::new();
    fx.assignment = Some(assignment(AssignmentState::Expired));
    let p = fx.step(at(0));
    assert_eq!(
        p.action,
        Action::GiveUp {
            reason: Reason::Expired
        }
    );
    assert_cond(&p, ConditionType::Delivered, "False", Reason::Expired);
    assert_cond(&p, ConditionType::Stalled, "True", Reason::Expired);
    assert!(
        cond(&p, ConditionType::Delivered)
            .unwrap()
            .message
            .contains("2026-11-01")
    );
    assert_eq!(kinds(&p), [EventKind::Expired]);
    fx.annotation = Some("renew".into());
    let p = fx.plan(at(1));
    assert!(matches!(
        p.action,
        Action::Write(Write::RequestAssignment { .. })
    ));
    assert_eq!(
        p.status.reprocess.last_handled_request.as_deref(),
        Some("renew")
    );
}

#[test]
fn unknown_graph_state_is_unknown() {
    let mut fx = Fx::new();
    let mut a = assignment(AssignmentState::Delivered);
    a.state = AssignmentState::Unknown;
    fx.assignment = Some(a);
    let p = fx.plan(at(0));
    assert_eq!(p.action, Action::None);
    assert_cond(
        &p,
        ConditionType::Delivered,
        "Unknown",
        Reason::UnknownState,
    );
    assert_cond(&p, ConditionType::Ready, "Unknown", Reason::UnknownState);
}

// ---- Suspend ----

#[test]
fn suspend_blocks_requests() {
    let mut fx = Fx::new();
    fx.spec.suspend = true;
    fx.assignment = None;
    let p = fx.plan(at(0));
    assert_eq!(p.action, Action::None);
    assert_cond(&p, ConditionType::Ready, "False", Reason::Suspended);
    assert!(
        cond(&p, ConditionType::Ready)
            .unwrap()
            .message
            .contains("request the assignment")
    );
    assert!(cond(&p, ConditionType::Reconciling).is_none());
    assert!(p.events.is_empty());
    assert_eq!(p.requeue_after, Duration::from_secs(600));
}

#[test]
fn suspend_blocks_reprocess_but_still_reports_drift() {
    let mut fx = Fx::new();
    fx.spec.suspend = true;
    fx.annotation = Some("x".into());
    fx.remove_from_g2();
    let p = fx.plan(at(0));
    assert_eq!(p.action, Action::None);
    assert_eq!(p.status.reprocess, Default::default());
    assert_cond(
        &p,
        ConditionType::Delivered,
        "False",
        Reason::ResourcesMissing,
    );
    assert_cond(&p, ConditionType::Ready, "False", Reason::Suspended);
    assert_eq!(kinds(&p), [EventKind::DriftDetected]);
}

#[test]
fn suspend_keeps_a_delivered_assignment_ready() {
    let mut fx = Fx::new();
    fx.spec.suspend = true;
    assert_cond(
        &fx.plan(at(0)),
        ConditionType::Ready,
        "True",
        Reason::Delivered,
    );
}

// ---- Invalid declarations and resolve failures ----

#[test]
fn invalid_spec_stalls_naming_the_field_once() {
    let mut fx = Fx::new();
    fx.spec.target.object_id = Some(USER.into());
    fx.spec.verify_interval = Some("1s".into());
    let p = fx.step(at(0));
    assert_eq!(
        p.action,
        Action::GiveUp {
            reason: Reason::InvalidSpec
        }
    );
    assert_cond(&p, ConditionType::Stalled, "True", Reason::InvalidSpec);
    assert_cond(&p, ConditionType::Ready, "False", Reason::InvalidSpec);
    assert_cond(&p, ConditionType::Delivered, "Unknown", Reason::NotVerified);
    assert!(
        cond(&p, ConditionType::Stalled)
            .unwrap()
            .message
            .contains("spec.target")
    );
    assert_eq!(kinds(&p), [EventKind::InvalidSpec]);
    assert_eq!(
        p.status.access_package_name.as_deref(),
        Some("Finance Analysts")
    );
    assert_eq!(p.requeue_after, Duration::from_secs(600), "no hot retry");
    let again = fx.plan(at(10));
    assert!(again.events.is_empty());
    assert!(!assignment_status_changed(Some(&p.status), &again.status));
}

#[test]
fn fixing_the_spec_clears_the_stall() {
    let mut fx = Fx::new();
    fx.spec.target.object_id = Some(USER.into());
    fx.step(at(0));
    fx.spec.target.object_id = None;
    fx.generation = Some(2);
    let p = fx.plan(at(1));
    assert!(cond(&p, ConditionType::Stalled).is_none());
    assert_cond(&p, ConditionType::Ready, "True", Reason::Delivered);
    assert!(
        p.status
            .conditions
            .iter()
            .all(|c| c.observed_generation == Some(2))
    );
    assert_eq!(p.status.observed_generation, Some(2));
}

#[test]
fn resolve_failures_stall_with_their_reason() {
    for (kind, why, event) in [
        (
            ResolveFailureKind::PackageNotFound,
            Reason::PackageNotFound,
            EventKind::ResolveFailed,
        ),
        (
            ResolveFailureKind::TargetNotFound,
            Reason::TargetNotFound,
            EventKind::ResolveFailed,
        ),
        (
            ResolveFailureKind::Forbidden,
            Reason::Forbidden,
            EventKind::PermissionDenied,
        ),
        (
            ResolveFailureKind::PackageAmbiguous,
            Reason::PackageAmbiguous,
            EventKind::ResolveFailed,
        ),
    ] {
        let mut fx = Fx::new();
        fx.step(at(0));
        fx.resolved = Err(ResolveFailure::new(kind, format!("{why}: details")));
        let p = fx.plan(at(1));
        assert_eq!(p.action, Action::GiveUp { reason: why });
        assert_cond(&p, ConditionType::Stalled, "True", why);
        assert_cond(&p, ConditionType::Ready, "False", why);
        assert_cond(&p, ConditionType::Delivered, "Unknown", Reason::NotVerified);
        assert_eq!(
            p.status.assignment_id, None,
            "stale observations are cleared"
        );
        assert!(p.status.resources.is_empty());
        assert_eq!(kinds(&p), [event]);
    }
}

// ---- After the driver acts ----

#[test]
fn refused_reprocess_stalls_and_still_counts() {
    let mut fx = Fx::new();
    fx.remove_from_g2();
    let mut p = fx.plan(at(0));
    record_action_failure(
        &mut p,
        &ActionFailure {
            kind: ActionFailureKind::Forbidden,
            message: "403 Authorization_RequestDenied".into(),
        },
        Duration::from_secs(600),
        at(0),
    );
    assert_eq!(
        p.action,
        Action::GiveUp {
            reason: Reason::Forbidden
        }
    );
    assert_cond(&p, ConditionType::Stalled, "True", Reason::Forbidden);
    assert_cond(&p, ConditionType::Ready, "False", Reason::Forbidden);
    assert_cond(
        &p,
        ConditionType::Delivered,
        "False",
        Reason::ResourcesMissing,
    );
    assert!(cond(&p, ConditionType::Reconciling).is_none());
    assert_eq!(
        types(&p),
        [
            ConditionType::Ready,
            ConditionType::Delivered,
            ConditionType::Stalled
        ]
    );
    assert_eq!(p.status.reprocess.attempts, 1);
    assert_eq!(
        p.status.reprocess.last_outcome,
        Some(ReprocessOutcome::Rejected)
    );
    assert_eq!(
        kinds(&p),
        [EventKind::DriftDetected, EventKind::PermissionDenied]
    );
    assert_eq!(p.requeue_after, Duration::from_secs(600));
    // Next pass inside the cooldown does not retry.
    fx.previous = Some(p.status.clone());
    assert!(matches!(fx.plan(at(1)).action, Action::Wait { .. }));
}

#[test]
fn rejected_request_reports_action_failed() {
    let mut fx = Fx::new();
    fx.assignment = None;
    let mut p = fx.plan(at(0));
    record_action_failure(
        &mut p,
        &ActionFailure {
            kind: ActionFailureKind::Rejected,
            message: "You don't meet policy requirements".into(),
        },
        Duration::from_secs(600),
        at(0),
    );
    assert_cond(&p, ConditionType::Stalled, "True", Reason::Rejected);
    assert_eq!(kinds(&p), [EventKind::ActionFailed]);
    assert!(p.events[0].message.contains("policy requirements"));
}

#[test]
fn status_comparison_ignores_only_verification_and_transition_times() {
    let fx = Fx::new();
    let a = fx.plan(at(0)).status;
    let mut b = fx.plan(at(7)).status;
    assert!(!assignment_status_changed(Some(&a), &b));
    b.reprocess.attempts = 1;
    assert!(assignment_status_changed(Some(&a), &b));
    assert!(assignment_status_changed(None, &a));
}

#[test]
fn conditions_serialize_in_fixed_order_with_whole_seconds() {
    let mut fx = Fx::new();
    fx.remove_from_g2();
    fx.spec.reprocess.max_attempts = 1;
    fx.step(at(0));
    let p = fx.plan(at(5) + jiff::SignedDuration::from_millis(250));
    let json = serde_json::to_value(&p.status).unwrap();
    let order: Vec<&str> = json["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["Ready", "Delivered", "Stalled"]);
    assert!(json["lastVerifiedTime"].as_str().unwrap().ends_with(":00Z"));
}

#[test]
fn stuck_request_can_be_replaced_through_the_annotation() {
    let mut fx = Fx::new();
    fx.assignment = None;
    let mut p = fx.plan(at(0));
    record_request_submitted(&mut p.status, R1);
    fx.previous = Some(p.status.clone());
    let s = fx.step(at(31));
    assert!(
        cond(&s, ConditionType::Stalled)
            .unwrap()
            .message
            .contains(crate::api::REPROCESS_ANNOTATION)
    );
    fx.annotation = Some("replace".into());
    let p = fx.plan(at(32));
    assert!(matches!(
        p.action,
        Action::Write(Write::RequestAssignment { .. })
    ));
    assert_eq!(p.status.last_request_id, None);
}

#[test]
fn a_refused_request_is_not_repeated_until_spec_or_annotation_changes() {
    let mut fx = Fx::new();
    fx.assignment = None;
    let mut p = fx.plan(at(0));
    record_action_failure(
        &mut p,
        &ActionFailure {
            kind: ActionFailureKind::Rejected,
            message: "policy requirements not met".into(),
        },
        Duration::from_secs(600),
        at(0),
    );
    assert!(
        cond(&p, ConditionType::Stalled)
            .unwrap()
            .message
            .contains(crate::api::REPROCESS_ANNOTATION)
    );
    fx.previous = Some(p.status.clone());
    let held = fx.step(at(10));
    assert_eq!(
        held.action,
        Action::GiveUp {
            reason: Reason::Rejected
        }
    );
    assert!(held.events.is_empty());
    assert!(!assignment_status_changed(Some(&p.status), &held.status));
    fx.generation = Some(2);
    assert!(matches!(
        fx.plan(at(20)).action,
        Action::Write(Write::RequestAssignment { .. })
    ));
    fx.generation = Some(1);
    fx.annotation = Some("retry".into());
    assert!(matches!(
        fx.plan(at(20)).action,
        Action::Write(Write::RequestAssignment { .. })
    ));
}

/// Wherever `needs_latest_request` says no, the plan is the same with and without a
/// request (in flight or failed), so a caller may skip reading requests; where it says
/// yes, some request changes the plan in at least one of these states.
#[test]
fn the_latest_request_matters_only_where_needs_latest_request_says() {
    let states = [
        None,
        Some(AssignmentState::Delivered),
        Some(AssignmentState::Delivering),
        Some(AssignmentState::DeliveryFailed),
        Some(AssignmentState::PartiallyDelivered),
        Some(AssignmentState::Expired),
        Some(AssignmentState::Unknown),
    ];
    let requests = [
        request(RequestState::Delivering, Some(at(-5)), None),
        request(RequestState::DeliveryFailed, Some(at(-5)), Some(at(-4))),
        request(RequestState::Delivered, Some(at(-50)), Some(at(-49))),
    ];
    let mut needed_somewhere = 0;
    for state in states {
        for drifted in [false, true] {
            let mut fx = Fx::new();
            fx.assignment = state.map(assignment);
            if drifted {
                fx.snapshot.record_group_members("g2", ["someone-else"]);
            }
            let needed =
                needs_latest_request(fx.assignment.as_ref(), &fx.resources, &fx.snapshot, USER);
            let without = fx.plan(at(0));
            let differs = requests.iter().any(|r| {
                fx.request = Some(r.clone());
                fx.plan(at(0)) != without
            });
            if !needed {
                assert!(
                    !differs,
                    "{state:?} drifted={drifted}: a request changed the plan"
                );
            }
            needed_somewhere += usize::from(needed && differs);
            assert_eq!(
                needed,
                match state {
                    None => true,
                    Some(AssignmentState::Delivered) => drifted,
                    Some(AssignmentState::Expired | AssignmentState::Unknown) => false,
                    Some(_) => true,
                },
                "{state:?} drifted={drifted}"
            );
        }
    }
    assert!(needed_somewhere >= 4, "requests do matter where needed");
}

mod shared_ledger {
    //! One Graph assignment, one repair: the history is shared by every covering object.
    use super::*;
    use crate::engine::ledger::{LedgerUpdate, RepairKey, RepairRecord};

    const GUARD: &str = "AccessPackageGuard access/finance-analysts";

    fn reprocessed_by_guard(fx: &mut Fx, minute: i64, attempts: i32) {
        fx.ledger.seed(
            RepairKey::assignment(A1),
            RepairRecord {
                attempts,
                last_requested: at(minute),
                by: GUARD.into(),
            },
        );
    }

    #[test]
    fn a_repair_in_flight_by_a_guard_is_reported_not_repeated() {
        let mut fx = Fx::new();
        fx.remove_from_g2();
        reprocessed_by_guard(&mut fx, 0, 1);
        let p = fx.step(at(1));
        assert_eq!(
            p.action,
            Action::Wait {
                reason: Reason::Reprocessing
            }
        );
        assert!(p.ledger.is_empty(), "nothing claimed: {:?}", p.ledger);
        let reconciling = cond(&p, ConditionType::Reconciling).expect("Reconciling");
        assert!(
            reconciling
                .message
                .starts_with(&format!("Reprocess requested by {GUARD} at ")),
            "{}",
            reconciling.message
        );
        assert_eq!(p.status.reprocess.attempts, 1, "the shared count");
        assert_eq!(p.status.reprocess.last_requested_by.as_deref(), Some(GUARD));
        assert_eq!(p.status.reprocess.last_requested_time, Some(to_time(at(0))));
        let inflight: Vec<&EngineEvent> = p
            .events
            .iter()
            .filter(|e| e.kind == EventKind::ReprocessInFlight)
            .collect();
        assert_eq!(inflight.len(), 1, "{:?}", p.events);
        assert!(inflight[0].message.contains(GUARD));
        // The next pass tells the same story without a second event.
        let p = fx.step(at(2));
        assert!(
            !p.events
                .iter()
                .any(|e| e.kind == EventKind::ReprocessInFlight),
            "{:?}",
            p.events
        );
        assert!(crate::engine::awaiting_reprocess(fx.previous.as_ref()));
    }

    #[test]
    fn after_the_cooldown_the_next_attempt_continues_the_shared_count() {
        let mut fx = Fx::new();
        fx.remove_from_g2();
        reprocessed_by_guard(&mut fx, 0, 2);
        let p = fx.step(at(5));
        assert!(matches!(
            p.action,
            Action::Write(Write::ReprocessAssignment { .. })
        ));
        assert_eq!(p.status.reprocess.attempts, 3);
        assert_eq!(p.status.reprocess.last_requested_by, None);
        match p.ledger.as_slice() {
            [LedgerUpdate::Requested { key, record }] => {
                assert_eq!(key, &RepairKey::assignment(A1));
                assert_eq!(record.attempts, 3);
                assert_eq!(record.by, WHO);
                assert_eq!(record.last_requested, at(5));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn attempts_spent_by_another_object_exhaust_this_one_too() {
        let mut fx = Fx::new();
        fx.remove_from_g2();
        reprocessed_by_guard(&mut fx, 0, 3);
        let p = fx.step(at(10));
        assert_eq!(
            p.action,
            Action::GiveUp {
                reason: Reason::ReprocessExhausted
            }
        );
        assert!(
            cond(&p, ConditionType::Stalled)
                .expect("Stalled")
                .message
                .contains(GUARD)
        );
    }

    #[test]
    fn verified_delivery_resets_the_shared_attempts() {
        let mut fx = Fx::new();
        reprocessed_by_guard(&mut fx, 0, 1);
        let p = fx.step(at(1));
        assert_cond(&p, ConditionType::Delivered, "True", Reason::Delivered);
        assert_eq!(
            p.ledger,
            [LedgerUpdate::Verified {
                key: RepairKey::assignment(A1)
            }]
        );
        assert_eq!(
            fx.ledger.get(&RepairKey::assignment(A1)).unwrap().attempts,
            0
        );
        // Nothing pending any more: no further update.
        assert!(fx.step(at(2)).ledger.is_empty());
    }

    #[test]
    fn suspend_claims_nothing() {
        let mut fx = Fx::new();
        fx.remove_from_g2();
        fx.spec.suspend = true;
        let p = fx.step(at(0));
        assert_eq!(p.action, Action::None);
        assert!(p.ledger.is_empty());
    }
}

#[test]
fn an_object_without_verify_interval_uses_the_operators_default() {
    let mut fx = Fx::new();
    assert_eq!(fx.spec.verify_interval, None);
    fx.settings.default_verify_interval = Duration::from_secs(3600);
    assert_eq!(fx.plan(at(0)).requeue_after, Duration::from_secs(3600));
    fx.spec.verify_interval = Some("2m".into());
    assert_eq!(fx.plan(at(0)).requeue_after, Duration::from_secs(120));
}

// ---- Which reads a repair check must make again ----

#[test]
fn a_repair_check_rereads_only_what_the_reprocess_restores_after_it_was_sent() {
    let mut fx = Fx::new();
    // Healthy: nothing needs a fresh read.
    let healthy = fx.step(at(0));
    assert_eq!(fresh_reads(Some(&healthy.status), &fx.resources), None);
    fx.remove_from_g2();
    let sent = fx.step(at(10));
    assert!(sent.action.is_reprocess(), "{:?}", sent.action);
    let fresh = fresh_reads(Some(&sent.status), &fx.resources).expect("awaiting its reprocess");
    // Only the group the reprocess should restore; the present one may come from the cache.
    assert_eq!(
        fresh.reads.into_iter().collect::<Vec<_>>(),
        [ResourceRead::GroupMembers("g2".into())]
    );
    // After the send, with the status's whole-second precision rounded up.
    assert_eq!(fresh.since, at(10) + SignedDuration::from_secs(1));

    // A status that lists nothing missing (the reprocess was asked for by hand): every read.
    let mut by_hand = sent.status.clone();
    for r in &mut by_hand.resources {
        r.state = crate::api::ResourceState::Present;
    }
    let all = fresh_reads(Some(&by_hand), &fx.resources).unwrap();
    assert_eq!(all.reads, crate::engine::reads_needed(&fx.resources));
}

mod attribution {
    use super::*;
    use crate::engine::attribution::{Actor, Attribution};
    use crate::engine::{ResourceKind, attribution_needed};

    fn g2() -> ResourceKind {
        ResourceKind::GroupMember {
            group_id: "g2".into(),
        }
    }

    fn by_admin(minute: i64) -> Attribution {
        Attribution::Found {
            actor: Actor::User {
                id: Some("u-admin".into()),
                name: Some("admin@contoso.com".into()),
            },
            at: at(minute),
            activity: "Remove member from group".into(),
        }
    }

    fn last_change(plan: &Plan, name: &str) -> Option<String> {
        plan.status
            .resources
            .iter()
            .find(|r| r.display_name.as_deref() == Some(name))
            .and_then(|r| r.last_change.clone())
    }

    #[test]
    fn a_found_removal_names_its_actor_in_event_message_and_status() {
        let mut fx = Fx::new();
        fx.step(at(0));
        fx.remove_from_g2();
        assert_eq!(
            attribution_needed(
                &fx.resources,
                &fx.snapshot,
                USER,
                fx.assignment.as_ref(),
                fx.previous.as_ref(),
                false
            )
            .iter()
            .map(|(r, continuing)| (r.display_name.as_str(), *continuing))
            .collect::<Vec<_>>(),
            [("fin-writers", false)],
            "only the missing resource is looked up"
        );
        fx.snapshot.record_change(g2(), USER, by_admin(1));
        let plan = fx.step(at(2));
        let said =
            "removed by admin@contoso.com at 2026-11-28T10:01:00Z via \"Remove member from group\"";
        assert_eq!(last_change(&plan, "fin-writers").as_deref(), Some(said));
        assert_eq!(last_change(&plan, "fin-readers"), None);
        let drift = plan
            .events
            .iter()
            .find(|e| e.kind == EventKind::DriftDetected)
            .unwrap();
        assert_eq!(
            drift.message,
            format!("Drift detected: missing fin-writers (Member) [{said}].")
        );
        let delivered = cond(&plan, ConditionType::Delivered).unwrap();
        assert!(
            delivered
                .message
                .contains(&format!("fin-writers (Member) [{said}]"))
        );
        assert_cond(
            &plan,
            ConditionType::Delivered,
            "False",
            Reason::ResourcesMissing,
        );

        // Stored, it is kept (and not looked up again) until the resource is back.
        fx.snapshot.changes.clear();
        assert!(
            attribution_needed(
                &fx.resources,
                &fx.snapshot,
                USER,
                fx.assignment.as_ref(),
                fx.previous.as_ref(),
                false
            )
            .is_empty()
        );
        let again = fx.step(at(3));
        assert_eq!(last_change(&again, "fin-writers").as_deref(), Some(said));
        assert_eq!(
            cond(&again, ConditionType::Delivered).unwrap().message,
            delivered.message,
            "the same text on every pass"
        );
        fx.restore_g2();
        let back = fx.step(at(4));
        assert_eq!(last_change(&back, "fin-writers"), None);
    }

    #[test]
    fn unavailable_attribution_changes_only_last_change() {
        let mut with = Fx::new();
        with.step(at(0));
        with.remove_from_g2();
        let mut without = Fx::new();
        without.step(at(0));
        without.remove_from_g2();
        with.snapshot.record_change(
            g2(),
            USER,
            Attribution::Unavailable {
                reason: "the app lacks AuditLog.Read.All".into(),
            },
        );
        let a = with.step(at(1));
        let b = without.step(at(1));
        assert_eq!(
            last_change(&a, "fin-writers").as_deref(),
            Some("attribution unavailable: the app lacks AuditLog.Read.All")
        );
        assert_eq!(a.status.conditions, b.status.conditions);
        assert_eq!(a.events, b.events);
        assert_eq!(a.action, b.action);
    }

    #[test]
    fn nothing_is_looked_up_while_delivering_or_when_healthy() {
        let mut fx = Fx::new();
        assert!(
            attribution_needed(
                &fx.resources,
                &fx.snapshot,
                USER,
                fx.assignment.as_ref(),
                None,
                false
            )
            .is_empty()
        );
        fx.remove_from_g2();
        fx.assignment = Some(assignment(AssignmentState::Delivering));
        assert!(
            attribution_needed(
                &fx.resources,
                &fx.snapshot,
                USER,
                fx.assignment.as_ref(),
                None,
                false
            )
            .is_empty()
        );
    }
}

#[test]
fn a_stored_role_matches_only_its_own_mode() {
    use crate::engine::{OriginSystem, ResourceKind, RoleMode};
    let rg = "/subscriptions/s1/resourceGroups/rg-fin";
    let promised = |mode| PromisedResource {
        origin_system: OriginSystem::AzureResources,
        origin_id: rg.into(),
        display_name: "Contributor".into(),
        role: "Contributor".into(),
        kind: ResourceKind::AzureRole {
            role_definition_guid: "b24988ac-6180-42a0-ab88-20f7382dd24c".into(),
            scope: rg.into(),
            mode,
        },
        note: None,
    };
    let stored = ResourceStatus {
        origin_system: OriginSystem::AzureResources,
        origin_id: rg.into(),
        kind: Some(crate::api::RoleKind::AzureRole),
        mode: Some(RoleMode::Eligible),
        scope: Some(rg.into()),
        role: Some("Contributor".into()),
        state: ResourceState::Missing,
        last_change: Some("removed by admin@contoso.com".into()),
        ..Default::default()
    };
    assert!(same_resource(&stored, &promised(RoleMode::Eligible)));
    // The active Contributor at the same scope is another resource: it must not inherit
    // the eligible one's lastChange.
    assert!(!same_resource(&stored, &promised(RoleMode::Active)));
}

// ---- Safety: the account gate, respected removals, the mass-drift breaker ----

fn account(fx: &mut Fx, state: AccountState) {
    fx.snapshot.record_account(
        USER,
        TargetAccount {
            state,
            risk: Risk::NotChecked,
        },
    );
}

#[test]
fn a_disabled_account_gets_no_reprocess_and_says_what_to_do() {
    let mut fx = Fx::new();
    fx.remove_from_g2();
    account(&mut fx, AccountState::Disabled);
    let p = fx.step(at(0));
    assert_eq!(
        p.action,
        Action::GiveUp {
            reason: Reason::TargetDisabled
        }
    );
    assert!(p.ledger.is_empty(), "nothing is claimed: {:?}", p.ledger);
    assert_cond(
        &p,
        ConditionType::Delivered,
        "False",
        Reason::TargetDisabled,
    );
    assert_cond(&p, ConditionType::Stalled, "True", Reason::TargetDisabled);
    assert_cond(&p, ConditionType::Ready, "False", Reason::TargetDisabled);
    let stalled = cond(&p, ConditionType::Stalled).unwrap();
    assert!(
        stalled.message.contains("Re-enable the account"),
        "{}",
        stalled.message
    );
    assert_eq!(kinds(&p), [EventKind::DriftDetected, EventKind::TargetHeld]);
    assert_eq!(p.status.reprocess.attempts, 0);
    // Looked at again within about one delta interval.
    assert_eq!(p.requeue_after, Duration::from_secs(60));
    // Re-enabled: the repair goes ahead on the next pass.
    account(&mut fx, AccountState::Enabled);
    let p = fx.step(at(1));
    assert!(p.action.is_reprocess(), "{:?}", p.action);
    assert!(cond(&p, ConditionType::Stalled).is_none());
}

#[test]
fn deleted_and_unconfirmable_accounts_are_held_and_the_annotation_does_not_override() {
    for (state, reason) in [
        (AccountState::Deleted, Reason::TargetDeleted),
        (
            AccountState::Unreadable {
                reason: "the app lacks User.Read.All".into(),
            },
            Reason::TargetUnverified,
        ),
    ] {
        let mut fx = Fx::new();
        fx.remove_from_g2();
        fx.annotation = Some("now".into());
        account(&mut fx, state);
        let p = fx.plan(at(0));
        assert!(!p.action.is_write(), "{:?}", p.action);
        assert_cond(&p, ConditionType::Stalled, "True", reason);
        // Not handled: a person's request is honoured once the account can take it.
        assert_eq!(p.status.reprocess.last_handled_request, None);
    }
}

#[test]
fn an_unread_account_asks_the_driver_to_read_it_and_a_healthy_object_never_does() {
    let mut fx = Fx::new();
    fx.snapshot.accounts.clear();
    assert_eq!(fx.plan(at(0)).needs_account, None);
    fx.remove_from_g2();
    let p = fx.plan(at(0));
    assert_eq!(p.needs_account.as_deref(), Some(USER));
    assert!(!p.action.is_write());
    assert!(p.ledger.is_empty());
}

#[test]
fn a_request_for_a_disabled_account_is_not_submitted() {
    let mut fx = Fx::new();
    fx.assignment = None;
    account(&mut fx, AccountState::Disabled);
    let p = fx.plan(at(0));
    assert!(!p.action.is_write(), "{:?}", p.action);
    assert_cond(
        &p,
        ConditionType::Delivered,
        "False",
        Reason::TargetDisabled,
    );
    account(&mut fx, AccountState::Enabled);
    assert!(matches!(
        fx.plan(at(0)).action,
        Action::Write(Write::RequestAssignment { .. })
    ));
}

#[test]
fn risky_accounts_are_held_only_when_asked_and_an_unreadable_risk_is_a_note() {
    let mut fx = Fx::new();
    fx.remove_from_g2();
    fx.snapshot.record_account(
        USER,
        TargetAccount {
            state: AccountState::Enabled,
            risk: Risk::AtRisk {
                level: "high".into(),
                state: "atRisk".into(),
            },
        },
    );
    assert!(fx.plan(at(0)).action.is_reprocess());
    fx.safety.hold_risky = true;
    let p = fx.plan(at(0));
    assert_cond(&p, ConditionType::Stalled, "True", Reason::TargetAtRisk);
    fx.snapshot.record_account(
        USER,
        TargetAccount {
            state: AccountState::Enabled,
            risk: Risk::Unavailable {
                reason: "the app lacks IdentityRiskyUser.Read.All".into(),
            },
        },
    );
    let p = fx.plan(at(0));
    assert!(p.action.is_reprocess());
    let msg = &cond(&p, ConditionType::Reconciling).unwrap().message;
    assert!(msg.contains("IdentityRiskyUser.Read.All"), "{msg}");
}

fn respecting(fx: &mut Fx) {
    fx.safety = SafetyPolicy::from_spec(
        &serde_json::from_value(serde_json::json!({
            "respectedActors": {"userPrincipalNames": ["soc@contoso.com"]},
            "attributionWait": "5m"
        }))
        .unwrap(),
    );
}

fn removed_by(fx: &mut Fx, upn: &str) {
    let kind = fx.resources[1].kind.clone();
    fx.snapshot.record_change(
        kind,
        USER,
        Attribution::Found {
            actor: crate::engine::attribution::Actor::User {
                id: Some("actor-id".into()),
                name: Some(upn.into()),
            },
            at: at(0),
            activity: "Remove member from group".into(),
        },
    );
}

#[test]
fn a_removal_by_a_respected_actor_is_not_undone_and_names_the_actor() {
    let mut fx = Fx::new();
    respecting(&mut fx);
    fx.remove_from_g2();
    removed_by(&mut fx, "soc@contoso.com");
    let p = fx.step(at(1));
    assert_eq!(
        p.action,
        Action::GiveUp {
            reason: Reason::RemovedDeliberately
        }
    );
    assert_cond(
        &p,
        ConditionType::Stalled,
        "True",
        Reason::RemovedDeliberately,
    );
    let msg = &cond(&p, ConditionType::Stalled).unwrap().message;
    assert!(
        msg.contains("soc@contoso.com") && msg.contains("Remove member from group"),
        "{msg}"
    );
    let by = p.status.resources[1].removed_by.clone().unwrap();
    assert_eq!(by.actor_kind, crate::api::ActorKind::User);
    assert_eq!(by.actor_name.as_deref(), Some("soc@contoso.com"));
    assert_eq!(by.actor_id.as_deref(), Some("actor-id"));
    assert!(kinds(&p).contains(&EventKind::RemovedDeliberately));
    // Kept from status on later passes, with no new lookup in the snapshot.
    fx.snapshot.changes.clear();
    let p = fx.step(at(2));
    assert_cond(
        &p,
        ConditionType::Stalled,
        "True",
        Reason::RemovedDeliberately,
    );
    // A person may still grant it back.
    fx.annotation = Some("grant-back".into());
    assert!(fx.plan(at(3)).action.is_reprocess());
}

#[test]
fn the_same_removal_by_another_actor_is_repaired() {
    let mut fx = Fx::new();
    respecting(&mut fx);
    fx.remove_from_g2();
    removed_by(&mut fx, "intern@contoso.com");
    assert!(fx.plan(at(1)).action.is_reprocess());
}

#[test]
fn an_unattributed_removal_waits_no_longer_than_the_bound() {
    let mut fx = Fx::new();
    respecting(&mut fx);
    fx.remove_from_g2();
    let p = fx.step(at(0));
    assert_eq!(
        p.action,
        Action::Wait {
            reason: Reason::AwaitingAttribution
        }
    );
    assert_cond(
        &p,
        ConditionType::Reconciling,
        "True",
        Reason::AwaitingAttribution,
    );
    assert_eq!(
        p.status.resources[1].missing_since.as_ref().map(|t| t.0),
        Some(at(0))
    );
    assert!(
        fx.step(at(4)).action
            == Action::Wait {
                reason: Reason::AwaitingAttribution
            }
    );
    // 5 minutes after it was first seen missing: repaired.
    assert!(fx.step(at(5)).action.is_reprocess());
}

#[test]
fn an_unreadable_audit_log_follows_the_rule() {
    let mut fx = Fx::new();
    respecting(&mut fx);
    fx.remove_from_g2();
    let kind = fx.resources[1].kind.clone();
    fx.snapshot.record_change(
        kind,
        USER,
        Attribution::Unavailable {
            reason: "the app lacks AuditLog.Read.All".into(),
        },
    );
    let p = fx.plan(at(0));
    assert_cond(
        &p,
        ConditionType::Stalled,
        "True",
        Reason::AttributionUnavailable,
    );
    fx.safety.when_unattributed = crate::api::UnattributedRule::Repair;
    assert!(fx.plan(at(0)).action.is_reprocess());
}

#[test]
fn a_tripped_breaker_holds_automatic_repair_but_not_a_persons_request() {
    let mut fx = Fx::new();
    fx.remove_from_g2();
    fx.mass_drift = Some(MassDriftHold {
        message: "300 of 1000 delivered assignments of Finance Analysts drifted.".into(),
    });
    let p = fx.plan(at(0));
    assert_eq!(
        p.action,
        Action::GiveUp {
            reason: Reason::MassDrift
        }
    );
    assert_cond(&p, ConditionType::Stalled, "True", Reason::MassDrift);
    assert!(
        cond(&p, ConditionType::Stalled)
            .unwrap()
            .message
            .contains("300 of 1000")
    );
    fx.annotation = Some("one".into());
    assert!(fx.plan(at(0)).action.is_reprocess());
}
