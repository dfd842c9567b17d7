//! Drift attribution (issue #14): who removed a missing resource, from the directory audit
//! log, against the simulator over HTTP on 127.0.0.1. The Kubernetes side is the kube-rs
//! `ApiServerVerifier` pattern (every status patch and event asserted in order); the audit
//! lookups' cost is read from the simulator's request log.
//!
//! - an outside removal by a user, and one by an app, are named in the DriftDetected event,
//!   the Delivered message and status.resources[].lastChange;
//! - several users removed from one group and detected together cost one audit query;
//! - without AuditLog.Read.All (403) the status says attribution is unavailable, the
//!   conditions and events are those without attribution, the drift is still repaired, and
//!   the refusal is not asked again;
//! - a lagging audit log is looked up again a bounded number of times, then reported "not
//!   found in the audit log yet".

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use redeliver::api::AccessPackageAssignment;
use redeliver::controller::metrics::Metrics;
use redeliver::controller::{Context, Settings, assignment};
use redeliver::engine::{Attribution, PromisedResource, promised_resources};
use redeliver::graph::models::{
    DirectoryAudit, Page, ResourceRole, ResourceRoleScope, ResourceScope,
};
use redeliver::observe::attribution::{AttributionSettings, Attributor};
use redeliver_sim::{FaultScope, FaultSpec, Scenario, SimHandle, SimOptions, Simulator};
use serde_json::{Value, json};

use crate::controller_support::{Controller, operator_context};

const NS: &str = "access";
const FINANCE: &str = "9f1c0c7e-0000-4000-8000-000000000001";
const AUDITS: &str = "/v1.0/auditLogs/directoryAudits";
const BY_REMOVAL: &str = "via \"Remove member from group\"";

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// Answers the reconciler's Kubernetes requests, recording status patches and events.
/// Shared with the safety suite (`controller_safety`), which reconciles guards too.
pub(crate) struct Api(pub(crate) Handle);

impl Api {
    /// Answers one request: a status patch (`(true, status)`) or an event (`(false,
    /// {"reason", "note"})`).
    async fn answer<K: serde::Serialize>(
        obj: &K,
        (req, send): (
            Request<Body>,
            tower_test::mock::SendResponse<Response<Body>>,
        ),
    ) -> (bool, Value) {
        let (method, path) = (req.method().clone(), req.uri().path().to_string());
        let bytes = req.into_body().collect_bytes().await.unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let ok = |v: &Value| {
            Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(v).unwrap()))
                .unwrap()
        };
        if method == Method::PATCH && path.ends_with("/status") {
            let mut answer = serde_json::to_value(obj).unwrap();
            answer["status"] = body["status"].clone();
            send.send_response(ok(&answer));
            (true, body["status"].clone())
        } else {
            // An event repeated within the recorder's series window is a PATCH of the
            // existing one.
            assert!(
                method == Method::POST || (method == Method::PATCH && path.contains("/events/")),
                "unexpected {method} {path}"
            );
            assert!(path.contains("/events"), "unexpected {method} {path}");
            send.send_response(ok(&body));
            (
                false,
                json!({"reason": body["reason"], "note": body["note"]}),
            )
        }
    }

    /// Everything one reconcile sends: its last status (`null` when it wrote none) and its
    /// events.
    pub(crate) async fn reconcile(
        &mut self,
        ctx: &Arc<Context>,
        obj: &AccessPackageAssignment,
    ) -> (Value, Vec<Value>) {
        let task = tokio::spawn(assignment::reconcile(Arc::new(obj.clone()), ctx.clone()));
        self.drive(obj, task).await
    }

    /// Answers what `task` (a reconcile of `obj`) sends until it ends. The reconcile awaits
    /// each answer, so once it has ended it has nothing more to send.
    pub(crate) async fn drive<K: serde::Serialize>(
        &mut self,
        obj: &K,
        mut task: tokio::task::JoinHandle<
            Result<kube::runtime::controller::Action, redeliver::controller::Error>,
        >,
    ) -> (Value, Vec<Value>) {
        let (mut status, mut events) = (Value::Null, Vec::new());
        let hangs = tokio::time::sleep(Duration::from_secs(20));
        tokio::pin!(hangs);
        let result = loop {
            tokio::select! {
                biased;
                request = self.0.next_request() => {
                    let request = request.expect("the client is still there");
                    match Self::answer(obj, request).await {
                        (true, v) => status = v,
                        (false, v) => events.push(v),
                    }
                }
                result = &mut task => break result,
                () = &mut hangs => panic!("reconcile hangs"),
            }
        };
        result.unwrap().unwrap();
        (status, events)
    }
}

