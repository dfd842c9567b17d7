//! Sweeps of an `AccessPackageGuard`, as small scenarios.

use super::*;
use crate::domain::models::{ResourceRole, ResourceRoleScope, ResourceScope};
use crate::engine::conditions::{ConditionType, Reason, find};
use crate::engine::{
    AccountState, BreakerPolicy, ResolveFailureKind, ResourceRead, Risk, SafetyPolicy,
    TargetAccount, promised_resources,
};

const PKG: &str = "9f1c0c7e-0000-4000-8000-000000000001";

fn at(minutes: i64) -> Timestamp {
    Timestamp::from_second(1_795_860_000 + minutes * 60).unwrap()
}

fn group(g: &str, name: &str) -> ResourceRoleScope {
    ResourceRoleScope {
        id: format!("Member_{g}"),
        role: Some(ResourceRole {
            display_name: Some("Member".into()),
            origin_id: Some(format!("Member_{g}")),
            origin_system: Some("AadGroup".into()),
            ..Default::default()
        }),
        scope: Some(ResourceScope {
            display_name: Some(name.into()),
            origin_id: Some(g.into()),
            origin_system: Some("AadGroup".into()),
            ..Default::default()
        }),
    }
}

fn assignment(id: &str, user: &str, state: &str) -> Assignment {
    serde_json::from_value(serde_json::json!({
        "id": id, "state": state,
        "target": {"id": format!("s-{user}"), "objectId": user, "principalName": format!("{user}@contoso.com")}
    }))
    .unwrap()
}

struct Fx {
    generation: Option<i64>,
    spec: AccessPackageGuardSpec,
    previous: Option<AccessPackageGuardStatus>,
    resolved: Result<(String, Option<String>), ResolveFailure>,
    assignments: Vec<Assignment>,
    resources: Vec<PromisedResource>,
    snapshot: Snapshot,
    settings: EngineSettings,
    ledger: RepairLedger,
    budget: Option<usize>,
    operator_report_only: bool,
    annotation: Option<String>,
    safety: SafetyPolicy,
    mass_drift_ack: Option<String>,
}

const WHO: &str = "AccessPackageGuard access/finance";

impl Fx {
    /// alice delivered, bob drifted (not in fin-writers), carol failed, dave expired but still
    /// in fin-readers, erin delivering, mallory in fin-readers with no assignment.
    fn new() -> Self {
        let mut snapshot = Snapshot::new();
        snapshot.record_group_members("g1", ["alice", "bob", "dave", "mallory"]);
        snapshot.record_group_members("g2", ["alice"]);
        for u in ["alice", "bob", "carol", "dave", "erin"] {
            snapshot.record_account(u, TargetAccount::enabled());
        }
        Self {
            generation: Some(1),
            spec: serde_json::from_value(serde_json::json!({"accessPackage": {"id": PKG}}))
                .unwrap(),
            previous: None,
            resolved: Ok((PKG.into(), Some("Finance Analysts".into()))),
            assignments: vec![
                assignment("a1", "alice", "delivered"),
                assignment("a2", "bob", "delivered"),
                assignment("a3", "carol", "deliveryFailed"),
                assignment("a4", "dave", "expired"),
                assignment("a5", "erin", "delivering"),
            ],
            resources: promised_resources(&[
                group("g1", "fin-readers"),
                group("g2", "fin-writers"),
            ]),
            snapshot,
            settings: EngineSettings::default(),
            ledger: RepairLedger::new(),
            budget: None,
            operator_report_only: false,
            annotation: None,
            // The breaker has tests of its own below; these exercise selection with many
            // drifted assignments at once, which it would stop.
            safety: SafetyPolicy {
                breaker: BreakerPolicy {
                    enabled: false,
                    ..SafetyPolicy::default().breaker
                },
                ..SafetyPolicy::default()
            },
            mass_drift_ack: None,
        }
    }

