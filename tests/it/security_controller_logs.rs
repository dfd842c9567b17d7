//! Secret hygiene on the controller path: the assignment and guard reconcilers run
//! in-process against the simulator (Graph) and an auto-answering Kubernetes API, under a
//! trace-level subscriber that also sees kube, the HTTP stack and the simulator. No client
//! secret, federated assertion or issued access token may appear in what it captured, nor
//! in the status patches and events written to Kubernetes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::fault_support::Capture;
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use redeliver::api::{AccessPackageAssignment, AccessPackageGuard};
use redeliver::controller::metrics::Metrics;
use redeliver::controller::{Context, assignment, guard};
use redeliver::graph::{GraphClient, GraphSettings};
use redeliver_sim::{Scenario, SimOptions, Simulator};
use serde_json::{Value, json};

const ASSERTION: &str = "eyJhbGciOiJSUzI1NiJ9.controller-sa-token-KNOWN-VALUE.c2ln";

fn respond(v: &Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(v).unwrap()))
        .unwrap()
}

type Objects = Arc<Mutex<std::collections::HashMap<String, Value>>>;

/// Answers every Kubernetes request: a status apply-patch echoes the stored object with
/// that status, anything else echoes its body. Everything written is kept for inspection.
fn auto_api(
    mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
    objects: Objects,
    written: Arc<Mutex<Vec<String>>>,
) {
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let method = req.method().clone();
            let path = req.uri().path().to_string();
            let bytes = req.into_body().collect_bytes().await.unwrap_or_default();
            written
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(&bytes).into_owned());
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(json!({}));
            let segments: Vec<&str> = path.split('/').collect();
            let answer = match (method.clone(), segments.as_slice()) {
                (Method::PATCH, [.., name, "status"]) => {
                    let mut obj = objects
                        .lock()
                        .unwrap()
                        .get(*name)
                        .cloned()
                        .unwrap_or(json!({}));
                    obj["status"] = body["status"].clone();
                    obj
                }
                (Method::PATCH, [.., name]) => {
                    objects.lock().unwrap().get(*name).cloned().unwrap_or(body)
                }
                (Method::POST, _) => body,
                _ => json!({}),
            };
            send.send_response(respond(&answer));
        }
    });
}

#[test]
fn controller_reconcilers_under_a_trace_subscriber_log_no_secret_or_token() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(capture.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut scenario = Scenario::demo();
        scenario.spec.client.assertion = Some(ASSERTION.into());
        let sim = Simulator::start(
            scenario,
            SimOptions {
                token_lifetime: Duration::from_secs(1),
                ..SimOptions::fast()
            },
        )
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, ASSERTION).unwrap();
        let written = Arc::new(Mutex::new(Vec::new()));
        // One controller on the client secret, one on workload identity.
        for federated in [false, true] {
            let mut args = GraphSettings {
                tenant_id: Some(sim.tenant_id.clone()),
                client_id: Some(sim.client_id.clone()),
                authority_host: sim.authority_host.clone(),
                graph_url: sim.graph_url.clone(),
                ..GraphSettings::with_defaults()
            };
            if federated {
                args.federated_token_file = Some(file.clone());
            } else {
                args.client_secret = Some(redeliver::graph::Secret::new(sim.client_secret.clone()));
            }
            let graph = GraphClient::new(args.validate().unwrap()).unwrap();
            let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
            let objects: Objects = Arc::default();
            auto_api(handle, objects.clone(), written.clone());
            let client = kube::Client::new(service, "access");
            let (metrics, _registry) = Metrics::new(Some(graph.clone()));
            let ctx = Arc::new(Context::new(
                client,
                graph,
                metrics,
                &crate::controller_support::settings(),
            ));
            for (name, upn) in [
                ("alice-finance", "alice@contoso.com"),
                ("bob-finance", "bob@contoso.com"),
                ("carol-finance", "carol@contoso.com"),
            ] {
                let value = json!({
                    "apiVersion": "redeliver.dev/v1alpha1",
                    "kind": "AccessPackageAssignment",
                    "metadata": {"name": name, "namespace": "access", "uid": format!("uid-{name}"),
                                 "generation": 1, "resourceVersion": "1"},
                    "spec": {"accessPackage": {"displayName": "Finance Analysts"},
                             "target": {"userPrincipalName": upn}},
                });
                objects
                    .lock()
                    .unwrap()
                    .insert(name.to_string(), value.clone());
                let obj: AccessPackageAssignment = serde_json::from_value(value).unwrap();
                let result = assignment::reconcile(Arc::new(obj), ctx.clone()).await;
                assert!(result.is_ok(), "{name}: {result:?}");
            }
            let value = json!({
                "apiVersion": "redeliver.dev/v1alpha1",
                "kind": "AccessPackageGuard",
                "metadata": {"name": "finance", "namespace": "access", "uid": "uid-guard",
                             "generation": 1, "resourceVersion": "1"},
                "spec": {"accessPackage": {"displayName": "Finance Analysts"}, "mode": "Enforce"},
            });
            objects
                .lock()
                .unwrap()
                .insert("finance".into(), value.clone());
            let g: AccessPackageGuard = serde_json::from_value(value).unwrap();
            let result = guard::reconcile(Arc::new(g), ctx.clone()).await;
            assert!(result.is_ok(), "guard reconcile: {result:?}");
            // Let tokens expire so the next client's run and any refresh are exercised too:
            // on the simulator's clock and on the clients' token caches' (tokio's), without
            // waiting for it.
            sim.advance_clock(Duration::from_millis(1100));
            crate::clock::skip(Duration::from_millis(1100)).await;
        }
        let text = capture.text();
        let written = written.lock().unwrap().join("\n");
        assert!(
            text.contains("graph http exchange"),
            "the Graph client logged under the subscriber"
        );
        assert!(
            written.contains("\"status\""),
            "the reconcilers wrote status to Kubernetes: {written}"
        );
        assert!(
            sim.count_requests("POST", "/v1.0/identityGovernance") >= 2,
            "the reconcilers wrote to Graph (reprocess for alice, adminAdd for carol)"
        );
        let tokens = sim.issued_tokens();
        assert!(tokens.len() >= 2, "both controllers obtained tokens");
        for haystack in [&text, &written] {
            assert!(
                !haystack.contains(&sim.client_secret),
                "client secret leaked"
            );
            assert!(!haystack.contains(ASSERTION), "federated assertion leaked");
            assert!(!haystack.contains("controller-sa-token-KNOWN-VALUE"));
            for token in &tokens {
                assert!(!haystack.contains(token.as_str()), "an access token leaked");
                assert!(!haystack.contains(&token[..16]), "a token prefix leaked");
            }
        }
        sim.shutdown().await;
    });
}

