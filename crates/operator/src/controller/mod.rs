//! `redeliver controller`: the Kubernetes glue around the engine. Watches
//! `AccessPackageAssignment` and `AccessPackageGuard`, observes Graph, lets the engine decide,
//! performs the decided action, writes status with server-side apply and records events.
//! Leader election, metrics and health live here too.
//!
//! RBAC the controller needs (granted by `charts/redeliver/templates/rbac.yaml`, listed in the
//! README): `accesspackageassignments` and `accesspackageguards` (get, list, watch, patch),
//! their `/status` (patch) and `/finalizers` (update, patch); `graphconnections` and
//! `clustergraphconnections` (get, list, watch) and their `/status` (patch); events in
//! `events.k8s.io` and core (create, patch); with leader election, `coordination.k8s.io`
//! leases (get, list, watch, create, update, patch) in the lease namespace only; for
//! connections with a client secret, `get` on Secrets where those live (never list/watch).

pub mod assignment;
pub mod connection;
pub mod connections;
pub mod context;
pub mod delta;
pub mod error;
pub mod guard;
pub mod inflight;
pub mod ledger;
pub mod limits;
pub mod metrics;
pub mod observation;
pub mod server;
pub mod shard;
pub mod shard_set;
pub mod sharding;
pub mod watch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, ApiResource, ListParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector;
use kube::runtime::{Config as ControllerConfig, Controller, watcher};
use kube::runtime::{PredicateConfig, predicates};
use kube::{Client, Resource};
use kube_lease_manager::LeaseManagerBuilder;
use tokio_util::sync::CancellationToken;

pub use context::{Context, Settings};
pub use error::Error;

use crate::api::{
    AccessPackageAssignment, AccessPackageGuard, ClusterGraphConnection, GraphConnection,
};
use crate::graph::{GraphClient, GraphSettings};
use metrics::Metrics;
use server::Readiness;

/// Everything [`run`] needs: the options of `redeliver controller`, one field a flag (the
/// command line's `redeliver_cli::ControllerArgs` converts into this; its `--help` is the
/// reference for each). Plain data, so the library links no argument parser.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    /// Microsoft Graph connection and credentials.
    pub graph: GraphSettings,

    /// Namespace to watch (repeat for several). All namespaces when omitted. Comma-separated
    /// in the environment variable.
    pub namespaces: Vec<String>,

    /// Reconciles running at once (both kinds, all namespaces together).
    pub concurrency: u16,

    /// Verify interval for objects whose spec.verifyInterval is unusable (e.g. 10m, 1h).
    pub verify_interval: Duration,

    /// Reprocess calls allowed per minute across all objects (a token bucket; bursts up to the
    /// same number). 0 disables reprocessing: assignments report drift only, and say so.
    pub reprocess_rate: u32,

    /// Address of the /metrics, /livez and /readyz endpoint.
    pub metrics_addr: SocketAddr,

    /// Run the controllers only while holding a coordination.k8s.io Lease, so that of several
    /// replicas exactly one reconciles.
    pub leader_election: bool,

    /// Name of the Lease used for leader election (with --leader-election only: alone it
    /// would have no effect, and is refused).
    pub lease_name: String,

    /// Namespace of the Lease (normally the pod's own, via the downward API).
    pub lease_namespace: Option<String>,

    /// Identity of this replica: the Lease holder and the events' reporting instance
    /// (normally the pod name, via the downward API). A random id when omitted.
    pub pod_name: Option<String>,

    /// A request or assignment in a transitional state longer than this is reported as
    /// Stalled (reason DeliveryStuck).
    pub stuck_after: Duration,

    /// How long one Graph read (a package, a group's members, ...) is shared between objects.
    pub observation_max_age: Duration,

    /// Between full verifications, poll group delta this often and reconcile an assignment
    /// at once when one of its users leaves a promised group (0 turns it off).
    pub delta_interval: Duration,

    /// Read the privileged kinds (app roles, group owners, PIM-for-Groups eligibilities,
    /// Entra and Azure roles) again at most this often, on a delta poll; 0: every delta
    /// interval. Each promised one costs a paged read per poll (README "Detection latency").
    pub privileged_poll_interval: Duration,

    /// A new object gets its first-visit status (Reconciling=True, reason Verifying) only
    /// if its first verification takes longer than this; a quicker one is written once,
    /// with the verified status (0 always writes the first-visit status first).
    pub first_status_after: Duration,

    /// When drift is detected, look up who removed the resource in Entra's directory audit
    /// log and say so in the DriftDetected event, the Delivered message and
    /// status.resources[].lastChange. Needs AuditLog.Read.All; without it the status says
    /// attribution is unavailable and everything else works. One audit query per
    /// detection batch (the removals one group delta poll of a connection reports), one per
    /// group or app for a removal found otherwise, never for healthy objects.
    pub drift_attribution: bool,

    /// Namespace the Secrets of ClusterGraphConnections are read from: the operator's own
    /// (like cert-manager's cluster resource namespace). Default: the pod's namespace
    /// (POD_NAMESPACE, the same as --lease-namespace).
    pub cluster_secret_namespace: Option<String>,

    /// Reconcile ClusterGraphConnections (check them and write their status). Default: on
    /// when every namespace is watched, off with --namespace: a namespace-restricted
    /// installation uses cluster connections for its own objects but leaves their status to
    /// the installation that owns them (whose Secret namespace holds their Secrets).
    pub cluster_connections: Option<bool>,

    /// Field manager of the controller's status writes (server-side apply). Give each
    /// installation in a cluster its own (the chart uses the release name), so
    /// `kubectl get --show-managed-fields` tells who wrote what.
    pub field_manager: String,

    /// Number of shards: the connections (tenants) are split across this many replicas
    /// (or leader-elected groups of replicas, one Lease per shard), each reconciling the
    /// objects of the connections that hash to its shard. Helps with many tenants, not with
    /// one huge tenant (the Graph budget is per application and tenant).
    pub shard_count: u32,

    /// This replica's shard, 0-based (below --shard-count). Default: the StatefulSet ordinal
    /// at the end of --pod-name.
    pub shard_index: Option<u32>,

    /// Cross-check each verification against Microsoft's access drift report (Graph beta,
    /// per catalog, groups and apps only): where it disagrees with Redeliver's own read the
    /// Delivered message says so and redeliver_access_drift_report_disagreements_total
    /// counts it. Detection only: never a reprocess, never a different status. Needs
    /// EntitlementManagement.Read.All (already required); if the report cannot be read the
    /// message says it is unavailable and nothing else changes.
    pub use_access_drift_report: bool,
}

