//! Sweeps of an `AccessPackageGuard`, as small scenarios.

use super::*;
use crate::engine::conditions::{find, reason};
use crate::engine::{ResolveFailureKind, ResourceRead, promised_resources};
use crate::graph::models::{ResourceRole, ResourceRoleScope, ResourceScope};

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
}

impl Fx {
    /// alice delivered, bob drifted (not in fin-writers), carol failed, dave expired but still
    /// in fin-readers, erin delivering, mallory in fin-readers with no assignment.
    fn new() -> Self {
        let mut snapshot = Snapshot::new();
        snapshot.record_group_members("g1", ["alice", "bob", "dave", "mallory"]);
        snapshot.record_group_members("g2", ["alice"]);
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
        }
    }

    /// Only delivered assignments, `n` of them drifted (missing fin-writers).
    fn many(n: usize, drifted: usize) -> Self {
        let mut fx = Self::new();
        fx.assignments = (0..n)
            .map(|i| assignment(&format!("a{i:03}"), &format!("u{i:03}"), "delivered"))
            .collect();
        let users: Vec<String> = (0..n).map(|i| format!("u{i:03}")).collect();
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
            },
            now,
        )
    }

    fn step(&mut self, now: Timestamp) -> GuardPlan {
        let p = self.plan(now);
        self.previous = Some(p.status.clone());
        p
    }
}

fn assert_cond(p: &GuardPlan, type_: &str, status: &str, why: &str) {
    let c = find(&p.status.conditions, type_)
        .unwrap_or_else(|| panic!("{type_} missing: {:#?}", p.status.conditions));
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        (status, why),
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
    assert_cond(&p, DELIVERED, "False", reason::RESOURCES_MISSING);
    assert_cond(&p, RECONCILING, "True", reason::REPROCESSING);
    assert_cond(&p, READY, "False", reason::REPROCESSING);
    assert!(find(&p.status.conditions, STALLED).is_none());
    assert_eq!(
        kinds(&p),
        [EventKind::DriftDetected, EventKind::ReprocessRequested]
    );
    assert!(
        p.events[0]
            .message
            .contains("bob@contoso.com missing fin-writers (Member)")
    );
    assert_eq!(p.requeue_after, Duration::from_secs(600));
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
    assert!(find(&p.status.conditions, RECONCILING).is_none());
    assert_cond(&p, READY, "False", reason::REPORT_ONLY);
    assert_eq!(kinds(&p), [EventKind::DriftDetected]);
    assert_eq!(p.requeue_after, Duration::from_secs(900));
}

#[test]
fn zero_budget_in_enforce_reports_only() {
    let mut fx = Fx::new();
    fx.spec.max_reprocess_per_sweep = 0;
    let p = fx.plan(at(0));
    assert!(p.reprocess.is_empty());
    assert_cond(&p, READY, "False", reason::REPORT_ONLY);
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
        Duration::from_secs(600),
        "verify after the cooldown"
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
    assert_cond(&p, DELIVERED, "True", reason::ALL_DELIVERED);
    assert_cond(&p, READY, "True", reason::ALL_DELIVERED);
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
    assert_cond(&p, STALLED, "True", reason::REPROCESS_EXHAUSTED);
    assert_cond(&p, READY, "False", reason::REPROCESS_EXHAUSTED);
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
    assert_cond(&p, DELIVERED, "Unknown", reason::VERIFICATION_FAILED);
    assert_cond(&p, READY, "Unknown", reason::VERIFICATION_FAILED);
    assert!(p.reprocess.is_empty());
}

#[test]
fn failed_assignments_block_delivered() {
    let mut fx = Fx::many(2, 0);
    fx.assignments
        .push(assignment("f1", "zed", "partiallyDelivered"));
    let p = fx.plan(at(0));
    assert_eq!(p.status.assignments.failed, 1);
    assert_cond(&p, DELIVERED, "False", reason::DELIVERY_FAILED);
}

#[test]
fn invalid_spec_and_resolve_failures_stall() {
    let mut fx = Fx::new();
    fx.spec.interval = "10s".into();
    let p = fx.step(at(0));
    assert_cond(&p, STALLED, "True", reason::INVALID_SPEC);
    assert!(
        find(&p.status.conditions, STALLED)
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
    assert_cond(&p, STALLED, "True", reason::FORBIDDEN);
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
    assert_eq!(types[..2], [READY, DELIVERED]);
    assert!(
        p.status
            .conditions
            .iter()
            .all(|c| c.observed_generation == Some(7))
    );
    assert_eq!(p.status.observed_generation, Some(7));
}