    /// Only delivered assignments, `n` of them drifted (missing fin-writers).
    fn many(n: usize, drifted: usize) -> Self {
        let mut fx = Self::new();
        fx.assignments = (0..n)
            .map(|i| assignment(&format!("a{i:03}"), &format!("u{i:03}"), "delivered"))
            .collect();
        let users: Vec<String> = (0..n).map(|i| format!("u{i:03}")).collect();
        for u in &users {
            fx.snapshot.record_account(u, TargetAccount::enabled());
        }
        fx.snapshot.record_group_members("g1", users.clone());
        fx.snapshot
            .record_group_members("g2", users.into_iter().skip(drifted).collect::<Vec<_>>());
        fx
    }

    fn plan(&self, now: Timestamp) -> GuardPlan {
        plan_guard_sweep(
            &GuardInput {
                generation: self.generation,
                spec: &self.spec,
                previous: self.previous.as_ref(),
                resolved: self.resolved.clone(),
                assignments: &self.assignments,
                resources: &self.resources,
                snapshot: &self.snapshot,
                settings: &self.settings,
                ledger: &self.ledger,
                who: WHO,
                reprocess_budget: self.budget,
                operator_report_only: self.operator_report_only,
                reprocess_annotation: self.annotation.as_deref(),
                safety: &self.safety,
                mass_drift_ack: self.mass_drift_ack.as_deref(),
                mass_drift_acknowledged: false,
            },
            now,
        )
    }

    /// Plans, applies its ledger updates (as a driver does) and keeps the status.
    fn step(&mut self, now: Timestamp) -> GuardPlan {
        let p = self.plan(now);
        for u in &p.ledger {
            self.ledger.apply(u);
        }
        self.previous = Some(p.status.clone());
        p
    }
}

fn assert_cond(p: &GuardPlan, type_: ConditionType, status: &str, why: Reason) {
    let c = find(&p.status.conditions, type_)
        .unwrap_or_else(|| panic!("{type_} missing: {:#?}", p.status.conditions));
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        (status, why.as_str()),
        "{}",
        c.message
    );
}

fn kinds(p: &GuardPlan) -> Vec<EventKind> {
    p.events.iter().map(|e| e.kind).collect()
}

#[test]
fn enforce_sweep_counts_lists_and_reprocesses() {
    let p = Fx::new().plan(at(0));
    assert_eq!(
        p.status.assignments,
        AssignmentCounts {
            total: 4,
            delivered: 1,
            drifted: 1,
            reprocessing: 1,
            failed: 1,
            pending: 1,
            held: 0,
        }
    );
    assert_eq!(p.reprocess, ["a2"]);
    assert_eq!(p.drifted.len(), 1);
    let d = &p.status.drifted[0];
    assert_eq!(d.assignment_id, "a2");
    assert_eq!(d.target, "bob@contoso.com");
    assert_eq!(d.target_object_id, "bob");
    assert_eq!(d.missing, ["fin-writers (Member)"]);
    assert_eq!(d.since, to_time(at(0)));
    assert_eq!(d.reprocess_attempts, 1);
    assert_eq!(
        p.status.access_package_name.as_deref(),
        Some("Finance Analysts")
    );
    assert_eq!(p.status.last_sweep_time, Some(to_time(at(0))));
    assert_cond(
        &p,
        ConditionType::Delivered,
        "False",
        Reason::ResourcesMissing,
    );
    assert_cond(&p, ConditionType::Reconciling, "True", Reason::Reprocessing);
    assert_cond(&p, ConditionType::Ready, "False", Reason::Reprocessing);
    assert!(find(&p.status.conditions, ConditionType::Stalled).is_none());
    assert_eq!(
        kinds(&p),
        [EventKind::DriftDetected, EventKind::ReprocessRequested]
    );
    assert!(
        p.events[0]
            .message
            .contains("bob@contoso.com missing fin-writers (Member)")
    );
    assert_eq!(
        p.events[1].message,
        "Reprocessing 1 drifted assignment: bob@contoso.com."
    );
    assert_eq!(
        p.requeue_after,
        Duration::from_secs(30),
        "verified again after the reprocess delay, not one interval later"
    );
}

#[test]
fn unmanaged_members_are_counted_never_acted_on() {
    let p = Fx::new().plan(at(0));
    assert_eq!(p.status.unmanaged_members.count, 2);
    assert_eq!(p.status.unmanaged_members.sample, ["dave", "mallory"]);
    assert!(!p.reprocess.iter().any(|id| id == "a4"));
}

