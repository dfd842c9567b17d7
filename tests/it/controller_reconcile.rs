//! The reconciler's Kubernetes I/O, asserted request by request with the kube-rs
//! `ApiServerVerifier` pattern (a `tower_test` mock API server), while the Graph side is the
//! real simulator over HTTP on 127.0.0.1.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, Request, Response, StatusCode};
use kube::Resource;
use kube::client::Body;
use kube::runtime::controller::Action;
use redeliver::api::{AccessPackageAssignment, AccessPackageGuard, FINALIZER};
use redeliver::controller::metrics::Metrics;
use redeliver::controller::{Context, Error, Settings};
use redeliver::controller::{assignment, guard};
use redeliver_sim::{FaultScope, FaultSpec};
use redeliver_sim::{Scenario, SimHandle, SimOptions, Simulator};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

const NS: &str = "access";
const FINANCE: &str = "9f1c0c7e-0000-4000-8000-000000000001";
const APA_PATH: &str = "/apis/redeliver.dev/v1alpha1/namespaces/access/accesspackageassignments";
const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/access/events";

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// The mock API server: each `expect_*` awaits the next request, asserts it, answers it.
struct ApiServerVerifier(Handle);

struct Seen {
    method: Method,
    path: String,
    query: String,
    content_type: String,
    body: Value,
}

impl ApiServerVerifier {
    async fn next(&mut self) -> (Seen, tower_test::mock::SendResponse<Response<Body>>) {
        let (req, send) = tokio::time::timeout(Duration::from_secs(10), self.0.next_request())
            .await
            .expect("the reconciler made no further API request within 10s")
            .expect("the client was dropped");
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or_default().to_string();
        let content_type = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let bytes = req.into_body().collect_bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        (
            Seen {
                method,
                path,
                query,
                content_type,
                body,
            },
            send,
        )
    }

    /// A server-side-apply status patch by field manager `redeliver`; answers with the object
    /// carrying that status and returns the status.
    async fn expect_status_patch<K>(&mut self, obj: &K) -> Value
    where
        K: Resource<DynamicType = ()> + Serialize,
    {
        let (seen, send) = self.next().await;
        let name = obj.meta().name.as_deref().unwrap();
        assert_eq!(
            seen.method,
            Method::PATCH,
            "expected a status patch, got {}",
            seen.path
        );
        assert_eq!(seen.path, format!("{}/{name}/status", collection::<K>()));
        assert!(
            seen.query.contains("fieldManager=redeliver"),
            "{}",
            seen.query
        );
        assert!(seen.query.contains("force=true"), "{}", seen.query);
        assert_eq!(seen.content_type, "application/apply-patch+yaml");
        assert_eq!(seen.body["apiVersion"], "redeliver.dev/v1alpha1");
        assert_eq!(seen.body["kind"], K::kind(&()).as_ref());
        let status = seen.body["status"].clone();
        let mut answer = serde_json::to_value(obj).unwrap();
        answer["status"] = status.clone();
        send.send_response(json_response(&answer));
        status
    }

    /// An event (events.k8s.io/v1) created for the object; returns (type, reason, note).
    async fn expect_event<K>(&mut self, obj: &K) -> (String, String, String)
    where
        K: Resource<DynamicType = ()>,
    {
        let (seen, send) = self.next().await;
        assert_eq!(
            seen.method,
            Method::POST,
            "expected an event, got {} {}",
            seen.method,
            seen.path
        );
        assert_eq!(seen.path, EVENTS_PATH);
        assert_eq!(seen.body["regarding"]["name"], json!(obj.meta().name));
        assert_eq!(seen.body["regarding"]["kind"], K::kind(&()).as_ref());
        assert_eq!(seen.body["reportingController"], "redeliver");
        send.send_response(json_response(&seen.body));
        (
            seen.body["type"].as_str().unwrap_or_default().to_string(),
            seen.body["reason"].as_str().unwrap_or_default().to_string(),
            seen.body["note"].as_str().unwrap_or_default().to_string(),
        )
    }

    /// A JSON patch on the object's metadata.finalizers; answers with `answer`.
    async fn expect_finalizer_patch(
        &mut self,
        obj: &AccessPackageAssignment,
        answer: &AccessPackageAssignment,
    ) -> Value {
        let (seen, send) = self.next().await;
        let name = obj.metadata.name.as_deref().unwrap();
        assert_eq!(
            seen.method,
            Method::PATCH,
            "expected a finalizer patch, got {}",
            seen.path
        );
        assert_eq!(seen.path, format!("{APA_PATH}/{name}"));
        assert!(
            seen.body.to_string().contains("finalizers"),
            "{}",
            seen.body
        );
        send.send_response(json_response(&serde_json::to_value(answer).unwrap()));
        seen.body
    }

    /// Nothing else is sent to the API server.
    async fn expect_silence(&mut self) {
        if let Ok(Some((req, _))) =
            tokio::time::timeout(Duration::from_millis(300), self.0.next_request()).await
        {
            panic!("unexpected API request: {} {}", req.method(), req.uri());
        }
    }
}

/// `/apis/redeliver.dev/v1alpha1/namespaces/access/<plural>`.
fn collection<K: Resource<DynamicType = ()>>() -> String {
    format!(
        "/apis/{}/namespaces/{NS}/{}",
        K::api_version(&()),
        K::plural(&())
    )
}

fn json_response(v: &Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(v).unwrap()))
        .unwrap()
}

struct Env {
    sim: SimHandle,
    ctx: Arc<Context>,
    api: ApiServerVerifier,
}

impl Env {
    async fn start() -> Env {
        Env::start_with(Settings::default()).await
    }

    async fn start_with(settings: Settings) -> Env {
        Env::start_with_sim(settings, SimOptions::fast()).await
    }

    /// These tests assert every Kubernetes request in order, so the first-visit status is
    /// always written first (`first_status_after` zero); [`Env::start_as_configured`] keeps
    /// the operator's default.
    async fn start_with_sim(settings: Settings, opts: SimOptions) -> Env {
        Env::start_as_configured(
            Settings {
                first_status_after: Duration::ZERO,
                ..settings
            },
            opts,
        )
        .await
    }

    async fn start_as_configured(settings: Settings, opts: SimOptions) -> Env {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let sim = Simulator::start(Scenario::demo(), opts).await.unwrap();
        let graph = crate::fault_support::graph_client(&sim).unwrap();
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, NS);
        let (metrics, _registry) = Metrics::new(Some(graph.clone()));
        let ctx = Arc::new(Context::new(client, graph, metrics, &settings));
        Env {
            sim,
            ctx,
            api: ApiServerVerifier(handle),
        }
    }

    fn reconcile(&self, obj: &AccessPackageAssignment) -> JoinHandle<Result<Action, Error>> {
        tokio::spawn(assignment::reconcile(
            Arc::new(obj.clone()),
            self.ctx.clone(),
        ))
    }
}