impl ControllerOptions {
    /// This replica's shard, from `--shard-index` or the pod name's ordinal.
    pub fn shard(&self) -> anyhow::Result<shard::Shard> {
        if self.shard_count <= 1 {
            return Ok(shard::Shard::default());
        }
        let index = match self.shard_index {
            Some(i) => i,
            None => self
                .pod_name
                .as_deref()
                .and_then(shard::ordinal)
                .ok_or_else(|| anyhow!("--shard-count {} needs --shard-index (or a pod name ending in a StatefulSet ordinal, such as redeliver-2)", self.shard_count))?,
        };
        if index >= self.shard_count {
            bail!(
                "--shard-index {index} is not below --shard-count {}",
                self.shard_count
            );
        }
        Ok(shard::Shard {
            index,
            count: self.shard_count,
        })
    }

    /// The reconcile settings these options give a replica whose identity is `identity`.
    pub fn settings(&self, identity: &str) -> Settings {
        Settings {
            concurrency: usize::from(self.concurrency),
            verify_interval: self.verify_interval,
            stuck_after: self.stuck_after,
            reprocess_per_minute: self.reprocess_rate,
            observation_max_age: self.observation_max_age,
            delta_interval: self.delta_interval,
            privileged_poll_interval: self.privileged_poll_interval,
            first_status_after: self.first_status_after,
            instance: Some(identity.to_string()),
            attribution: crate::observe::attribution::AttributionSettings {
                enabled: self.drift_attribution,
                ..Default::default()
            },
            shard: self.shard().unwrap_or_default(),
            graph_defaults: self.graph.clone(),
            operator_namespace: self
                .cluster_secret_namespace
                .clone()
                .or_else(|| self.lease_namespace.clone()),
            use_access_drift_report: self.use_access_drift_report,
            cluster_connections: self
                .cluster_connections
                .unwrap_or(self.namespaces.is_empty()),
            ..Settings::default()
        }
    }
}

/// Runs the operator until SIGTERM/Ctrl+C (returns `Ok`) or until the leader lease is lost
/// or a start-up check fails (returns an error whose message says how to fix it).
pub async fn run(args: ControllerOptions) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    context::set_field_manager(&args.field_manager)?;
    let shard = args.shard()?;
    if shard.count > 1 {
        tracing::info!(
            shard = shard.index,
            shards = shard.count,
            "sharded: reconciling the connections of this shard only"
        );
    }
    let listener = server::bind(args.metrics_addr).await?;
    let client = Client::try_default().await.context(
        "cannot reach Kubernetes: set KUBECONFIG (or run in a pod with a service account)",
    )?;
    check_crds(&client, &args.namespaces).await?;

    // Without --tenant-id and --client-id the operator has no connection of its own: every
    // object then needs a GraphConnection or ClusterGraphConnection.
    let graph = if args.graph.tenant_id.is_none() && args.graph.client_id.is_none() {
        tracing::info!(
            "no --tenant-id/--client-id: only GraphConnection and ClusterGraphConnection objects are used"
        );
        None
    } else {
        let graph = GraphClient::new(args.graph.clone().into_config()?)?;
        graph
            .check_token()
            .await
            .map_err(|e| anyhow!("cannot obtain a Microsoft Graph token: {e}"))?;
        Some(graph)
    };

    let identity = args
        .pod_name
        .clone()
        .unwrap_or_else(|| format!("redeliver-{}", uuid::Uuid::new_v4().simple()));
    let (metrics, registry) = Metrics::new(graph.clone());
    let readiness = Readiness::default();
    let shutdown = CancellationToken::new();
    tokio::spawn(signal_on_terminate(shutdown.clone()));
    let server = tokio::spawn(server::serve(
        listener,
        Arc::new(registry),
        readiness.clone(),
        shutdown.clone(),
    ));
    let ctx = Arc::new(Context::with_operator_connection(
        client.clone(),
        graph,
        metrics.clone(),
        &args.settings(&identity),
    ));

    let result = if args.leader_election {
        // Non-leaders are ready: readiness reflects this replica's health, not leadership.
        readiness.set(true);
        run_as_leader(
            &args,
            client,
            &identity,
            ctx,
            readiness.clone(),
            shutdown.clone(),
        )
        .await
    } else {
        metrics.is_leader.set(1);
        run_in_shard_set(
            shard_set_of(&args, &client, &identity)?,
            ctx,
            args.namespaces.clone(),
            args.concurrency,
            readiness.clone(),
            shutdown.clone(),
        )
        .await
        .map_err(anyhow::Error::from)
    };
    shutdown.cancel();
    match server.await {
        Ok(Err(e)) => tracing::warn!(error = %e, "metrics server failed"),
        Err(e) => tracing::warn!(error = %e, "metrics server task failed"),
        Ok(Ok(())) => {}
    }
    result
}

