//! End to end against a real cluster (the current kubeconfig) and the Graph simulator:
//! `cargo test --test it controller_cluster -- --ignored`. Installs the CRDs, runs the
//! controllers for one fresh namespace, and checks drift repair and radio silence.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use redeliver::api::AccessPackageAssignment;
use redeliver::controller::metrics::Metrics;
use redeliver::controller::server::Readiness;
use redeliver::controller::{Context, Settings, run_controllers};
use redeliver_sim::{Scenario, SimOptions, Simulator};
use serde_json::json;
use tokio_util::sync::CancellationToken;

async fn wait_for<T>(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn delivered(obj: &AccessPackageAssignment) -> Option<&str> {
    obj.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Delivered")
        .map(|c| c.status.as_str())
}

#[tokio::test]
#[ignore = "needs cluster"]
async fn drift_is_repaired_and_steady_state_writes_nothing() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::try_default().await.unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in redeliver::api::crds() {
        crds.patch(
            &crd.name_any(),
            &PatchParams::apply("redeliver-test").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ns_name = format!(
        "redeliver-e2e-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns_name}})).unwrap(),
        )
        .await
        .unwrap();

    let sim = Simulator::start(Scenario::demo(), SimOptions::fast())
        .await
        .unwrap();
    let graph = crate::fault_support::graph_client(&sim).unwrap();
    let (metrics, _registry) = Metrics::new(Some(graph.clone()));
    let settings = Settings {
        observation_max_age: Duration::from_secs(5),
        ..Settings::default()
    };
    let ctx = Arc::new(Context::new(client.clone(), graph, metrics, &settings));
    let stop = CancellationToken::new();
    let ready = Readiness::default();
    let controllers = tokio::spawn(run_controllers(
        ctx,
        vec![ns_name.clone()],
        2,
        ready.clone(),
        stop.clone(),
    ));

    let apas: Api<AccessPackageAssignment> = Api::namespaced(client.clone(), &ns_name);
    let apa: AccessPackageAssignment = serde_json::from_value(json!({
        "apiVersion": "redeliver.dev/v1alpha1", "kind": "AccessPackageAssignment",
        "metadata": {"name": "alice-finance"},
        "spec": {"accessPackage": {"displayName": "Finance Analysts", "catalog": "Finance"},
                 "target": {"userPrincipalName": "alice@contoso.com"},
                 "verifyInterval": "30s", "reprocess": {"cooldown": "30s"}}
    }))
    .unwrap();
    apas.create(&PostParams::default(), &apa).await.unwrap();

    // Alice starts drifted (fin-writers removed by hand): reprocessed, then verified.
    wait_for(
        "Delivered=True after the reprocess",
        Duration::from_secs(120),
        async || {
            let o = apas.get("alice-finance").await.ok()?;
            (delivered(&o) == Some("True")).then_some(())
        },
    )
    .await;
    let events: Api<Event> = Api::namespaced(client.clone(), &ns_name);
    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    assert!(reasons.iter().any(|r| r == "DriftDetected"), "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r == "ReprocessRequested"),
        "{reasons:?}"
    );

    // Steady state: a full verify interval later, no write happened.
    let rv = apas.get("alice-finance").await.unwrap().resource_version();
    tokio::time::sleep(Duration::from_secs(40)).await;
    assert_eq!(
        apas.get("alice-finance").await.unwrap().resource_version(),
        rv
    );

    // An outside change is found within one verify interval and repaired.
    assert!(
        sim.remove_member("fin-readers", "alice@contoso.com")
            .unwrap()
    );
    wait_for(
        "drift to be repaired",
        Duration::from_secs(120),
        async || {
            sim.is_member("fin-readers", "alice@contoso.com")
                .then_some(())
        },
    )
    .await;

    stop.cancel();
    controllers.await.unwrap();
    namespaces
        .delete(&ns_name, &DeleteParams::default())
        .await
        .unwrap();
}