/// The same for connections: a `GraphConnection` whose Secret holds the right client secret
/// and one whose Secret holds a wrong one (so the refusal is logged and reported), under a
/// trace-level subscriber. Neither value, nor its base64 form as the API server serves it,
/// appears in the logs or in what was written to Kubernetes.
#[test]
fn connection_secrets_never_reach_logs_status_or_events() {
    use redeliver_fake_kube::FakeKube;
    const WRONG: &str = "wrong-secret-KNOWN-VALUE-7c1f";
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(capture.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let sim = Simulator::start(Scenario::demo(), SimOptions::fast())
            .await
            .unwrap();
        let secret = |ns: &str, value: &str| {
            let s = k8s_openapi::api::core::v1::Secret {
                metadata: kube::api::ObjectMeta {
                    name: Some("graph".into()),
                    namespace: Some(ns.into()),
                    ..Default::default()
                },
                data: Some(
                    [(
                        "clientSecret".to_string(),
                        k8s_openapi::ByteString(value.as_bytes().to_vec()),
                    )]
                    .into(),
                ),
                ..Default::default()
            };
            let mut v = serde_json::to_value(s).unwrap();
            v["apiVersion"] = json!("v1");
            v["kind"] = json!("Secret");
            v
        };
        let connection = |ns: &str| {
            json!({
                "apiVersion": "redeliver.dev/v1alpha1", "kind": "GraphConnection",
                "metadata": {"name": "default", "namespace": ns},
                "spec": {"tenantId": sim.tenant_id, "clientId": sim.client_id,
                         "credential": {"clientSecret": {"name": "graph"}},
                         "authorityHost": sim.authority_host, "graphUrl": sim.graph_url}
            })
        };
        let apa = |ns: &str| {
            json!({
                "apiVersion": "redeliver.dev/v1alpha1", "kind": "AccessPackageAssignment",
                "metadata": {"name": "alice", "namespace": ns},
                "spec": {"accessPackage": {"displayName": "Finance Analysts"},
                         "target": {"userPrincipalName": "alice@contoso.com"}}
            })
        };
        let kube = FakeKube::start(vec![
            secret("good", &sim.client_secret),
            connection("good"),
            apa("good"),
            secret("bad", WRONG),
            connection("bad"),
            apa("bad"),
        ])
        .await
        .unwrap();
        let client =
            kube::Client::try_from(kube::Config::new(kube.url().parse().unwrap())).unwrap();
        let (metrics, _registry) = Metrics::new(None);
        let ctx = Arc::new(Context::with_operator_connection(
            client,
            None,
            metrics,
            &crate::controller_support::settings(),
        ));
        let stop = tokio_util::sync::CancellationToken::new();
        let run = tokio::spawn(redeliver::controller::run_controllers(
            ctx,
            Vec::new(),
            2,
            redeliver::controller::server::Readiness::default(),
            stop.clone(),
        ));
        let delivered = |ns: &str| {
            kube.object("accesspackageassignments", ns, "alice")
                .and_then(|o| o["status"]["conditions"].as_array().cloned())
                .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Delivered"))
        };
        let stalled = || {
            kube.object("graphconnections", "bad", "default")
                .is_some_and(|o| o["status"]["errorCode"].is_string())
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !(delivered("good") && stalled()) {
            assert!(
                std::time::Instant::now() < deadline,
                "the connections were not both checked"
            );
            tokio::time::sleep(crate::wait::PACE).await;
        }
        stop.cancel();
        let _ = run.await;
        let text = capture.text();
        assert!(
            text.contains("connection stalled"),
            "the refusal was logged"
        );
        assert!(
            text.contains("/api/v1/namespaces/good/secrets/graph"),
            "the Secret reads went through the traced Kubernetes client"
        );
        let stored: String = ["good", "bad"]
            .iter()
            .flat_map(|ns| {
                [
                    kube.object("accesspackageassignments", ns, "alice"),
                    kube.object("graphconnections", ns, "default"),
                ]
            })
            .flatten()
            .map(|o| o["status"].to_string())
            .collect();
        let b64 = |s: &str| {
            serde_json::to_value(k8s_openapi::ByteString(s.as_bytes().to_vec()))
                .unwrap()
                .as_str()
                .unwrap()
                .to_string()
        };
        for value in [sim.client_secret.as_str(), WRONG] {
            for haystack in [&text, &stored] {
                assert!(!haystack.contains(value), "a connection secret leaked");
                assert!(
                    !haystack.contains(&b64(value)),
                    "a connection secret leaked (base64)"
                );
            }
        }
        for token in sim.issued_tokens() {
            assert!(!text.contains(token.as_str()), "an access token leaked");
        }
        sim.shutdown().await;
    });
}