async fn signal_on_terminate(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl+C stops the controller");
                let _ = tokio::signal::ctrl_c().await;
                shutdown.cancel();
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("shutdown requested: finishing in-flight reconciles");
    shutdown.cancel();
}

/// Lists each kind with `limit=1`: a missing CRD fails fast with the fix, instead of a watch
/// retrying forever.
pub async fn check_crds(client: &Client, namespaces: &[String]) -> anyhow::Result<()> {
    let ns = namespaces.first().map(String::as_str);
    for (kind, plural, api) in [
        (
            AccessPackageAssignment::kind(&()).to_string(),
            AccessPackageAssignment::plural(&()).to_string(),
            watch::dynamic_api::<AccessPackageAssignment>(client.clone(), ns),
        ),
        (
            AccessPackageGuard::kind(&()).to_string(),
            AccessPackageGuard::plural(&()).to_string(),
            watch::dynamic_api::<AccessPackageGuard>(client.clone(), ns),
        ),
        (
            GraphConnection::kind(&()).to_string(),
            GraphConnection::plural(&()).to_string(),
            watch::dynamic_api::<GraphConnection>(client.clone(), ns),
        ),
        (
            ClusterGraphConnection::kind(&()).to_string(),
            ClusterGraphConnection::plural(&()).to_string(),
            kube::Api::all_with(
                client.clone(),
                &ApiResource::erase::<ClusterGraphConnection>(&()),
            ),
        ),
    ] {
        match api.list(&ListParams::default().limit(1)).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => bail!(
                "the {kind} CustomResourceDefinition is not installed in this cluster; install the CRDs with `kubectl apply --server-side -f crds/` (or `redeliver crd | kubectl apply --server-side -f -`)"
            ),
            Err(kube::Error::Api(e)) if e.code == 403 => bail!(
                "RBAC: the controller may not list {kind} objects{}: {}; grant get/list/watch/patch on {plural}.{} (see the chart's ClusterRole)",
                ns.map(|n| format!(" in namespace {n}")).unwrap_or_default(),
                e.message,
                crate::api::GROUP
            ),
            Err(e) => return Err(anyhow!(e).context(format!("cannot list {kind} objects"))),
        }
    }
    Ok(())
}

/// Waits for the lease, runs the controllers while holding it, and stops them (with an
/// error, so the process exits non-zero and restarts cleanly) when it is lost.
async fn run_as_leader(
    args: &ControllerOptions,
    client: Client,
    identity: &str,
    ctx: Arc<Context>,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let lease_namespace = args.lease_namespace.clone().ok_or_else(|| {
        anyhow!("--leader-election needs the Lease namespace: set --lease-namespace or POD_NAMESPACE (downward API metadata.namespace)")
    })?;
    let lease_name = args.shard()?.lease_name(&args.lease_name);
    let manager = || async {
        LeaseManagerBuilder::new(client.clone(), &lease_name)
            .with_namespace(&lease_namespace)
            .with_identity(identity)
            .with_duration(15)
            .with_grace(5)
            .build()
            .await
            .with_context(|| {
                format!(
                    "cannot use Lease {lease_namespace}/{lease_name}: grant get/create/patch on coordination.k8s.io leases in {lease_namespace}"
                )
            })
    };
    let (mut leader, mut lease_task) = manager().await?.watch().await;
    tracing::info!(identity, lease = %lease_name, namespace = %lease_namespace, "waiting for the leader lease");
    // kube-lease-manager's standby sleeps until the holder's lease would expire (up to 15 s),
    // even when the holder released it on shutdown. Look every second: a released lease is
    // taken at once by a fresh manager, whose first step locks an orphaned lease.
    let leases: Api<Lease> = Api::namespaced(client.clone(), &lease_namespace);
    let mut look = tokio::time::interval(Duration::from_secs(1));
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if *leader.borrow_and_update() {
            break;
        }
        tokio::select! {
            _ = shutdown.cancelled() => {
                drop(leader);
                let _ = lease_task.await;
                return Ok(());
            }
            changed = leader.changed() => {
                if changed.is_err() {
                    bail!("the leader election task stopped unexpectedly");
                }
            }
            _ = look.tick() => {
                let released = match leases.get_opt(&lease_name).await {
                    Ok(Some(lease)) => lease
                        .spec
                        .and_then(|s| s.holder_identity)
                        .is_none_or(|h| h.is_empty()),
                    _ => false,
                };
                if released {
                    tracing::info!(identity, "the leader released the lease; taking it now");
                    lease_task.abort();
                    (leader, lease_task) = manager().await?.watch().await;
                }
            }
        }
    }
    tracing::info!(identity, "acquired the leader lease; starting controllers");
    ctx.metrics.is_leader.set(1);
    let stop = shutdown.child_token();
    let controllers = run_in_shard_set(
        shard_set_of(args, &client, identity)?,
        ctx.clone(),
        args.namespaces.clone(),
        args.concurrency,
        readiness,
        stop.clone(),
    );
    tokio::pin!(controllers);
    let mut lost = false;
    let set_lost;
    loop {
        tokio::select! {
            result = &mut controllers => {
                set_lost = result.err();
                break;
            }
            changed = leader.changed(), if !lost => {
                if changed.is_err() || !*leader.borrow_and_update() {
                    tracing::error!(identity, "lost the leader lease; stopping controllers");
                    lost = true;
                    stop.cancel();
                }
            }
        }
    }
    ctx.metrics.is_leader.set(0);
    // Dropping the receiver makes the lease task release the lease and return.
    drop(leader);
    match lease_task.await {
        Ok(Ok(_)) => tracing::info!("released the leader lease"),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "could not release the leader lease; it expires on its own")
        }
        Err(e) => tracing::warn!(error = %e, "leader election task failed"),
    }
    if lost {
        bail!("lost the leader lease; exiting so this replica restarts cleanly");
    }
    if let Some(e) = set_lost {
        return Err(anyhow!(e).context("exiting so this replica restarts cleanly"));
    }
    Ok(())
}

