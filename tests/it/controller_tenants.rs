//! Many tenants, one operator: `GraphConnection` and `ClusterGraphConnection` end to end.
//! `run_controllers` against the in-process Kubernetes API server (`redeliver_fake_kube`)
//! and two (or three) Graph simulators over HTTP on 127.0.0.1, each one tenant with its
//! own credentials and its own data.
//!
//! - objects in namespace A use A's connection, objects in B use B's (their status names
//!   the other tenant's assignment ids, each simulator sees only its own objects' calls);
//! - a wrong Secret in A stalls A's connection (with the Entra error code) and A's objects,
//!   while B keeps reconciling; fixing the Secret un-stalls both;
//! - a throttled tenant does not delay the other;
//! - deleting a connection stalls its objects: never a silent fallback to the operator's
//!   own tenant;
//! - a namespaced object cannot use another namespace's GraphConnection, and a
//!   ClusterGraphConnection's Secret is read only from the operator's namespace;
//! - a workload-identity connection needs no Secret;
//! - two shards split the connections, each reconciling only its own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redeliver::controller::{Context, Settings};
use redeliver_fake_kube::FakeKube;
use redeliver_sim::{FaultScope, FaultSpec, Scenario, SimHandle, SimOptions, Simulator};
use serde_json::{Value, json};

use crate::controller_support::{
    Controller, connection_spec, context, graph_connection, kube_client, secret,
};

const OPERATOR_NS: &str = "redeliver-system";
const A: &str = "team-a";
const B: &str = "team-b";
const APA: &str = "accesspackageassignments";
const APG: &str = "accesspackageguards";
const GC: &str = "graphconnections";
const CGC: &str = "clustergraphconnections";
const FINANCE: &str = "9f1c0c7e-0000-4000-8000-000000000001";

/// The demo tenant renamed, with its own seed (so its own object ids) and credentials. In
/// `fabrikam` alice's assignment is fully delivered; in `contoso` she misses fin-writers.
pub async fn tenant(name: &str, seed: u64, id_suffix: &str, alice_drifted: bool) -> SimHandle {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut yaml = Scenario::demo_yaml()
        .replace("seed: 42", &format!("seed: {seed}"))
        .replace("name: contoso\n", &format!("name: {name}\n"))
        .replace(
            "8c3f7a52-1d2b-4e6a-9f00-c0250a0d1e01",
            &format!("8c3f7a52-1d2b-4e6a-9f00-c0250a0d1e{id_suffix}"),
        )
        .replace(
            "5e1d0c77-3f5a-4b8e-a0c1-7ed1e0e00001",
            &format!("5e1d0c77-3f5a-4b8e-a0c1-7ed1e0e000{id_suffix}"),
        )
        .replace("sim-secret-contoso", &format!("sim-secret-{name}"));
    if !alice_drifted {
        yaml = yaml.replace(
            "state: delivered, missing: [fin-writers]}",
            "state: delivered}",
        );
    }
    Simulator::start(Scenario::from_yaml_str(&yaml).unwrap(), SimOptions::fast())
        .await
        .unwrap()
}

fn cluster_connection(name: &str, sim: &SimHandle, secret_name: &str) -> Value {
    json!({
        "apiVersion": "redeliver.dev/v1alpha1", "kind": "ClusterGraphConnection",
        "metadata": {"name": name},
        "spec": connection_spec(sim, secret_name),
    })
}

fn alice(namespace: &str, name: &str, connection_ref: Option<Value>) -> Value {
    let mut o = json!({
        "apiVersion": "redeliver.dev/v1alpha1", "kind": "AccessPackageAssignment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "accessPackage": {"displayName": "Finance Analysts", "catalog": "Finance"},
            "target": {"userPrincipalName": "alice@contoso.com"},
            "reprocess": {"mode": "Auto", "maxAttempts": 3, "cooldown": "5m"}
        }
    });
    if let Some(r) = connection_ref {
        o["spec"]["connectionRef"] = r;
    }
    o
}

fn guard(namespace: &str, name: &str) -> Value {
    json!({
        "apiVersion": "redeliver.dev/v1alpha1", "kind": "AccessPackageGuard",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"accessPackage": {"id": FINANCE}, "mode": "Audit", "interval": "15m"}
    })
}

/// A controller watching all namespaces, with `operator` as its own connection (none:
/// only connections).
async fn start_controller(
    kube: &FakeKube,
    operator: Option<&SimHandle>,
    settings: Settings,
) -> Controller {
    start_controller_watching(kube, operator, Vec::new(), settings).await
}

/// A controller watching `namespaces` (all when empty), as one installation of several
/// on the same API server would.
async fn start_controller_watching(
    kube: &FakeKube,
    operator: Option<&SimHandle>,
    namespaces: Vec<String>,
    settings: Settings,
) -> Controller {
    let graph = operator.map(|sim| crate::fault_support::graph_client(sim).unwrap());
    let ctx = context(kube_client(kube, None), graph, &settings);
    Controller::start(ctx, namespaces, 2).await
}

fn settings() -> Settings {
    Settings {
        poll_interval: Duration::from_secs(1),
        observation_max_age: Duration::from_millis(500),
        operator_namespace: Some(OPERATOR_NS.into()),
        connection_recheck_stalled: Duration::from_millis(500),
        connection_recheck_ready: Duration::from_millis(500),
        delta_interval: Duration::from_secs(1),
        ..crate::controller_support::settings()
    }
}

async fn wait_until(what: &str, timeout: Duration, done: impl FnMut() -> bool) {
    crate::wait::until(what, timeout, done).await
}

fn status(kube: &FakeKube, plural: &str, namespace: &str, name: &str) -> Value {
    kube.object(plural, namespace, name)
        .map(|o| o["status"].clone())
        .unwrap_or(Value::Null)
}

fn condition(status: &Value, type_: &str) -> Value {
    status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_).cloned())
        .unwrap_or(Value::Null)
}

fn is(status: &Value, type_: &str, value: &str, reason: &str) -> bool {
    let c = condition(status, type_);
    c["status"] == value && c["reason"] == reason
}

