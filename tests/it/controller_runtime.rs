//! `run_controllers` end to end over a scripted API server (tower-test) and the Graph
//! simulator: list → reconcile → status patches; a status-only watch event does not
//! retrigger; readiness after the caches sync; graceful shutdown on cancel.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use redeliver::controller::Context;
use redeliver::controller::metrics::Metrics;
use redeliver_sim::{Scenario, SimOptions, Simulator};
use serde_json::{Value, json};

use crate::controller_support::Controller;

const NS: &str = "access";
const APA: &str = "/apis/redeliver.dev/v1alpha1/namespaces/access/accesspackageassignments";
const APG: &str = "/apis/redeliver.dev/v1alpha1/namespaces/access/accesspackageguards";
const GC: &str = "/apis/redeliver.dev/v1alpha1/namespaces/access/graphconnections";
const CGC: &str = "/apis/redeliver.dev/v1alpha1/clustergraphconnections";

fn ok(v: &Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(v).unwrap()))
        .unwrap()
}

fn bob(status: Option<Value>, rv: &str) -> Value {
    let mut o = json!({
        "apiVersion": "redeliver.dev/v1alpha1", "kind": "AccessPackageAssignment",
        "metadata": {"name": "bob", "namespace": NS, "uid": "uid-bob", "generation": 1, "resourceVersion": rv},
        "spec": {"accessPackage": {"id": "9f1c0c7e-0000-4000-8000-000000000001"},
                 "target": {"userPrincipalName": "bob@contoso.com"}}
    });
    if let Some(s) = status {
        o["status"] = s;
    }
    o
}

#[derive(Default)]
struct Log {
    status_patches: Vec<Value>,
    events: Vec<String>,
    watches: usize,
}

#[tokio::test]
async fn lists_reconciles_ignores_status_only_events_and_shuts_down() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sim = Simulator::start(Scenario::demo(), SimOptions::fast())
        .await
        .unwrap();
    let graph = crate::fault_support::graph_client(&sim).unwrap();

    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, NS);
    let log = Arc::new(Mutex::new(Log::default()));
    let server = scripted_api_server(handle, log.clone());

    let (metrics, registry) = Metrics::new(Some(graph.clone()));
    let ctx = Arc::new(Context::new(
        client,
        graph,
        metrics,
        &crate::controller_support::settings(),
    ));
    let running = Controller::spawn(ctx, vec![NS.to_string()], 2);
    let ready = &running.ready;

    let deadline = Instant::now() + Duration::from_secs(10);
    while log.lock().unwrap().watches < 2 || log.lock().unwrap().status_patches.is_empty() {
        assert!(
            Instant::now() < deadline,
            "controller did not reconcile and re-watch in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    while !ready.get() {
        assert!(Instant::now() < deadline, "never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The MODIFIED event carried only our status: give it time to (not) retrigger. The
    // watcher has consumed it (the stream ended after it, and it watched again), so a
    // retrigger would be queued already and run one debounce (50 ms here) later: half a
    // second is ten of those.
    tokio::time::sleep(Duration::from_millis(500)).await;
    {
        let l = log.lock().unwrap();
        // A quick first verification is written once (no separate first-visit status).
        assert_eq!(
            l.status_patches.len(),
            1,
            "the verified status, nothing more"
        );
        let verified = &l.status_patches[0];
        let delivered = verified["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Delivered")
            .unwrap();
        assert_eq!(delivered["status"], "True");
        // A healthy object's first verification announces nothing.
        assert!(l.events.is_empty(), "{:?}", l.events);
    }
    // Exactly one reconcile: the watch event carrying our own status did not retrigger.
    let text = redeliver::controller::metrics::render(&registry).unwrap();
    assert!(
        text.contains(
            "redeliver_reconciles_total{kind=\"AccessPackageAssignment\",result=\"ok\"} 1\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("redeliver_assignments{delivered=\"True\"} 1"),
        "{text}"
    );

    running.stop_within(Duration::from_secs(10)).await;
    server.abort();
}

/// The API server, scripted: lists bob (and no guard or connection), answers his status
/// patches with the patched object, and ends the first watch of assignments right after
/// the first status patch with a MODIFIED event carrying that status (then holds every
/// later watch open). What it is sent goes to `server_log`.
fn scripted_api_server(
    mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
    server_log: Arc<Mutex<Log>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut held = Vec::new();
        let mut first_watch = None;
        while let Some((req, send)) = handle.next_request().await {
            let method = req.method().clone();
            let path = req.uri().path().to_string();
            let query = req.uri().query().unwrap_or_default().to_string();
            let body = req.into_body().collect_bytes().await.unwrap();
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            match (method, path.as_str()) {
                (Method::GET, APA) if query.contains("watch=true") => {
                    let n = {
                        let mut l = server_log.lock().unwrap();
                        l.watches += 1;
                        l.watches
                    };
                    if n == 1 {
                        // Answered after our second status patch, with that status.
                        first_watch = Some(send);
                    } else {
                        held.push(send);
                    }
                }
                (Method::GET, APG) if query.contains("watch=true") => held.push(send),
                // The connection kinds are watched too; this test has none.
                (Method::GET, GC | CGC) if query.contains("watch=true") => held.push(send),
                (Method::GET, GC | CGC) => send.send_response(ok(&json!({
                    "apiVersion": "redeliver.dev/v1alpha1", "kind": "List",
                    "metadata": {"resourceVersion": "1"}, "items": []
                }))),
                (Method::GET, APA) => send.send_response(ok(&json!({
                    "apiVersion": "redeliver.dev/v1alpha1", "kind": "AccessPackageAssignmentList",
                    "metadata": {"resourceVersion": "1"}, "items": [bob(None, "1")]
                }))),
                (Method::GET, APG) => send.send_response(ok(&json!({
                    "apiVersion": "redeliver.dev/v1alpha1", "kind": "AccessPackageGuardList",
                    "metadata": {"resourceVersion": "1"}, "items": []
                }))),
                (Method::PATCH, p) if p == format!("{APA}/bob/status") => {
                    let status = body["status"].clone();
                    let n = {
                        let mut l = server_log.lock().unwrap();
                        l.status_patches.push(status.clone());
                        l.status_patches.len()
                    };
                    send.send_response(ok(&bob(Some(status.clone()), "2")));
                    if n == 1
                        && let Some(watch) = first_watch.take()
                    {
                        // Our own status write comes back (same generation), then the
                        // stream ends and the watcher re-watches.
                        let ev = json!({"type": "MODIFIED", "object": bob(Some(status), "3")});
                        let mut bytes = serde_json::to_vec(&ev).unwrap();
                        bytes.push(b'\n');
                        watch.send_response(
                            Response::builder()
                                .status(StatusCode::OK)
                                .body(Body::from(bytes))
                                .unwrap(),
                        );
                    }
                }
                (Method::POST, "/apis/events.k8s.io/v1/namespaces/access/events") => {
                    server_log
                        .lock()
                        .unwrap()
                        .events
                        .push(body["reason"].as_str().unwrap_or_default().to_string());
                    send.send_response(ok(&body));
                }
                (m, p) => panic!("unexpected API request {m} {p}?{query}"),
            }
        }
    })
}
