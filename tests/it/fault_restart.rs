//! `redeliver audit --reprocess` killed in the middle of a sweep, then run again. The drift
//! is found again (no repair lost). What a second one-shot run can and cannot know about
//! the killed run's reprocess is spelled out in docs/reliability.md; these tests pin it
//! down.

use std::time::Duration;

use crate::fault_support::*;
use redeliver_sim::{Scenario, Simulator};

const REPAIR: [&str; 7] = [
    "--reprocess",
    "--wait",
    "30s",
    "--poll-interval",
    crate::fault_support::POLL_INTERVAL,
    "-o",
    "json",
];

/// How long a reprocess takes to land where the test decides when it lands (by moving
/// tokio's clock, on which the in-process simulator waits).
const REPROCESS_DELAY: Duration = Duration::from_secs(30);

/// Waits until the simulator has accepted `n` reprocesses in total.
async fn wait_for_reprocesses(sim: &redeliver_sim::SimHandle, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while reprocess_calls(sim, true).values().sum::<usize>() < n {
        assert!(std::time::Instant::now() < deadline, "no reprocess seen");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn killed_before_any_repair_loses_nothing_the_rerun_repairs_once() {
    let sim = Simulator::start(Scenario::synthetic("kill", 6, 1, 2, 2), fast())
        .await
        .unwrap();
    let docs: String = (0..6)
        .map(|i| declaration(&format!("u{i}"), "pkg-0", &format!("user{i}@kill.com"), ""))
        .collect();
    let dir = declarations(&docs);
    // Slow member reads, so the kill lands mid-sweep, before any write.
    let slow = sim.inject_fault(fault(serde_json::json!({
        "kind": "latency", "millis": 1500, "count": 2, "pathPrefix": "/v1.0/groups"
    })));
    sim.clear_request_log();
    let mut child = audit_command(&sim, dir.path(), &REPAIR).spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    // The package's assignments are being read: the sweep has started, its member reads
    // are still slow.
    while sim.count_requests(
        "GET",
        "/v1.0/identityGovernance/entitlementManagement/assignments",
    ) == 0
    {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    assert!(
        reprocess_calls(&sim, false).is_empty(),
        "killed before acting"
    );
    // The slow reads were for the killed run; the rerun is not about them.
    sim.remove_fault(slow);

    let out = audit(&sim, dir.path(), &REPAIR).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let before = out.json()["before"].as_array().cloned().unwrap();
    assert_eq!(
        before.iter().filter(|r| r["verdict"] == "Drifted").count(),
        3,
        "the rerun found every drift again"
    );
    let accepted = reprocess_calls(&sim, true);
    assert_eq!(accepted.len(), 3);
    assert!(accepted.values().all(|&n| n == 1), "{accepted:?}");
    for i in 0..6 {
        assert!(sim.is_member("pkg-0-g0", &format!("user{i}@kill.com")));
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn killed_after_reprocess_the_rerun_finds_the_drift_again_and_converges() {
    let mut opts = fast();
    // The killed run's reprocess lands in Graph only when the test says so: it moves tokio's
    // clock (the simulator's) past this delay once the rerun has looked and acted.
    opts.reprocess_delay = REPROCESS_DELAY;
    let sim = Simulator::start(Scenario::demo(), opts).await.unwrap();
    let alice = sim
        .assignment_id("alice@contoso.com", "Finance Analysts")
        .unwrap();
    let dir = declarations(&declaration(
        "alice-finance",
        "Finance Analysts",
        "alice@contoso.com",
        "",
    ));
    sim.clear_request_log();
    let mut child = audit_command(&sim, dir.path(), &REPAIR).spawn().unwrap();
    wait_for_reprocesses(&sim, 1).await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    assert!(!sim.is_member("fin-writers", "alice@contoso.com"));

    // Restarted at once, while the first reprocess is still pending in Graph: a one-shot
    // run has no memory of the killed one, and Graph keeps no trace of a pending
    // reprocess, so it sees the drift and reprocesses again (one duplicate, idempotent).
    let rerun = tokio::spawn(run(audit_command(&sim, dir.path(), &REPAIR)));
    wait_for_reprocesses(&sim, 2).await;
    // Both reprocesses land now; the rerun sees it at its next pass.
    crate::clock::skip(REPROCESS_DELAY).await;
    let out = rerun.await.unwrap();
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(out.json()["before"][0]["verdict"], "Drifted");
    assert!(sim.is_member("fin-writers", "alice@contoso.com"));
    let accepted = reprocess_calls(&sim, true);
    assert_eq!(
        accepted.get(&alice),
        Some(&2),
        "exactly one duplicate across the kill, never more"
    );

    // Restarted after the repair landed: nothing to do, nothing written.
    sim.clear_request_log();
    let out = audit(&sim, dir.path(), &REPAIR).await;
    assert_eq!(out.code, 0);
    assert!(reprocess_calls(&sim, false).is_empty());
    assert_eq!(sim.count_requests("POST", "/v1.0/"), 0);
    sim.shutdown().await;
}
