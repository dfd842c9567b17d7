//! What the suites that run the controllers share: the tests' settings, a client for the
//! in-process API server, the objects every multi-tenant scenario declares (a Secret, a
//! `GraphConnection`) and the whole controller (`run_controllers`) started and stopped
//! in-process. Each suite uses a subset, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use redeliver::controller::metrics::{Metrics, ReconcileLabels};
use redeliver::controller::server::Readiness;
use redeliver::controller::{Context, Settings, run_controllers};
use redeliver::graph::GraphClient;
use redeliver_fake_kube::FakeKube;
use redeliver_sim::SimHandle;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// The controllers' debounce in tests. In production a reconcile request waits a second
/// for more of the same object ([`redeliver::controller::context::DEBOUNCE`]), which would
/// put a second of wall clock in front of every step a test waits for; a few tens of
/// milliseconds still coalesce the bursts one change causes (an object's write and the
/// watch events it triggers arrive within a few milliseconds on loopback).
pub const DEBOUNCE: Duration = Duration::from_millis(50);

/// The operator's default settings, with the tests' [`DEBOUNCE`].
pub fn settings() -> Settings {
    Settings {
        debounce: DEBOUNCE,
        ..Settings::default()
    }
}

/// Reconciles of `kind` (`AccessPackageAssignment`, `AccessPackageGuard`) that ended well,
/// by the controller's own count (`redeliver_reconciles_total{result="ok"}`): what a test
/// waits on for "the controller has looked at it again" instead of sleeping.
pub fn reconciled(metrics: &Metrics, kind: &'static str) -> u64 {
    metrics
        .reconciles
        .get_or_create(&ReconcileLabels { kind, result: "ok" })
        .get()
}

/// A Kubernetes client for `kube`; namespaced requests without a namespace of their own go
/// to `default_namespace` (kube's default, `default`, when `None`).
pub fn kube_client(kube: &FakeKube, default_namespace: Option<&str>) -> kube::Client {
    let mut config = kube::Config::new(kube.url().parse().unwrap());
    if let Some(ns) = default_namespace {
        config.default_namespace = ns.into();
    }
    kube::Client::try_from(config).unwrap()
}

/// A controller context over `client`, with `operator` as the operator's own Graph
/// connection (none: only `GraphConnection`s), and fresh metrics (`ctx.metrics`).
pub fn context(
    client: kube::Client,
    operator: Option<GraphClient>,
    settings: &Settings,
) -> Arc<Context> {
    let (metrics, _registry) = Metrics::new(operator.clone());
    Arc::new(Context::with_operator_connection(
        client, operator, metrics, settings,
    ))
}

/// A context with `sim` as the operator's own connection, its Kubernetes client for
/// `kube` defaulting to `namespace`.
pub fn operator_context(
    kube: &FakeKube,
    sim: &SimHandle,
    namespace: &str,
    settings: &Settings,
) -> Arc<Context> {
    let graph = crate::fault_support::graph_client(sim).unwrap();
    context(kube_client(kube, Some(namespace)), Some(graph), settings)
}

/// A Secret holding `value` under `key`, as the API server serves it (base64 `data`).
pub fn secret(namespace: &str, name: &str, key: &str, value: &str) -> Value {
    let s = k8s_openapi::api::core::v1::Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        },
        data: Some(
            [(
                key.to_string(),
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
}

/// A connection spec pointing at `sim`, with its client secret in Secret `secret_name`.
pub fn connection_spec(sim: &SimHandle, secret_name: &str) -> Value {
    json!({
        "tenantId": sim.tenant_id,
        "clientId": sim.client_id,
        "credential": {"clientSecret": {"name": secret_name}},
        "authorityHost": sim.authority_host,
        "graphUrl": sim.graph_url,
    })
}

/// A `GraphConnection` to `sim`, with its client secret in Secret `secret_name`.
pub fn graph_connection(namespace: &str, name: &str, sim: &SimHandle, secret_name: &str) -> Value {
    json!({
        "apiVersion": "redeliver.dev/v1alpha1", "kind": "GraphConnection",
        "metadata": {"name": name, "namespace": namespace},
        "spec": connection_spec(sim, secret_name),
    })
}

/// The whole controller (`run_controllers`), running in-process until [`Controller::stop`].
pub struct Controller {
    pub ctx: Arc<Context>,
    pub ready: Readiness,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Controller {
    /// Starts the controllers of `ctx` over `namespaces` (all when empty), `concurrency`
    /// reconciles at a time, without waiting for their caches.
    pub fn spawn(ctx: Arc<Context>, namespaces: Vec<String>, concurrency: u16) -> Self {
        Self::spawn_with(ctx, move |ctx, ready, stop| {
            run_controllers(ctx, namespaces, concurrency, ready, stop)
        })
    }

    /// Starts `run` (what runs the controllers of `ctx`, e.g. in a shard set) with a
    /// readiness to report and a token that stops it.
    pub fn spawn_with<F>(
        ctx: Arc<Context>,
        run: impl FnOnce(Arc<Context>, Readiness, CancellationToken) -> F,
    ) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let ready = Readiness::default();
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(ctx.clone(), ready.clone(), stop.clone()));
        Self {
            ctx,
            ready,
            stop,
            task,
        }
    }

    /// Like [`Controller::spawn`], and waits until the controller is ready (its caches
    /// synced), as a probe would before sending traffic.
    pub async fn start(ctx: Arc<Context>, namespaces: Vec<String>, concurrency: u16) -> Self {
        let running = Self::spawn(ctx, namespaces, concurrency);
        running.wait_ready().await;
        running
    }

    /// Waits until the controller is ready; fails the test after 20 s.
    pub async fn wait_ready(&self) {
        crate::wait::until("the controller is ready", Duration::from_secs(20), || {
            self.ready.get()
        })
        .await;
    }

    /// Reconciles of `kind` this controller finished well ([`reconciled`]).
    pub fn reconciled(&self, kind: &'static str) -> u64 {
        reconciled(&self.ctx.metrics, kind)
    }

    /// Cancels the controller and waits for it to shut down; fails the test if that takes
    /// more than 20 s or the controller panicked.
    pub async fn stop(self) {
        self.stop_within(Duration::from_secs(20)).await
    }

    /// [`Controller::stop`] with its own bound on the shutdown.
    pub async fn stop_within(self, bound: Duration) {
        self.stop.cancel();
        tokio::time::timeout(bound, self.task)
            .await
            .unwrap_or_else(|_| panic!("the controller stops within {bound:?}"))
            .unwrap();
    }
}