fn apa(name: &str, spec: Value) -> AccessPackageAssignment {
    serde_json::from_value(json!({
        "apiVersion": "redeliver.dev/v1alpha1",
        "kind": "AccessPackageAssignment",
        "metadata": {
            "name": name, "namespace": NS, "uid": format!("uid-{name}"),
            "generation": 1, "resourceVersion": "100"
        },
        "spec": spec,
    }))
    .unwrap()
}

fn for_user(name: &str, upn: &str) -> AccessPackageAssignment {
    apa(
        name,
        json!({"accessPackage": {"id": FINANCE}, "target": {"userPrincipalName": upn}}),
    )
}

fn with_status(obj: &AccessPackageAssignment, status: &Value) -> AccessPackageAssignment {
    let mut v = serde_json::to_value(obj).unwrap();
    v["status"] = status.clone();
    serde_json::from_value(v).unwrap()
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or(&Value::Null)
}

/// `Action` keeps its delay private; its Debug form is `Action { requeue_after: Some(600.1s) }`.
fn requeue_secs(action: &Action) -> Option<f64> {
    let text = format!("{action:?}");
    let start = text.find("Some(")? + 5;
    let rest = &text[start..];
    let end = rest.find(')')?;
    let d = &rest[..end];
    if let Some(ms) = d.strip_suffix("ms") {
        return ms.parse::<f64>().ok().map(|v| v / 1000.0);
    }
    d.strip_suffix('s')?.parse().ok()
}

async fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn first_visit_sets_conditions_then_verified_status_then_radio_silence() {
    let mut env = Env::start().await;
    let bob = for_user("bob-finance", "bob@contoso.com");
    let task = env.reconcile(&bob);

    let first = env.api.expect_status_patch(&bob).await;
    assert_eq!(first["observedGeneration"], 1);
    assert_eq!(condition(&first, "Ready")["status"], "Unknown");
    assert_eq!(condition(&first, "Reconciling")["status"], "True");

    let verified = env.api.expect_status_patch(&bob).await;
    assert_eq!(condition(&verified, "Delivered")["status"], "True");
    assert_eq!(condition(&verified, "Ready")["status"], "True");
    assert!(condition(&verified, "Reconciling").is_null(), "{verified}");
    assert_eq!(verified["graphState"], "delivered");
    assert_eq!(verified["observedGeneration"], 1);
    assert!(verified["assignmentId"].is_string());

    // A healthy object's first verification is no news: no event.
    let action = task.await.unwrap().unwrap();
    // Periodic verification at verifyInterval (10m) with ±10% jitter.
    let secs = requeue_secs(&action).expect("periodic verification must be scheduled");
    assert!((540.0..=660.0).contains(&secs), "{action:?}");
    env.api.expect_silence().await;

    // Nothing changed: the next pass reads Graph but writes nothing to Kubernetes.
    let stored = with_status(&bob, &verified);
    let task = env.reconcile(&stored);
    task.await.unwrap().unwrap();
    env.api.expect_silence().await;
}

#[tokio::test]
async fn a_quick_first_verification_is_one_status_write_and_no_event() {
    // The operator's default: the simulator answers well within `first_status_after`, so
    // the verified status is the first and only write, and nothing is announced.
    let mut env = Env::start_as_configured(Settings::default(), SimOptions::fast()).await;
    let bob = for_user("bob-finance", "bob@contoso.com");
    let task = env.reconcile(&bob);
    let only = env.api.expect_status_patch(&bob).await;
    assert_eq!(condition(&only, "Delivered")["status"], "True");
    assert_eq!(condition(&only, "Ready")["status"], "True");
    assert!(condition(&only, "Reconciling").is_null(), "{only}");
    task.await.unwrap().unwrap();
    env.api.expect_silence().await;
}

#[tokio::test]
async fn a_slow_first_verification_shows_verifying_first() {
    // Graph slower than `first_status_after`: kstatus still sees conditions early.
    let mut env = Env::start_as_configured(
        Settings {
            first_status_after: Duration::from_millis(200),
            ..Settings::default()
        },
        SimOptions::fast(),
    )
    .await;
    env.sim.inject_fault(FaultSpec::Latency {
        millis: 400,
        scope: FaultScope::default(),
    });
    let bob = for_user("bob-finance", "bob@contoso.com");
    let task = env.reconcile(&bob);
    let first = env.api.expect_status_patch(&bob).await;
    assert_eq!(condition(&first, "Reconciling")["reason"], "Verifying");
    let verified = env.api.expect_status_patch(&bob).await;
    assert_eq!(condition(&verified, "Delivered")["status"], "True");
    task.await.unwrap().unwrap();
    env.api.expect_silence().await;
}

