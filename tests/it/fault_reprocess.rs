//! Repairs that do not land, and the world changing under a repair: reprocess accepted but
//! silently failing, an assignment expiring mid-repair, a user that does not exist. Attempts
//! are counted, the cooldown is respected, exhaustion names the missing resources, and
//! nothing loops.

use std::time::Duration;

use crate::fault_support::*;
use redeliver::api::{AccessPackageAssignment, AccessPackageAssignmentStatus};
use redeliver::engine::{self, Action, EngineSettings, Write, conditions};
use redeliver::observe::Observer;
use redeliver_sim::{Scenario, Simulator};
use serde_json::json;

/// Observes alice's Finance Analysts assignment once and plans, like one controller pass.
async fn plan_once(
    observer: &Observer,
    apa: &AccessPackageAssignment,
    previous: Option<&AccessPackageAssignmentStatus>,
    now: jiff::Timestamp,
) -> engine::Plan {
    observer.refresh().await;
    let package_id = observer
        .resolve_package_id(&apa.spec.access_package)
        .await
        .unwrap();
    let view = observer.package_view(&package_id).await.unwrap();
    let target = observer.resolve_target(&apa.spec.target).await.unwrap();
    let mut snapshot = observer.snapshot(view.resources.iter()).await;
    crate::fault_support::confirm_target(observer, &mut snapshot, &target).await;
    let assignment = view.assignment_for(&target);
    let requests = observer.package_requests(&package_id).await.unwrap();
    let latest_request = view.latest_request_for(&requests, &target);
    engine::plan_assignment(
        &engine::AssignmentInput {
            generation: Some(1),
            spec: &apa.spec,
            previous,
            reprocess_annotation: None,
            resolved: Ok(engine::ResolvedIds {
                access_package_id: package_id.clone(),
                access_package_name: view.package.display_name.clone(),
                policy: Observer::resolve_policy(&view, None),
                target_object_id: target.clone(),
                target_name: None,
            }),
            assignment: assignment.as_ref(),
            latest_request: latest_request.as_ref(),
            resources: &view.resources,
            snapshot: &snapshot,
            settings: &EngineSettings::default(),
            ledger: &engine::ledger::RepairLedger::new(),
            who: "AccessPackageAssignment test/alice",
            operator_report_only: false,
            safety: &redeliver::engine::SafetyPolicy::default(),
            mass_drift: None,
        },
        now,
    )
}