pub(crate) struct Env {
    pub(crate) sim: SimHandle,
    pub(crate) ctx: Arc<Context>,
    pub(crate) api: Api,
}

pub(crate) async fn env(settings: Settings) -> Env {
    env_with(Scenario::demo(), settings).await
}

/// [`env`] on another tenant.
pub(crate) async fn env_with(scenario: Scenario, settings: Settings) -> Env {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sim = Simulator::start(scenario, SimOptions::fast())
        .await
        .unwrap();
    let graph = crate::fault_support::graph_client(&sim).unwrap();
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, NS);
    let (metrics, _registry) = Metrics::new(Some(graph.clone()));
    let settings = Settings {
        first_status_after: Duration::ZERO,
        ..settings
    };
    let ctx = Arc::new(Context::new(client, graph, metrics, &settings));
    Env {
        sim,
        ctx,
        api: Api(handle),
    }
}

pub(crate) fn for_user(name: &str, upn: &str) -> AccessPackageAssignment {
    serde_json::from_value(json!({
        "apiVersion": "redeliver.dev/v1alpha1",
        "kind": "AccessPackageAssignment",
        "metadata": {
            "name": name, "namespace": NS, "uid": format!("uid-{name}"),
            "generation": 1, "resourceVersion": "100"
        },
        "spec": {"accessPackage": {"id": FINANCE}, "target": {"userPrincipalName": upn}},
    }))
    .unwrap()
}

pub(crate) fn with_status(
    obj: &AccessPackageAssignment,
    status: &Value,
) -> AccessPackageAssignment {
    let mut v = serde_json::to_value(obj).unwrap();
    v["status"] = status.clone();
    serde_json::from_value(v).unwrap()
}

pub(crate) fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or(&Value::Null)
}

fn last_change(status: &Value, name: &str) -> Value {
    status["resources"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["displayName"] == name))
        .map(|r| r["lastChange"].clone())
        .unwrap_or(Value::Null)
}

fn drift_note(events: &[Value]) -> String {
    events
        .iter()
        .find(|e| e["reason"] == "DriftDetected")
        .and_then(|e| e["note"].as_str())
        .unwrap_or_else(|| panic!("no DriftDetected event in {events:?}"))
        .to_string()
}

#[tokio::test]
async fn an_outside_removal_names_its_actor_in_event_message_and_status() {
    let mut env = env(crate::controller_support::settings()).await;
    // Accepted without effect, so bob stays drifted for the second pass.
    env.sim.inject_fault(FaultSpec::SilentReprocess {
        assignment_ids: vec![],
        request_ids: vec![],
    });
    assert!(
        env.sim
            .remove_member_by("fin-writers", "bob@contoso.com", "admin@contoso.com")
            .unwrap()
    );
    let bob = for_user("bob-finance", "bob@contoso.com");
    let (status, events) = env.api.reconcile(&env.ctx, &bob).await;

    let said = last_change(&status, "fin-writers");
    let said = said
        .as_str()
        .unwrap_or_else(|| panic!("no lastChange: {status}"));
    assert!(
        said.starts_with("removed by admin@contoso.com at "),
        "{said}"
    );
    assert!(said.ends_with(BY_REMOVAL), "{said}");
    assert_eq!(
        last_change(&status, "fin-readers"),
        Value::Null,
        "present: nothing to say"
    );
    let note = drift_note(&events);
    assert_eq!(
        note,
        format!("Drift detected: missing fin-writers (Member) [{said}].")
    );
    let delivered = condition(&status, "Delivered");
    assert_eq!(delivered["reason"], "ResourcesMissing");
    assert!(
        delivered["message"]
            .as_str()
            .unwrap()
            .contains(&format!("[{said}]")),
        "{delivered}"
    );
    assert!(
        events.iter().any(|e| e["reason"] == "ReprocessRequested"),
        "still repaired"
    );
    assert_eq!(env.sim.count_requests("GET", AUDITS), 1);

    // Once named, the next pass keeps the text and asks the audit log nothing.
    let again = with_status(&bob, &status);
    let (second, _) = env.api.reconcile(&env.ctx, &again).await;
    let kept = if second.is_null() { &status } else { &second };
    assert_eq!(last_change(kept, "fin-writers"), json!(said));
    assert!(
        !env.sim.is_member("fin-writers", "bob@contoso.com"),
        "still drifted"
    );
    assert_eq!(env.sim.count_requests("GET", AUDITS), 1);
    env.sim.shutdown().await;
}

