//! Incremental mode end to end over the real simulator: the controller's group-delta loop
//! sends an object to reconcile when its user leaves a group the assignment holds, and
//! when the user comes back to a group the assignment was missing (the repair landed),
//! and leaves every other object alone.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use http::{Request, Response};
use kube::client::Body;
use kube::runtime::reflector::store;
use kube::runtime::watcher::Event;
use redeliver::api::AccessPackageAssignment;
use redeliver::controller::context::{Context, Settings};
use redeliver::controller::metrics::Metrics;
use redeliver_sim::{Scenario, SimHandle, SimOptions, Simulator};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// An object whose status says Graph delivered it and which of `groups` the user holds.
fn delivered(
    sim: &SimHandle,
    name: &str,
    upn: &str,
    groups: &[(&str, &str)],
) -> AccessPackageAssignment {
    let resources: Vec<serde_json::Value> = groups
        .iter()
        .map(|(g, state)| {
            json!({"originSystem": "AadGroup", "originId": sim.group_id(g).unwrap(), "state": state})
        })
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "redeliver.dev/v1alpha1",
        "kind": "AccessPackageAssignment",
        "metadata": {"name": name, "namespace": "access"},
        "spec": {"accessPackage": {"displayName": "Finance Analysts"}, "target": {"userPrincipalName": upn}},
        "status": {"graphState": "delivered", "targetObjectId": sim.user_id(upn).unwrap(), "resources": resources},
    }))
    .expect("a valid object")
}

#[tokio::test]
async fn leaving_a_held_group_or_returning_to_a_missing_one_triggers_a_reconcile() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sim = Simulator::start(Scenario::demo(), SimOptions::fast())
        .await
        .unwrap();
    // In the demo tenant alice was removed from fin-writers by hand; bob holds both.
    let (reader, mut writer) = store::<AccessPackageAssignment>();
    writer.apply_watcher_event(&Event::Init);
    for obj in [
        delivered(
            &sim,
            "alice",
            "alice@contoso.com",
            &[("fin-readers", "Present"), ("fin-writers", "Missing")],
        ),
        delivered(
            &sim,
            "bob",
            "bob@contoso.com",
            &[("fin-readers", "Present"), ("fin-writers", "Present")],
        ),
    ] {
        writer.apply_watcher_event(&Event::InitApply(obj));
    }
    writer.apply_watcher_event(&Event::InitDone);

    // No Kubernetes call is made by the delta loop: an API server that answers nothing.
    let (service, _handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "access");
    let graph = crate::fault_support::graph_client(&sim).unwrap();
    let (metrics, _registry) = Metrics::new(Some(graph.clone()));
    let settings = Settings {
        delta_interval: Duration::from_millis(300),
        ..Settings::default()
    };
    let ctx = Arc::new(Context::new(client, graph, metrics, &settings));
    let (tx, mut rx) = futures::channel::mpsc::channel(redeliver::controller::delta::TRIGGER_QUEUE);
    let stop = CancellationToken::new();
    let run = tokio::spawn(redeliver::controller::delta::run(
        ctx,
        reader,
        tx,
        stop.clone(),
        redeliver::controller::watch::Synced::already(),
        None,
    ));

    // The first interval starts the tracker (`$deltatoken=latest`); changes after that are
    // followed. Wait for a poll after the start, which found nothing to report.
    let delta = |started: bool| {
        sim.request_log()
            .iter()
            .filter(|e| {
                e.path.starts_with("/v1.0/groups/delta")
                    && e.path.contains("deltatoken=latest") == started
            })
            .count()
    };
    crate::wait::until(
        "the tracker started and polled once",
        Duration::from_secs(10),
        || delta(true) > 0 && delta(false) > 0,
    )
    .await;
    assert!(
        rx.try_recv().is_err(),
        "nothing changed yet, nothing triggered"
    );
    sim.add_member("fin-writers", "alice@contoso.com").unwrap();
    sim.remove_member("fin-readers", "bob@contoso.com").unwrap();
    // An unrelated change: carol holds no object here.
    sim.remove_member("fin-readers", "carol@contoso.com").ok();

    let mut triggered = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while triggered.len() < 2 {
        match tokio::time::timeout_at(deadline, rx.next()).await {
            Ok(Some(r)) => {
                triggered.insert(r.name);
            }
            _ => break,
        }
    }
    assert_eq!(
        triggered.into_iter().collect::<Vec<_>>(),
        ["alice", "bob"],
        "alice came back to a missing group, bob left a held one"
    );
    // Quiet again: nothing more arrives over two more polls.
    let polls = delta(false);
    crate::wait::until("two more polls", Duration::from_secs(10), || {
        delta(false) >= polls + 2
    })
    .await;
    assert!(rx.try_recv().is_err(), "one trigger per change");
    stop.cancel();
    run.await.unwrap();
    sim.shutdown().await;
}