#[tokio::test]
async fn drift_is_reported_and_reprocessed() {
    let mut env = Env::start().await;
    let alice = for_user("alice-finance", "alice@contoso.com");
    let assignment_id = env
        .sim
        .assignment_id("alice@contoso.com", "Finance Analysts")
        .unwrap();
    let task = env.reconcile(&alice);

    env.api.expect_status_patch(&alice).await;
    let status = env.api.expect_status_patch(&alice).await;
    assert_eq!(condition(&status, "Delivered")["status"], "False");
    assert_eq!(
        condition(&status, "Delivered")["reason"],
        "ResourcesMissing"
    );
    assert_eq!(condition(&status, "Reconciling")["reason"], "Reprocessing");
    assert_eq!(status["reprocess"]["attempts"], 1);
    let missing: Vec<&Value> = status["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["state"] == "Missing")
        .collect();
    assert_eq!(missing.len(), 1, "{status}");
    assert_eq!(missing[0]["displayName"], "fin-writers");

    let (type_, reason, note) = env.api.expect_event(&alice).await;
    assert_eq!(
        (type_.as_str(), reason.as_str()),
        ("Warning", "DriftDetected")
    );
    assert!(note.contains("fin-writers"), "{note}");
    let (_, reason, _) = env.api.expect_event(&alice).await;
    assert_eq!(reason, "ReprocessRequested");
    task.await.unwrap().unwrap();
    env.api.expect_silence().await;

    // The reprocess really reached Graph, once.
    let path = format!(
        "/v1.0/identityGovernance/entitlementManagement/assignments/{assignment_id}/reprocess"
    );
    assert_eq!(env.sim.count_requests("POST", &path), 1);
    let writers = "fin-writers";
    eventually("the reprocess to restore fin-writers", || {
        env.sim.is_member(writers, "alice@contoso.com")
    })
    .await;
}

#[tokio::test]
async fn a_role_removed_in_pim_is_drift_named_with_kind_mode_and_scope_and_reprocessed() {
    let mut env = Env::start().await;
    // The demo's Security Operations: erin lost her eligible Global Reader role; her
    // Contributor role on rg-fin (read from the simulator's Resource Manager) is there.
    let erin = apa(
        "erin-security",
        json!({"accessPackage": {"id": "9f1c0c7e-0000-4000-8000-000000000003"},
               "target": {"userPrincipalName": "erin@contoso.com"}}),
    );
    let task = env.reconcile(&erin);

    env.api.expect_status_patch(&erin).await;
    let status = env.api.expect_status_patch(&erin).await;
    assert_eq!(
        condition(&status, "Delivered")["reason"],
        "ResourcesMissing"
    );
    assert_eq!(status["resourcesSummary"], "1/2");
    let resources = status["resources"].as_array().unwrap();
    let role = resources
        .iter()
        .find(|r| r["kind"] == "EntraRole")
        .expect("the Entra role in status");
    assert_eq!(
        (
            role["state"].as_str(),
            role["mode"].as_str(),
            role["scope"].as_str(),
            role["displayName"].as_str(),
            role["originSystem"].as_str()
        ),
        (
            Some("Missing"),
            Some("Eligible"),
            Some("/"),
            Some("Global Reader"),
            Some("DirectoryRole")
        ),
        "{status}"
    );
    let azure = resources
        .iter()
        .find(|r| r["kind"] == "AzureRole")
        .expect("the Azure role in status");
    assert_eq!(azure["state"], "Present", "{status}");
    assert!(
        azure["scope"]
            .as_str()
            .is_some_and(|s| s.ends_with("/resourceGroups/rg-fin")),
        "{status}"
    );

    let (type_, reason, note) = env.api.expect_event(&erin).await;
    assert_eq!(
        (type_.as_str(), reason.as_str()),
        ("Warning", "DriftDetected")
    );
    assert!(
        note.contains("EntraRole Global Reader (Eligible, /)"),
        "{note}"
    );
    let (_, reason, _) = env.api.expect_event(&erin).await;
    assert_eq!(reason, "ReprocessRequested");
    task.await.unwrap().unwrap();
    env.api.expect_silence().await;
    eventually("the reprocess to restore the eligibility", || {
        env.sim
            .has_directory_role("Global Reader", "erin@contoso.com", true)
    })
    .await;
}

#[tokio::test]
async fn a_target_holding_an_assignment_costs_no_user_read() {
    let mut env = Env::start().await;
    let bob_id = env.sim.user_id("bob@contoso.com").unwrap();
    env.sim.clear_request_log();
    let by_upn = for_user("bob-by-upn", "bob@contoso.com");
    let by_id = apa(
        "bob-by-id",
        json!({"accessPackage": {"id": FINANCE}, "target": {"objectId": bob_id}}),
    );
    for obj in [by_upn, by_id] {
        let task = env.reconcile(&obj);
        env.api.expect_status_patch(&obj).await;
        let verified = env.api.expect_status_patch(&obj).await;
        assert_eq!(condition(&verified, "Delivered")["status"], "True");
        assert!(
            verified["targetObjectId"]
                .as_str()
                .is_some_and(|id| id.eq_ignore_ascii_case(&bob_id)),
            "{verified}"
        );
        task.await.unwrap().unwrap();
    }
    // The package's assignments name bob: a user read would cost 1 RU per object and
    // pass, for nothing.
    assert_eq!(env.sim.count_requests("GET", "/v1.0/users"), 0);
    // Delivered with everything present: the package's requests are not even read.
    assert_eq!(
        env.sim.count_requests(
            "GET",
            "/v1.0/identityGovernance/entitlementManagement/assignmentRequests"
        ),
        0
    );
}

#[tokio::test]
async fn checking_its_own_reprocess_reads_memberships_fresh() {
    // Graph applies a reprocess a second after accepting it; meanwhile another object of the
    // same package reads (and caches) the group without alice.
    let opts = SimOptions {
        reprocess_delay: Duration::from_secs(1),
        ..SimOptions::fast()
    };
    let mut env = Env::start_with_sim(Settings::default(), opts).await;
    let alice = for_user("alice-finance", "alice@contoso.com");
    let task = env.reconcile(&alice);
    env.api.expect_status_patch(&alice).await;
    let reprocessing = env.api.expect_status_patch(&alice).await;
    assert_eq!(reprocessing["reprocess"]["lastOutcome"], "Requested");
    env.api.expect_event(&alice).await;
    env.api.expect_event(&alice).await;
    task.await.unwrap().unwrap();

    let bob = for_user("bob-finance", "bob@contoso.com");
    let task = env.reconcile(&bob);
    env.api.expect_status_patch(&bob).await;
    env.api.expect_status_patch(&bob).await;
    task.await.unwrap().unwrap();
    assert!(
        !env.sim.is_member("fin-writers", "alice@contoso.com"),
        "the test needs bob's read to come before the reprocess lands"
    );
    eventually("the reprocess to restore fin-writers", || {
        env.sim.is_member("fin-writers", "alice@contoso.com")
    })
    .await;

    // Well within the observation window: the cached copy still lacks alice, but her own
    // check reads the group again and sees the repair.
    env.sim.clear_request_log();
    let stored = with_status(&alice, &reprocessing);
    let task = env.reconcile(&stored);
    let verified = env.api.expect_status_patch(&alice).await;
    assert_eq!(
        condition(&verified, "Delivered")["status"],
        "True",
        "{verified}"
    );
    assert_eq!(verified["reprocess"]["lastOutcome"], "Repaired");
    env.api.expect_event(&alice).await;
    task.await.unwrap().unwrap();
    // What the repair cost to verify: the one group it restored, read again. The package's
    // assignments and requests (unchanged by a reprocess) and the groups that were present
    // all came from the shared cache.
    let writers = env.sim.group_id("fin-writers").unwrap();
    let log: Vec<String> = env
        .sim
        .request_log()
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e.method,
                e.path.split('?').next().unwrap_or_default()
            )
        })
        .collect();
    assert_eq!(
        log,
        [format!("GET /v1.0/groups/{writers}/members")],
        "a repair check re-reads what the repair changed, not the package"
    );
}

#[tokio::test]
async fn invalid_spec_is_stalled_without_calling_graph() {
    let mut env = Env::start().await;
    let bad = apa(
        "bad-target",
        json!({"accessPackage": {"id": FINANCE}, "target": {"userPrincipalName": "alice"}}),
    );
    env.sim.clear_request_log();
    let task = env.reconcile(&bad);

    env.api.expect_status_patch(&bad).await;
    let status = env.api.expect_status_patch(&bad).await;
    let stalled = condition(&status, "Stalled");
    assert_eq!(stalled["status"], "True");
    assert_eq!(stalled["reason"], "InvalidSpec");
    assert!(
        stalled["message"]
            .as_str()
            .unwrap()
            .contains("spec.target.userPrincipalName"),
        "{stalled}"
    );
    let (type_, reason, _) = env.api.expect_event(&bad).await;
    assert_eq!(
        (type_.as_str(), reason.as_str()),
        ("Warning", "InvalidSpec")
    );
    let action = task.await.unwrap().unwrap();
    // No hot retry: it waits for a spec change or the periodic pass.
    assert!(
        requeue_secs(&action).is_some_and(|s| s >= 60.0),
        "{action:?}"
    );
    env.api.expect_silence().await;
    assert_eq!(
        env.sim.count_requests("GET", "/v1.0/"),
        0,
        "an invalid declaration must not reach Graph"
    );
}

