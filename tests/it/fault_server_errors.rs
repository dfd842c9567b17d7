//! Server errors, slow responses, dropped connections and garbage bodies between
//! `redeliver audit` and Graph: each is retried or surfaces as a clear error; none panics;
//! none ever yields a `Delivered` verdict that Graph's real state does not support.

use std::time::Duration;

use crate::fault_support::*;
use redeliver_sim::{Scenario, Simulator};
use serde_json::json;

fn alice_and_bob() -> String {
    declaration("alice-finance", "Finance Analysts", "alice@contoso.com", "")
        + &declaration("bob-finance", "Finance Analysts", "bob@contoso.com", "")
}

const REPAIR: [&str; 7] = [
    "--reprocess",
    "--wait",
    "30s",
    "--poll-interval",
    crate::fault_support::POLL_INTERVAL,
    "-o",
    "json",
];

#[tokio::test]
async fn bursts_of_503_and_504_are_retried_and_the_drift_is_repaired_once() {
    let sim = Simulator::start(Scenario::demo(), fast()).await.unwrap();
    let dir = declarations(&alice_and_bob());
    let alice = sim
        .assignment_id("alice@contoso.com", "Finance Analysts")
        .unwrap();
    sim.clear_request_log();
    sim.inject_fault(fault(json!({"kind": "error", "status": 503, "count": 3})));
    sim.inject_fault(fault(json!({
        "kind": "error", "status": 504, "count": 2, "pathPrefix": "/v1.0/groups"
    })));
    // A 503 with Retry-After on the reprocess itself: the service declined it, so even
    // the write is retried.
    sim.inject_fault(fault(json!({
        "kind": "error", "status": 503, "retryAfter": 0.2, "count": 1,
        "pathPrefix": "/identityGovernance", "method": "POST"
    })));
    let out = audit(&sim, dir.path(), &REPAIR).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.rows().iter().all(|r| r["verdict"] == "Delivered"));
    assert!(sim.is_member("fin-writers", "alice@contoso.com"));
    let errors = graph_requests(&sim)
        .iter()
        .filter(|e| e.status >= 500)
        .count();
    assert_eq!(errors, 6, "all injected errors were met and ridden out");
    let accepted = reprocess_calls(&sim, true);
    assert_eq!(accepted.get(&alice), Some(&1), "{accepted:?}");
    assert_eq!(accepted.len(), 1, "bob was never reprocessed");
    sim.shutdown().await;
}

#[tokio::test]
async fn persistent_500_on_membership_reads_reports_unknown_and_repairs_nothing() {
    let sim = Simulator::start(Scenario::demo(), fast()).await.unwrap();
    let dir = declarations(&alice_and_bob());
    sim.inject_fault(fault(json!({
        "kind": "error", "status": 500, "durationMs": 60000, "pathPrefix": "/v1.0/groups"
    })));
    sim.clear_request_log();
    let out = audit(&sim, dir.path(), &REPAIR).await;
    assert_eq!(out.code, 1, "{}", out.stdout);
    for row in out.rows() {
        assert_eq!(row["verdict"], "Unknown", "{row}");
        let message = row["message"].as_str().unwrap_or_default();
        assert!(message.contains("Graph call failed"), "{message}");
    }
    // Never repair blind: without the membership there is no evidence of drift.
    assert_eq!(sim.count_requests("POST", "/v1.0/identityGovernance"), 0);
    assert!(!sim.is_member("fin-writers", "alice@contoso.com"));
    sim.shutdown().await;
}

#[tokio::test]
async fn responses_slower_than_the_timeout_are_retried_then_succeed() {
    let sim = Simulator::start(Scenario::demo(), fast()).await.unwrap();
    let dir = declarations(&declaration(
        "bob-finance",
        "Finance Analysts",
        "bob@contoso.com",
        "",
    ));
    let slow = sim.inject_fault(fault(json!({
        "kind": "latency", "millis": 2500, "count": 2, "pathPrefix": "/v1.0/groups"
    })));
    sim.clear_request_log();
    let mut cmd = audit_command(&sim, dir.path(), &["-o", "json"]);
    cmd.env("REDELIVER_GRAPH_TIMEOUT", "800ms");
    let started = std::time::Instant::now();
    let out = run(cmd).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(out.rows()[0]["verdict"], "Delivered");
    // Both slow answers were met (and abandoned: the simulator logs only answers it
    // delivered), then each read succeeded on its retry.
    assert!(!sim.remove_fault(slow), "both slow answers were consumed");
    assert_eq!(sim.count_requests("GET", "/v1.0/groups/"), 2);
    // The two reads run side by side: the run waited out at least one full timeout.
    assert!(started.elapsed() >= Duration::from_millis(800));
    sim.shutdown().await;
}