/// This replica's shard-set Lease (`shard_set::ShardSetLease::for_replica`).
fn shard_set_of(
    args: &ControllerOptions,
    client: &Client,
    identity: &str,
) -> anyhow::Result<Option<shard_set::ShardSetLease>> {
    Ok(shard_set::ShardSetLease::for_replica(
        client,
        args.shard()?,
        args.leader_election,
        args.lease_namespace.as_deref(),
        &args.lease_name,
        identity,
    ))
}

/// Runs the controllers, inside this replica's shard set when it takes part in one
/// (`shard_set`): they start only once no replica of another `--shard-count` is active, and
/// stop when the shard-set Lease is lost.
pub async fn run_in_shard_set(
    set: Option<shard_set::ShardSetLease>,
    ctx: Arc<Context>,
    namespaces: Vec<String>,
    concurrency: u16,
    readiness: Readiness,
    stop: CancellationToken,
) -> Result<(), shard_set::ShardSetError> {
    match set {
        Some(set) => {
            set.with_clock(ctx.clock())
                .run(stop, |stop| {
                    run_controllers(ctx, namespaces, concurrency, readiness, stop)
                })
                .await
        }
        None => {
            run_controllers(ctx, namespaces, concurrency, readiness, stop).await;
            Ok(())
        }
    }
}

/// Runs both controllers (one watch per namespace, or one cluster-wide) until `stop` is
/// cancelled, then lets in-flight reconciles finish. Marks `readiness` once every store has
/// synced.
pub async fn run_controllers(
    ctx: Arc<Context>,
    namespaces: Vec<String>,
    concurrency: u16,
    readiness: Readiness,
    stop: CancellationToken,
) {
    let sizes: Arc<dyn metrics::StateSizes> = ctx.clone();
    ctx.metrics.watch_state(Arc::downgrade(&sizes));
    let scopes: Vec<Option<String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.into_iter().map(Some).collect()
    };
    // A new leader first rebuilds the repair ledger from every object's status and takes
    // the group delta baseline; reconciles wait until then (see `start_up`).
    ctx.hold();
    if ctx.shard.count > 1 {
        let weak = Arc::downgrade(&ctx);
        ctx.metrics
            .count_only(Arc::new(move |a: &AccessPackageAssignment| {
                weak.upgrade().is_none_or(|ctx| ctx.owns(a))
            }));
    }
    let mut w = Wiring::new(ctx.clone(), concurrency, stop.clone());
    // Connections first: no object is resolved before the connection stores have listed,
    // or an object of a namespace with a default GraphConnection could be planned against
    // the operator's tenant.
    w.cluster_connections();
    for scope in scopes {
        w.namespaced_connections(scope.as_deref());
        let (bad_a, bad_g) = w.malformed_reports();
        let assignments = w.assignments(scope.as_deref(), bad_a);
        let guards = w.guards(scope.as_deref(), bad_g);
        if ctx.shard.count > 1 {
            w.shard_upkeep(scope.as_deref(), assignments, guards);
        }
    }
    let Wiring {
        runs,
        synced,
        mut background,
        baselines,
        ..
    } = w;
    background.spawn(
        "start-up",
        start_up(ctx.clone(), synced, baselines, readiness.clone()),
    );
    let runs = futures::future::join_all(runs);
    tokio::pin!(runs);
    loop {
        tokio::select! {
            _ = &mut runs => break,
            Some(name) = background.ended(), if !background.is_empty() => {
                if stop.is_cancelled() {
                    continue;
                }
                // Nothing restarts it here, and without it this replica silently stops doing
                // part of its job (detection, start-up, labels): /livez fails so the kubelet
                // restarts the pod (another replica takes the lease meanwhile).
                tracing::error!(task = name, "a background task ended; /livez now fails so the pod is restarted");
                readiness.fail(format!("background task {name} ended"));
            }
        }
    }
    background.shutdown().await;
    tracing::info!("controllers stopped");
}

