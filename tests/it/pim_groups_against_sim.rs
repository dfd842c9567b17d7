//! Eligible group membership and ownership (Privileged Identity Management for Groups) an
//! access package grants, verified against the Graph simulator over real HTTP on
//! 127.0.0.1: an eligibility removed in PIM is detected and repaired, status names it
//! `GroupEligible fin-admins (Member)`, a missing `PrivilegedEligibilitySchedule.Read
//! .AzureADGroup` leaves it `Unknown` naming the permission and never reprocesses, an
//! eligibility that ended on its own end date is not drift, and 200 assignments promising
//! the same eligibility share one paged read.

use redeliver::api::{OriginSystem, RoleKind, RoleMode};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use redeliver::api::ResourceState;
use redeliver::engine::{self, Action, Write};
use redeliver::observe::Observer;
use redeliver_sim::{Scenario, SimOptions, Simulator};

use crate::fault_support::{audit_json, fabrikam_declarations, processing_after, report_row};

const SCHEDULES: &str = "/v1.0/identityGovernance/privilegedAccess/group/eligibilitySchedules";
const PERMISSION: &str = "PrivilegedEligibilitySchedule.Read.AzureADGroup";

fn fast() -> SimOptions {
    processing_after(Duration::from_millis(200))
}

/// "Finance Admins" grants eligible membership of fin-admins and eligible ownership of
/// fin-owners; alice lost her eligible membership in PIM, bob his eligible ownership,
/// carol holds everything.
fn scenario(extra_users: usize) -> Scenario {
    let extra: String = (0..extra_users)
        .map(|i| format!("    - {{upn: user{i}@fabrikam.com}}\n"))
        .collect();
    let extra_assignments: String = (0..extra_users)
        .map(|i| {
            format!(
                "    - {{user: user{i}@fabrikam.com, package: Finance Admins, state: delivered}}\n"
            )
        })
        .collect();
    Scenario::from_yaml_str(&format!(
        "apiVersion: sim.redeliver.dev/v1
kind: SimulatorScenario
metadata: {{name: pim-groups}}
spec:
  seed: 9
  tenant: {{name: fabrikam}}
  users:
    - {{upn: alice@fabrikam.com, displayName: Alice}}
    - {{upn: bob@fabrikam.com, displayName: Bob}}
    - {{upn: carol@fabrikam.com, displayName: Carol}}
{extra}  groups:
    - {{name: fin-admins}}
    - {{name: fin-owners}}
  catalogs:
    - {{name: Privileged}}
  accessPackages:
    - name: Finance Admins
      catalog: Privileged
      resources:
        - {{group: fin-admins, role: Eligible Member}}
        - {{group: fin-owners, role: Eligible Owner}}
  assignments:
    - {{user: alice@fabrikam.com, package: Finance Admins, state: delivered, missing: [fin-admins]}}
    - {{user: bob@fabrikam.com, package: Finance Admins, state: delivered, missing: [fin-owners]}}
    - {{user: carol@fabrikam.com, package: Finance Admins, state: delivered}}
{extra_assignments}"
    ))
    .expect("valid scenario")
}

fn declarations(dir: &Path, users: &[&str]) {
    fabrikam_declarations(dir, "privileged", "Finance Admins", users);
}

fn row<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report_row(report, &format!("privileged/{name}"))
}

/// The plan's status of the eligible group membership.
fn member_of(plan: &engine::Plan) -> &redeliver::api::ResourceStatus {
    plan.status
        .resources
        .iter()
        .find(|r| r.role.as_deref() == Some("Member"))
        .expect("the eligible membership")
}

async fn plan_for(observer: &Observer, upn: &str) -> engine::Plan {
    crate::fault_support::first_plan(observer, "privileged", "Finance Admins", upn).await
}