#[tokio::test]
async fn graph_slower_than_the_timeout_for_good_is_a_clear_timeout_error() {
    let sim = Simulator::start(Scenario::demo(), fast()).await.unwrap();
    let dir = declarations(&alice_and_bob());
    sim.inject_fault(fault(json!({
        "kind": "latency", "millis": 1000, "durationMs": 60000, "pathPrefix": "/v1.0/groups"
    })));
    let mut cmd = audit_command(&sim, dir.path(), &REPAIR);
    cmd.env("REDELIVER_GRAPH_TIMEOUT", "250ms")
        .env("REDELIVER_GRAPH_MAX_RETRIES", "1");
    let started = std::time::Instant::now();
    let out = run(cmd).await;
    assert_eq!(out.code, 1, "{}", out.stdout);
    for row in out.rows() {
        assert_eq!(row["verdict"], "Unknown", "{row}");
        assert!(
            row["message"]
                .as_str()
                .unwrap_or_default()
                .contains("transport"),
            "{row}"
        );
    }
    assert_eq!(sim.count_requests("POST", "/v1.0/identityGovernance"), 0);
    assert!(started.elapsed() < Duration::from_secs(30));
    sim.shutdown().await;
}

/// The audit process pointed at `proxy` instead of the simulator.
fn via_proxy(
    sim: &redeliver_sim::SimHandle,
    proxy: &Proxy,
    dir: &std::path::Path,
    extra: &[&str],
) -> tokio::process::Command {
    let mut cmd = audit_command(sim, dir, extra);
    cmd.env("AZURE_AUTHORITY_HOST", &proxy.url)
        .env("REDELIVER_GRAPH_URL", &proxy.url);
    cmd
}