/// A scoped watch's store and the shard keys of the objects in it (`sharding::ShardKeys`).
type Held<K> = (reflector::Store<K>, Arc<sharding::ShardKeys>);

/// The watches, controllers and background tasks of one process, set up one kind at a time
/// (`run_controllers`).
struct Wiring {
    ctx: Arc<Context>,
    config: ControllerConfig,
    /// Connections: watched whole, every replica needs them all to resolve its objects.
    watcher_config: watcher::Config,
    /// Assignments and guards: sharded, a replica holds its shard's objects only (by their
    /// shard-key label; `controller::shard`).
    scoped_config: watcher::Config,
    stop: CancellationToken,
    runs: Vec<futures::future::BoxFuture<'static, ()>>,
    synced: Vec<Arc<watch::Synced>>,
    background: Background,
    baselines: Vec<tokio::sync::oneshot::Receiver<()>>,
}

impl Wiring {
    fn new(ctx: Arc<Context>, concurrency: u16, stop: CancellationToken) -> Self {
        let watcher_config = watcher::Config::default().page_size(200);
        let scoped_config = match ctx.shard.label_selector() {
            Some(selector) => watcher_config.clone().labels(&selector),
            None => watcher_config.clone(),
        };
        let config = ControllerConfig::default()
            .debounce(ctx.debounce)
            .concurrency(concurrency);
        Self {
            ctx,
            config,
            watcher_config,
            scoped_config,
            stop,
            runs: Vec::new(),
            synced: Vec::new(),
            background: Background::default(),
            baselines: Vec::new(),
        }
    }