#[tokio::test]
async fn deletion_with_remove_adds_finalizer_removes_assignment_then_releases() {
    let mut env = Env::start().await;
    let bob = apa(
        "bob-remove",
        json!({"accessPackage": {"id": FINANCE}, "target": {"userPrincipalName": "bob@contoso.com"},
               "deletionPolicy": "Remove"}),
    );
    // 1. First sight of a Remove object: only the finalizer is added.
    let mut finalized = bob.clone();
    finalized.metadata.finalizers = Some(vec![FINALIZER.to_string()]);
    let task = env.reconcile(&bob);
    let patch = env.api.expect_finalizer_patch(&bob, &finalized).await;
    assert!(patch.to_string().contains(FINALIZER), "{patch}");
    assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
    env.api.expect_silence().await;

    // 2. Deleted: cleanup submits an adminRemove and keeps the finalizer while it runs.
    let assignment_id = env
        .sim
        .assignment_id("bob@contoso.com", "Finance Analysts")
        .unwrap();
    let mut deleting = finalized.clone();
    deleting.metadata.deletion_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
    );
    let deleting = with_status(
        &deleting,
        &json!({"assignmentId": assignment_id, "accessPackageId": FINANCE,
                "targetObjectId": env.sim.user_id("bob@contoso.com").unwrap()}),
    );
    let task = env.reconcile(&deleting);
    let (_, reason, note) = env.api.expect_event(&deleting).await;
    assert_eq!(reason, "RemovalRequested");
    assert!(note.contains(&assignment_id), "{note}");
    let err = task.await.unwrap().unwrap_err();
    assert!(err.is_waiting(), "{err}");
    env.api.expect_silence().await;
    assert_eq!(
        env.sim.count_requests(
            "POST",
            "/v1.0/identityGovernance/entitlementManagement/assignmentRequests"
        ),
        1
    );

    // 3. Once Entra ID has removed it, the finalizer is released (and nothing is submitted twice).
    eventually("the adminRemove to complete", || {
        env.sim
            .assignment_state(&assignment_id)
            .is_none_or(|s| s == "expired")
    })
    .await;
    let task = env.reconcile(&deleting);
    let (_, reason, _) = env.api.expect_event(&deleting).await;
    assert_eq!(reason, "AssignmentRemoved");
    let mut released = deleting.clone();
    released.metadata.finalizers = None;
    let patch = env.api.expect_finalizer_patch(&deleting, &released).await;
    assert!(patch.to_string().contains("remove"), "{patch}");
    task.await.unwrap().unwrap();
    env.api.expect_silence().await;
    assert_eq!(
        env.sim.count_requests(
            "POST",
            "/v1.0/identityGovernance/entitlementManagement/assignmentRequests"
        ),
        1
    );
}

#[tokio::test]
async fn orphan_policy_drops_a_leftover_finalizer() {
    let mut env = Env::start().await;
    let mut bob = for_user("bob-orphan", "bob@contoso.com");
    bob.metadata.finalizers = Some(vec![FINALIZER.to_string()]);
    let task = env.reconcile(&bob);
    let mut released = bob.clone();
    released.metadata.finalizers = Some(vec![]);
    let patch = env.api.expect_finalizer_patch(&bob, &released).await;
    assert_eq!(patch["metadata"]["finalizers"], json!([]));
    assert_eq!(patch["metadata"]["resourceVersion"], "100");
    assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
    env.api.expect_silence().await;
}

const REPROCESS_PREFIX: &str = "/v1.0/identityGovernance/entitlementManagement/assignments/";

fn reprocess_calls(sim: &SimHandle) -> usize {
    sim.request_log()
        .iter()
        .filter(|e| {
            e.method == "POST"
                && e.path.starts_with(REPROCESS_PREFIX)
                && e.path.ends_with("/reprocess")
        })
        .count()
}

#[tokio::test]
async fn graph_throttling_requeues_at_exactly_retry_after_without_status_claims() {
    let mut env = Env::start().await;
    env.sim.inject_fault(FaultSpec::Throttle {
        retry_after: 300.0,
        scope: FaultScope {
            path_prefix: Some("/identityGovernance/entitlementManagement/assignments/".into()),
            method: Some("POST".into()),
            count: Some(10),
            duration_ms: None,
        },
    });
    let alice = for_user("alice-throttled", "alice@contoso.com");
    let task = env.reconcile(&alice);
    let first = env.api.expect_status_patch(&alice).await; // first visit
    // The reprocess is recorded before it is sent (so a restart cannot send it twice)...
    let claim = env.api.expect_status_patch(&alice).await;
    assert_eq!(claim["reprocess"]["attempts"], 1, "{claim}");
    // ...and put back when Graph throttled it: the status claims no reprocess.
    let restored = env.api.expect_status_patch(&alice).await;
    assert_eq!(restored, first);
    let err = task.await.unwrap().unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(300)), "{err}");
    let action = assignment::error_policy(Arc::new(alice.clone()), &err, env.ctx.clone());
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    // No event, and nothing left in the repair ledger for the next attempt to wait for.
    env.api.expect_silence().await;
    assert!(env.ctx.ledger().is_empty());
}