#[tokio::test]
async fn silent_reprocess_counts_attempts_respects_cooldown_and_exhausts_naming_the_group() {
    let sim = Simulator::start(Scenario::demo(), fast()).await.unwrap();
    sim.inject_fault(fault(json!({"kind": "silentReprocess"})));
    let observer = Observer::new(client_with(&sim, |_| {}), 4);
    let apa: AccessPackageAssignment = serde_norway::from_str(
        "apiVersion: redeliver.dev/v1alpha1\nkind: AccessPackageAssignment\nmetadata: {name: alice, namespace: access, generation: 1}\nspec:\n  accessPackage: {displayName: Finance Analysts}\n  target: {userPrincipalName: alice@contoso.com}\n  reprocess: {mode: Auto, maxAttempts: 3, cooldown: 2m}\n",
    )
    .unwrap();
    let alice = sim
        .assignment_id("alice@contoso.com", "Finance Analysts")
        .unwrap();
    sim.clear_request_log();
    let start = jiff::Timestamp::now();
    let mut status: Option<AccessPackageAssignmentStatus> = None;
    let mut reprocessed_at: Vec<jiff::Timestamp> = Vec::new();
    let mut attempts_seen = Vec::new();
    // A pass every 30 s of engine time for 15 minutes: far more passes than attempts.
    for step in 0..30 {
        let now = start + jiff::SignedDuration::from_secs(30 * step);
        let plan = plan_once(&observer, &apa, status.as_ref(), now).await;
        if let Action::Write(Write::ReprocessAssignment { assignment_id }) = &plan.action {
            assert_eq!(assignment_id, &alice);
            observer
                .graph()
                .reprocess_assignment(assignment_id)
                .await
                .unwrap();
            reprocessed_at.push(now);
            attempts_seen.push(plan.status.reprocess.attempts);
            // A reprocess that worked would have landed once the simulator's background work
            // is done.
            assert!(
                sim.settle(Duration::from_secs(10)).await,
                "the simulator settles"
            );
        }
        status = Some(plan.status);
    }
    let status = status.unwrap();
    eprintln!(
        "silent reprocess: attempts at {:?} s of engine time over 30 passes",
        reprocessed_at
            .iter()
            .map(|t| t.duration_since(start).as_secs())
            .collect::<Vec<_>>()
    );
    assert_eq!(reprocessed_at.len(), 3, "maxAttempts 3 bounds the calls");
    assert_eq!(attempts_seen, vec![1, 2, 3], "each attempt is counted");
    for pair in reprocessed_at.windows(2) {
        let gap = pair[1].duration_since(pair[0]);
        assert!(
            gap >= jiff::SignedDuration::from_secs(120),
            "cooldown of 2m respected between attempts: {gap:?}"
        );
    }
    // The world: Graph got exactly three reprocesses, and alice is still not a writer.
    assert_eq!(reprocess_calls(&sim, true).get(&alice), Some(&3));
    assert!(!sim.is_member("fin-writers", "alice@contoso.com"));
    crate::fault_support::assert_reprocess_exhausted(&status.conditions, "fin-writers");
    let delivered = conditions::find(
        &status.conditions,
        redeliver::engine::conditions::ConditionType::Delivered,
    )
    .unwrap();
    assert_eq!(delivered.status, "False", "never claims Delivered");
    assert_eq!(status.reprocess.attempts, 3);
    sim.shutdown().await;
}

