//! Issue #26: a mass removal holds many objects at once, and they must not crowd out the
//! rest. Objects held by the mass-drift breaker are looked at again on their verify
//! interval, not every delta interval; what lifts the hold (the connection's
//! acknowledgement annotation, seen on its watch) resumes them at once. `run_controllers`
//! against the in-process Kubernetes API server and the Graph simulator over HTTP on
//! 127.0.0.1.

use std::time::{Duration, Instant};

use redeliver::controller::Settings;
use redeliver_fake_kube::FakeKube;
use redeliver_sim::{Scenario, SimHandle, SimOptions, Simulator};
use serde_json::{Value, json};

use crate::controller_support::{Controller, connection_spec, context, kube_client, secret};

const NS: &str = "finance";
const APA: &str = "accesspackageassignments";
const ACK: &str = "redeliver.dev/mass-drift-acknowledged-at";
/// Enough to trip the default breaker (at least 10, and 10 % of the package) at once.
const USERS: usize = 12;

fn users() -> Vec<String> {
    (0..USERS).map(|i| format!("user{i}")).collect()
}

async fn simulator() -> SimHandle {
    let users = users();
    let mut yaml = String::from(
        "apiVersion: sim.redeliver.dev/v1
kind: SimulatorScenario
metadata: {name: mass-drift}
spec:
  seed: 11
  tenant: {name: contoso}
  users:
",
    );
    for u in &users {
        yaml.push_str(&format!("    - {{upn: {u}@contoso.com}}\n"));
    }
    yaml.push_str(
        "  groups:
    - {name: fin-writers}
  catalogs:
    - {name: Finance}
  accessPackages:
    - name: Finance Analysts
      catalog: Finance
      resources:
        - {group: fin-writers, role: Member}
  assignments:
",
    );
    for u in &users {
        yaml.push_str(&format!(
            "    - {{user: {u}@contoso.com, package: Finance Analysts, state: delivered}}\n"
        ));
    }
    Simulator::start(Scenario::from_yaml_str(&yaml).unwrap(), SimOptions::fast())
        .await
        .unwrap()
}

fn connection(sim: &SimHandle, annotations: Value) -> Value {
    json!({
        "apiVersion": "redeliver.dev/v1alpha1", "kind": "GraphConnection",
        "metadata": {"name": "contoso", "namespace": NS, "annotations": annotations},
        "spec": connection_spec(sim, "graph"),
    })
}

fn declaration(user: &str) -> Value {
    json!({
        "apiVersion": "redeliver.dev/v1alpha1", "kind": "AccessPackageAssignment",
        "metadata": {"name": user, "namespace": NS},
        "spec": {
            "connectionRef": {"kind": "GraphConnection", "name": "contoso"},
            "accessPackage": {"displayName": "Finance Analysts", "catalog": "Finance"},
            "target": {"userPrincipalName": format!("{user}@contoso.com")},
            "verifyInterval": "10m",
            "reprocess": {"mode": "Auto", "maxAttempts": 3, "cooldown": "5m"}
        }
    })
}

async fn wait_until(what: &str, timeout: Duration, done: impl FnMut() -> bool) {
    crate::wait::until(what, timeout, done).await
}

async fn wait_for(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(crate::wait::PACE).await;
    }
    true
}

fn condition(kube: &FakeKube, name: &str, type_: &str) -> Value {
    kube.object(APA, NS, name)
        .and_then(|o| {
            o["status"]["conditions"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == type_).cloned())
        })
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn held_objects_wait_for_their_verify_interval_and_an_acknowledgement_resumes_them_at_once() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sim = simulator().await;
    let users = users();
    let mut objects = vec![
        secret(NS, "graph", "clientSecret", &sim.client_secret),
        connection(&sim, json!({ACK: "initial"})),
    ];
    objects.extend(users.iter().map(|u| declaration(u)));
    let kube = FakeKube::start(objects).await.unwrap();
    let delta_interval = Duration::from_millis(250);
    let settings = Settings {
        delta_interval,
        poll_interval: Duration::from_secs(1),
        observation_max_age: Duration::from_millis(200),
        connection_recheck_ready: Duration::from_secs(1),
        ..crate::controller_support::settings()
    };
    let running = Controller::spawn(
        context(kube_client(&kube, None), None, &settings),
        Vec::new(),
        4,
    );
    wait_until(
        "everyone is verified delivered",
        Duration::from_secs(30),
        || {
            users
                .iter()
                .all(|u| condition(&kube, u, "Delivered")["status"] == "True")
        },
    )
    .await;

    // The group is followed (its delta baseline taken and polled since), so the removals
    // below are one detection window, counted against the breaker before any repair.
    wait_until("the group is followed", Duration::from_secs(30), || {
        sim.request_log().iter().any(|e| {
            e.path.starts_with("/v1.0/groups/delta")
                && e.path.contains("deltatoken=")
                && !e.path.contains("deltatoken=latest")
        })
    })
    .await;
    // An administrator empties the group outside entitlement management.
    for u in &users {
        assert!(
            sim.remove_member("fin-writers", &format!("{u}@contoso.com"))
                .unwrap()
        );
    }
    sim.clear_request_log();
    let held = wait_for(Duration::from_secs(30), || {
        users
            .iter()
            .all(|u| condition(&kube, u, "Stalled")["reason"] == "MassDrift")
    })
    .await;
    assert!(
        held,
        "every object is held: {:#?}",
        users
            .iter()
            .map(|u| kube.object(APA, NS, u).unwrap()["status"].clone())
            .collect::<Vec<_>>()
    );

    // Held objects are not looked at again every delta interval: over four intervals (four
    // group delta polls, counted rather than slept, so a slow machine stretches the window
    // instead of shortening it), at most a stray one (a reconcile that was queued before its
    // hold) runs. Before, each
    // held object ran once per interval: 48 here, four times the bound.
    let before = running.reconciled("AccessPackageAssignment");
    let polls = || sim.count_requests("GET", "/v1.0/groups/delta");
    let polls_before = polls();
    wait_until(
        "four more group delta polls",
        delta_interval * 4 + Duration::from_secs(20),
        || polls() >= polls_before + 4,
    )
    .await;
    let during = running.reconciled("AccessPackageAssignment") - before;
    assert!(
        during < USERS as u64,
        "{during} reconciles of held objects in four delta intervals"
    );
    assert!(
        crate::fault_support::reprocess_calls(&sim, false).is_empty(),
        "nothing is repaired while the breaker holds"
    );

    // A person acknowledges on the connection: an annotation, which changes no generation.
    // Every held object resumes now, not at its verify interval (10 minutes).
    kube.put(connection(&sim, json!({ACK: "2026-12-05T09:00:00Z"})))
        .unwrap();
    wait_until(
        "every held object is reprocessed after the acknowledgement",
        Duration::from_secs(20),
        || crate::fault_support::reprocess_calls(&sim, false).len() == USERS,
    )
    .await;
    for u in &users {
        assert_ne!(
            condition(&kube, u, "Stalled")["reason"],
            "MassDrift",
            "{u} is no longer held"
        );
    }

    running.stop().await;
    sim.shutdown().await;
}