/// Whether the stored object is `Stalled=True` with `reason`.
fn stalled(kube: &FakeKube, plural: &str, namespace: &str, name: &str, reason: &str) -> bool {
    is(
        &status(kube, plural, namespace, name),
        "Stalled",
        "True",
        reason,
    )
}

fn is_verified(status: &Value) -> bool {
    let c = condition(status, "Delivered");
    c["status"] == "True" || c["status"] == "False"
}

/// Graph calls a simulator received (the admin API and the token endpoint excluded).
fn graph_calls(sim: &SimHandle) -> usize {
    sim.request_log()
        .iter()
        .filter(|e| e.path.starts_with("/v1.0"))
        .count()
}

/// Whether the stored object is `Ready=True` with `reason`.
fn ready(kube: &FakeKube, plural: &str, namespace: &str, name: &str, reason: &str) -> bool {
    is(
        &status(kube, plural, namespace, name),
        "Ready",
        "True",
        reason,
    )
}

/// The message of the condition `type_` in `status` ("" without one).
fn message(status: &Value, type_: &str) -> String {
    condition(status, type_)["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn each_namespace_uses_its_own_tenant_and_a_wrong_secret_stalls_only_its_own() {
    let contoso = tenant("contoso", 42, "01", true).await;
    let fabrikam = tenant("fabrikam", 7, "02", false).await;
    let kube = FakeKube::start(vec![
        // A: the namespace's default connection, used without any connectionRef.
        secret(A, "graph", "clientSecret", &contoso.client_secret),
        graph_connection(A, "default", &contoso, "graph"),
        alice(A, "alice", None),
        guard(A, "finance"),
        // B: a named connection, referenced.
        secret(B, "fabrikam-graph", "clientSecret", &fabrikam.client_secret),
        graph_connection(B, "fabrikam", &fabrikam, "fabrikam-graph"),
        alice(
            B,
            "alice",
            Some(json!({"kind": "GraphConnection", "name": "fabrikam"})),
        ),
        // Neither a connectionRef nor a default connection, and no operator connection.
        alice("team-c", "alice", None),
    ])
    .await
    .unwrap();
    let running = start_controller(&kube, None, settings()).await;

    let b_id = each_namespace_is_served_by_its_own_tenant(&kube, &contoso, &fabrikam).await;
    a_namespace_without_a_connection_is_told_what_to_create(&kube).await;

    // A wrong secret in A: A's connection stalls with the Entra error code, A's objects stall
    // naming the connection, B keeps reconciling.
    kube.put(secret(A, "graph", "clientSecret", "not-the-secret"))
        .unwrap();
    a_wrong_secret_stalls_the_connection_and_its_objects(&kube, &contoso).await;
    b_reprocesses_in_its_own_tenant_meanwhile(&kube, &fabrikam, &b_id).await;

    // Fixing the Secret un-stalls the connection and its objects (no Secret watch: the
    // stalled connection is checked again on its own).
    kube.put(secret(A, "graph", "clientSecret", &contoso.client_secret))
        .unwrap();
    wait_until(
        "A's connection is ready again",
        Duration::from_secs(20),
        || ready(&kube, GC, A, "default", "Connected"),
    )
    .await;
    wait_until(
        "A's assignment is ready again",
        Duration::from_secs(20),
        || ready(&kube, APA, A, "alice", "Delivered"),
    )
    .await;
    assert!(condition(&status(&kube, APA, A, "alice"), "Stalled").is_null());
    running.stop().await;
}

/// Both namespaces' assignments are verified, each naming its own tenant's assignment
/// through its own connection; only contoso's drifted alice is repaired, and A's guard
/// sweeps contoso. Returns fabrikam's (B's) assignment id.
async fn each_namespace_is_served_by_its_own_tenant(
    kube: &FakeKube,
    contoso: &SimHandle,
    fabrikam: &SimHandle,
) -> String {
    wait_until(
        "both tenants' assignments are verified",
        Duration::from_secs(20),
        || {
            is_verified(&status(kube, APA, A, "alice"))
                && is_verified(&status(kube, APA, B, "alice"))
        },
    )
    .await;
    let a = status(kube, APA, A, "alice");
    let b = status(kube, APA, B, "alice");
    // Each object names its own tenant's assignment: the tenants' ids differ.
    let a_id = contoso
        .assignment_id("alice@contoso.com", "Finance Analysts")
        .unwrap();
    let b_id = fabrikam
        .assignment_id("alice@contoso.com", "Finance Analysts")
        .unwrap();
    assert_ne!(a_id, b_id);
    assert_eq!(a["assignmentId"], a_id.as_str(), "{a}");
    assert_eq!(b["assignmentId"], b_id.as_str(), "{b}");
    assert_eq!(a["connection"], "GraphConnection/default");
    assert_eq!(b["connection"], "GraphConnection/fabrikam");
    // contoso's alice is drifted and gets repaired there; fabrikam's is whole, never touched.
    wait_until("contoso repaired alice", Duration::from_secs(20), || {
        contoso.is_member("fin-writers", "alice@contoso.com")
    })
    .await;
    assert_eq!(
        fabrikam.count_requests(
            "POST",
            "/v1.0/identityGovernance/entitlementManagement/assignments/"
        ),
        0
    );
    wait_until(
        "the guard of A swept contoso",
        Duration::from_secs(20),
        || is_verified(&status(kube, APG, A, "finance")),
    )
    .await;
    assert_eq!(
        status(kube, APG, A, "finance")["connection"],
        "GraphConnection/default"
    );
    // Both connections report Ready (their status is written by their own reconcile, which
    // may come after the objects' under load).
    for (ns, name) in [(A, "default"), (B, "fabrikam")] {
        wait_until(
            &format!("{ns}/{name} reports Ready"),
            Duration::from_secs(20),
            || ready(kube, GC, ns, name, "Connected"),
        )
        .await;
    }
    b_id
}

/// No connection at all: stalled, saying what to create.
async fn a_namespace_without_a_connection_is_told_what_to_create(kube: &FakeKube) {
    wait_until(
        "team-c's object is stalled",
        Duration::from_secs(20),
        || stalled(kube, APA, "team-c", "alice", "ConnectionNotReady"),
    )
    .await;
    let message = message(&status(kube, APA, "team-c", "alice"), "Ready");
    assert!(
        message.contains("GraphConnection named default"),
        "{message}"
    );
}

/// After A's Secret got a wrong value: A's connection stalls with Entra's error code and
/// neither secret in its status; A's assignment stalls naming the connection and the
/// Secret, keeping what was last verified.
async fn a_wrong_secret_stalls_the_connection_and_its_objects(
    kube: &FakeKube,
    contoso: &SimHandle,
) {
    wait_until("A's connection is stalled", Duration::from_secs(20), || {
        stalled(kube, GC, A, "default", "AuthenticationFailed")
    })
    .await;
    let conn = status(kube, GC, A, "default");
    assert!(
        conn["errorCode"]
            .as_str()
            .unwrap_or_default()
            .contains("invalid_client"),
        "{conn}"
    );
    let text = conn.to_string();
    assert!(!text.contains("not-the-secret") && !text.contains(&contoso.client_secret));
    wait_until("A's assignment is stalled", Duration::from_secs(20), || {
        stalled(kube, APA, A, "alice", "ConnectionNotReady")
    })
    .await;
    let a = status(kube, APA, A, "alice");
    let message = message(&a, "Ready");
    assert!(
        message.contains("GraphConnection team-a/default"),
        "{message}"
    );
    assert!(!a.to_string().contains("not-the-secret"));
    // What was last verified stays visible.
    assert!(!condition(&a, "Delivered").is_null(), "{a}");
    assert!(message.contains("Secret team-a/graph"), "{message}");
}

/// B reconciles while A's connection is unusable: a manual reprocess request there is
/// handled, by one reprocess sent to B's tenant.
async fn b_reprocesses_in_its_own_tenant_meanwhile(
    kube: &FakeKube,
    fabrikam: &SimHandle,
    b_id: &str,
) {
    let mut b_obj = kube.object(APA, B, "alice").unwrap();
    b_obj["metadata"]["annotations"] =
        json!({"redeliver.dev/reprocess-requested-at": "2026-01-01T00:00:00Z"});
    kube.put(b_obj).unwrap();
    wait_until("B handled the request", Duration::from_secs(20), || {
        status(kube, APA, B, "alice")["reprocess"]["lastHandledRequest"] == "2026-01-01T00:00:00Z"
    })
    .await;
    // The status says so before the call is sent: wait for the call.
    let path =
        format!("/v1.0/identityGovernance/entitlementManagement/assignments/{b_id}/reprocess");
    wait_until(
        "the reprocess reached B's tenant",
        Duration::from_secs(20),
        || fabrikam.count_requests("POST", &path) > 0,
    )
    .await;
    assert_eq!(fabrikam.count_requests("POST", &path), 1);
    assert_eq!(
        status(kube, APA, B, "alice")["reprocess"]["lastOutcome"],
        "Requested"
    );
}

#[tokio::test]
async fn a_missing_secret_or_key_is_named() {
    let contoso = tenant("contoso", 42, "01", true).await;
    let kube = FakeKube::start(vec![
        graph_connection(A, "default", &contoso, "graph"),
        secret(B, "graph", "password", &contoso.client_secret),
        graph_connection(B, "default", &contoso, "graph"),
    ])
    .await
    .unwrap();
    let running = start_controller(&kube, None, settings()).await;
    wait_until(
        "both connections are stalled",
        Duration::from_secs(20),
        || {
            stalled(&kube, GC, A, "default", "SecretUnavailable")
                && stalled(&kube, GC, B, "default", "SecretUnavailable")
        },
    )
    .await;
    let a = condition(&status(&kube, GC, A, "default"), "Stalled")["message"].clone();
    assert!(
        a.as_str()
            .unwrap()
            .contains("Secret team-a/graph does not exist"),
        "{a}"
    );
    let b = condition(&status(&kube, GC, B, "default"), "Stalled")["message"].clone();
    assert!(
        b.as_str().unwrap().contains("has no key clientSecret"),
        "{b}"
    );
    // Nothing was asked of Graph for a connection without a credential.
    assert_eq!(contoso.issued_tokens().len(), 0);
    running.stop().await;
}

#[tokio::test]
async fn a_throttled_tenant_does_not_delay_the_other() {
    let contoso = tenant("contoso", 42, "01", true).await;
    let fabrikam = tenant("fabrikam", 7, "02", false).await;
    let mut objects = vec![
        secret(A, "graph", "clientSecret", &contoso.client_secret),
        graph_connection(A, "default", &contoso, "graph"),
        secret(B, "graph", "clientSecret", &fabrikam.client_secret),
        graph_connection(B, "default", &fabrikam, "graph"),
    ];
    // More of A's objects than reconcile slots, so waiting ones would crowd B out.
    for i in 0..8 {
        objects.push(alice(A, &format!("alice-{i}"), None));
    }
    objects.push(alice(B, "alice", None));
    let kube = FakeKube::start(objects).await.unwrap();
    // contoso throttles every Graph call for a long while (the connections' probes are made
    // before: inject after the start-up checks would race, so throttle the package reads).
    contoso.inject_fault(FaultSpec::Throttle {
        retry_after: 60.0,
        scope: FaultScope {
            path_prefix: Some("/identityGovernance/entitlementManagement/assignments".into()),
            duration_ms: Some(60_000),
            ..FaultScope::default()
        },
    });
    let started = Instant::now();
    let running = start_controller(&kube, None, settings()).await;
    wait_until(
        "B is verified while A is throttled",
        Duration::from_secs(15),
        || is_verified(&status(&kube, APA, B, "alice")),
    )
    .await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "B waited {took:?} behind A's throttling"
    );
    // A's objects are still waiting out their Retry-After, none verified.
    for i in 0..8 {
        assert!(!is_verified(&status(&kube, APA, A, &format!("alice-{i}"))));
    }
    assert!(contoso.request_log().iter().any(|e| e.status == 429));
    running.stop().await;
}