    /// A future that ends when the process stops.
    fn until_stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let token = self.stop.clone();
        async move { token.cancelled().await }
    }

    fn cluster_connections(&mut self) {
        let ctx = &self.ctx;
        let (reader, writer) = reflector::store::<ClusterGraphConnection>();
        ctx.connections.set_cluster_store(reader.clone());
        let synced = watch::Synced::new();
        self.synced.push(synced.clone());
        let ctx2 = ctx.clone();
        let stream = watcher::watcher(
            Api::<ClusterGraphConnection>::all(ctx.client.clone()),
            self.watcher_config.clone(),
        )
        .default_backoff()
        .inspect(move |ev| {
            if let Ok(ev) = ev {
                connection::on_cluster_event(&ctx2, ev);
                if matches!(ev, watcher::Event::InitDone) {
                    synced.set();
                }
            }
        })
        .reflect(writer)
        .applied_objects()
        // Its own status writes never trigger a check (only a spec change, or its due
        // re-check): a status that changed would otherwise sign in again at once.
        .predicate_filter(predicates::generation, PredicateConfig::default());
        let stopped = self.until_stopped();
        if ctx.cluster_connections {
            let run = Controller::for_stream(stream, reader)
                .with_config(self.config.clone())
                .graceful_shutdown_on(stopped)
                .run(
                    connection::reconcile_cluster,
                    connection::error_policy,
                    ctx.clone(),
                )
                .for_each(|r| async move { log_result(connection::CLUSTER_KIND, r) })
                .boxed();
            self.runs.push(run);
        } else {
            // Watched for this installation's objects, never reconciled: their status is
            // the owning installation's.
            tracing::info!(
                "not reconciling ClusterGraphConnections (--cluster-connections=false): their status is left to the installation that owns them"
            );
            self.runs
                .push(stream.take_until(stopped).for_each(|_| async {}).boxed());
        }
    }

    fn namespaced_connections(&mut self, scope: Option<&str>) {
        let ctx = &self.ctx;
        let (reader, writer) = reflector::store::<GraphConnection>();
        ctx.connections.add_namespaced_store(reader.clone());
        let synced = watch::Synced::new();
        self.synced.push(synced.clone());
        let ctx2 = ctx.clone();
        let api: Api<GraphConnection> = match scope {
            Some(ns) => Api::namespaced(ctx.client.clone(), ns),
            None => Api::all(ctx.client.clone()),
        };
        let stream = watcher::watcher(api, self.watcher_config.clone())
            .default_backoff()
            .inspect(move |ev| {
                if let Ok(ev) = ev {
                    connection::on_namespaced_event(&ctx2, ev);
                    if matches!(ev, watcher::Event::InitDone) {
                        synced.set();
                    }
                }
            })
            .reflect(writer)
            .applied_objects()
            .predicate_filter(predicates::generation, PredicateConfig::default());
        let run = Controller::for_stream(stream, reader)
            .with_config(self.config.clone())
            .graceful_shutdown_on(self.until_stopped())
            .run(connection::reconcile, connection::error_policy, ctx.clone())
            .for_each(|r| async move { log_result(connection::KIND, r) })
            .boxed();
        self.runs.push(run);
    }

    /// The queues (and their reporters) of objects of each kind that do not decode.
    fn malformed_reports(
        &mut self,
    ) -> (
        tokio::sync::mpsc::Sender<watch::Malformed>,
        tokio::sync::mpsc::Sender<watch::Malformed>,
    ) {
        let (bad_a, bad_a_rx) = tokio::sync::mpsc::channel(watch::MALFORMED_QUEUE);
        let (bad_g, bad_g_rx) = tokio::sync::mpsc::channel(watch::MALFORMED_QUEUE);
        for (ar, rx) in [
            (ApiResource::erase::<AccessPackageAssignment>(&()), bad_a_rx),
            (ApiResource::erase::<AccessPackageGuard>(&()), bad_g_rx),
        ] {
            self.background.spawn(
                "malformed-report",
                watch::report_malformed(self.ctx.client.clone(), ar, rx, self.ctx.clock()),
            );
        }
        (bad_a, bad_g)
    }

    /// The assignments' watch and controller, fed by group delta and by the repairs of
    /// other objects covering the same assignment. Returns the store and its shard keys.
    fn assignments(
        &mut self,
        scope: Option<&str>,
        malformed: tokio::sync::mpsc::Sender<watch::Malformed>,
    ) -> Held<AccessPackageAssignment> {
        let ctx = self.ctx.clone();
        let (reader, writer) = reflector::store();
        ctx.metrics.track_assignments(reader.clone());
        let synced = watch::Synced::new();
        self.synced.push(synced.clone());
        let keys = Arc::new(sharding::ShardKeys::default());
        let decoding = watch::Decoding {
            malformed: Some(malformed),
            shard_keys: (ctx.shard.count > 1).then(|| keys.clone()),
            ..watch::Decoding::new(ctx.metrics.clone(), assignment::KIND)
        };
        let stream = watch::lenient_watch::<AccessPackageAssignment>(
            watch::dynamic_api::<AccessPackageAssignment>(ctx.client.clone(), scope),
            self.scoped_config.clone(),
            writer,
            decoding,
            synced.clone(),
        );
        let (delta_tx, delta_rx) = futures::channel::mpsc::channel(delta::TRIGGER_QUEUE);
        let (covering_tx, covering_rx) = futures::channel::mpsc::unbounded();
        ctx.triggers.add_assignments(reader.clone(), covering_tx);
        if !ctx.delta_interval.is_zero() {
            let (done, baseline) = tokio::sync::oneshot::channel();
            self.baselines.push(baseline);
            self.background.spawn(
                "group-delta",
                delta::run(
                    ctx.clone(),
                    reader.clone(),
                    delta_tx,
                    self.stop.clone(),
                    synced,
                    Some(done),
                ),
            );
        }
        let run = Controller::for_stream(stream, reader.clone())
            .reconcile_on(futures::stream::select(delta_rx, covering_rx))
            .with_config(self.config.clone())
            .graceful_shutdown_on(self.until_stopped())
            .run(assignment::reconcile, assignment::error_policy, ctx)
            .for_each(|r| async move { log_result(assignment::KIND, r) })
            .boxed();
        self.runs.push(run);
        (reader, keys)
    }

    /// The guards' watch and controller, fed by the repairs of other objects covering
    /// their package. Returns the store and its shard keys.
    fn guards(
        &mut self,
        scope: Option<&str>,
        malformed: tokio::sync::mpsc::Sender<watch::Malformed>,
    ) -> Held<AccessPackageGuard> {
        let ctx = self.ctx.clone();
        let (reader, writer) = reflector::store();
        let synced = watch::Synced::new();
        self.synced.push(synced.clone());
        let keys = Arc::new(sharding::ShardKeys::default());
        let decoding = watch::Decoding {
            malformed: Some(malformed),
            shard_keys: (ctx.shard.count > 1).then(|| keys.clone()),
            ..watch::Decoding::new(ctx.metrics.clone(), guard::KIND)
        };
        let stream = watch::lenient_watch::<AccessPackageGuard>(
            watch::dynamic_api::<AccessPackageGuard>(ctx.client.clone(), scope),
            self.scoped_config.clone(),
            writer,
            decoding,
            synced,
        );
        let (covering_tx, covering_rx) = futures::channel::mpsc::unbounded();
        ctx.triggers.add_guards(reader.clone(), covering_tx);
        let run = Controller::for_stream(stream, reader.clone())
            .reconcile_on(covering_rx)
            .with_config(self.config.clone())
            .graceful_shutdown_on(self.until_stopped())
            .run(guard::reconcile, guard::error_policy, ctx)
            .for_each(|r| async move { log_result(guard::KIND, r) })
            .boxed();
        self.runs.push(run);
        (reader, keys)
    }

    /// The shard-key label's upkeep (`controller::sharding`): unlabelled objects of this
    /// shard's connections get it, held objects whose connection moved are handed over.
    fn shard_upkeep(
        &mut self,
        scope: Option<&str>,
        (assignments, assignment_keys): Held<AccessPackageAssignment>,
        (guards, guard_keys): Held<AccessPackageGuard>,
    ) {
        let ctx = &self.ctx;
        let a = ApiResource::erase::<AccessPackageAssignment>(&());
        let g = ApiResource::erase::<AccessPackageGuard>(&());
        self.background.spawn(
            "shard-labels",
            sharding::label_unlabelled(
                ctx.clone(),
                watch::dynamic_api::<AccessPackageAssignment>(ctx.client.clone(), scope),
                a.clone(),
                assignment::KIND,
                self.stop.clone(),
            ),
        );
        self.background.spawn(
            "shard-labels",
            sharding::label_unlabelled(
                ctx.clone(),
                watch::dynamic_api::<AccessPackageGuard>(ctx.client.clone(), scope),
                g.clone(),
                guard::KIND,
                self.stop.clone(),
            ),
        );
        self.background.spawn(
            "shard-handover",
            sharding::relabel_moved(
                ctx.clone(),
                assignments,
                assignment_keys,
                a,
                assignment::KIND,
                self.stop.clone(),
            ),
        );
        self.background.spawn(
            "shard-handover",
            sharding::relabel_moved(
                ctx.clone(),
                guards,
                guard_keys,
                g,
                guard::KIND,
                self.stop.clone(),
            ),
        );
    }
}

