//! The health and metrics endpoint over real HTTP on a random loopback port.

use std::sync::Arc;

use redeliver::controller::metrics::Metrics;
use redeliver::controller::server::{Readiness, router};

#[tokio::test]
async fn livez_readyz_and_openmetrics() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (metrics, registry) = Metrics::new(None);
    metrics.is_leader.set(1);
    metrics.reprocess(
        "AccessPackageAssignment",
        redeliver::controller::metrics::ReprocessCall::Requested,
    );
    let ready = Readiness::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(Arc::new(registry), ready.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let http = reqwest::Client::new();
    let get = |path: &str| http.get(format!("http://{addr}{path}")).send();

    let live = get("/livez").await.unwrap();
    assert_eq!(live.status(), 200);

    let not_ready = get("/readyz").await.unwrap();
    assert_eq!(not_ready.status(), 503, "not ready before the caches sync");
    ready.set(true);
    assert_eq!(get("/readyz").await.unwrap().status(), 200);

    let m = get("/metrics").await.unwrap();
    assert_eq!(m.status(), 200);
    let content_type = m.headers()["content-type"].to_str().unwrap().to_string();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let body = m.text().await.unwrap();
    assert!(body.contains("redeliver_is_leader 1"), "{body}");
    assert!(body.contains(
        "redeliver_reprocess_calls_total{kind=\"AccessPackageAssignment\",outcome=\"requested\"} 1"
    ));
    assert!(body.trim_end().ends_with("# EOF"));
    server.abort();
}

#[tokio::test]
async fn graph_calls_are_counted_by_operation_and_status_code() {
    use redeliver_sim::{Scenario, SimOptions, Simulator};

    let sim = Simulator::start(Scenario::demo(), SimOptions::fast())
        .await
        .unwrap();
    let graph = crate::fault_support::graph_client(&sim).unwrap();
    assert!(graph.get_user("alice@contoso.com").await.unwrap().is_some());
    assert!(
        graph
            .get_user("nobody@contoso.com")
            .await
            .unwrap()
            .is_none()
    );

    let (_metrics, registry) = Metrics::new(Some(graph));
    let body = redeliver::controller::metrics::render(&registry).unwrap();
    for line in [
        "redeliver_graph_responses_total{operation=\"get_user\",code=\"200\"} 1",
        "redeliver_graph_responses_total{operation=\"get_user\",code=\"404\"} 1",
        "redeliver_graph_requests_total{operation=\"get_user\"} 2",
    ] {
        assert!(body.contains(line), "missing {line} in\n{body}");
    }
    sim.shutdown().await;
}

/// A metrics address that cannot be bound stops `redeliver controller` at once, naming the
/// flag, before it connects to anything (it was only noticed at shutdown).
#[tokio::test]
async fn a_metrics_address_in_use_fails_at_start_naming_the_flag() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_redeliver"))
            .args(["controller", "--metrics-addr", &addr.to_string()])
            // Nothing else is reachable: the bind must fail before any of it matters.
            .env("KUBECONFIG", "/nonexistent/kubeconfig")
            .env("AZURE_TENANT_ID", "8c3f7a52-1d2b-4e6a-9f00-c0250a0d1e01")
            .env("AZURE_CLIENT_ID", "5e1d0c77-3f5a-4b8e-a0c1-7ed1e0e00001")
            .env("AZURE_CLIENT_SECRET", "unused")
            .output(),
    )
    .await
    .expect("exits at once")
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot serve metrics and health on {addr}"))
            && stderr.contains("--metrics-addr"),
        "{stderr}"
    );
    drop(taken);
}