/// Issue #23: each connection's group delta is followed on its own. Tenant A's Graph takes
/// 20 s to answer its delta polls; tenant B's outside removal is still detected (and
/// repaired) within one delta interval (half a second here), with a ten-minute
/// verifyInterval.
#[tokio::test]
async fn a_slow_tenants_delta_does_not_delay_the_others_detection() {
    let contoso = tenant("contoso", 42, "01", false).await;
    let fabrikam = tenant("fabrikam", 7, "02", false).await;
    let objects = vec![
        secret(A, "graph", "clientSecret", &contoso.client_secret),
        graph_connection(A, "default", &contoso, "graph"),
        secret(B, "graph", "clientSecret", &fabrikam.client_secret),
        graph_connection(B, "default", &fabrikam, "graph"),
        alice(A, "alice", None),
        alice(B, "alice", None),
    ];
    let kube = FakeKube::start(objects).await.unwrap();
    let half_second = Settings {
        delta_interval: Duration::from_millis(500),
        ..settings()
    };
    let running = start_controller(&kube, None, half_second).await;
    wait_until("both delivered", Duration::from_secs(20), || {
        is(
            &status(&kube, APA, A, "alice"),
            "Delivered",
            "True",
            "Delivered",
        ) && is(
            &status(&kube, APA, B, "alice"),
            "Delivered",
            "True",
            "Delivered",
        )
    })
    .await;
    // From now on every delta poll of A hangs for 20 s.
    let slow = contoso.inject_fault(FaultSpec::Latency {
        millis: 20_000,
        scope: FaultScope {
            path_prefix: Some("/v1.0/groups/delta".into()),
            duration_ms: Some(60_000),
            ..FaultScope::default()
        },
    });
    // A's follower enters a slow poll (at its next interval).
    wait_until("A's delta poll is held", Duration::from_secs(10), || {
        contoso.fault_hits(slow) > 0
    })
    .await;
    fabrikam.clear_request_log();
    let removed = Instant::now();
    fabrikam
        .remove_member("fin-readers", "alice@contoso.com")
        .unwrap();
    wait_until(
        "B's drift is repaired while A's delta hangs",
        Duration::from_secs(10),
        || {
            fabrikam
                .request_log()
                .iter()
                .any(|e| e.method == "POST" && e.path.ends_with("/reprocess"))
        },
    )
    .await;
    let took = removed.elapsed();
    // One delta interval (0.5 s) plus the reconcile, with room for a loaded machine; a poll
    // of B waiting behind A's would take 20 s.
    assert!(
        took < Duration::from_secs(5),
        "B's drift waited {took:?} behind A's slow delta"
    );
    running.stop().await;
}