#[tokio::test]
async fn users_removed_from_one_group_together_cost_one_audit_query() {
    let mut env = env(crate::controller_support::settings()).await;
    // Alice starts without fin-writers; give it back so an app can take it away again.
    env.sim
        .add_member("fin-writers", "alice@contoso.com")
        .unwrap();
    env.sim
        .remove_member_by("fin-writers", "alice@contoso.com", "Payroll Sync")
        .unwrap();
    env.sim
        .remove_member_by("fin-writers", "bob@contoso.com", "admin@contoso.com")
        .unwrap();
    env.sim.clear_request_log();

    let alice = for_user("alice-finance", "alice@contoso.com");
    let bob = for_user("bob-finance", "bob@contoso.com");
    let (a, a_events) = env.api.reconcile(&env.ctx, &alice).await;
    let (b, b_events) = env.api.reconcile(&env.ctx, &bob).await;

    let app = last_change(&a, "fin-writers");
    let app = app.as_str().unwrap_or_else(|| panic!("{a}"));
    assert!(
        app.starts_with("removed by Payroll Sync (app "),
        "an app by name and app id: {app}"
    );
    assert!(drift_note(&a_events).contains(app));
    let user = last_change(&b, "fin-writers");
    assert!(
        user.as_str()
            .unwrap()
            .starts_with("removed by admin@contoso.com"),
        "{b}"
    );
    assert!(drift_note(&b_events).contains(user.as_str().unwrap()));
    assert_eq!(
        env.sim.count_requests("GET", AUDITS),
        1,
        "one query for the group serves both users"
    );
    env.sim.shutdown().await;
}

