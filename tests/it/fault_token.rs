//! Token endpoint faults: down briefly or for good, a wrong secret, a token that expires in
//! the middle of a sweep, a federated token file that is rotated. Recover when possible;
//! otherwise a clear error that names what to check and never the secret.

use std::time::Duration;

use crate::fault_support::*;
use redeliver::graph::{GraphClient, GraphSettings};
use redeliver::observe::Observer;
use redeliver_sim::{Scenario, Simulator};
use serde_json::json;

fn token_requests(sim: &redeliver_sim::SimHandle) -> usize {
    sim.request_log()
        .iter()
        .filter(|e| e.path.contains("/oauth2/v2.0/token"))
        .count()
}

#[tokio::test]
async fn token_endpoint_down_briefly_is_ridden_out() {
    let sim = Simulator::start(Scenario::demo(), fast()).await.unwrap();
    let dir = declarations(&declaration(
        "alice-finance",
        "Finance Analysts",
        "alice@contoso.com",
        "",
    ));
    sim.clear_request_log();
    sim.inject_fault(fault(json!({
        "kind": "error", "status": 503, "count": 2, "pathPrefix": "/oauth2"
    })));
    let out = audit(
        &sim,
        dir.path(),
        &[
            "--reprocess",
            "--wait",
            "20s",
            "--poll-interval",
            crate::fault_support::POLL_INTERVAL,
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(sim.is_member("fin-writers", "alice@contoso.com"));
    assert_eq!(token_requests(&sim), 3, "two refusals, then one token");
    sim.shutdown().await;
}

#[tokio::test]
async fn token_endpoint_down_for_good_is_a_clear_error_and_changes_nothing() {
    let sim = Simulator::start(Scenario::demo(), fast()).await.unwrap();
    let dir = declarations(&declaration(
        "alice-finance",
        "Finance Analysts",
        "alice@contoso.com",
        "",
    ));
    sim.inject_fault(fault(json!({
        "kind": "error", "status": 503, "durationMs": 60000, "pathPrefix": "/oauth2"
    })));
    sim.clear_request_log();
    let mut cmd = audit_command(&sim, dir.path(), &["--reprocess", "-o", "json"]);
    cmd.env("REDELIVER_GRAPH_MAX_RETRIES", "2");
    let out = run(cmd).await;
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(
        all.contains("token"),
        "the error names the token endpoint: {all}"
    );
    assert!(!all.contains("Delivered\""), "{all}");
    assert_eq!(
        graph_requests(&sim)
            .iter()
            .filter(|e| e.path.starts_with("/v1.0/"))
            .count(),
        0,
        "no Graph call without a token"
    );
    assert!(!sim.is_member("fin-writers", "alice@contoso.com"));
    sim.shutdown().await;
}

#[tokio::test]
async fn wrong_secret_says_what_to_check_and_never_prints_the_secret() {
    let sim = Simulator::start(Scenario::demo(), fast()).await.unwrap();
    let dir = declarations(&declaration(
        "alice-finance",
        "Finance Analysts",
        "alice@contoso.com",
        "",
    ));
    let wrong = "wr0ng-s3cret-value-that-must-not-leak";
    let mut cmd = audit_command(&sim, dir.path(), &["--reprocess"]);
    cmd.env("AZURE_CLIENT_SECRET", wrong)
        .env("REDELIVER_LOG", "trace");
    let out = run(cmd).await;
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(all.contains("invalid_client"), "{all}");
    assert!(all.contains("7000215"), "the AADSTS code is kept: {all}");
    assert!(!all.contains(wrong), "the secret leaked:\n{all}");
    assert!(!sim.is_member("fin-writers", "alice@contoso.com"));
    assert_eq!(sim.count_requests("POST", "/v1.0/identityGovernance"), 0);
    sim.shutdown().await;
}

/// One verification sweep of Finance Analysts (package, assignments, every group).
async fn sweep(observer: &Observer, package: &str) -> usize {
    observer.refresh().await;
    let view = observer.package_view(package).await.expect("package read");
    let snapshot = observer.snapshot(view.resources.iter()).await;
    assert!(
        snapshot.failures.is_empty(),
        "every read succeeded: {:?}",
        snapshot.failures
    );
    snapshot.group_members.len()
}

#[tokio::test]
async fn token_expiring_mid_sweep_is_refreshed_once_and_the_sweep_completes() {
    let sim = Simulator::start(Scenario::demo(), fast()).await.unwrap();
    let observer = Observer::new(client_with(&sim, |_| {}), 4);
    let package = sim.package_id("Finance Analysts").unwrap();
    sim.clear_request_log();
    assert_eq!(sweep(&observer, &package).await, 2);
    assert_eq!(token_requests(&sim), 1);
    // The simulator's clock jumps past the token's lifetime: the client still believes
    // its cached token is good, Graph says 401.
    sim.advance_clock(Duration::from_secs(2 * 3600));
    assert_eq!(sweep(&observer, &package).await, 2);
    assert_eq!(token_requests(&sim), 2, "one refresh, not one per call");
    let unauthorized = graph_requests(&sim)
        .iter()
        .filter(|e| e.status == 401)
        .count();
    assert!(
        (1..=4).contains(&unauthorized),
        "only calls in flight when the token died were refused: {unauthorized}"
    );
    sim.shutdown().await;
}

fn federated_client(sim: &redeliver_sim::SimHandle, file: &std::path::Path) -> GraphClient {
    let args = GraphSettings {
        tenant_id: Some(sim.tenant_id.clone()),
        client_id: Some(sim.client_id.clone()),
        federated_token_file: Some(file.to_path_buf()),
        authority_host: sim.authority_host.clone(),
        graph_url: sim.graph_url.clone(),
        ..GraphSettings::with_defaults()
    };
    GraphClient::new(args.validate().expect("valid config")).expect("client builds")
}

#[tokio::test]
async fn rotated_federated_token_file_is_picked_up_without_a_restart() {
    let mut scenario = Scenario::demo();
    scenario.spec.client.assertion = Some("projected-sa-token-v2".into());
    let sim = Simulator::start(scenario, fast()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("azure-identity-token");
    // The kubelet has not rotated yet: the file holds a token Entra no longer accepts.
    std::fs::write(&file, "projected-sa-token-v1\n").unwrap();
    let client = federated_client(&sim, &file);
    let err = client
        .get_user("alice@contoso.com")
        .await
        .expect_err("a stale assertion is refused");
    let text = err.to_string();
    assert!(text.contains("token request refused"), "{text}");
    assert!(!text.contains("projected-sa-token"), "{text}");

    // Rotation: the same client, no restart, reads the new file on its next token request.
    std::fs::write(&file, "projected-sa-token-v2\n").unwrap();
    let alice = client.get_user("alice@contoso.com").await.unwrap();
    assert_eq!(
        alice.map(|u| u.id),
        sim.user_id("alice@contoso.com"),
        "recovered"
    );

    // A rotation to something bad does not matter while the token is valid, and is
    // reported clearly once it must be used.
    std::fs::write(&file, "garbage").unwrap();
    assert!(client.get_user("bob@contoso.com").await.unwrap().is_some());
    sim.advance_clock(Duration::from_secs(2 * 3600));
    let err = client.get_user("bob@contoso.com").await.unwrap_err();
    assert!(err.to_string().contains("token request refused"), "{err}");
    std::fs::write(&file, "projected-sa-token-v2").unwrap();
    assert!(client.get_user("bob@contoso.com").await.unwrap().is_some());
    sim.shutdown().await;
}