#[tokio::test]
async fn deleting_a_connection_stalls_its_objects_and_never_falls_back() {
    let contoso = tenant("contoso", 42, "01", true).await;
    // The operator's own connection is another tenant: the objects must never move there.
    let operator = tenant("operator", 99, "03", false).await;
    let kube = FakeKube::start(vec![
        secret(A, "graph", "clientSecret", &contoso.client_secret),
        graph_connection(A, "default", &contoso, "graph"),
        graph_connection(A, "named", &contoso, "graph"),
        alice(A, "by-default", None),
        alice(
            A,
            "by-name",
            Some(json!({"kind": "GraphConnection", "name": "named"})),
        ),
        // A namespace without connections uses the operator's, as before connections existed.
        alice("legacy", "alice", None),
    ])
    .await
    .unwrap();
    let quick_recheck = Settings {
        connection_recheck_stalled: Duration::from_millis(250),
        ..settings()
    };
    let running = start_controller(&kube, Some(&operator), quick_recheck).await;
    wait_until("all three are verified", Duration::from_secs(20), || {
        ["by-default", "by-name"]
            .iter()
            .all(|n| is_verified(&status(&kube, APA, A, n)))
            && is_verified(&status(&kube, APA, "legacy", "alice"))
    })
    .await;
    let legacy = status(&kube, APA, "legacy", "alice");
    assert!(legacy["connection"].is_null(), "{legacy}");
    assert_eq!(
        legacy["assignmentId"],
        operator
            .assignment_id("alice@contoso.com", "Finance Analysts")
            .unwrap()
            .as_str()
    );

    let operator_calls = graph_calls(&operator);
    assert!(kube.delete(GC, A, "default"));
    assert!(kube.delete(GC, A, "named"));
    wait_until("both of A's objects stall", Duration::from_secs(20), || {
        ["by-default", "by-name"]
            .iter()
            .all(|n| stalled(&kube, APA, A, n, "ConnectionNotReady"))
    })
    .await;
    let by_default = status(&kube, APA, A, "by-default");
    let message = condition(&by_default, "Ready")["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("never moves an object to another tenant"),
        "{message}"
    );
    assert_eq!(by_default["connection"], "GraphConnection/default");
    let by_name = status(&kube, APA, A, "by-name");
    let message = condition(&by_name, "Ready")["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("GraphConnection team-a/named does not exist"),
        "{message}"
    );
    // Give a wrong fallback every chance to happen, then check it did not. A stalled object
    // is reconciled again every connection_recheck_stalled (250 ms here); a fallback would
    // happen at one of those passes, and 1 s holds four of them (as 3 s held three of the
    // default test settings' 1 s).
    tokio::time::sleep(Duration::from_secs(1)).await;
    for n in ["by-default", "by-name"] {
        let s = status(&kube, APA, A, n);
        assert!(is(&s, "Stalled", "True", "ConnectionNotReady"), "{n}: {s}");
        assert_ne!(
            s["assignmentId"],
            operator
                .assignment_id("alice@contoso.com", "Finance Analysts")
                .unwrap()
                .as_str()
        );
    }
    // Only the legacy object's own re-checks reached the operator's tenant.
    let legacy_only = graph_calls(&operator) - operator_calls;
    let users: Vec<String> = operator
        .request_log()
        .iter()
        .skip(operator_calls)
        .map(|e| e.path.clone())
        .collect();
    assert!(legacy_only < 40, "{users:?}");

    // Re-creating the connection un-stalls the object that used it.
    kube.put(graph_connection(A, "default", &contoso, "graph"))
        .unwrap();
    wait_until("by-default is back", Duration::from_secs(20), || {
        condition(&status(&kube, APA, A, "by-default"), "Stalled").is_null()
            && is_verified(&status(&kube, APA, A, "by-default"))
    })
    .await;
    running.stop().await;
}