#[tokio::test]
async fn spent_reprocess_budget_defers_without_writing() {
    let mut env = Env::start_with(Settings {
        reprocess_per_minute: 1,
        ..Settings::default()
    })
    .await;
    // Reprocess is accepted but changes nothing, so alice stays drifted.
    env.sim.inject_fault(FaultSpec::SilentReprocess {
        assignment_ids: vec![],
        request_ids: vec![],
    });
    // Bob is drifted too (another Graph assignment of the same package).
    env.sim
        .remove_member("fin-writers", "bob@contoso.com")
        .unwrap();
    let first = for_user("alice-1", "alice@contoso.com");
    let task = env.reconcile(&first);
    env.api.expect_status_patch(&first).await;
    env.api.expect_status_patch(&first).await;
    env.api.expect_event(&first).await;
    env.api.expect_event(&first).await;
    task.await.unwrap().unwrap();
    assert_eq!(reprocess_calls(&env.sim), 1);

    // The budget (1 a minute) is spent: the second object (bob) says its drift at once
    // (Delivered=False, DriftDetected) and that the reprocess waits for a slot, claiming
    // nothing: no attempt, no reprocess time, no reprocess sent.
    let second = for_user("bob-2", "bob@contoso.com");
    let task = env.reconcile(&second);
    env.api.expect_status_patch(&second).await; // first visit
    let said = env.api.expect_status_patch(&second).await;
    let (_, event_reason, _) = env.api.expect_event(&second).await;
    let action = task.await.unwrap().unwrap();
    let secs = requeue_secs(&action).unwrap();
    assert!(secs > 1.0 && secs <= 60.0, "{action:?}");
    env.api.expect_silence().await;
    assert_eq!(reprocess_calls(&env.sim), 1);
    let cond = |t: &str| {
        said["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == t)
            .cloned()
            .unwrap_or_else(|| panic!("no {t}: {said}"))
    };
    assert_eq!(cond("Delivered")["status"], "False", "{said}");
    assert_eq!(cond("Delivered")["reason"], "ResourcesMissing");
    let reconciling = cond("Reconciling");
    assert_eq!(reconciling["reason"], "RateLimited", "{said}");
    let message = reconciling["message"].as_str().unwrap();
    assert!(
        message.contains("reprocess budget (1 a minute") && message.contains("next slot at about"),
        "{message}"
    );
    assert_eq!(said["reprocess"]["attempts"], 0, "nothing claimed: {said}");
    assert!(said["reprocess"]["lastRequestedTime"].is_null(), "{said}");
    assert_eq!(event_reason, "DriftDetected");

    // Still waiting on the next try: the same status, so nothing is written again.
    let mut waiting = serde_json::to_value(&second).unwrap();
    waiting["status"] = said.clone();
    let waiting: redeliver::api::AccessPackageAssignment = serde_json::from_value(waiting).unwrap();
    let task = env.reconcile(&waiting);
    task.await.unwrap().unwrap();
    env.api.expect_silence().await;
    assert_eq!(reprocess_calls(&env.sim), 1);
}

#[tokio::test]
async fn a_second_object_covering_the_assignment_reports_the_repair_in_flight() {
    let mut env = Env::start().await;
    // Accepted but changes nothing, so alice stays drifted for the second object.
    env.sim.inject_fault(FaultSpec::SilentReprocess {
        assignment_ids: vec![],
        request_ids: vec![],
    });
    let first = for_user("alice-finance", "alice@contoso.com");
    let task = env.reconcile(&first);
    env.api.expect_status_patch(&first).await;
    env.api.expect_status_patch(&first).await;
    env.api.expect_event(&first).await; // DriftDetected
    env.api.expect_event(&first).await; // ReprocessRequested
    task.await.unwrap().unwrap();
    assert_eq!(reprocess_calls(&env.sim), 1);

    let second = for_user("alice-again", "alice@contoso.com");
    let task = env.reconcile(&second);
    env.api.expect_status_patch(&second).await; // first visit
    let status = env.api.expect_status_patch(&second).await;
    let reconciling = condition(&status, "Reconciling");
    assert_eq!(reconciling["reason"], "Reprocessing");
    assert!(
        reconciling["message"]
            .as_str()
            .unwrap()
            .contains("requested by AccessPackageAssignment access/alice-finance"),
        "{reconciling}"
    );
    assert_eq!(
        status["reprocess"]["lastRequestedBy"],
        "AccessPackageAssignment access/alice-finance"
    );
    assert_eq!(status["reprocess"]["attempts"], 1);
    let mut reasons = Vec::new();
    for _ in 0..2 {
        reasons.push(env.api.expect_event(&second).await.1);
    }
    assert_eq!(reasons, ["DriftDetected", "ReprocessInFlight"]);
    task.await.unwrap().unwrap();
    env.api.expect_silence().await;
    assert_eq!(
        reprocess_calls(&env.sim),
        1,
        "one Graph assignment, one repair"
    );
}

#[tokio::test]
async fn zero_reprocess_rate_reports_drift_as_operator_disabled() {
    let mut env = Env::start_with(Settings {
        reprocess_per_minute: 0,
        ..Settings::default()
    })
    .await;
    let alice = for_user("alice-report", "alice@contoso.com");
    let task = env.reconcile(&alice);
    env.api.expect_status_patch(&alice).await;
    let status = env.api.expect_status_patch(&alice).await;
    assert_eq!(
        condition(&status, "Delivered")["reason"],
        "ResourcesMissing"
    );
    assert!(condition(&status, "Reconciling").is_null(), "{status}");
    assert!(
        status.to_string().contains("--reprocess-rate 0"),
        "the status says why nothing is repaired: {status}"
    );
    let (_, reason, _) = env.api.expect_event(&alice).await;
    assert_eq!(reason, "DriftDetected");
    task.await.unwrap().unwrap();
    env.api.expect_silence().await;
    assert_eq!(reprocess_calls(&env.sim), 0);
}

#[tokio::test]
async fn suspended_assignment_reports_but_never_writes_to_graph() {
    let mut env = Env::start().await;
    let alice = apa(
        "alice-suspended",
        json!({"accessPackage": {"id": FINANCE}, "target": {"userPrincipalName": "alice@contoso.com"},
               "suspend": true}),
    );
    let task = env.reconcile(&alice);
    env.api.expect_status_patch(&alice).await;
    let status = env.api.expect_status_patch(&alice).await;
    assert_eq!(
        condition(&status, "Delivered")["reason"],
        "ResourcesMissing"
    );
    assert_eq!(condition(&status, "Ready")["reason"], "Suspended");
    let (_, reason, _) = env.api.expect_event(&alice).await;
    assert_eq!(reason, "DriftDetected");
    task.await.unwrap().unwrap();
    env.api.expect_silence().await;
    assert_eq!(reprocess_calls(&env.sim), 0);
}

fn guard_of(name: &str, mode: &str) -> AccessPackageGuard {
    serde_json::from_value(json!({
        "apiVersion": "redeliver.dev/v1alpha1",
        "kind": "AccessPackageGuard",
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}"), "generation": 3, "resourceVersion": "7"},
        "spec": {"accessPackage": {"id": FINANCE}, "mode": mode, "maxReprocessPerSweep": 5},
    }))
    .unwrap()
}