#[test]
fn unmanaged_sample_is_bounded() {
    let mut fx = Fx::new();
    let strangers: Vec<String> = (0..30).map(|i| format!("x{i:02}")).collect();
    fx.snapshot.record_group_members("g2", strangers);
    let p = fx.plan(at(0));
    assert_eq!(p.status.unmanaged_members.count, 32);
    assert_eq!(
        p.status.unmanaged_members.sample.len(),
        MAX_UNMANAGED_SAMPLE
    );
}

#[test]
fn audit_mode_reports_only() {
    let mut fx = Fx::new();
    fx.spec.mode = GuardMode::Audit;
    let p = fx.plan(at(0));
    assert!(p.reprocess.is_empty());
    assert_eq!(p.status.assignments.reprocessing, 0);
    assert!(find(&p.status.conditions, ConditionType::Reconciling).is_none());
    assert_cond(&p, ConditionType::Ready, "False", Reason::ReportOnly);
    assert_eq!(kinds(&p), [EventKind::DriftDetected]);
    assert_eq!(p.requeue_after, Duration::from_secs(900));
}

#[test]
fn zero_budget_in_enforce_reports_only() {
    let mut fx = Fx::new();
    fx.spec.max_reprocess_per_sweep = 0;
    let p = fx.plan(at(0));
    assert!(p.reprocess.is_empty());
    assert_cond(&p, ConditionType::Ready, "False", Reason::ReportOnly);
}

#[test]
fn reprocess_is_bounded_per_sweep_oldest_first_and_skips_cooling() {
    let mut fx = Fx::many(10, 5);
    fx.spec.max_reprocess_per_sweep = 2;
    let p = fx.step(at(0));
    assert_eq!(p.reprocess, ["a000", "a001"]);
    assert_eq!(p.status.assignments.drifted, 5);
    assert_eq!(p.status.assignments.reprocessing, 2);
    let p = fx.step(at(1));
    assert_eq!(p.reprocess, ["a002", "a003"], "cooling ones are skipped");
    assert_eq!(p.status.assignments.reprocessing, 4);
    assert_eq!(
        kinds(&p),
        [EventKind::ReprocessRequested],
        "no new drift event"
    );
    let p = fx.step(at(2));
    assert_eq!(p.reprocess, ["a004"]);
    let p = fx.step(at(3));
    assert!(p.reprocess.is_empty());
    assert_eq!(
        p.requeue_after,
        Duration::from_secs(60),
        "repairs are checked 30s, 1m, 2m and 4m after they were sent: the one of minute 0 \
         next at minute 4"
    );
}

#[test]
fn since_is_preserved_and_repair_clears_the_entry() {
    let mut fx = Fx::new();
    fx.step(at(0));
    let p = fx.step(at(15));
    assert_eq!(p.status.drifted[0].since, to_time(at(0)));
    assert!(p.events.iter().all(|e| e.kind != EventKind::DriftDetected));
    fx.snapshot.record_group_members("g2", ["alice", "bob"]);
    fx.assignments.retain(|a| a.id != "a3" && a.id != "a5");
    let p = fx.step(at(30));
    assert!(p.status.drifted.is_empty());
    assert_cond(&p, ConditionType::Delivered, "True", Reason::AllDelivered);
    assert_cond(&p, ConditionType::Ready, "True", Reason::AllDelivered);
    assert_eq!(kinds(&p), [EventKind::DeliveryVerified]);
    // Steady state: nothing changes but the sweep time.
    let q = fx.plan(at(45));
    assert!(q.events.is_empty());
    assert!(!guard_status_changed(Some(&p.status), &q.status));
    assert_ne!(q.status.last_sweep_time, p.status.last_sweep_time);
}

#[test]
fn exhausted_drift_stalls_once() {
    let mut fx = Fx::new();
    for i in 0..3 {
        let p = fx.step(at(i * 15));
        assert_eq!(p.reprocess, ["a2"], "sweep {i}");
    }
    let p = fx.step(at(45));
    assert!(p.reprocess.is_empty());
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
    assert_eq!(kinds(&p), [EventKind::ReprocessExhausted]);
    let q = fx.plan(at(60));
    assert!(q.events.is_empty());
}