#[tokio::test]
async fn connections_respect_namespace_boundaries() {
    let contoso = tenant("contoso", 42, "01", true).await;
    let fabrikam = tenant("fabrikam", 7, "02", false).await;
    let kube = FakeKube::start(vec![
        secret(A, "graph", "clientSecret", &contoso.client_secret),
        graph_connection(A, "contoso", &contoso, "graph"),
        // B names A's connection: it is looked up in B, where there is none.
        alice(
            B,
            "alice",
            Some(json!({"kind": "GraphConnection", "name": "contoso"})),
        ),
        // The cluster connection's Secret exists, but in a team namespace, not the operator's.
        secret(A, "shared", "clientSecret", &fabrikam.client_secret),
        cluster_connection("shared", &fabrikam, "shared"),
        alice(
            A,
            "via-cluster",
            Some(json!({"kind": "ClusterGraphConnection", "name": "shared"})),
        ),
    ])
    .await
    .unwrap();
    let running = start_controller(&kube, None, settings()).await;
    wait_until("B's object is stalled", Duration::from_secs(20), || {
        stalled(&kube, APA, B, "alice", "ConnectionNotReady")
    })
    .await;
    let b = status(&kube, APA, B, "alice");
    let message = condition(&b, "Ready")["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("GraphConnection team-b/contoso does not exist"),
        "{message}"
    );
    assert!(b["assignmentId"].is_null(), "{b}");

    wait_until(
        "the cluster connection is stalled",
        Duration::from_secs(20),
        || stalled(&kube, CGC, "", "shared", "SecretUnavailable"),
    )
    .await;
    let c = condition(&status(&kube, CGC, "", "shared"), "Stalled")["message"].clone();
    assert!(
        c.as_str()
            .unwrap()
            .contains("Secret redeliver-system/shared does not exist"),
        "{c}"
    );
    assert_eq!(
        fabrikam.issued_tokens().len(),
        0,
        "no token without the right Secret"
    );
    // In the operator's namespace it is found, and the object that uses it is reconciled.
    kube.put(secret(
        OPERATOR_NS,
        "shared",
        "clientSecret",
        &fabrikam.client_secret,
    ))
    .unwrap();
    wait_until(
        "the object using the cluster connection is verified",
        Duration::from_secs(20),
        || is_verified(&status(&kube, APA, A, "via-cluster")),
    )
    .await;
    let s = status(&kube, APA, A, "via-cluster");
    assert_eq!(s["connection"], "ClusterGraphConnection/shared");
    assert_eq!(
        s["assignmentId"],
        fabrikam
            .assignment_id("alice@contoso.com", "Finance Analysts")
            .unwrap()
            .as_str()
    );
    running.stop().await;
}

#[tokio::test]
async fn shards_split_the_tenants_and_each_reconciles_only_its_own() {
    use redeliver::api::ConnectionKey;
    use redeliver::controller::shard::{Shard, shard_of};
    let contoso = tenant("contoso", 42, "01", true).await;
    let fabrikam = tenant("fabrikam", 7, "02", false).await;
    // Six namespaces, each with its own default connection (alternating between the two
    // simulated tenants): six connections to split across two shards.
    let namespaces: Vec<String> = (0..6).map(|i| format!("tenant-{i}")).collect();
    let mut objects = Vec::new();
    for (i, ns) in namespaces.iter().enumerate() {
        let sim = if i % 2 == 0 { &contoso } else { &fabrikam };
        objects.push(secret(ns, "graph", "clientSecret", &sim.client_secret));
        objects.push(graph_connection(ns, "default", sim, "graph"));
        objects.push(alice(ns, "alice", None));
    }
    let owner = |ns: &str| {
        shard_of(
            &ConnectionKey::Namespaced {
                namespace: ns.to_string(),
                name: "default".into(),
            },
            2,
        )
    };
    let (mine, theirs): (Vec<&String>, Vec<&String>) =
        namespaces.iter().partition(|ns| owner(ns) == 0);
    assert!(
        !mine.is_empty() && !theirs.is_empty(),
        "both shards get a tenant"
    );
    let kube = FakeKube::start(objects).await.unwrap();
    let shard = |index| Settings {
        shard: Shard { index, count: 2 },
        ..settings()
    };
    let first = start_controller(&kube, None, shard(0)).await;
    wait_until(
        "shard 0's tenants are verified",
        Duration::from_secs(20),
        || {
            mine.iter()
                .all(|ns| is_verified(&status(&kube, APA, ns, "alice")))
        },
    )
    .await;
    // Give shard 0 every chance to touch the others: it must not. It listed them with its
    // own, so a reconcile of theirs would have run beside its own ones (one 50 ms debounce
    // after the list) and written their status at once; half a second after its own are
    // verified is ten debounces later.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for ns in &theirs {
        assert!(
            status(&kube, APA, ns, "alice").is_null(),
            "{ns} is shard 1's"
        );
        assert!(
            status(&kube, GC, ns, "default").is_null(),
            "{ns}'s connection is shard 1's"
        );
    }
    let second = start_controller(&kube, None, shard(1)).await;
    wait_until("every tenant is verified", Duration::from_secs(20), || {
        namespaces
            .iter()
            .all(|ns| is_verified(&status(&kube, APA, ns, "alice")))
    })
    .await;
    first.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn a_workload_identity_connection_needs_no_secret() {
    const ASSERTION: &str = "eyJhbGciOiJSUzI1NiJ9.tenant-a-sa-token.c2ln";
    // Short-lived tokens: the file is read again at every token request, as the kubelet
    // rotates it.
    let (sim, _dir, token) = crate::fault_support::federated_demo(ASSERTION).await;
    let kube = FakeKube::start(vec![
        json!({
            "apiVersion": "redeliver.dev/v1alpha1", "kind": "GraphConnection",
            "metadata": {"name": "default", "namespace": A},
            "spec": {
                "tenantId": sim.tenant_id, "clientId": sim.client_id,
                "credential": {"workloadIdentity": {"tokenFile": token.display().to_string()}},
                "authorityHost": sim.authority_host, "graphUrl": sim.graph_url,
            }
        }),
        alice(A, "alice", None),
    ])
    .await
    .unwrap();
    let running = start_controller(&kube, None, settings()).await;
    wait_until(
        "alice is verified through workload identity",
        Duration::from_secs(20),
        || is_verified(&status(&kube, APA, A, "alice")),
    )
    .await;
    assert!(ready(&kube, GC, A, "default", "Connected"));
    // A refused assertion stalls the connection with Entra's code, never echoing it.
    std::fs::write(&token, "eyJhbGciOiJSUzI1NiJ9.someone-else.c2ln").unwrap();
    wait_until("the connection is stalled", Duration::from_secs(20), || {
        stalled(&kube, GC, A, "default", "AuthenticationFailed")
    })
    .await;
    let s = status(&kube, GC, A, "default");
    assert!(!s.to_string().contains("someone-else"), "{s}");
    running.stop().await;
}

