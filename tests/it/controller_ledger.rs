//! One Graph assignment, one repair, end to end: `run_controllers` against the in-process
//! Kubernetes API server (`redeliver_fake_kube`, with real watch, status subresource
//! and server-side apply semantics) and the Graph simulator over HTTP on 127.0.0.1.
//!
//! - an assignment covered by an AccessPackageAssignment and an AccessPackageGuard is
//!   reprocessed exactly once per cooldown, before and after a controller restart, and both
//!   objects name the one that sent it;
//! - a guard reaches Ready=True soon after its own repair lands, not one interval later;
//! - a change made right after a restart's start-up verification, before the first delta
//!   poll, is detected within one delta interval (groups and app roles alike).

use std::time::{Duration, Instant};

use redeliver::controller::Settings;
use redeliver_fake_kube::FakeKube;
use redeliver_sim::{FaultSpec, Scenario, SimHandle, SimOptions, Simulator};
use serde_json::{Value, json};

use crate::controller_support::{Controller, operator_context};
use crate::fault_support::{reprocess_calls, reprocess_calls_of};

const NS: &str = "access";
const FINANCE: &str = "9f1c0c7e-0000-4000-8000-000000000001";
const APA: &str = "accesspackageassignments";
const APG: &str = "accesspackageguards";

fn alice() -> Value {
    json!({
        "apiVersion": "redeliver.dev/v1alpha1", "kind": "AccessPackageAssignment",
        "metadata": {"name": "alice-finance", "namespace": NS},
        "spec": {
            "accessPackage": {"displayName": "Finance Analysts", "catalog": "Finance"},
            "target": {"userPrincipalName": "alice@contoso.com"},
            "reprocess": {"mode": "Auto", "maxAttempts": 3, "cooldown": "5m"}
        }
    })
}

fn guard() -> Value {
    json!({
        "apiVersion": "redeliver.dev/v1alpha1", "kind": "AccessPackageGuard",
        "metadata": {"name": "finance-analysts", "namespace": NS},
        "spec": {"accessPackage": {"id": FINANCE}, "mode": "Enforce", "interval": "15m"}
    })
}

/// A controller process, in-process, with `sim` as its operator connection.
async fn start(kube: &FakeKube, sim: &SimHandle, settings: Settings) -> Controller {
    Controller::start(operator_context(kube, sim, NS, &settings), Vec::new(), 4).await
}

/// Waits until `running` has reconciled the assignment and the guard `more` times more
/// than `since` (both as counted by [`passes`]).
async fn wait_for_passes(running: &Controller, since: (u64, u64), more: (u64, u64)) {
    wait_until(
        &format!("{more:?} more passes of the assignment and the guard"),
        Duration::from_secs(20),
        || {
            let (a, g) = passes(running);
            a >= since.0 + more.0 && g >= since.1 + more.1
        },
    )
    .await;
}

/// Reconciles so far of the assignment and of the guard.
fn passes(running: &Controller) -> (u64, u64) {
    (
        running.reconciled("AccessPackageAssignment"),
        running.reconciled("AccessPackageGuard"),
    )
}

fn settings(delta_interval: Duration) -> Settings {
    Settings {
        delta_interval,
        // Graph's processing delay as the simulator has it here: re-checks come quickly.
        poll_interval: Duration::from_secs(1),
        observation_max_age: Duration::from_millis(500),
        ..crate::controller_support::settings()
    }
}

async fn wait_until(what: &str, timeout: Duration, done: impl FnMut() -> bool) {
    crate::wait::until(what, timeout, done).await
}

fn status(kube: &FakeKube, plural: &str, name: &str) -> Value {
    kube.object(plural, NS, name)
        .map(|o| o["status"].clone())
        .unwrap_or(Value::Null)
}

fn condition(status: &Value, type_: &str) -> Value {
    status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_).cloned())
        .unwrap_or(Value::Null)
}