#[test]
fn drifted_list_is_bounded_but_counted() {
    let p = Fx::many(70, 60).plan(at(0));
    assert_eq!(p.status.assignments.drifted, 60);
    assert_eq!(p.status.drifted.len(), MAX_DRIFTED_LISTED);
    assert_eq!(
        p.drifted.len(),
        60,
        "the plan keeps the full list for reports"
    );
    assert_eq!(p.reprocess.len(), 50);
}

#[test]
fn failed_reads_make_delivery_unknown() {
    let mut fx = Fx::many(3, 0);
    fx.snapshot.record_failure(
        ResourceRead::GroupMembers("g2".into()),
        "429 TooManyRequests",
    );
    let p = fx.plan(at(0));
    assert_eq!(p.status.assignments.pending, 3);
    assert_eq!(p.status.assignments.delivered, 0);
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
    assert!(p.reprocess.is_empty());
}

#[test]
fn failed_assignments_block_delivered() {
    let mut fx = Fx::many(2, 0);
    fx.assignments
        .push(assignment("f1", "zed", "partiallyDelivered"));
    let p = fx.plan(at(0));
    assert_eq!(p.status.assignments.failed, 1);
    assert_cond(
        &p,
        ConditionType::Delivered,
        "False",
        Reason::DeliveryFailed,
    );
}

#[test]
fn invalid_spec_and_resolve_failures_stall() {
    let mut fx = Fx::new();
    fx.spec.interval = "10s".into();
    let p = fx.step(at(0));
    assert_cond(&p, ConditionType::Stalled, "True", Reason::InvalidSpec);
    assert!(
        find(&p.status.conditions, ConditionType::Stalled)
            .unwrap()
            .message
            .contains("spec.interval")
    );
    assert_eq!(kinds(&p), [EventKind::InvalidSpec]);
    assert!(p.reprocess.is_empty());
    assert!(fx.plan(at(1)).events.is_empty());

    let mut fx = Fx::new();
    fx.resolved = Err(ResolveFailure::new(
        ResolveFailureKind::Forbidden,
        "403 on accessPackages",
    ));
    let p = fx.plan(at(0));
    assert_cond(&p, ConditionType::Stalled, "True", Reason::Forbidden);
    assert_eq!(kinds(&p), [EventKind::PermissionDenied]);
    assert_eq!(p.requeue_after, Duration::from_secs(900));
}

#[test]
fn conditions_carry_generation_and_fixed_order() {
    let mut fx = Fx::new();
    fx.generation = Some(7);
    for _ in 0..3 {
        fx.step(at(0));
    }
    let p = fx.plan(at(45));
    let types: Vec<&str> = p
        .status
        .conditions
        .iter()
        .map(|c| c.type_.as_str())
        .collect();
    assert_eq!(types[..2], [ConditionType::Ready, ConditionType::Delivered]);
    assert!(
        p.status
            .conditions
            .iter()
            .all(|c| c.observed_generation == Some(7))
    );
    assert_eq!(p.status.observed_generation, Some(7));
}

mod shared_ledger {
    use super::*;
    use crate::engine::ledger::{LedgerUpdate, RepairKey, RepairRecord};

    const APA: &str = "AccessPackageAssignment access/bob";

    #[test]
    fn an_assignment_reprocessed_by_a_declaration_is_not_reprocessed_again() {
        let mut fx = Fx::new();
        fx.ledger.seed(
            RepairKey::assignment("a2"),
            RepairRecord {
                attempts: 1,
                last_requested: at(0),
                by: APA.into(),
            },
        );
        let p = fx.step(at(1));
        assert!(p.reprocess.is_empty());
        assert!(p.ledger.is_empty());
        assert_eq!(p.status.assignments.reprocessing, 1);
        let entry = &p.status.drifted[0];
        assert_eq!(entry.reprocessed_by.as_deref(), Some(APA));
        assert_eq!(entry.reprocess_attempts, 1);
        assert_cond(&p, ConditionType::Reconciling, "True", Reason::Reprocessing);
        let message = &find(&p.status.conditions, ConditionType::Reconciling)
            .unwrap()
            .message;
        assert_eq!(
            message,
            "1 drifted assignment is being reprocessed (0 this sweep, 1 by other objects covering them)."
        );
        // Checked again on the repair schedule (30s, 1m, 2m, 4m after the declaration's
        // reprocess: now one minute after it, so at 2m), not at the 15m interval.
        assert_eq!(p.requeue_after, Duration::from_secs(60));
    }