#[tokio::test]
async fn an_eligibility_removed_in_pim_is_detected_and_repaired() {
    let sim = Simulator::start(scenario(0), fast()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    declarations(dir.path(), &["alice", "bob", "carol"]);
    assert!(!sim.has_group_eligibility("fin-admins", "alice@fabrikam.com", false));
    assert!(sim.has_group_eligibility("fin-owners", "alice@fabrikam.com", true));

    let (code, report, stderr) = audit_json(&sim, dir.path(), &[]).await;
    assert_eq!(code, 2, "drift found\n{report}\n{stderr}");
    assert_eq!(
        row(&report, "alice")["missing"],
        serde_json::json!(["GroupEligible fin-admins (Member)"])
    );
    assert_eq!(
        row(&report, "bob")["missing"],
        serde_json::json!(["GroupEligible fin-owners (Owner)"])
    );
    assert_eq!(row(&report, "carol")["verdict"], "Delivered");

    // Reprocess re-applies the package: entitlement management makes them eligible again.
    let (code, report, stderr) =
        audit_json(&sim, dir.path(), &["--reprocess", "--wait", "20s"]).await;
    assert_eq!(code, 0, "repaired\n{report}\n{stderr}");
    for name in ["alice", "bob", "carol"] {
        assert_eq!(row(&report, name)["verdict"], "Delivered", "{report}");
    }
    assert!(sim.has_group_eligibility("fin-admins", "alice@fabrikam.com", false));
    assert!(sim.has_group_eligibility("fin-owners", "bob@fabrikam.com", true));

    // An admin removing carol's eligible membership in PIM is drift too.
    assert!(
        sim.remove_group_eligibility("fin-admins", "carol@fabrikam.com", false)
            .unwrap()
    );
    let (code, report, _) = audit_json(&sim, dir.path(), &[]).await;
    assert_eq!(code, 2);
    assert_eq!(
        row(&report, "carol")["missing"],
        serde_json::json!(["GroupEligible fin-admins (Member)"])
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn status_names_the_eligibility_and_counts_it() {
    let sim = Simulator::start(scenario(0), fast()).await.unwrap();
    let observer = Observer::new(crate::fault_support::graph_client(&sim).unwrap(), 4);
    let plan = plan_for(&observer, "alice@fabrikam.com").await;
    assert!(
        matches!(
            plan.action,
            Action::Write(Write::ReprocessAssignment { .. })
        ),
        "{:?}",
        plan.action
    );
    assert_eq!(plan.status.resources_summary.as_deref(), Some("1/2"));
    let member = plan
        .status
        .resources
        .iter()
        .find(|r| r.role.as_deref() == Some("Member"))
        .expect("the eligible membership in status");
    assert_eq!(member.kind, Some(RoleKind::GroupEligible));
    assert_eq!(member.mode, Some(RoleMode::Eligible));
    assert_eq!(member.origin_system, OriginSystem::AadGroup);
    assert_eq!(member.state, ResourceState::Missing);
    assert_eq!(member.short_name(), "GroupEligible fin-admins (Member)");
    sim.shutdown().await;
}

#[tokio::test]
async fn without_the_pim_permission_the_eligibility_is_unknown_naming_it_and_never_reprocessed() {
    let sim = Simulator::start(scenario(0), fast()).await.unwrap();
    sim.set_permission(PERMISSION, false).unwrap();
    let observer = Observer::new(crate::fault_support::graph_client(&sim).unwrap(), 4);
    // alice misses an eligibility, but nothing can be read: no guess, no repair.
    let plan = plan_for(&observer, "alice@fabrikam.com").await;
    for r in &plan.status.resources {
        assert_eq!(r.state, ResourceState::Unknown, "{r:?}");
        let note = r.note.as_deref().unwrap_or_default();
        assert!(note.contains(PERMISSION), "the permission is named: {note}");
    }
    assert!(
        !matches!(plan.action, Action::Write(_)),
        "{:?}",
        plan.action
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn an_eligibility_that_ended_on_its_own_end_date_is_not_drift() {
    let sim = Simulator::start(scenario(0), fast()).await.unwrap();
    let ended = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1);
    assert!(
        sim.end_group_eligibility("fin-admins", "carol@fabrikam.com", false, ended)
            .unwrap()
    );
    let observer = Observer::new(crate::fault_support::graph_client(&sim).unwrap(), 4);
    let plan = plan_for(&observer, "carol@fabrikam.com").await;
    let member = member_of(&plan);
    assert_eq!(member.state, ResourceState::Unverifiable, "{member:?}");
    assert!(
        member
            .note
            .as_deref()
            .is_some_and(|n| n.contains("end date") && n.contains("not drift")),
        "{member:?}"
    );
    assert!(
        !matches!(plan.action, Action::Write(_)),
        "{:?}",
        plan.action
    );
    sim.shutdown().await;
}

/// Issue #23: the observer judges end dates by the clock it is given (the controller's), not
/// by the machine's: an eligibility that ends in an hour has ended for an observer whose
/// clock reads two hours from now.
#[tokio::test]
async fn the_observer_judges_an_end_date_by_its_clock() {
    use redeliver::controller::context::FixedClock;
    let sim = Simulator::start(scenario(0), fast()).await.unwrap();
    let now = jiff::Timestamp::now();
    assert!(
        sim.end_group_eligibility(
            "fin-admins",
            "carol@fabrikam.com",
            false,
            now + jiff::SignedDuration::from_hours(1)
        )
        .unwrap()
    );
    let member_state = |plan: &engine::Plan| {
        let member = member_of(plan);
        (member.state, member.note.clone().unwrap_or_default())
    };
    let graph = crate::fault_support::graph_client(&sim).unwrap();
    let today = Observer::new(graph.clone(), 4);
    let (state, note) = member_state(&plan_for(&today, "carol@fabrikam.com").await);
    assert_eq!(
        state,
        ResourceState::Present,
        "in effect until its end: {note}"
    );

    let later = Observer::new(graph, 4).with_clock(Arc::new(FixedClock::at(
        now + jiff::SignedDuration::from_hours(2),
    )));
    let (state, note) = member_state(&plan_for(&later, "carol@fabrikam.com").await);
    assert_eq!(state, ResourceState::Unverifiable, "{note}");
    assert!(
        note.contains("end date") && note.contains("not drift"),
        "{note}"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn two_hundred_assignments_promising_the_same_eligibility_share_one_paged_read() {
    let sim = Simulator::start(scenario(197), fast()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut users: Vec<String> = (0..197).map(|i| format!("user{i}")).collect();
    users.extend(["alice", "bob", "carol"].map(String::from));
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    declarations(dir.path(), &refs);
    sim.clear_request_log();

    let (code, report, stderr) = audit_json(&sim, dir.path(), &[]).await;
    assert_eq!(code, 2, "alice and bob drifted\n{stderr}");
    assert_eq!(report["summary"]["delivered"], 198);

    // 199 eligible members of fin-admins and 199 eligible owners of fin-owners at the
    // simulator's page size of 100: two pages of one read each, not one read per user.
    let reads: Vec<redeliver_sim::LogEntry> = sim
        .request_log()
        .into_iter()
        .filter(|e| e.method == "GET" && e.path.starts_with(SCHEDULES))
        .collect();
    assert_eq!(reads.len(), 4, "{reads:?}");
    let filters: Vec<String> = reads
        .iter()
        .filter_map(|e| {
            let url = url::Url::parse(&format!("http://x{}", e.path)).ok()?;
            url.query_pairs()
                .find(|(k, _)| k == "$filter")
                .map(|(_, v)| v.into_owned())
        })
        .collect();
    let admins = sim.group_id("fin-admins").unwrap();
    let owners = sim.group_id("fin-owners").unwrap();
    let member_filter = format!("groupId eq '{admins}' and accessId eq 'member'");
    let owner_filter = format!("groupId eq '{owners}' and accessId eq 'owner'");
    assert_eq!(
        filters.iter().filter(|f| **f == member_filter).count(),
        2,
        "{filters:?}"
    );
    assert_eq!(
        filters.iter().filter(|f| **f == owner_filter).count(),
        2,
        "{filters:?}"
    );
    sim.shutdown().await;
}