/// The controller's background tasks (group delta, malformed-object reports, shard labels,
/// start-up), owned: one that ends or panics is noticed (see `run_controllers`), all are
/// stopped and awaited at shutdown.
#[derive(Default)]
struct Background {
    tasks: tokio::task::JoinSet<()>,
    names: std::collections::HashMap<tokio::task::Id, &'static str>,
}

impl Background {
    fn spawn<F>(&mut self, name: &'static str, task: F)
    where
        F: std::future::Future + Send + 'static,
    {
        let id = self
            .tasks
            .spawn(async move {
                task.await;
            })
            .id();
        self.names.insert(id, name);
    }

    fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// The name of the next task to end (normally or by a panic, which is logged).
    async fn ended(&mut self) -> Option<&'static str> {
        let id = match self.tasks.join_next_with_id().await? {
            Ok((id, ())) => id,
            Err(e) => {
                if e.is_panic() {
                    tracing::error!(error = %e, "a background task panicked");
                }
                e.id()
            }
        };
        Some(self.names.remove(&id).unwrap_or("unnamed"))
    }

    async fn shutdown(&mut self) {
        self.tasks.shutdown().await;
    }
}

/// Once every store has synced (or after [`SYNC_WAIT`], with what has): rebuilds the repair
/// ledger from the objects' status, waits (bounded) for the group delta baselines, then lets
/// reconciles run; marks readiness once every store has synced.
async fn start_up(
    ctx: Arc<Context>,
    synced: Vec<Arc<watch::Synced>>,
    baselines: Vec<tokio::sync::oneshot::Receiver<()>>,
    readiness: Readiness,
) {
    let all_synced = || synced.iter().all(|s| s.is_set());
    let every_list = futures::future::join_all(synced.iter().map(|s| s.wait()));
    let _ = tokio::time::timeout(SYNC_WAIT, every_list).await;
    if !all_synced() {
        // One namespace's watch failing (RBAC, a missing CRD version) must not hold the
        // others: start with what has listed. Objects of a namespace that lists later are
        // not in the rebuilt ledger, so their own status alone spaces their reprocesses.
        tracing::warn!(
            wait_s = SYNC_WAIT.as_secs(),
            "not every watch has listed its objects yet (check RBAC in each watched namespace); starting reconciles for the others"
        );
    }
    {
        // Scoped: this task lives as long as the controller (it prunes the ledgers below),
        // and a snapshot kept in its frame would pin a second copy of every object as
        // first listed (its whole status, after a restart) for the life of the process.
        let (assignments, guards) = ctx.triggers.snapshot();
        // One ledger per connection: each object's history goes to its own tenant's.
        let mut by_key: std::collections::BTreeMap<connections::ConnectionKey, (Vec<_>, Vec<_>)> =
            Default::default();
        for a in &assignments {
            let key = ctx.connections.resolve(
                a.metadata.namespace.as_deref().unwrap_or_default(),
                a.spec.connection_ref.as_ref(),
            );
            by_key.entry(key).or_default().0.push(a.clone());
        }
        for g in &guards {
            let key = ctx.connections.resolve(
                g.metadata.namespace.as_deref().unwrap_or_default(),
                g.spec.connection_ref.as_ref(),
            );
            by_key.entry(key).or_default().1.push(g.clone());
        }
        let mut histories = 0;
        for (key, (a, g)) in &by_key {
            let ledger = ctx.connections.ledger_of(key);
            let mut ledger = ledger.lock().unwrap_or_else(|p| p.into_inner());
            ledger::seed(&mut ledger, a, g);
            histories += ledger.len();
        }
        tracing::info!(
            objects = assignments.len() + guards.len(),
            connections = by_key.len(),
            histories,
            "repair ledgers rebuilt from status"
        );
    }
    // A Graph outage must not hold every reconcile: groups not baselined in time are
    // baselined and verified by the delta loop later.
    for baseline in baselines {
        if tokio::time::timeout(BASELINE_WAIT, baseline).await.is_err() {
            tracing::warn!("group delta baseline not taken in time; starting reconciles anyway");
        }
    }
    ctx.open();
    futures::future::join_all(synced.iter().map(|s| s.wait())).await;
    tracing::info!("caches synced; ready");
    readiness.set(true);
    let mut ledger_pruned = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(SERIES_PRUNE_EVERY).await;
        ctx.prune_event_series();
        // The ledger keeps a history per reprocessed assignment; drop those that can no
        // longer gate anything. Each object's own status still spaces its own reprocesses
        // after that.
        if ledger_pruned.elapsed() >= LEDGER_PRUNE_EVERY {
            ledger_pruned = tokio::time::Instant::now();
            for ledger in ctx.connections.ledgers() {
                ledger
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .prune(ctx.now(), LEDGER_KEEP);
            }
        }
    }
}