    #[test]
    fn a_guard_claims_what_it_reprocesses_and_clears_it_once_delivered() {
        let mut fx = Fx::new();
        let p = fx.step(at(0));
        assert_eq!(p.reprocess, ["a2"]);
        assert!(matches!(
            p.ledger.as_slice(),
            [LedgerUpdate::Requested { key, record }]
                if key == &RepairKey::assignment("a2") && record.by == WHO && record.attempts == 1
        ));
        // The repair landed.
        fx.snapshot.record_group_members("g2", ["alice", "bob"]);
        let p = fx.step(at(1));
        assert_eq!(
            p.ledger,
            [LedgerUpdate::Verified {
                key: RepairKey::assignment("a2")
            }]
        );
        assert!(p.status.drifted.is_empty());
        assert_cond(&p, ConditionType::Ready, "False", Reason::DeliveryFailed);
    }

    #[test]
    fn selection_looks_past_the_listed_fifty_and_past_exhausted_drifts() {
        // 200 drifted, 100 a sweep: 100 now, the other 100 in the next sweep.
        let mut fx = Fx::many(200, 200);
        fx.spec.max_reprocess_per_sweep = 100;
        let p = fx.step(at(0));
        assert_eq!(p.reprocess.len(), 100);
        assert_eq!(p.status.drifted.len(), MAX_DRIFTED_LISTED);
        assert_eq!(
            p.status.drifted_not_listed, 150,
            "status says how many are not listed"
        );
        let p = fx.step(at(1));
        assert_eq!(p.reprocess.len(), 100);
        assert_eq!(p.reprocess[0], "a100");
        let p = fx.step(at(2));
        assert!(p.reprocess.is_empty(), "all 200 in their cooldown");

        // 50 exhausted drifts (the oldest, so they fill the listed part) do not block a new one.
        let mut fx = Fx::many(51, 51);
        for i in 0..50 {
            fx.ledger.seed(
                RepairKey::assignment(&format!("a{i:03}")),
                RepairRecord {
                    attempts: fx.settings.guard_max_attempts,
                    last_requested: at(-60),
                    by: WHO.into(),
                },
            );
        }
        let p = fx.step(at(0));
        assert_eq!(p.reprocess, ["a050"]);
        assert_cond(
            &p,
            ConditionType::Stalled,
            "True",
            Reason::ReprocessExhausted,
        );
    }

    #[test]
    fn the_operators_rate_limit_bounds_the_selection_and_says_so() {
        let mut fx = Fx::many(10, 5);
        fx.budget = Some(2);
        let p = fx.step(at(0));
        assert_eq!(p.reprocess, ["a000", "a001"]);
        assert_eq!(p.status.assignments.reprocessing, 2);
        let message = &find(&p.status.conditions, ConditionType::Reconciling)
            .unwrap()
            .message;
        assert!(
            message.contains("3 postponed by the operator's reprocess rate limit"),
            "{message}"
        );
        assert_eq!(p.ledger.len(), 2);
    }

    #[test]
    fn recheck_schedule_after_a_repair_is_short_then_doubles() {
        let poll = Duration::from_secs(30);
        let end = at(10);
        let secs = |s: i64| Timestamp::from_second(at(0).as_second() + s).unwrap();
        assert_eq!(super::super::recheck_after(at(0), end, secs(0), poll), poll);
        assert_eq!(
            super::super::recheck_after(at(0), end, secs(30), poll),
            Duration::from_secs(30),
            "at 60s"
        );
        assert_eq!(
            super::super::recheck_after(at(0), end, secs(61), poll),
            Duration::from_secs(59),
            "at 120s"
        );
        assert_eq!(
            super::super::recheck_after(at(0), end, secs(500), poll),
            Duration::from_secs(100),
            "never past the cooldown's end"
        );
    }
}

