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
use redeliver::controller::{Context, Settings, assignment, guard};
use redeliver::graph::{GraphArgs, GraphClient};
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
            let mut args = GraphArgs {
                tenant_id: Some(sim.tenant_id.clone()),
                client_id: Some(sim.client_id.clone()),
                authority_host: sim.authority_host.clone(),
                graph_url: sim.graph_url.clone(),
                ..GraphArgs::with_defaults()
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
            let ctx = Arc::new(Context::new(client, graph, metrics, &Settings::default()));
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
            // Let tokens expire so the next client's run and any refresh are exercised too.
            tokio::time::sleep(Duration::from_millis(1100)).await;
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
