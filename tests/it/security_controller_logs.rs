//! Secret hygiene on the controller path: the assignment and guard reconcilers run
//! in-process against the simulator (Graph) and an auto-answering Kubernetes API, under a
//! trace-level subscriber that also sees kube, the HTTP stack and the simulator. No client
//! secret, federated assertion or issued access token may appear in what it captured, nor
//! in the status patches and events written to Kubernetes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::controller_support::{Controller, context, graph_connection, kube_client, secret};
use crate::fault_support::{minimal_client, under_trace_capture};
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use redeliver::api::{AccessPackageAssignment, AccessPackageGuard};
use redeliver::controller::{assignment, guard};
use redeliver::graph::GraphClient;
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
    under_trace_capture(|capture| async move {
        let (sim, _dir, file) = crate::fault_support::federated_demo(ASSERTION).await;
        let written = Arc::new(Mutex::new(Vec::new()));
        // One controller on the client secret, one on workload identity.
        for federated in [false, true] {
            let graph = minimal_client(&sim, federated.then_some(file.as_path()));
            // Boxed: inline, a debug build's reconcile futures overflow the test thread's
            // stack one call deeper.
            Box::pin(reconcile_the_demo_declarations(graph, written.clone())).await;
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

/// Runs the assignment reconciler over alice's, bob's and carol's Finance declarations and
/// the guard reconciler over the package's guard, through `graph` and an auto-answering API
/// server that appends what it is sent to `written`. Every reconcile ends well.
async fn reconcile_the_demo_declarations(graph: GraphClient, written: Arc<Mutex<Vec<String>>>) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let objects: Objects = Arc::default();
    auto_api(handle, objects.clone(), written);
    let client = kube::Client::new(service, "access");
    let ctx = context(client, Some(graph), &crate::controller_support::settings());
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
}

/// The same for connections: a `GraphConnection` whose Secret holds the right client secret
/// and one whose Secret holds a wrong one (so the refusal is logged and reported), under a
/// trace-level subscriber. Neither value, nor its base64 form as the API server serves it,
/// appears in the logs or in what was written to Kubernetes.
#[test]
fn connection_secrets_never_reach_logs_status_or_events() {
    use redeliver_fake_kube::FakeKube;
    const WRONG: &str = "wrong-secret-KNOWN-VALUE-7c1f";
    under_trace_capture(|capture| async move {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let sim = Simulator::start(Scenario::demo(), SimOptions::fast())
            .await
            .unwrap();
        let apa = |ns: &str| {
            json!({
                "apiVersion": "redeliver.dev/v1alpha1", "kind": "AccessPackageAssignment",
                "metadata": {"name": "alice", "namespace": ns},
                "spec": {"accessPackage": {"displayName": "Finance Analysts"},
                         "target": {"userPrincipalName": "alice@contoso.com"}}
            })
        };
        let kube = FakeKube::start(vec![
            secret("good", "graph", "clientSecret", &sim.client_secret),
            graph_connection("good", "default", &sim, "graph"),
            apa("good"),
            secret("bad", "graph", "clientSecret", WRONG),
            graph_connection("bad", "default", &sim, "graph"),
            apa("bad"),
        ])
        .await
        .unwrap();
        let ctx = context(
            kube_client(&kube, None),
            None,
            &crate::controller_support::settings(),
        );
        let running = Controller::spawn(ctx, Vec::new(), 2);
        let delivered = |ns: &str| {
            kube.object("accesspackageassignments", ns, "alice")
                .and_then(|o| o["status"]["conditions"].as_array().cloned())
                .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Delivered"))
        };
        let stalled = || {
            kube.object("graphconnections", "bad", "default")
                .is_some_and(|o| o["status"]["errorCode"].is_string())
        };
        crate::wait::until(
            "the connections are both checked",
            Duration::from_secs(20),
            || delivered("good") && stalled(),
        )
        .await;
        running.stop().await;
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