#[tokio::test]
async fn the_proxy_is_transparent_when_it_spoils_nothing() {
    let sim = Simulator::start(Scenario::demo(), fast()).await.unwrap();
    let proxy = Proxy::start(&sim.graph_url).await;
    let dir = declarations(&alice_and_bob());
    let out = run(via_proxy(&sim, &proxy, dir.path(), &REPAIR)).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(sim.is_member("fin-writers", "alice@contoso.com"));
    assert_eq!(proxy.spoiled(), 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn html_instead_of_json_is_a_decode_error_never_delivered() {
    let sim = Simulator::start(Scenario::demo(), fast()).await.unwrap();
    let proxy = Proxy::start(&sim.graph_url).await;
    proxy.spoil("/v1.0/groups/", Spoil::NonJson, usize::MAX);
    let dir = declarations(&alice_and_bob());
    let out = run(via_proxy(&sim, &proxy, dir.path(), &REPAIR)).await;
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    for row in out.rows() {
        assert_eq!(row["verdict"], "Unknown", "{row}");
        assert!(
            row["message"]
                .as_str()
                .unwrap_or_default()
                .contains("decode"),
            "{row}"
        );
    }
    assert!(proxy.spoiled() >= 2);
    assert_eq!(sim.count_requests("POST", "/v1.0/identityGovernance"), 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn truncated_json_is_a_decode_error_never_delivered() {
    let sim = Simulator::start(Scenario::demo(), fast()).await.unwrap();
    let proxy = Proxy::start(&sim.graph_url).await;
    // Only the package's assignments listing is cut short: without it nobody's
    // assignment state is known.
    proxy.spoil("/assignments?", Spoil::TruncatedJson, usize::MAX);
    let dir = declarations(&alice_and_bob());
    let out = run(via_proxy(&sim, &proxy, dir.path(), &REPAIR)).await;
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    for row in out.rows() {
        assert_ne!(row["verdict"], "Delivered", "{row}");
        assert_eq!(row["verdict"], "Error", "{row}");
    }
    assert!(proxy.spoiled() >= 1);
    assert_eq!(sim.count_requests("POST", "/v1.0/identityGovernance"), 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn connection_dropped_mid_body_is_retried_and_the_run_completes() {
    let sim = Simulator::start(Scenario::demo(), fast()).await.unwrap();
    let proxy = Proxy::start(&sim.graph_url).await;
    proxy.spoil("/v1.0/groups/", Spoil::DroppedMidBody, 2);
    proxy.spoil("/assignments?", Spoil::DroppedMidBody, 1);
    let dir = declarations(&alice_and_bob());
    let out = run(via_proxy(&sim, &proxy, dir.path(), &REPAIR)).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(proxy.spoiled(), 3);
    assert!(sim.is_member("fin-writers", "alice@contoso.com"));
    let alice = sim
        .assignment_id("alice@contoso.com", "Finance Analysts")
        .unwrap();
    assert_eq!(reprocess_calls(&sim, true).get(&alice), Some(&1));
    sim.shutdown().await;
}

#[tokio::test]
async fn create_whose_answer_is_lost_is_not_resent_and_the_rerun_finds_it() {
    // carol has no assignment: the audit must request one (adminAdd), which it sends in a
    // `$batch`. Graph accepts the request, but the batch's answer is lost mid-body: the one
    // write that must never be repeated blindly, neither in a new batch nor on its own.
    let sim = Simulator::start(Scenario::demo(), fast()).await.unwrap();
    let proxy = Proxy::start(&sim.graph_url).await;
    proxy.spoil_method("POST", "/v1.0/$batch", Spoil::DroppedMidBody, 1);
    let dir = declarations(&declaration(
        "carol-finance",
        "Finance Analysts",
        "carol@contoso.com",
        "",
    ));
    let creates = |sim: &redeliver_sim::SimHandle| {
        sim.request_log()
            .iter()
            .filter(|e| {
                e.method == "POST"
                    && e.path == "/v1.0/identityGovernance/entitlementManagement/assignmentRequests"
            })
            .count()
    };
    let out = run(via_proxy(&sim, &proxy, dir.path(), &REPAIR)).await;
    assert_eq!(proxy.spoiled(), 1);
    assert_eq!(
        creates(&sim),
        1,
        "the create was not resent after the lost answer"
    );
    let row = &out.rows()[0];
    eprintln!(
        "lost create answer: first run exit {}, verdict {}, action {}",
        out.code, row["verdict"], row["action"]
    );
    assert_ne!(row["verdict"], "Delivered", "{}", out.stdout);
    // Whatever the first run concluded, a rerun sees the request Graph did accept and
    // waits for it instead of asking again.
    let out = run(via_proxy(&sim, &proxy, dir.path(), &REPAIR)).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(out.rows()[0]["verdict"], "Delivered");
    assert_eq!(creates(&sim), 1, "exactly one adminAdd across both runs");
    assert!(sim.is_member("fin-writers", "carol@contoso.com"));
    sim.shutdown().await;
}

/// A response body without end (a wrong `--graph-url`, a hostile endpoint) is cut off at
/// the client's bound and reported as a decode error, not read into memory whole.
#[tokio::test]
async fn an_endless_body_is_cut_off_at_the_bound() {
    let sim = Simulator::start(Scenario::demo(), fast()).await.unwrap();
    let proxy = Proxy::start(&sim.graph_url).await;
    proxy.spoil("/v1.0/groups/", Spoil::Endless, usize::MAX);
    let graph = client_with(&sim, |a| {
        a.graph_url = proxy.url.clone();
        a.authority_host = proxy.url.clone();
    });
    let group = sim.group_id("fin-readers").unwrap();
    let err = graph.list_group_members(&group).await.unwrap_err();
    assert_eq!(err.kind(), "decode", "{err}");
    assert!(err.to_string().contains("larger than 64 MiB"), "{err}");
    assert_eq!(
        proxy.spoiled(),
        1,
        "not retried: the answer would be the same"
    );
    sim.shutdown().await;
}