#[tokio::test]
async fn guard_sweep_lists_drift_and_reprocesses_in_enforce_mode() {
    let mut env = Env::start().await;
    let g = guard_of("finance-guard", "Enforce");
    let task = tokio::spawn(guard::reconcile(Arc::new(g.clone()), env.ctx.clone()));
    let first = env.api.expect_status_patch(&g).await;
    assert_eq!(first["observedGeneration"], 3);
    assert_eq!(condition(&first, "Reconciling")["status"], "True");
    let status = env.api.expect_status_patch(&g).await;
    assert_eq!(status["assignments"]["total"], 2, "{status}");
    assert_eq!(status["assignments"]["drifted"], 1);
    assert_eq!(status["assignments"]["delivered"], 1);
    let drifted = status["drifted"].as_array().unwrap();
    assert_eq!(drifted.len(), 1);
    assert_eq!(drifted[0]["target"], "alice@contoso.com");
    assert_eq!(drifted[0]["reprocessAttempts"], 1);
    assert_eq!(
        condition(&status, "Delivered")["reason"],
        "ResourcesMissing"
    );
    let (type_, reason, note) = env.api.expect_event(&g).await;
    assert_eq!(
        (type_.as_str(), reason.as_str()),
        ("Warning", "DriftDetected")
    );
    assert!(note.contains("alice@contoso.com"), "{note}");
    let (_, reason, _) = env.api.expect_event(&g).await;
    assert_eq!(reason, "ReprocessRequested");
    task.await.unwrap().unwrap();
    env.api.expect_silence().await;
    assert_eq!(reprocess_calls(&env.sim), 1);
}

#[tokio::test]
async fn guard_in_audit_mode_only_reports() {
    let mut env = Env::start().await;
    let g = guard_of("finance-audit", "Audit");
    let task = tokio::spawn(guard::reconcile(Arc::new(g.clone()), env.ctx.clone()));
    env.api.expect_status_patch(&g).await;
    let status = env.api.expect_status_patch(&g).await;
    assert_eq!(status["assignments"]["drifted"], 1);
    assert_eq!(condition(&status, "Ready")["reason"], "ReportOnly");
    let (_, reason, _) = env.api.expect_event(&g).await;
    assert_eq!(reason, "DriftDetected");
    task.await.unwrap().unwrap();
    env.api.expect_silence().await;
    assert_eq!(reprocess_calls(&env.sim), 0);

    // Same findings next sweep: no write, no event.
    let stored: AccessPackageGuard = {
        let mut v = serde_json::to_value(&g).unwrap();
        v["status"] = status;
        serde_json::from_value(v).unwrap()
    };
    guard::reconcile(Arc::new(stored), env.ctx.clone())
        .await
        .unwrap();
    env.api.expect_silence().await;
}

#[tokio::test]
async fn malformed_object_is_reported_once_on_its_status() {
    use kube::api::{ApiResource, DynamicObject};
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, NS);
    let mut api = ApiServerVerifier(handle);
    use redeliver::controller::watch::{MALFORMED_QUEUE, Malformed};
    let (tx, rx) = tokio::sync::mpsc::channel(MALFORMED_QUEUE);
    let reporter = tokio::spawn(redeliver::controller::watch::report_malformed(
        client,
        ApiResource::erase::<AccessPackageAssignment>(&()),
        rx,
        std::sync::Arc::new(redeliver::controller::context::SystemClock),
    ));
    let mut raw = serde_json::to_value(for_user("typo", "alice@contoso.com")).unwrap();
    raw["spec"]["reprocess"] = json!({"mode": "Sometimes"});
    let bad: DynamicObject = serde_json::from_value(raw.clone()).unwrap();
    let typed_twin = for_user("typo", "alice@contoso.com");
    tx.send(Malformed::of(
        &bad,
        "unknown variant `Sometimes`".to_string(),
    ))
    .await
    .unwrap();
    let status = api.expect_status_patch(&typed_twin).await;
    let stalled = condition(&status, "Stalled");
    assert_eq!(stalled["status"], "True");
    assert_eq!(stalled["reason"], "InvalidSpec");
    assert!(stalled["message"].as_str().unwrap().contains("Sometimes"));
    assert_eq!(condition(&status, "Ready")["status"], "False");
    let (type_, reason, note) = api.expect_event(&typed_twin).await;
    assert_eq!(
        (type_.as_str(), reason.as_str()),
        ("Warning", "InvalidSpec")
    );
    assert!(note.contains("Sometimes"), "{note}");

    // The status write comes back through the watch, still malformed: no second write.
    raw["status"] = status;
    let again: DynamicObject = serde_json::from_value(raw).unwrap();
    tx.send(Malformed::of(
        &again,
        "unknown variant `Sometimes`".to_string(),
    ))
    .await
    .unwrap();
    api.expect_silence().await;
    drop(tx);
    reporter.await.unwrap();
}

#[tokio::test]
async fn missing_crd_fails_fast_with_the_install_command() {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, NS);
    let mut api = ApiServerVerifier(handle);
    let check = tokio::spawn(async move { redeliver::controller::check_crds(&client, &[]).await });
    let (seen, send) = api.next().await;
    assert_eq!(seen.method, Method::GET);
    assert_eq!(
        seen.path,
        "/apis/redeliver.dev/v1alpha1/accesspackageassignments"
    );
    assert!(seen.query.contains("limit=1"), "{}", seen.query);
    let not_found = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "the server could not find the requested resource", "reason": "NotFound", "code": 404});
    send.send_response(
        Response::builder()
            .status(StatusCode::NOT_FOUND)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&not_found).unwrap()))
            .unwrap(),
    );
    let err = check.await.unwrap().unwrap_err().to_string();
    assert!(
        err.contains("kubectl apply --server-side -f crds/"),
        "{err}"
    );
    assert!(err.contains("AccessPackageAssignment"), "{err}");
}

#[tokio::test]
async fn a_forbidden_guard_list_names_the_guard_resource_in_the_rbac_hint() {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, NS);
    let mut api = ApiServerVerifier(handle);
    let check = tokio::spawn(async move { redeliver::controller::check_crds(&client, &[]).await });
    // Assignments may be listed...
    let (seen, send) = api.next().await;
    assert!(
        seen.path.ends_with("/accesspackageassignments"),
        "{}",
        seen.path
    );
    send.send_response(json_response(&json!({
        "apiVersion": "redeliver.dev/v1alpha1", "kind": "AccessPackageAssignmentList",
        "metadata": {"resourceVersion": "1"}, "items": []
    })));
    // ...guards may not.
    let (seen, send) = api.next().await;
    assert!(seen.path.ends_with("/accesspackageguards"), "{}", seen.path);
    let forbidden = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "accesspackageguards.redeliver.dev is forbidden", "reason": "Forbidden", "code": 403});
    send.send_response(
        Response::builder()
            .status(StatusCode::FORBIDDEN)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&forbidden).unwrap()))
            .unwrap(),
    );
    let err = check.await.unwrap().unwrap_err().to_string();
    assert!(
        err.contains("grant get/list/watch/patch on accesspackageguards.redeliver.dev"),
        "{err}"
    );
}