/// Token requests (accepted or refused) a simulator received.
fn token_requests(sim: &SimHandle) -> usize {
    sim.request_log()
        .iter()
        .filter(|e| e.path.contains("/oauth2/v2.0/token"))
        .count()
}

/// A wrong client secret, with the operator's default re-check schedule, over one minute:
/// the connection signs in at most twice (at once, and 30 s later; then 60 s, then every
/// 2 minutes), however many objects use it and however often its status is written; its
/// status is written once (Entra's correlation id, new on every attempt, is not in it).
/// Before, the status rewrite of each attempt triggered the next: 62 token requests in 63 s.
///
/// The schedule is derived from the re-check intervals alone, so the test runs it sixty
/// times faster (0.5 s, then 1 s later, ...) over a sixtieth of a minute (1 s): the same
/// count, without a minute of wall clock in the suite. The third attempt comes at 1.5 s at
/// the earliest (re-checks are only ever jittered later), half a second after the window;
/// the old bug (each status write triggering the next sign-in) made one per debounce.
#[tokio::test]
async fn a_wrong_secret_signs_in_at_most_twice_a_minute() {
    let contoso = tenant("contoso", 42, "01", true).await;
    let kube = FakeKube::start(vec![
        secret(A, "graph", "clientSecret", "not-the-secret"),
        graph_connection(A, "default", &contoso, "graph"),
        alice(A, "alice", None),
        alice(A, "alice-2", None),
        guard(A, "finance"),
    ])
    .await
    .unwrap();
    const SCALE: u32 = 60;
    let defaults = Settings {
        connection_recheck_stalled: redeliver::controller::connections::RECHECK_STALLED / SCALE,
        connection_recheck_ready: redeliver::controller::connections::RECHECK_READY / SCALE,
        ..settings()
    };
    let minute = Duration::from_secs(60) / SCALE;
    let running = start_controller(&kube, None, defaults).await;
    let started = Instant::now();
    wait_until("the connection is Stalled", Duration::from_secs(20), || {
        stalled(&kube, GC, A, "default", "AuthenticationFailed")
    })
    .await;
    let message = condition(&status(&kube, GC, A, "default"), "Stalled")["message"].clone();
    assert!(
        !message
            .as_str()
            .unwrap_or_default()
            .contains("correlation-id"),
        "{message}"
    );
    let writes_before = kube.status_write_count();
    tokio::time::sleep(minute.saturating_sub(started.elapsed())).await;
    let tokens = token_requests(&contoso);
    eprintln!("{tokens} token request(s) in the first minute");
    assert!(
        (1..=2).contains(&tokens),
        "{tokens} token requests in the first minute"
    );
    let connection_writes = kube
        .status_writes_since(writes_before)
        .iter()
        .filter(|w| w.plural == GC && w.changed)
        .count();
    assert_eq!(
        connection_writes, 0,
        "the connection's status did not change while it stayed stalled"
    );
    assert!(stalled(&kube, APA, A, "alice", "ConnectionNotReady"));
    running.stop().await;
    contoso.shutdown().await;
}