/// How often the event series of deleted objects are forgotten (a pass over the series and
/// the stores' uids).
const SERIES_PRUNE_EVERY: Duration = Duration::from_secs(60);
/// How often the repair ledger is pruned.
const LEDGER_PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// How long a settled history (no attempt pending) is kept for other covering objects: a
/// day, longer than any cooldown in practical use.
const LEDGER_KEEP: Duration = Duration::from_secs(24 * 3600);

/// Longest wait for every watch's first list before reconciles start anyway.
const SYNC_WAIT: Duration = Duration::from_secs(60);

/// Longest wait for the group delta baseline before reconciles start anyway.
const BASELINE_WAIT: Duration = Duration::from_secs(30);

fn log_result<K: Resource, E: std::fmt::Display>(
    kind: &'static str,
    result: Result<
        (reflector::ObjectRef<K>, kube::runtime::controller::Action),
        kube::runtime::controller::Error<E, watcher::Error>,
    >,
) {
    use kube::runtime::controller::Error as CE;
    match result {
        Ok((obj, _)) => tracing::debug!(kind, object = %obj, "reconciled"),
        // Already logged with its context by the error policy.
        Err(CE::ReconcilerFailed(_, _)) => {}
        Err(CE::ObjectNotFound(obj)) => {
            tracing::debug!(kind, object = %obj, "object gone before its reconcile")
        }
        Err(CE::QueueError(e)) => match watch_error(kind, &e) {
            WatchTrouble::Routine(text) => tracing::info!(kind, "{text}"),
            WatchTrouble::Failing(text) => tracing::warn!(kind, error = %e, "{text}"),
        },
        Err(e) => tracing::warn!(kind, error = %e, "controller error"),
    }
}

/// How a watch error reads in the log.
#[derive(Debug, PartialEq, Eq)]
enum WatchTrouble {
    /// Part of a watch's normal life (the server ended it; the watcher lists again).
    Routine(String),
    /// Something a person may need to look at, said with what was being reached.
    Failing(String),
}

/// Words for a watch error of `kind`: a `410 Gone` ("too old resource version", as after an
/// API server restart) is routine, the watcher lists again; a failure to reach the server
/// or a refusal says which kind's watch and what to check.
fn watch_error(kind: &str, e: &watcher::Error) -> WatchTrouble {
    use kube::Error as KE;
    match e {
        watcher::Error::WatchError(status) if status.code == 410 => WatchTrouble::Routine(format!(
            "the API server ended the {kind} watch (its resource version is too old, as after an API server restart); listing {kind} objects again"
        )),
        watcher::Error::InitialListFailed(KE::Api(s))
        | watcher::Error::WatchStartFailed(KE::Api(s))
        | watcher::Error::WatchFailed(KE::Api(s))
            if s.code == 403 =>
        {
            WatchTrouble::Failing(format!(
                "the API server refuses to let this controller list or watch {kind} (403); check its RBAC (the chart's ClusterRole); retrying with backoff"
            ))
        }
        watcher::Error::InitialListFailed(KE::Api(_))
        | watcher::Error::WatchStartFailed(KE::Api(_))
        | watcher::Error::WatchFailed(KE::Api(_))
        | watcher::Error::WatchError(_) => WatchTrouble::Failing(format!(
            "the API server answered the {kind} watch with an error; retrying with backoff"
        )),
        watcher::Error::InitialListFailed(_)
        | watcher::Error::WatchStartFailed(_)
        | watcher::Error::WatchFailed(_) => WatchTrouble::Failing(format!(
            "cannot reach the API server to list or watch {kind}; retrying with backoff (check that the API server is up and reachable from this pod, e.g. a NetworkPolicy)"
        )),
        watcher::Error::NoResourceVersion => WatchTrouble::Failing(format!(
            "the API server sent {kind} objects without a resourceVersion; retrying with backoff"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_background_task_that_ends_or_panics_is_named() {
        let mut background = Background::default();
        background.spawn("quick", async {});
        assert_eq!(background.ended().await, Some("quick"));
        background.spawn("broken", async { panic!("a bug") });
        assert_eq!(background.ended().await, Some("broken"));
        assert!(background.is_empty());
        assert_eq!(background.ended().await, None);
    }

    #[test]
    fn a_routine_relist_is_not_a_warning_and_failures_name_the_kind() {
        let gone = kube::core::Status {
            code: 410,
            reason: "Expired".into(),
            message: "too old resource version: 1 (2)".into(),
            ..Default::default()
        };
        let trouble = watch_error(
            "AccessPackageAssignment",
            &watcher::Error::WatchError(Box::new(gone)),
        );
        assert!(
            matches!(&trouble, WatchTrouble::Routine(t) if t.contains("listing AccessPackageAssignment objects again")),
            "{trouble:?}"
        );
        let forbidden = kube::core::Status {
            code: 403,
            ..Default::default()
        };
        let trouble = watch_error(
            "GraphConnection",
            &watcher::Error::InitialListFailed(kube::Error::Api(Box::new(forbidden))),
        );
        assert!(
            matches!(&trouble, WatchTrouble::Failing(t) if t.contains("GraphConnection") && t.contains("RBAC")),
            "{trouble:?}"
        );
    }
}