#[tokio::test]
async fn objects_of_one_package_share_each_resource_read() {
    let mut env = Env::start().await;
    let first = for_user("bob-1", "bob@contoso.com");
    let task = env.reconcile(&first);
    env.api.expect_status_patch(&first).await;
    let verified = env.api.expect_status_patch(&first).await;
    task.await.unwrap().unwrap();
    // A second and third object for the same package within the window: no membership
    // read again, and (their status being current) no Kubernetes write either.
    for name in ["bob-2", "bob-3"] {
        let other = with_status(&for_user(name, "bob@contoso.com"), &verified);
        env.reconcile(&other).await.unwrap().unwrap();
    }
    env.api.expect_silence().await;
    let readers = env.sim.group_id("fin-readers").unwrap();
    let writers = env.sim.group_id("fin-writers").unwrap();
    for g in [readers, writers] {
        assert_eq!(
            env.sim
                .count_requests("GET", &format!("/v1.0/groups/{g}/members")),
            1,
            "one read of group {g} serves every object"
        );
    }
    assert_eq!(env.sim.count_requests("GET", "/v1.0/servicePrincipals/"), 1);
}

#[tokio::test]
async fn missing_assignment_is_requested_once_and_tracked() {
    let mut env = Env::start().await;
    let carol = for_user("carol-finance", "carol@contoso.com");
    let task = env.reconcile(&carol);
    env.api.expect_status_patch(&carol).await;
    let status = env.api.expect_status_patch(&carol).await;
    assert_eq!(condition(&status, "Reconciling")["reason"], "Requesting");
    let request_id = status["lastRequestId"]
        .as_str()
        .expect("request id recorded")
        .to_string();
    let (_, reason, _) = env.api.expect_event(&carol).await;
    assert_eq!(reason, "AssignmentRequested");
    task.await.unwrap().unwrap();
    env.api.expect_silence().await;
    let requests = "/v1.0/identityGovernance/entitlementManagement/assignmentRequests";
    assert_eq!(env.sim.count_requests("POST", requests), 1);

    // Next pass follows that request instead of asking again.
    let stored = with_status(&carol, &status);
    let task = env.reconcile(&stored);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        // Delivery may or may not have completed; either way no second adminAdd.
        while !task.is_finished() {
            if let Ok(Some((req, send))) =
                tokio::time::timeout(Duration::from_millis(50), env.api.0.next_request()).await
            {
                let path = req.uri().path().to_string();
                let body = req.into_body().collect_bytes().await.unwrap();
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                assert!(
                    path.ends_with("/status") || path == EVENTS_PATH,
                    "unexpected request {path}"
                );
                let answer = if path == EVENTS_PATH {
                    v
                } else {
                    let mut o = serde_json::to_value(&stored).unwrap();
                    o["status"] = v["status"].clone();
                    o
                };
                send.send_response(json_response(&answer));
            }
        }
    })
    .await;
    task.await.unwrap().unwrap();
    assert_eq!(env.sim.count_requests("POST", requests), 1);
    assert!(
        env.sim
            .request_log()
            .iter()
            .any(|e| e.method == "GET" && e.path.contains(&request_id)),
        "the tracked request is read directly"
    );
}

#[tokio::test]
async fn manual_mode_reprocesses_only_on_a_new_annotation_value() {
    let mut env = Env::start().await;
    let manual = apa(
        "alice-manual",
        json!({"accessPackage": {"id": FINANCE}, "target": {"userPrincipalName": "alice@contoso.com"},
               "reprocess": {"mode": "Manual"}}),
    );
    let task = env.reconcile(&manual);
    env.api.expect_status_patch(&manual).await;
    let status = env.api.expect_status_patch(&manual).await;
    assert_eq!(
        condition(&status, "Delivered")["reason"],
        "ResourcesMissing"
    );
    let (_, reason, _) = env.api.expect_event(&manual).await;
    assert_eq!(reason, "DriftDetected");
    task.await.unwrap().unwrap();
    env.api.expect_silence().await;
    assert_eq!(
        reprocess_calls(&env.sim),
        0,
        "Manual mode waits for the annotation"
    );

    // The GitOps "Reprocess" button.
    let mut pressed = with_status(&manual, &status);
    pressed.metadata.annotations = Some(
        [(
            redeliver::api::REPROCESS_ANNOTATION.to_string(),
            "2026-11-28T10:00:00Z".to_string(),
        )]
        .into(),
    );
    let task = env.reconcile(&pressed);
    let status = env.api.expect_status_patch(&pressed).await;
    assert_eq!(
        status["reprocess"]["lastHandledRequest"],
        "2026-11-28T10:00:00Z"
    );
    let (_, reason, _) = env.api.expect_event(&pressed).await;
    assert_eq!(reason, "ReprocessRequested");
    task.await.unwrap().unwrap();
    env.api.expect_silence().await;
    assert_eq!(reprocess_calls(&env.sim), 1);
}

/// `--verify-interval` is the verification interval of every object that sets no
/// `spec.verifyInterval` (the CRD no longer defaults the field, which hid the flag).
#[tokio::test]
async fn the_operators_verify_interval_applies_to_an_object_that_sets_none() {
    let mut env = Env::start_with(Settings {
        verify_interval: Duration::from_secs(3600),
        ..Settings::default()
    })
    .await;
    let bob = for_user("bob-default-interval", "bob@contoso.com");
    assert!(bob.spec.verify_interval.is_none());
    let task = env.reconcile(&bob);
    env.api.expect_status_patch(&bob).await;
    env.api.expect_status_patch(&bob).await;
    let secs = requeue_secs(&task.await.unwrap().unwrap()).unwrap();
    assert!(
        (3240.0..=3960.0).contains(&secs),
        "verified again after the flag's 1h (± jitter), not 10m: {secs}s"
    );
    // An object with its own interval keeps it.
    let mut own = for_user("bob-own-interval", "bob@contoso.com");
    own.spec.verify_interval = Some("2m".into());
    let task = env.reconcile(&own);
    env.api.expect_status_patch(&own).await;
    env.api.expect_status_patch(&own).await;
    let secs = requeue_secs(&task.await.unwrap().unwrap()).unwrap();
    assert!((108.0..=132.0).contains(&secs), "{secs}s");
}

/// The cross-check with Microsoft's access drift report on.
fn with_drift_report() -> Settings {
    Settings {
        use_access_drift_report: true,
        ..Settings::default()
    }
}

const DRIFT_SUMMARIES: &str = "/beta/identityGovernance/entitlementManagement/accessDriftSummaries";

fn disagreements(env: &Env) -> u64 {
    env.ctx
        .metrics
        .access_drift_disagreements
        .get_or_create(&redeliver::controller::metrics::KindLabels {
            kind: "AccessPackageAssignment",
        })
        .get()
}