#[test]
fn a_zero_reprocess_rate_makes_the_guard_report_only_and_say_why() {
    let mut fx = Fx::new();
    fx.operator_report_only = true;
    let p = fx.step(at(0));
    assert!(p.reprocess.is_empty());
    assert!(p.ledger.is_empty());
    assert!(find(&p.status.conditions, ConditionType::Reconciling).is_none());
    assert_cond(&p, ConditionType::Ready, "False", Reason::ReportOnly);
    assert!(
        find(&p.status.conditions, ConditionType::Ready)
            .unwrap()
            .message
            .contains("--reprocess-rate 0")
    );
}

#[test]
fn the_outcome_of_a_sweep_says_what_was_really_sent() {
    use crate::engine::ledger::{RepairKey, Undo};
    let mut fx = Fx::many(10, 5);
    let mut plan = fx.plan(at(0));
    assert_eq!(plan.reprocess.len(), 5);
    let mut undo = Undo::apply(&mut fx.ledger, &plan.ledger);
    let sent: Vec<String> = plan.reprocess[..2].to_vec();
    super::record_guard_outcome(&mut plan, &sent, &mut undo, &mut fx.ledger, WHO, at(0));
    assert_eq!(plan.reprocess, sent);
    assert_eq!(plan.status.assignments.reprocessing, 2);
    for e in &plan.status.drifted {
        let claimed = sent.contains(&e.assignment_id);
        assert_eq!(e.last_reprocess_time.is_some(), claimed, "{e:?}");
        assert_eq!(
            fx.ledger
                .get(&RepairKey::assignment(&e.assignment_id))
                .is_some(),
            claimed
        );
    }
    let reconciling = &find(&plan.status.conditions, ConditionType::Reconciling)
        .unwrap()
        .message;
    assert!(
        reconciling.starts_with("2 drifted assignments are being reprocessed"),
        "{reconciling}"
    );
    assert!(reconciling.contains("3 not sent"), "{reconciling}");
    let event = plan
        .events
        .iter()
        .find(|e| e.kind == EventKind::ReprocessRequested)
        .unwrap();
    assert!(
        event.message.starts_with(
            "Reprocessing 2 drifted assignments: u000@contoso.com, u001@contoso.com (3 not sent"
        ),
        "{}",
        event.message
    );

    // Nothing sent at all: no reprocess event, nothing claimed.
    let mut fx = Fx::many(10, 5);
    let mut plan = fx.plan(at(0));
    let mut undo = Undo::apply(&mut fx.ledger, &plan.ledger);
    super::record_guard_outcome(&mut plan, &[], &mut undo, &mut fx.ledger, WHO, at(0));
    assert!(plan.reprocess.is_empty());
    assert!(fx.ledger.is_empty());
    assert!(
        !plan
            .events
            .iter()
            .any(|e| e.kind == EventKind::ReprocessRequested)
    );
}

#[test]
fn a_sweep_echoes_the_reprocess_request_it_handled() {
    let mut fx = Fx::new();
    let p = fx.step(at(0));
    assert_eq!(p.status.last_handled_request, None);
    fx.annotation = Some("2026-12-01T10:00:00Z".into());
    let p = fx.step(at(15));
    assert_eq!(
        p.status.last_handled_request.as_deref(),
        Some("2026-12-01T10:00:00Z")
    );
    // Kept once handled, and a change of it alone is a status change worth writing.
    let again = fx.plan(at(30));
    assert_eq!(
        again.status.last_handled_request,
        p.status.last_handled_request
    );
}

// ---- Safety: the account gate and the mass-drift breaker ----