/// A ready connection that stops working (its Secret given a wrong value) flips every
/// object that uses it to `Stalled` (`ConnectionNotReady`) within seconds of its own
/// status, whatever their verification interval (here the default 10 minutes), with a
/// `ConnectionNotReady` event and their last `Delivered` kept, saying it is not being
/// verified; fixing the Secret brings them back.
#[tokio::test]
async fn objects_follow_their_connection_into_stalled_and_back() {
    let contoso = tenant("contoso", 42, "01", false).await;
    let kube = FakeKube::start(vec![
        secret(A, "graph", "clientSecret", &contoso.client_secret),
        graph_connection(A, "default", &contoso, "graph"),
        alice(A, "alice", None),
        guard(A, "finance"),
    ])
    .await
    .unwrap();
    let fast_connection = Settings {
        connection_recheck_ready: Duration::from_millis(500),
        connection_recheck_stalled: Duration::from_millis(500),
        ..settings()
    };
    let running = start_controller(&kube, None, fast_connection).await;
    let delivered_ready = |kube: &FakeKube, plural: &str, name: &str| {
        ready(kube, plural, A, name, "Delivered") || ready(kube, plural, A, name, "AllDelivered")
    };
    wait_until("both objects are Ready", Duration::from_secs(20), || {
        delivered_ready(&kube, APA, "alice") && delivered_ready(&kube, APG, "finance")
    })
    .await;

    kube.put(secret(A, "graph", "clientSecret", "not-the-secret"))
        .unwrap();
    wait_until("the connection is Stalled", Duration::from_secs(20), || {
        stalled(&kube, GC, A, "default", "AuthenticationFailed")
    })
    .await;
    let stalled_at = Instant::now();
    wait_until(
        "every object using it is Stalled",
        Duration::from_secs(5),
        || {
            stalled(&kube, APA, A, "alice", "ConnectionNotReady")
                && stalled(&kube, APG, A, "finance", "ConnectionNotReady")
        },
    )
    .await;
    eprintln!(
        "objects stalled {:?} after their connection",
        stalled_at.elapsed()
    );
    let alice = status(&kube, APA, A, "alice");
    assert!(
        is(&alice, "Ready", "False", "ConnectionNotReady"),
        "{alice:#}"
    );
    let delivered = condition(&alice, "Delivered");
    assert_eq!(delivered["status"], "True", "last verified kept: {alice:#}");
    assert!(
        delivered["message"]
            .as_str()
            .is_some_and(|m| m
                .ends_with("Not verified while GraphConnection team-a/default cannot be used.")),
        "{delivered:#}"
    );
    let events: Vec<Value> = kube
        .events()
        .into_iter()
        .filter(|e| e["reason"] == "ConnectionNotReady")
        .collect();
    assert!(
        events.iter().any(|e| e["regarding"]["name"] == "alice"),
        "a ConnectionNotReady event on alice: {events:#?}"
    );

    kube.put(secret(A, "graph", "clientSecret", &contoso.client_secret))
        .unwrap();
    wait_until("both objects recover", Duration::from_secs(20), || {
        delivered_ready(&kube, APA, "alice") && delivered_ready(&kube, APG, "finance")
    })
    .await;
    let delivered = condition(&status(&kube, APA, A, "alice"), "Delivered");
    assert!(
        !delivered["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Not verified"),
        "{delivered:#}"
    );
    running.stop().await;
    contoso.shutdown().await;
}

/// Two installations on one API server: the platform's (every namespace, the cluster
/// connection's Secret in its namespace) and a team's (`--namespace team-b`, its own
/// operator namespace). The team's never writes the cluster connection's status (alone, it
/// writes nothing; beside the platform's, the status stays the platform's `Ready` instead
/// of flipping to `SecretUnavailable` at each of the team's re-checks).
///
/// Both re-check connections every 125 ms (stalled ones backing off to 500 ms), so the two
/// windows below, 500 ms and 750 ms, each hold several checks either installation would
/// make.
#[tokio::test]
async fn a_namespace_restricted_installation_leaves_cluster_connections_alone() {
    let contoso = tenant("contoso", 42, "01", false).await;
    let kube = FakeKube::start(vec![
        secret(
            OPERATOR_NS,
            "shared",
            "clientSecret",
            &contoso.client_secret,
        ),
        cluster_connection("shared", &contoso, "shared"),
    ])
    .await
    .unwrap();
    let quick_recheck = || Settings {
        connection_recheck_ready: Duration::from_millis(125),
        connection_recheck_stalled: Duration::from_millis(125),
        ..settings()
    };
    let team_settings = Settings {
        operator_namespace: Some("team-b-system".into()),
        // What `--namespace team-b` derives when --cluster-connections is not given.
        cluster_connections: false,
        ..quick_recheck()
    };
    let team = start_controller_watching(&kube, None, vec![B.into()], team_settings).await;
    // A reconcile of the cluster connection by the team's installation would come one
    // debounce (50 ms) after its watch listed it and write SecretUnavailable at once (the
    // Secret is not in team-b-system), then again at its re-checks: 500 ms holds ten
    // debounces and four re-checks.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cgc_writes = |from: usize| {
        kube.status_writes_since(from)
            .iter()
            .filter(|w| w.plural == CGC)
            .count()
    };
    assert_eq!(
        cgc_writes(0),
        0,
        "the team's installation wrote a cluster connection's status"
    );

    let platform = start_controller(&kube, None, quick_recheck()).await;
    wait_until(
        "the platform makes the cluster connection Ready",
        Duration::from_secs(20),
        || ready(&kube, CGC, "", "shared", "Connected"),
    )
    .await;
    let from = kube.status_write_count();
    // A flip would come at one of the team's re-checks (at most 500 ms apart once backed
    // off) and be undone at one of the platform's (125 ms): 750 ms holds at least one of
    // each.
    tokio::time::sleep(Duration::from_millis(750)).await;
    let changed = kube
        .status_writes_since(from)
        .iter()
        .filter(|w| w.plural == CGC && w.changed)
        .count();
    assert_eq!(changed, 0, "the cluster connection's status did not flip");
    assert!(ready(&kube, CGC, "", "shared", "Connected"));
    team.stop().await;
    platform.stop().await;
    contoso.shutdown().await;
}

/// An API server holding alice, and a controller context (operator connection only) to
/// publish events through.
async fn events_context() -> (FakeKube, Arc<Context>) {
    let kube = FakeKube::start(vec![alice(A, "alice", None)])
        .await
        .unwrap();
    let ctx = context(kube_client(&kube, None), None, &settings());
    (kube, ctx)
}