#[tokio::test]
async fn audit_with_silent_reprocess_reprocesses_once_then_reports_the_drift() {
    let sim = Simulator::start(Scenario::demo(), fast()).await.unwrap();
    let alice = sim
        .assignment_id("alice@contoso.com", "Finance Analysts")
        .unwrap();
    sim.inject_fault(fault(
        json!({"kind": "silentReprocess", "assignmentIds": [alice]}),
    ));
    let dir = declarations(&declaration(
        "alice-finance",
        "Finance Analysts",
        "alice@contoso.com",
        "",
    ));
    sim.clear_request_log();
    let out = audit(
        &sim,
        dir.path(),
        &[
            "--reprocess",
            // The repair never lands, so the run waits all of it: four passes or so.
            "--wait",
            "1s",
            "--poll-interval",
            crate::fault_support::POLL_INTERVAL,
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(out.code, 2, "drift remains\n{}\n{}", out.stdout, out.stderr);
    let row = &out.rows()[0];
    assert_eq!(row["verdict"], "Drifted", "{row}");
    assert_eq!(row["missing"], json!(["fin-writers"]));
    // ~4 passes in 1 s, yet one reprocess: the cooldown holds within a run.
    assert_eq!(reprocess_calls(&sim, false).get(&alice), Some(&1));
    assert!(
        sim.count_requests("GET", "/v1.0/groups/") >= 4,
        "it kept verifying while waiting"
    );
    assert!(!sim.is_member("fin-writers", "alice@contoso.com"));
    sim.shutdown().await;
}

#[tokio::test]
async fn assignment_expiring_while_being_repaired_is_reported_expired_not_reprocessed_again() {
    let mut opts = fast();
    // Long enough for the test to expire the assignment before the reprocess lands.
    opts.reprocess_delay = Duration::from_secs(2);
    let sim = Simulator::start(Scenario::demo(), opts).await.unwrap();
    let alice = sim
        .assignment_id("alice@contoso.com", "Finance Analysts")
        .unwrap();
    let dir = declarations(&declaration(
        "alice-finance",
        "Finance Analysts",
        "alice@contoso.com",
        "  reprocess: {mode: Auto}\n",
    ));
    sim.clear_request_log();
    let cmd = reprocess_command(&sim, dir.path(), "4s", &["-o", "json"]);
    let child = tokio::spawn(run(cmd));
    // As soon as the reprocess is accepted, the assignment expires in Graph.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while reprocess_calls(&sim, true).is_empty() {
        assert!(std::time::Instant::now() < deadline, "reprocess never sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sim.set_assignment_state(&alice, "expired").unwrap();
    let out = child.await.unwrap();
    let row = &out.rows()[0];
    assert_ne!(row["verdict"], "Delivered", "{row}");
    assert_eq!(
        reprocess_calls(&sim, false).get(&alice),
        Some(&1),
        "an expired assignment is not reprocessed again"
    );
    assert_eq!(sim.assignment_state(&alice).as_deref(), Some("expired"));
    assert_ne!(out.code, 0, "{}", out.stdout);
    sim.shutdown().await;
}

#[tokio::test]
async fn unknown_user_is_an_error_for_its_row_while_the_others_are_repaired() {
    let sim = Simulator::start(Scenario::demo(), fast()).await.unwrap();
    let dir = declarations(
        &(declaration("ghost-finance", "Finance Analysts", "ghost@contoso.com", "")
            + &declaration("alice-finance", "Finance Analysts", "alice@contoso.com", "")),
    );
    sim.clear_request_log();
    let out = audit(
        &sim,
        dir.path(),
        &[
            "--reprocess",
            "--wait",
            "20s",
            "--poll-interval",
            crate::fault_support::POLL_INTERVAL,
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(out.code, 1, "{}", out.stdout);
    let rows = out.rows();
    let ghost = rows
        .iter()
        .find(|r| r["declaration"] == "access/ghost-finance")
        .unwrap();
    assert_ne!(ghost["verdict"], "Delivered");
    assert!(
        ghost["message"]
            .as_str()
            .unwrap_or_default()
            .contains("ghost@contoso.com"),
        "{ghost}"
    );
    let alice = rows
        .iter()
        .find(|r| r["declaration"] == "access/alice-finance")
        .unwrap();
    assert_eq!(alice["verdict"], "Delivered", "{alice}");
    assert!(sim.is_member("fin-writers", "alice@contoso.com"));
    // Nothing was requested for a user that does not exist.
    assert_eq!(
        sim.count_requests(
            "POST",
            "/v1.0/identityGovernance/entitlementManagement/assignmentRequests"
        ),
        0
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn user_deleted_while_being_repaired_is_reported_not_found_and_nothing_more_is_written() {
    let sim = Simulator::start(Scenario::demo(), fast()).await.unwrap();
    let alice = sim
        .assignment_id("alice@contoso.com", "Finance Analysts")
        .unwrap();
    // The reprocess is accepted but has not done anything yet when the user is deleted.
    sim.inject_fault(fault(
        json!({"kind": "silentReprocess", "assignmentIds": [alice]}),
    ));
    let proxy = Proxy::start(&sim.graph_url).await;
    let dir = declarations(&declaration(
        "alice-finance",
        "Finance Analysts",
        "alice@contoso.com",
        "",
    ));
    let via_proxy = |extra: &[&str]| {
        let mut cmd = audit_command(&sim, dir.path(), extra);
        cmd.env("AZURE_AUTHORITY_HOST", &proxy.url)
            .env("REDELIVER_GRAPH_URL", &proxy.url);
        cmd
    };
    sim.clear_request_log();
    // The repair never lands, so the run waits all of --wait (four passes or so after the
    // deletion, which follows the reprocess within milliseconds).
    let child = tokio::spawn(run(via_proxy(&[
        "--reprocess",
        "--wait",
        "1s",
        "--poll-interval",
        crate::fault_support::POLL_INTERVAL,
        "-o",
        "json",
    ])));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while reprocess_calls(&sim, true).is_empty() {
        assert!(std::time::Instant::now() < deadline, "reprocess never sent");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Deleted: gone from every group and app, and unknown to /users.
    proxy.spoil_method("GET", "/v1.0/users/alice", Spoil::NotFound, usize::MAX);
    sim.remove_member("fin-readers", "alice@contoso.com")
        .unwrap();
    sim.remove_app_role("Payroll", "alice@contoso.com", None)
        .unwrap();
    let out = child.await.unwrap();
    // The run already knew her id: it sees everything missing, never claims Delivered, and
    // does not reprocess again within the cooldown.
    let row = &out.rows()[0];
    assert_ne!(row["verdict"], "Delivered", "{row}");
    assert_ne!(out.code, 0);
    assert_eq!(reprocess_calls(&sim, false).get(&alice), Some(&1));

    // The next run resolves the user afresh: not found, reported, nothing written.
    sim.clear_request_log();
    let out = run(via_proxy(&["--reprocess", "-o", "json"])).await;
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    let row = &out.rows()[0];
    assert_eq!(row["verdict"], "Stalled", "{row}");
    assert!(
        row["message"]
            .as_str()
            .unwrap_or_default()
            .contains("no user 'alice@contoso.com'"),
        "{row}"
    );
    assert_eq!(sim.count_requests("POST", "/v1.0/"), 0, "nothing written");
    sim.shutdown().await;
}

/// A guard that reprocesses two drifted assignments, one refused: each row tells its own
/// outcome (the refused one failed with Graph's answer, the other reprocessed), instead of
/// every row saying "reprocessed" and the last error overwriting the others.
#[tokio::test]
async fn a_guard_sweep_reports_each_reprocess_outcome_on_its_own_row() {
    let sim = Simulator::start(Scenario::demo(), fast()).await.unwrap();
    sim.remove_member("fin-writers", "bob@contoso.com").unwrap();
    let alice = sim
        .assignment_id("alice@contoso.com", "Finance Analysts")
        .unwrap();
    let bob = sim
        .assignment_id("bob@contoso.com", "Finance Analysts")
        .unwrap();
    sim.inject_fault(fault(json!({
        "kind": "error", "status": 400, "count": 100, "method": "POST",
        "pathPrefix": format!("/v1.0/identityGovernance/entitlementManagement/assignments/{alice}/reprocess")
    })));
    let dir = declarations(&guard("finance", "Finance Analysts"));
    let out = audit(
        &sim,
        dir.path(),
        &[
            "--reprocess",
            "--wait",
            "5s",
            "--poll-interval",
            crate::fault_support::POLL_INTERVAL,
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    let before = out.json()["before"].as_array().cloned().unwrap();
    let planned = |id: &str| before.iter().find(|r| r["assignmentId"] == id).cloned();
    assert_eq!(planned(&alice).unwrap()["action"], "reprocess");
    assert_eq!(planned(&bob).unwrap()["action"], "reprocess");
    let rows = out.rows();
    let a = rows
        .iter()
        .find(|r| r["assignmentId"] == alice.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("alice is still drifted: {rows:?}"));
    assert_eq!(a["action"], "failed", "{a}");
    assert_eq!(a["verdict"], "Error", "{a}");
    assert!(
        a["message"]
            .as_str()
            .unwrap()
            .starts_with("reprocess failed:"),
        "{a}"
    );
    // bob's repair landed: no drift row left for him, his access is back.
    assert!(
        !rows.iter().any(|r| r["assignmentId"] == bob.as_str()),
        "{rows:?}"
    );
    assert!(
        sim.is_member("fin-writers", "bob@contoso.com"),
        "bob repaired"
    );
    assert!(!sim.is_member("fin-writers", "alice@contoso.com"));
    let summary = &rows[0];
    assert_eq!(summary["verdict"], "Error", "{summary}");
    assert!(
        summary["message"]
            .as_str()
            .unwrap()
            .starts_with("1 reprocess(es) refused by Graph"),
        "{summary}"
    );
    sim.shutdown().await;
}