#[test]
fn a_sweep_holds_disabled_and_deleted_targets_and_reprocesses_the_rest() {
    let mut fx = Fx::many(4, 3);
    fx.snapshot.record_account(
        "u000",
        TargetAccount {
            state: AccountState::Disabled,
            risk: Risk::NotChecked,
        },
    );
    fx.snapshot.record_account(
        "u001",
        TargetAccount {
            state: AccountState::Deleted,
            risk: Risk::NotChecked,
        },
    );
    let p = fx.plan(at(0));
    assert_eq!(p.reprocess, ["a002"]);
    assert_eq!(p.status.assignments.held, 2);
    let held: Vec<&str> = p
        .status
        .drifted
        .iter()
        .filter_map(|d| d.held.as_deref())
        .collect();
    assert_eq!(held.len(), 2);
    assert!(held[0].starts_with("TargetDisabled: "), "{held:?}");
    assert!(held[1].starts_with("TargetDeleted: "), "{held:?}");
}

#[test]
fn a_sweep_asks_for_unread_accounts_of_what_it_would_reprocess_only() {
    let mut fx = Fx::many(10, 2);
    fx.snapshot.accounts.clear();
    let p = fx.plan(at(0));
    assert!(p.reprocess.is_empty());
    assert_eq!(p.needs_accounts, ["u000", "u001"]);
    let healthy = Fx::many(10, 0);
    assert!(healthy.plan(at(0)).needs_accounts.is_empty());
}

fn with_breaker(mut fx: Fx) -> Fx {
    fx.safety = SafetyPolicy::default();
    fx.spec.max_reprocess_per_sweep = 50;
    fx
}

#[test]
fn a_mass_removal_trips_the_breaker_before_any_reprocess() {
    // 300 of 1,000 delivered assignments lose fin-writers at once.
    let mut fx = with_breaker(Fx::many(1000, 300));
    let p = fx.step(at(0));
    assert!(p.reprocess.is_empty(), "{} reprocesses", p.reprocess.len());
    assert!(
        p.ledger
            .iter()
            .all(|u| !matches!(u, crate::engine::ledger::LedgerUpdate::Requested { .. }))
    );
    assert_cond(&p, ConditionType::Stalled, "True", Reason::MassDrift);
    let msg = &find(&p.status.conditions, ConditionType::Stalled)
        .unwrap()
        .message;
    assert!(msg.contains("300 of 1000"), "{msg}");
    let md = p.status.mass_drift.clone().unwrap();
    assert_eq!((md.drifted, md.delivered), (300, 1000));
    assert!(p.events.iter().any(|e| e.kind == EventKind::MassDrift));
    // Still tripped on the next sweep, and still no repair.
    let p = fx.step(at(20));
    assert!(p.reprocess.is_empty());
    assert_eq!(p.status.mass_drift.unwrap().tripped_time.0, at(0));
}

#[test]
fn after_acknowledgement_repairs_proceed_at_the_configured_rate() {
    let mut fx = with_breaker(Fx::many(1000, 300));
    fx.step(at(0));
    fx.mass_drift_ack = Some("2026-12-04T10:00:00Z".into());
    let p = fx.step(at(1));
    assert_eq!(p.reprocess.len(), 50, "maxReprocessPerSweep bounds it");
    assert!(
        p.status
            .mass_drift
            .as_ref()
            .unwrap()
            .acknowledged_time
            .is_some()
    );
    assert!(find(&p.status.conditions, ConditionType::Stalled).is_none());
    fx.budget = Some(7);
    let p = fx.step(at(30));
    assert_eq!(p.reprocess.len(), 7, "the operator's rate bounds it too");
}

#[test]
fn the_breaker_clears_when_drift_falls_below_the_threshold_and_ignores_small_drift() {
    let mut fx = with_breaker(Fx::many(1000, 300));
    fx.step(at(0));
    let users: Vec<String> = (0..1000).map(|i| format!("u{i:03}")).collect();
    fx.snapshot
        .record_group_members("g2", users.into_iter().skip(5).collect::<Vec<_>>());
    let p = fx.step(at(20));
    assert!(p.status.mass_drift.is_none());
    assert_eq!(p.reprocess.len(), 5);
    // One user of a small package never trips it.
    let mut small = with_breaker(Fx::many(3, 1));
    assert_eq!(small.step(at(0)).reprocess.len(), 1);
    // Audit mode reports only: nothing to stop.
    let mut audit = with_breaker(Fx::many(1000, 300));
    audit.spec.mode = GuardMode::Audit;
    assert!(audit.step(at(0)).status.mass_drift.is_none());
}