async fn demo() -> SimHandle {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Simulator::start(Scenario::demo(), SimOptions::fast())
        .await
        .unwrap()
}

#[tokio::test]
async fn an_assignment_covered_twice_is_reprocessed_once_per_cooldown_across_a_restart() {
    let sim = demo().await;
    // Accepted but without effect: alice stays drifted, so both objects keep wanting to
    // repair her for the whole test.
    sim.inject_fault(FaultSpec::SilentReprocess {
        assignment_ids: vec![],
        request_ids: vec![],
    });
    let id = sim
        .assignment_id("alice@contoso.com", "Finance Analysts")
        .unwrap()
        .to_ascii_lowercase();
    let kube = FakeKube::start(vec![alice(), guard()]).await.unwrap();
    let calls = || reprocess_calls_of(&sim, &id);

    let first = start(&kube, &sim, settings(Duration::ZERO)).await;
    wait_until(
        "both objects report the repair",
        Duration::from_secs(20),
        || {
            let a = status(&kube, APA, "alice-finance");
            let g = status(&kube, APG, "finance-analysts");
            a["reprocess"]["attempts"] == 1 && g["drifted"][0]["reprocessAttempts"] == 1
        },
    )
    .await;
    // More passes of both, each re-checking the drift it still sees: the assignment one
    // poll interval after the reprocess (then it waits for the cooldown), the guard 1 s and
    // 2 s after it (doubling). Neither sends again.
    wait_for_passes(&first, passes(&first), (1, 2)).await;
    assert_eq!(calls(), 1, "one reprocess, whichever object sent it");

    // The same story on both objects: the one that did not send names the one that did.
    let a = status(&kube, APA, "alice-finance");
    let g = status(&kube, APG, "finance-analysts");
    let by_apa = a["reprocess"]["lastRequestedBy"].as_str();
    let by_guard = g["drifted"][0]["reprocessedBy"].as_str();
    match (by_apa, by_guard) {
        (Some(by), None) => assert_eq!(by, "AccessPackageGuard access/finance-analysts"),
        (None, Some(by)) => assert_eq!(by, "AccessPackageAssignment access/alice-finance"),
        other => panic!("exactly one object sent it, the other names it: {other:?}"),
    }
    assert_eq!(
        a["reprocess"]["lastRequestedTime"],
        g["drifted"][0]["lastReprocessTime"]
    );
    assert_eq!(condition(&a, "Reconciling")["reason"], "Reprocessing");
    assert_eq!(condition(&g, "Reconciling")["reason"], "Reprocessing");

    // Restart (a failover looks the same): the new process rebuilds the ledger from the
    // objects' status before its first reconcile, and sends nothing within the cooldown.
    first.stop().await;
    let second = start(&kube, &sim, settings(Duration::ZERO)).await;
    // Its first pass of each object, planned against the rebuilt ledger, and the guard's
    // next re-check.
    wait_for_passes(&second, (0, 0), (1, 2)).await;
    assert_eq!(calls(), 1, "no second reprocess after the restart");
    second.stop().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn a_guard_is_ready_soon_after_its_repair_lands() {
    let sim = demo().await;
    let kube = FakeKube::start(vec![guard()]).await.unwrap();
    let running = start(&kube, &sim, settings(Duration::ZERO)).await;
    wait_until(
        "the guard reprocesses alice",
        Duration::from_secs(20),
        || !reprocess_calls(&sim, true).is_empty(),
    )
    .await;
    let repaired_at = Instant::now();
    wait_until("the guard is Ready", Duration::from_secs(20), || {
        condition(&status(&kube, APG, "finance-analysts"), "Ready")["status"] == "True"
    })
    .await;
    let settled = repaired_at.elapsed();
    // Reprocess delay (50 ms here) + the guard's first re-check (at least 1 s) + the
    // controller's debounce, with room for a loaded machine; the guard's interval is 15
    // minutes.
    assert!(
        settled < Duration::from_secs(8),
        "Ready {settled:?} after the repair"
    );
    let g = status(&kube, APG, "finance-analysts");
    assert_eq!(g["assignments"]["drifted"], 0, "{g}");
    assert!(condition(&g, "Reconciling").is_null(), "{g}");
    assert_eq!(reprocess_calls(&sim, true).values().sum::<usize>(), 1);
    running.stop().await;
    sim.shutdown().await;
}

/// Runs a controller until alice is verified delivered (her drift repaired), stops it,
/// and starts another one with `delta_interval`, returning once its start-up verification
/// has read alice's groups.
async fn delivered_then_restarted(
    sim: &SimHandle,
    kube: &FakeKube,
    delta_interval: Duration,
) -> Controller {
    let first = start(kube, sim, settings(Duration::ZERO)).await;
    wait_until("alice is delivered", Duration::from_secs(20), || {
        condition(&status(kube, APA, "alice-finance"), "Delivered")["status"] == "True"
    })
    .await;
    first.stop().await;
    sim.clear_request_log();
    let readers = format!(
        "/v1.0/groups/{}/members",
        sim.group_id("fin-readers").unwrap()
    );
    let second = start(kube, sim, settings(delta_interval)).await;
    wait_until(
        "the start-up verification read alice's groups",
        Duration::from_secs(20),
        || sim.count_requests("GET", &readers) > 0,
    )
    .await;
    wait_until(
        "the start-up verification is done",
        Duration::from_secs(20),
        || second.reconciled("AccessPackageAssignment") > 0,
    )
    .await;
    second
}

/// How long after `since` alice's status says a resource is missing.
async fn time_to_drift(kube: &FakeKube, since: Instant) -> Duration {
    wait_until("the drift is detected", Duration::from_secs(30), || {
        condition(&status(kube, APA, "alice-finance"), "Delivered")["reason"] == "ResourcesMissing"
    })
    .await;
    since.elapsed()
}

#[tokio::test]
async fn a_group_removal_right_after_a_restart_is_seen_within_one_delta_interval() {
    let sim = demo().await;
    let kube = FakeKube::start(vec![alice()]).await.unwrap();
    // Long enough for the start-up verification (a few reconciles, well under 100 ms here)
    // to be over before the first poll, so the removal below falls between the two.
    let interval = Duration::from_millis(500);
    let running = delivered_then_restarted(&sim, &kube, interval).await;
    // Between the start-up verification and the first delta poll: the change a baseline
    // taken after the verification would absorb.
    let removed = Instant::now();
    sim.remove_member("fin-readers", "alice@contoso.com")
        .unwrap();
    let took = time_to_drift(&kube, removed).await;
    // One interval, plus the controller's debounce and the reconcile itself, with room for
    // a loaded machine.
    assert!(
        took < interval + Duration::from_millis(2500),
        "detected after {took:?}"
    );
    running.stop().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn an_app_role_removal_is_seen_within_one_delta_interval() {
    let sim = demo().await;
    let kube = FakeKube::start(vec![alice()]).await.unwrap();
    let interval = Duration::from_millis(500);
    let running = delivered_then_restarted(&sim, &kube, interval).await;
    let removed = Instant::now();
    assert_eq!(
        sim.remove_app_role("Payroll", "alice@contoso.com", Some("Payroll.Read"))
            .unwrap(),
        1
    );
    let took = time_to_drift(&kube, removed).await;
    assert!(
        took < interval + Duration::from_millis(2500),
        "detected after {took:?}"
    );
    let a = status(&kube, APA, "alice-finance");
    let payroll = a["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["originSystem"] == "AadApplication")
        .cloned()
        .unwrap();
    assert_eq!(payroll["state"], "Missing", "{a}");
    assert!(payroll["roleId"].is_string(), "{payroll}");
    running.stop().await;
    sim.shutdown().await;
}