/// An event that repeats counts up its series only while its message is the same; a new
/// message is a new event, so `kubectl describe` shows the latest ("bob", not the first
/// "alice" with a count of 3).
#[tokio::test]
async fn a_repeated_event_with_a_new_message_is_a_new_event() {
    use redeliver::engine::{EngineEvent, EventKind};
    let (kube, ctx) = events_context().await;
    let reference = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("redeliver.dev/v1alpha1".into()),
        kind: Some("AccessPackageGuard".into()),
        namespace: Some(A.into()),
        name: Some("finance".into()),
        uid: Some("uid-1".into()),
        ..Default::default()
    };
    let drift = |who: &str| EngineEvent {
        kind: EventKind::DriftDetected,
        message: format!("{who}@contoso.com missing fin-writers"),
    };
    for who in ["alice", "alice", "bob", "carol", "carol"] {
        ctx.publish(&reference, "Reconcile", &[drift(who)]).await;
    }
    let events = kube.events();
    let summary: Vec<(String, String, i64)> = events
        .iter()
        .map(|e| {
            (
                e["note"].as_str().unwrap_or_default().to_string(),
                e["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                e["series"]["count"].as_i64().unwrap_or(1),
            )
        })
        .collect();
    assert_eq!(summary.len(), 5, "{summary:#?}");
    let notes: Vec<&str> = summary.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(
        notes,
        [
            "alice@contoso.com missing fin-writers",
            "alice@contoso.com missing fin-writers",
            "bob@contoso.com missing fin-writers",
            "carol@contoso.com missing fin-writers",
            "carol@contoso.com missing fin-writers",
        ]
    );
    // alice's repeat is a series on alice's event; bob's and carol's are new events.
    assert_eq!(summary[1].1, summary[0].1);
    assert_eq!(summary[1].2, 2);
    assert_ne!(summary[2].1, summary[0].1);
    assert_ne!(summary[3].1, summary[2].1);
    assert_eq!(
        (summary[4].1.as_str(), summary[4].2),
        (summary[3].1.as_str(), 2)
    );
}

#[tokio::test]
async fn the_event_series_of_a_deleted_object_is_forgotten() {
    use kube::runtime::reflector;
    use kube::runtime::watcher;
    use redeliver::api::AccessPackageGuard;
    use redeliver::controller::metrics::StateSizes as _;
    use redeliver::engine::{EngineEvent, EventKind};
    let (_kube, ctx) = events_context().await;
    // One guard is still in the store; "gone" was deleted.
    let (reader, mut writer) = reflector::store::<AccessPackageGuard>();
    let mut live: AccessPackageGuard = serde_json::from_value(json!({
        "apiVersion": "redeliver.dev/v1alpha1", "kind": "AccessPackageGuard",
        "metadata": {"name": "live", "namespace": A, "uid": "uid-live"},
        "spec": {"accessPackage": {"displayName": "Finance Analysts"}},
    }))
    .unwrap();
    live.metadata.resource_version = Some("1".into());
    writer.apply_watcher_event(&watcher::Event::Apply(live));
    let (queue, _rx) = futures::channel::mpsc::unbounded();
    ctx.triggers.add_guards(reader, queue);
    let reference =
        |kind: &str, name: &str, uid: &str| k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some("redeliver.dev/v1alpha1".into()),
            kind: Some(kind.into()),
            namespace: Some(A.into()),
            name: Some(name.into()),
            uid: Some(uid.into()),
            ..Default::default()
        };
    let drift = [EngineEvent {
        kind: EventKind::DriftDetected,
        message: "alice@contoso.com missing fin-writers".into(),
    }];
    ctx.publish(
        &reference("AccessPackageGuard", "live", "uid-live"),
        "Reconcile",
        &drift,
    )
    .await;
    ctx.publish(
        &reference("AccessPackageGuard", "gone", "uid-gone"),
        "Reconcile",
        &drift,
    )
    .await;
    ctx.publish(
        &reference("GraphConnection", "default", "uid-conn"),
        "Check",
        &drift,
    )
    .await;
    let series = |ctx: &Context| {
        ctx.state_sizes()
            .into_iter()
            .find(|(map, _)| *map == "event_series")
            .map(|(_, n)| n)
    };
    assert_eq!(series(&ctx), Some(3));
    ctx.prune_event_series();
    // The deleted guard's series goes; the live guard's and the connection's stay.
    assert_eq!(series(&ctx), Some(2));
}

/// A status write the API server does not answer in time (its storage down) fails after
/// the bound instead of holding the reconcile's slot: here 0.5 s against a server that
/// takes 5 s per write.
#[tokio::test]
async fn a_status_write_that_hangs_gives_the_slot_back() {
    let kube = redeliver_fake_kube::FakeKube::start_with_write_cost(
        vec![alice(A, "alice", None)],
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let api: kube::Api<redeliver::api::AccessPackageAssignment> =
        kube::Api::namespaced(kube_client(&kube, None), A);
    let started = Instant::now();
    let result = redeliver::controller::context::patch_status_within(
        &api,
        "alice",
        &json!({"observedGeneration": 1}),
        Duration::from_millis(500),
    )
    .await;
    let took = started.elapsed();
    let err = result.expect_err("the write did not complete in time");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(
        err.to_string().contains("did not complete within 0.5s"),
        "{err}"
    );
}

/// `redeliver controller --field-manager …` as a real process against the API server:
/// its status writes carry that field manager, so two installations' writes can be told
/// apart (`kubectl get --show-managed-fields`).
#[tokio::test]
async fn the_controller_writes_status_as_its_own_field_manager() {
    let contoso = tenant("contoso", 42, "01", false).await;
    let kube = FakeKube::start(vec![
        secret(A, "graph", "clientSecret", &contoso.client_secret),
        graph_connection(A, "default", &contoso, "graph"),
    ])
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\nusers:\n- name: nobody\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: nobody\ncurrent-context: fake\n",
            kube.url()
        ),
    )
    .unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_redeliver"));
    for var in ["AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET"] {
        cmd.env_remove(var);
    }
    let _controller = cmd
        .env("KUBECONFIG", &kubeconfig)
        .env("HOME", dir.path())
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("POD_NAMESPACE", OPERATOR_NS)
        .args([
            "controller",
            "--metrics-addr",
            "127.0.0.1:0",
            "--namespace",
            A,
            "--field-manager",
            "redeliver-team-a",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start redeliver controller");
    wait_until(
        "the controller writes the connection's status",
        Duration::from_secs(30),
        || kube.status_write_count() > 0,
    )
    .await;
    let managers: Vec<Option<String>> = kube
        .status_writes_since(0)
        .into_iter()
        .map(|w| w.field_manager)
        .collect();
    assert!(
        managers
            .iter()
            .all(|m| m.as_deref() == Some("redeliver-team-a")),
        "{managers:?}"
    );
    contoso.shutdown().await;
}