#[tokio::test]
async fn a_drift_report_that_disagrees_raises_a_warning_and_nothing_else() {
    let mut env = Env::start_with(with_drift_report()).await;
    // Bob holds fin-writers; the report (lagging) says he is missing it.
    env.sim
        .set_reported_drift("fin-writers", &["bob@contoso.com"])
        .unwrap();
    let bob = for_user("bob-finance", "bob@contoso.com");
    let task = env.reconcile(&bob);
    env.api.expect_status_patch(&bob).await;
    let status = env.api.expect_status_patch(&bob).await;
    let delivered = condition(&status, "Delivered");
    assert_eq!(delivered["status"], "True", "{status}");
    let message = delivered["message"].as_str().unwrap();
    assert!(
        message.contains(
            "Microsoft's access drift report disagrees: it reports fin-writers missing for bob@contoso.com, Redeliver's read found it present"
        ),
        "{message}"
    );
    assert_eq!(condition(&status, "Ready")["status"], "True", "{status}");
    task.await.unwrap().unwrap();
    // No event, no reprocess, no request: only the note.
    env.api.expect_silence().await;
    assert_eq!(env.sim.count_requests("POST", "/v1.0/"), 0);
    assert_eq!(disagreements(&env), 1);
    // The report was read: one summaries page and the details of the one resource it
    // counts missing users on.
    assert_eq!(env.sim.count_requests("GET", DRIFT_SUMMARIES), 2);
}

#[tokio::test]
async fn the_drift_report_is_not_read_unless_asked_for() {
    let mut env = Env::start().await;
    env.sim
        .set_reported_drift("fin-writers", &["bob@contoso.com"])
        .unwrap();
    let bob = for_user("bob-finance", "bob@contoso.com");
    let task = env.reconcile(&bob);
    env.api.expect_status_patch(&bob).await;
    let status = env.api.expect_status_patch(&bob).await;
    let message = condition(&status, "Delivered")["message"].as_str().unwrap();
    assert!(!message.contains("drift report"), "{message}");
    task.await.unwrap().unwrap();
    env.api.expect_silence().await;
    assert_eq!(env.sim.count_requests("GET", "/beta/"), 0);
    assert_eq!(disagreements(&env), 0);
}

#[tokio::test]
async fn an_unavailable_drift_report_is_one_note_and_changes_nothing_else() {
    let mut env = Env::start_with(with_drift_report()).await;
    env.sim.set_drift_report_unavailable(Some(403));
    let bob = for_user("bob-finance", "bob@contoso.com");
    let task = env.reconcile(&bob);
    env.api.expect_status_patch(&bob).await;
    let status = env.api.expect_status_patch(&bob).await;
    let delivered = condition(&status, "Delivered");
    assert_eq!(delivered["status"], "True", "{status}");
    assert_eq!(delivered["reason"], "Delivered", "{status}");
    let message = delivered["message"].as_str().unwrap();
    assert_eq!(
        message.matches("access drift report unavailable:").count(),
        1,
        "{message}"
    );
    assert!(
        message.contains("forbidden") && message.contains("EntitlementManagement.Read.All"),
        "{message}"
    );
    task.await.unwrap().unwrap();
    env.api.expect_silence().await;
    assert_eq!(env.sim.count_requests("POST", "/v1.0/"), 0);
    assert_eq!(disagreements(&env), 0);
    // One refused read, kept for the window: asked once.
    assert_eq!(env.sim.count_requests("GET", DRIFT_SUMMARIES), 1);
}

#[tokio::test]
async fn a_drift_report_saying_in_sync_does_not_stop_a_repair_nor_add_a_write() {
    let mut env = Env::start_with(with_drift_report()).await;
    // Alice lost fin-writers; the (lagging) report says nobody misses it.
    env.sim.set_reported_drift("fin-writers", &[]).unwrap();
    let alice = for_user("alice-finance", "alice@contoso.com");
    let assignment_id = env
        .sim
        .assignment_id("alice@contoso.com", "Finance Analysts")
        .unwrap();
    let task = env.reconcile(&alice);
    env.api.expect_status_patch(&alice).await;
    // The reprocess's own status write carries the note: no second write for it.
    let status = env.api.expect_status_patch(&alice).await;
    let delivered = condition(&status, "Delivered");
    assert_eq!(delivered["status"], "False", "{status}");
    assert_eq!(delivered["reason"], "ResourcesMissing", "{status}");
    let message = delivered["message"].as_str().unwrap();
    assert!(
        message.contains(
            "Microsoft's access drift report disagrees: it reports fin-writers in sync for alice@contoso.com, Redeliver's read found it missing"
        ),
        "{message}"
    );
    assert_eq!(condition(&status, "Reconciling")["reason"], "Reprocessing");
    let (_, reason, _) = env.api.expect_event(&alice).await;
    assert_eq!(reason, "DriftDetected");
    let (_, reason, _) = env.api.expect_event(&alice).await;
    assert_eq!(reason, "ReprocessRequested");
    task.await.unwrap().unwrap();
    env.api.expect_silence().await;
    let path = format!(
        "/v1.0/identityGovernance/entitlementManagement/assignments/{assignment_id}/reprocess"
    );
    assert_eq!(env.sim.count_requests("POST", &path), 1);
    assert_eq!(disagreements(&env), 1);
}

#[tokio::test]
async fn a_guard_notes_the_drift_reports_disagreements_and_sweeps_as_before() {
    let mut env = Env::start_with(with_drift_report()).await;
    // Bob holds fin-writers, alice lost it; the lagging report says the reverse.
    env.sim
        .set_reported_drift("fin-writers", &["bob@contoso.com"])
        .unwrap();
    let g = guard_of("finance-audit", "Audit");
    let task = tokio::spawn(guard::reconcile(Arc::new(g.clone()), env.ctx.clone()));
    env.api.expect_status_patch(&g).await;
    let status = env.api.expect_status_patch(&g).await;
    assert_eq!(status["assignments"]["drifted"], 1, "{status}");
    assert_eq!(condition(&status, "Ready")["reason"], "ReportOnly");
    let delivered = condition(&status, "Delivered");
    assert_eq!(delivered["reason"], "ResourcesMissing", "{status}");
    let message = delivered["message"].as_str().unwrap();
    assert!(
        message.contains("it reports fin-writers in sync for alice@contoso.com, Redeliver's read found it missing"),
        "{message}"
    );
    assert!(
        message.contains(
            "it reports fin-writers missing for bob@contoso.com, Redeliver's read found it present"
        ),
        "{message}"
    );
    let (_, reason, _) = env.api.expect_event(&g).await;
    assert_eq!(reason, "DriftDetected");
    task.await.unwrap().unwrap();
    env.api.expect_silence().await;
    assert_eq!(reprocess_calls(&env.sim), 0);
    assert_eq!(
        env.ctx
            .metrics
            .access_drift_disagreements
            .get_or_create(&redeliver::controller::metrics::KindLabels {
                kind: "AccessPackageGuard",
            })
            .get(),
        2
    );
}