#[tokio::test]
async fn without_audit_permission_attribution_is_unavailable_and_nothing_else_changes() {
    // The same drift with attribution off: what the conditions and events must be.
    let mut off = env(Settings {
        attribution: AttributionSettings {
            enabled: false,
            ..Default::default()
        },
        ..crate::controller_support::settings()
    })
    .await;
    off.sim
        .remove_member_by("fin-writers", "bob@contoso.com", "admin@contoso.com")
        .unwrap();
    let bob = for_user("bob-finance", "bob@contoso.com");
    let (plain, plain_events) = off.api.reconcile(&off.ctx, &bob).await;
    assert_eq!(off.sim.count_requests("GET", AUDITS), 0, "off: never asked");
    assert_eq!(last_change(&plain, "fin-writers"), Value::Null);
    off.sim.shutdown().await;

    let mut env = env(crate::controller_support::settings()).await;
    env.sim.inject_fault(FaultSpec::Error {
        status: 403,
        retry_after: None,
        scope: FaultScope {
            path_prefix: Some("/v1.0/auditLogs".into()),
            count: Some(1000),
            ..Default::default()
        },
    });
    env.sim
        .remove_member_by("fin-writers", "bob@contoso.com", "admin@contoso.com")
        .unwrap();
    let (status, events) = env.api.reconcile(&env.ctx, &bob).await;
    assert_eq!(
        last_change(&status, "fin-writers"),
        json!("attribution unavailable: the app lacks AuditLog.Read.All")
    );
    let strip = |s: &Value| {
        s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["type"].clone(),
                    c["status"].clone(),
                    c["reason"].clone(),
                    c["message"].clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    // Assignment ids are the scenario's, so the messages compare exactly.
    assert_eq!(
        strip(&status),
        strip(&plain),
        "the same conditions otherwise"
    );
    // Every write has a client-request-id of its own (the event's last sentence): equal up
    // to it.
    let notes = |es: &[Value]| {
        es.iter()
            .map(|e| {
                let note = e["note"].as_str().unwrap_or_default();
                note.split(" client-request-id: ")
                    .next()
                    .unwrap_or(note)
                    .to_string()
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(notes(&events), notes(&plain_events), "the same events");
    assert!(events.iter().any(|e| e["reason"] == "ReprocessRequested"));
    assert_eq!(env.sim.count_requests("GET", AUDITS), 1);

    // Alice's drift, right after: the refusal is remembered, not asked again.
    let alice = for_user("alice-finance", "alice@contoso.com");
    let (a, _) = env.api.reconcile(&env.ctx, &alice).await;
    assert_eq!(
        last_change(&a, "fin-writers"),
        json!("attribution unavailable: the app lacks AuditLog.Read.All")
    );
    assert_eq!(env.sim.count_requests("GET", AUDITS), 1, "cached 403");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !env.sim.is_member("fin-writers", "bob@contoso.com") {
        assert!(
            std::time::Instant::now() < deadline,
            "bob is repaired anyway"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    env.sim.shutdown().await;
}

fn fin_writers(sim: &SimHandle) -> PromisedResource {
    let g = sim.group_id("fin-writers").unwrap();
    promised_resources(&[ResourceRoleScope {
        id: format!("Member_{g}"),
        role: Some(ResourceRole {
            display_name: Some("Member".into()),
            origin_id: Some(format!("Member_{g}")),
            origin_system: Some("AadGroup".into()),
            ..Default::default()
        }),
        scope: Some(ResourceScope {
            display_name: Some("fin-writers".into()),
            origin_id: Some(g),
            origin_system: Some("AadGroup".into()),
            ..Default::default()
        }),
    }])
    .remove(0)
}

#[tokio::test]
async fn a_lagging_audit_log_is_asked_a_bounded_number_of_times() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sim = Simulator::start(Scenario::demo(), SimOptions::fast())
        .await
        .unwrap();
    let graph = crate::fault_support::graph_client(&sim).unwrap();
    let attributor = Attributor::new(AttributionSettings {
        batch_window: Duration::from_millis(100),
        retry_after: Duration::from_millis(300),
        ..Default::default()
    });
    let writers = fin_writers(&sim);
    let bob = sim.user_id("bob@contoso.com").unwrap();
    sim.set_audit_lag(jiff::SignedDuration::from_mins(5));
    sim.remove_member_by("fin-writers", "bob@contoso.com", "admin@contoso.com")
        .unwrap();

    // Not in the log yet: no answer, and no second query before retry_after.
    assert_eq!(
        attributor
            .attribute(&graph, &[(&writers, true)], &bob)
            .await,
        vec![]
    );
    assert_eq!(
        attributor
            .attribute(&graph, &[(&writers, true)], &bob)
            .await,
        vec![]
    );
    assert_eq!(sim.count_requests("GET", AUDITS), 1);
    // The entry shows up later; the next lookup finds it.
    sim.advance_clock(Duration::from_secs(6 * 60));
    // Past retry_after, on the attributor's clock (tokio's), without waiting for it.
    crate::clock::skip(Duration::from_millis(350)).await;
    let found = attributor
        .attribute(&graph, &[(&writers, true)], &bob)
        .await;
    assert!(
        matches!(&found[..], [(_, Attribution::Found { .. })]),
        "{found:?}"
    );
    assert!(
        found[0]
            .1
            .describe()
            .starts_with("removed by admin@contoso.com")
    );
    assert_eq!(sim.count_requests("GET", AUDITS), 2);

    // An entry that never shows up: three lookups, then "not found", then nothing more.
    sim.set_audit_lag(jiff::SignedDuration::from_hours(48));
    sim.add_member("fin-writers", "bob@contoso.com").unwrap();
    sim.remove_member_by("fin-writers", "bob@contoso.com", "admin@contoso.com")
        .unwrap();
    let fresh = Attributor::new(AttributionSettings {
        batch_window: Duration::from_millis(100),
        retry_after: Duration::from_millis(300),
        ..Default::default()
    });
    sim.clear_request_log();
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(fresh.attribute(&graph, &[(&writers, true)], &bob).await);
        crate::clock::skip(Duration::from_millis(350)).await;
    }
    assert_eq!(
        sim.count_requests("GET", AUDITS),
        3,
        "at most three lookups"
    );
    assert!(
        answers[0].is_empty() && answers[1].is_empty(),
        "{answers:?}"
    );
    assert_eq!(answers[2].len(), 1);
    assert_eq!(answers[3], answers[2], "said again, not asked again");
    assert_eq!(
        answers[2][0].1.describe(),
        "not found in the audit log yet (3 lookups; entries can appear minutes late)"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn the_simulator_pages_and_filters_the_audit_log() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sim = Simulator::start(Scenario::demo(), SimOptions::fast())
        .await
        .unwrap();
    for i in 0..3 {
        sim.add_member("fin-readers", "bob@contoso.com").unwrap();
        sim.remove_member_by(
            "fin-readers",
            "bob@contoso.com",
            &format!("op{i}@contoso.com"),
        )
        .unwrap();
    }
    let g = sim.group_id("fin-readers").unwrap();
    let graph = crate::fault_support::graph_client(&sim).unwrap();
    let filter = format!(
        "activityDisplayName eq 'Remove member from group' and targetResources/any(t: t/id eq '{g}') and activityDateTime ge 2020-01-01T00:00:00Z"
    );
    let all = graph.list_directory_audits(&filter, 10).await.unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(
        all[0]
            .initiated_by
            .user
            .as_ref()
            .unwrap()
            .user_principal_name
            .as_deref(),
        Some("op2@contoso.com"),
        "newest first"
    );
    let usage = sim.usage();
    let route = usage
        .by_route
        .iter()
        .find(|(k, _)| k.contains("auditLogs"))
        .map(|(_, u)| *u)
        .unwrap();
    assert_eq!((route.requests, route.ru), (1, 1), "one request, 1 RU");
    // Paging: one entry per page, followed through @odata.nextLink.
    let url = graph
        .url(
            "test",
            "/auditLogs/directoryAudits",
            &[("$filter", &filter), ("$top", "1")],
        )
        .unwrap();
    let first: Page<DirectoryAudit> = graph.get_page("test", url.clone()).await.unwrap();
    assert_eq!(first.value.len(), 1);
    assert!(first.next_link.is_some());
    let paged: Vec<DirectoryAudit> = graph.get_paged("test", url).await.unwrap();
    assert_eq!(paged, all);
    let bad = graph
        .list_directory_audits("loggedByService eq 'Core Directory'", 1)
        .await
        .unwrap_err();
    assert!(bad.to_string().contains("not supported"), "{bad}");
    sim.shutdown().await;
}

/// The whole controller (`run_controllers` against the in-process API server), as in
/// production: group delta detects two users removed together, one audit query names both,
/// and a user whose earlier drift was repaired is attributed to the new removal, not the
/// old one.
#[tokio::test]
async fn the_controller_attributes_a_batch_detected_by_group_delta_with_one_query() {
    use redeliver_fake_kube::FakeKube;

    let _ = rustls::crypto::ring::default_provider().install_default();
    let sim = Simulator::start(Scenario::demo(), SimOptions::fast())
        .await
        .unwrap();
    let objects: Vec<Value> = [
        ("alice-finance", "alice@contoso.com"),
        ("bob-finance", "bob@contoso.com"),
    ]
    .iter()
    .map(|(n, u)| serde_json::to_value(for_user(n, u)).unwrap())
    .map(|mut v| {
        v["metadata"] = json!({"name": v["metadata"]["name"], "namespace": NS});
        v
    })
    .collect();
    let kube = FakeKube::start(objects).await.unwrap();
    const BATCH_WINDOW: Duration = Duration::from_millis(300);
    let settings = Settings {
        delta_interval: Duration::from_millis(300),
        poll_interval: Duration::from_millis(300),
        observation_max_age: Duration::from_millis(200),
        attribution: AttributionSettings {
            batch_window: BATCH_WINDOW,
            ..Default::default()
        },
        ..crate::controller_support::settings()
    };
    let running = Controller::spawn(operator_context(&kube, &sim, NS, &settings), Vec::new(), 4);
    let (ready, metrics) = (&running.ready, &running.ctx.metrics);
    let status = |name: &str| {
        kube.object("accesspackageassignments", NS, name)
            .map(|o| o["status"].clone())
            .unwrap_or(Value::Null)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let delivered = |name: &str| condition(&status(name), "Delivered")["status"] == "True";
    // Alice's scenario drift (no audit entry) is repaired first.
    while !(ready.get() && delivered("alice-finance") && delivered("bob-finance")) {
        assert!(std::time::Instant::now() < deadline, "both delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sim.inject_fault(FaultSpec::SilentReprocess {
        assignment_ids: vec![],
        request_ids: vec![],
    });
    // Past the batch window of alice's start-up lookup (made before she was delivered): a
    // new detection batch.
    tokio::time::sleep(BATCH_WINDOW + Duration::from_millis(100)).await;
    sim.clear_request_log();
    sim.remove_member_by("fin-writers", "alice@contoso.com", "Payroll Sync")
        .unwrap();
    sim.remove_member_by("fin-writers", "bob@contoso.com", "admin@contoso.com")
        .unwrap();
    let named = |name: &str| {
        last_change(&status(name), "fin-writers")
            .as_str()
            .map(str::to_string)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while named("alice-finance").is_none() || named("bob-finance").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "both attributed: {:?} {:?}",
            status("alice-finance"),
            status("bob-finance")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let alice = named("alice-finance").unwrap();
    assert!(
        alice.starts_with("removed by Payroll Sync (app "),
        "the new removal: {alice}"
    );
    let bob = named("bob-finance").unwrap();
    assert!(bob.starts_with("removed by admin@contoso.com at "), "{bob}");
    // A few more delta polls and a re-check (one poll interval after a silent reprocess):
    // still one audit query.
    let polls = || sim.count_requests("GET", "/v1.0/groups/delta");
    let reconciled = || crate::controller_support::reconciled(metrics, "AccessPackageAssignment");
    let (polls_then, reconciled_then) = (polls(), reconciled());
    crate::wait::until(
        "three more delta polls and a re-check",
        Duration::from_secs(20),
        || polls() >= polls_then + 3 && reconciled() > reconciled_then,
    )
    .await;
    assert_eq!(
        sim.count_requests("GET", AUDITS),
        1,
        "one query for the batch"
    );
    running.stop().await;
    sim.shutdown().await;
}

/// An `AccessPackageAssignment` for each user of the synthetic tenant `shape`, with the
/// mass-drift breaker off (every user loses a group at once in the test: the breaker is not
/// what it is about).
fn one_object_per_user(sim: &SimHandle, shape: &redeliver_sim::SyntheticTenant) -> Vec<Value> {
    (0..shape.assignments)
        .map(|i| {
            let package = redeliver_sim::SyntheticTenant::package_name(shape.package_of(i));
            json!({
                "apiVersion": "redeliver.dev/v1alpha1", "kind": "AccessPackageAssignment",
                "metadata": {"name": format!("user-{i}"), "namespace": NS},
                "spec": {
                    "accessPackage": {"id": sim.package_id(&package).unwrap()},
                    "target": {"userPrincipalName": shape.upn(i)},
                    "verifyInterval": "10m",
                    "safety": {"massDrift": {"enabled": false}},
                }
            })
        })
        .collect()
}

/// Who removes user `i` in the fifty-removals test: the admin or a helpdesk account each.
fn remover(i: usize) -> String {
    if i.is_multiple_of(2) {
        "admin@batch.com".to_string()
    } else {
        format!("helpdesk{i}@batch.com")
    }
}

/// Waits until the controller is quiet: the start-up verifications (and their follow-ups)
/// are over and every group is followed (no delta link is being started:
/// `$deltatoken=latest`), i.e. a window holds nothing but group delta polls. A window a
/// little longer than the delta interval holds at least one poll.
async fn wait_until_only_delta_polls(sim: &SimHandle, delta_interval: Duration) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        sim.clear_request_log();
        tokio::time::sleep(delta_interval + Duration::from_millis(100)).await;
        if sim.request_log().iter().all(|e| {
            e.path.starts_with("/v1.0/groups/delta") && !e.path.contains("deltatoken=latest")
        }) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the controller settles"
        );
    }
}

/// Issue #26: fifty users removed from ten different groups, all reported by one group
/// delta poll, are attributed with one audit-log query (the window since the poll before),
/// not one per group; the removals' actors are each named.
#[tokio::test]
async fn fifty_removals_from_ten_groups_in_one_detection_batch_cost_one_audit_query() {
    use redeliver_fake_kube::FakeKube;
    use redeliver_sim::SyntheticTenant;

    let _ = rustls::crypto::ring::default_provider().install_default();
    let shape = SyntheticTenant {
        tenant_name: "batch".into(),
        seed: 5,
        assignments: 50,
        groups: 10,
        apps: 0,
        packages: 10,
        min_resources: 1,
        max_resources: 1,
        drift_every: 0,
        policies_per_package: 1,
    };
    let sim = Simulator::start(Scenario::synthetic_tenant(&shape), SimOptions::fast())
        .await
        .unwrap();
    let kube = FakeKube::start(one_object_per_user(&sim, &shape))
        .await
        .unwrap();
    let settings = Settings {
        delta_interval: Duration::from_millis(500),
        poll_interval: Duration::from_secs(1),
        observation_max_age: Duration::from_millis(200),
        ..crate::controller_support::settings()
    };
    let running = Controller::spawn(operator_context(&kube, &sim, NS, &settings), Vec::new(), 4);
    let (ready, ctx) = (&running.ready, &running.ctx);
    let status = |i: usize| {
        kube.object("accesspackageassignments", NS, &format!("user-{i}"))
            .map(|o| o["status"].clone())
            .unwrap_or(Value::Null)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !(ready.get()
        && (0..shape.assignments).all(|i| condition(&status(i), "Delivered")["status"] == "True"))
    {
        assert!(std::time::Instant::now() < deadline, "all delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The removals below are found by a group delta poll, not by a verification that happens
    // to run or by a group starting to be followed.
    wait_until_only_delta_polls(&sim, settings.delta_interval).await;
    // Nothing is repaired, so each removal stays visible until it is attributed.
    sim.inject_fault(FaultSpec::SilentReprocess {
        assignment_ids: vec![],
        request_ids: vec![],
    });
    sim.clear_request_log();
    // One detection batch: a delta poll arriving now is answered only after every removal
    // below is made, so no poll sees some of them and the next one the rest.
    sim.inject_fault(FaultSpec::Latency {
        millis: 400,
        scope: FaultScope {
            path_prefix: Some("/v1.0/groups/delta".into()),
            duration_ms: Some(1_000),
            ..FaultScope::default()
        },
    });
    for i in 0..shape.assignments {
        let group = SyntheticTenant::group_name(shape.package_of(i));
        let by = remover(i);
        sim.remove_member_by(&group, &shape.upn(i), &by).unwrap();
    }
    let named = |i: usize| {
        status(i)["resources"][0]["lastChange"]
            .as_str()
            .map(str::to_string)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !(0..shape.assignments).all(|i| named(i).is_some()) {
        assert!(
            std::time::Instant::now() < deadline,
            "all attributed: {:?}",
            status(0)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 0..shape.assignments {
        let who = named(i).unwrap();
        let by = remover(i);
        assert!(
            who.starts_with(&format!("removed by {by} at ")),
            "{i}: {who}"
        );
    }
    let groups: std::collections::BTreeSet<usize> = (0..shape.assignments)
        .map(|i| shape.package_of(i))
        .collect();
    assert_eq!(groups.len(), 10, "the removals span ten groups");
    let queries: Vec<String> = sim
        .request_log()
        .iter()
        .filter(|e| e.method == "GET" && e.path.starts_with(AUDITS))
        .map(|e| e.path.clone())
        .collect();
    assert_eq!(
        queries.len(),
        1,
        "one audit-log query for the whole detection batch: {queries:?}"
    );
    // The metric says the same: one batch query, none for a single group.
    let queries = &ctx.metrics.attribution_queries;
    assert_eq!(
        (
            queries.batch.load(std::sync::atomic::Ordering::Relaxed),
            queries.target.load(std::sync::atomic::Ordering::Relaxed)
        ),
        (1, 0)
    );
    running.stop().await;
    sim.shutdown().await;
}

/// Issue #23: the controller's wall-clock time comes from its context's clock, so a test
/// can put it at any moment without waiting: every time in the status is the clock's.
#[tokio::test]
async fn the_controller_takes_its_time_from_the_clock_in_its_context() {
    use redeliver::controller::context::FixedClock;
    let at: jiff::Timestamp = "2031-01-02T03:04:05Z".parse().unwrap();
    let clock = Arc::new(FixedClock::at(at));
    let mut env = env(Settings {
        clock: clock.clone(),
        ..crate::controller_support::settings()
    })
    .await;
    let alice = for_user("alice-finance", "alice@contoso.com");
    let (status, _) = env.api.reconcile(&env.ctx, &alice).await;
    for type_ in ["Ready", "Delivered"] {
        assert_eq!(
            condition(&status, type_)["lastTransitionTime"],
            "2031-01-02T03:04:05Z",
            "{status}"
        );
    }
    assert_eq!(
        status["reprocess"]["lastRequestedTime"],
        "2031-01-02T03:04:05Z"
    );
    env.sim.shutdown().await;
}
