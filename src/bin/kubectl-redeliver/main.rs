//! `kubectl-redeliver`: the kubectl plugin for Redeliver's custom resources. It talks to the
//! Kubernetes API only (the current kubeconfig, like kubectl), never to Microsoft Graph.
//!
//! The rendering lives in `render` (plain functions, unit-tested); this file is the thin
//! glue: flags, the client, one GET, LIST, PATCH or WATCH per step.

mod render;
mod target;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, Resource};
use redeliver::api::{
    AccessPackageAssignment, AccessPackageGuard, MASS_DRIFT_ACK_ANNOTATION, REPROCESS_ANNOTATION,
    ReprocessMode, format_duration, parse_duration_arg,
};
use redeliver_cli::{EXIT_DRIFT, EXIT_OK, UsageError};

use render::Listed;
use target::{Kind, ObjectRef, parse_ref};

/// Inspect and drive Redeliver's AccessPackageAssignment (apa) and AccessPackageGuard (apg)
/// objects.
///
/// Uses the current kubeconfig like kubectl (KUBECONFIG, or ~/.kube/config; --context,
/// -n/--namespace) and only the Kubernetes API: no Graph credentials are needed. Objects are
/// named KIND/NAME, where KIND is apa, apg, or the full kind name (singular or plural).
#[derive(Parser, Debug)]
#[command(name = "kubectl-redeliver", bin_name = "kubectl redeliver", version)]
struct Cli {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true, value_name = "PATH")]
    kubeconfig: Option<PathBuf>,

    /// The kubeconfig context to use (default: its current-context).
    #[arg(long, global = true, value_name = "NAME")]
    context: Option<String>,

    /// The namespace (default: the context's namespace, else "default").
    #[arg(short = 'n', long, global = true, value_name = "NAMESPACE")]
    namespace: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Ask for one reprocess: set the redeliver.dev/reprocess-requested-at annotation to a
    /// fresh value (the GitOps Reprocess button).
    ///
    /// For an AccessPackageAssignment the controller reprocesses once (in reprocess.mode Auto
    /// or Manual; a running cooldown is waited out first) and echoes the value in
    /// status.reprocess.lastHandledRequest; --wait watches the object until it does and
    /// prints the outcome. For an AccessPackageGuard the annotation starts a sweep at once
    /// (within the guard's limits) and the sweep echoes it in status.lastHandledRequest;
    /// --wait waits for that sweep and prints its counts.
    ///
    /// Exit codes: 0 requested (and, with --wait, handled and not Stalled); 1 an error, a
    /// timeout, or a handled request that left the object Stalled; 64 a usage error.
    #[command(
        after_help = "Examples:\n  kubectl redeliver reprocess apa/alice-finance -n access --wait\n  kubectl redeliver reprocess accesspackageguard/finance -n access"
    )]
    Reprocess {
        /// The object: apa/NAME, apg/NAME (or KIND NAME).
        object: String,
        /// The name, when the kind is given alone.
        name: Option<String>,
        /// Wait until the controller has handled the request, then print the outcome.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits, e.g. 30s, 5m.
        #[arg(long, default_value = "2m", value_parser = parse_duration_arg, requires = "wait")]
        timeout: Duration,
    },
    /// Show one object as a tree: conditions, each promised resource (Present, Missing,
    /// Unverifiable), reprocess attempts, the next verification.
    #[command(
        after_help = "Examples:\n  kubectl redeliver status apa/alice-finance -n access\n  kubectl redeliver status accesspackageguards/finance"
    )]
    Status {
        /// The object: apa/NAME, apg/NAME (or KIND NAME).
        object: String,
        /// The name, when the kind is given alone.
        name: Option<String>,
    },
    /// Acknowledge a tripped mass-drift breaker, so automatic repairs resume: set the
    /// redeliver.dev/mass-drift-acknowledged-at annotation to a fresh value.
    ///
    /// On an AccessPackageGuard (apg/NAME) it resumes that guard's package, and the
    /// declared assignments of the package; on a GraphConnection (gconn/NAME, in -n) or a
    /// ClusterGraphConnection (cgconn/NAME) every tripped package of the connection's declared
    /// assignments. Repairs then proceed at the configured rate; the breaker clears by
    /// itself once the drift falls back below the threshold. Find out first whether the mass
    /// removal was intended: acknowledging grants access back to everyone it removed.
    ///
    /// Exit codes: 0 acknowledged; 1 an error.
    #[command(
        after_help = "Examples:\n  kubectl redeliver ack apg/finance-analysts -n access\n  kubectl redeliver ack gconn/default -n access\n  kubectl redeliver ack cgconn/contoso"
    )]
    Ack {
        /// The object: apg/NAME, gconn/NAME or cgconn/NAME (or KIND NAME).
        object: String,
        /// The name, when the kind is given alone.
        name: Option<String>,
    },
    /// List every AccessPackageAssignment and AccessPackageGuard that is not Delivered, one
    /// line each, with the missing resources.
    ///
    /// Exit codes: 0 everything is Delivered; 2 something is not; 1 an error (also a
    /// namespace that does not exist); 64 a usage error.
    #[command(
        after_help = "Examples:\n  kubectl redeliver drift -n access\n  kubectl redeliver drift -A"
    )]
    Drift {
        /// Look in every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli: Cli = redeliver_cli::parse();
    match run(cli).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => ExitCode::from(redeliver_cli::report_error(&e)),
    }
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    // kube's rustls needs one process-wide crypto provider; a second install is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // A malformed object reference is reported before any kubeconfig or network trouble.
    let task = match &cli.command {
        Command::Reprocess {
            object,
            name,
            wait,
            timeout,
        } => Task::Reprocess(
            parse_ref(object, name.as_deref())?,
            wait.then_some(*timeout),
        ),
        Command::Status { object, name } => Task::Status(parse_ref(object, name.as_deref())?),
        Command::Drift { all_namespaces } => {
            if *all_namespaces && cli.namespace.is_some() {
                return Err(UsageError(
                    "-A/--all-namespaces and -n/--namespace cannot be used together: -A looks in \
                     every namespace, so -n would have no effect; give one of them"
                        .into(),
                )
                .into());
            }
            Task::Drift(*all_namespaces)
        }
        Command::Ack { object, name } => Task::Ack(
            target::parse_ack(object, name.as_deref()).map_err(|e| UsageError(e.to_string()))?,
        ),
    };
    let (client, namespace, server) = connect(&cli).await?;
    let result = perform(task, client, &namespace).await;
    result.map_err(|e| {
        // A server that cannot be reached at all is said first, naming it: the operation's
        // own message (and any CRD hint) would otherwise read like the cause.
        let unreachable = e
            .chain()
            .filter_map(|c| c.downcast_ref::<kube::Error>())
            .any(|k| !matches!(k, kube::Error::Api(_)));
        if unreachable {
            e.context(format!(
                "cannot reach the Kubernetes API server at {server}; check the kubeconfig's \
                 server and context, and that the cluster is running"
            ))
        } else {
            e
        }
    })
}

async fn perform(task: Task, client: Client, namespace: &str) -> anyhow::Result<u8> {
    let namespace = namespace.to_string();
    match task {
        Task::Reprocess(r, wait) => reprocess(client, &namespace, &r, wait).await,
        Task::Status(r) => {
            let obj = get(&client, &namespace, &r).await?;
            let now = jiff::Timestamp::now();
            let text = match r.kind {
                Kind::Assignment => {
                    let obj: AccessPackageAssignment = decode(obj, &r, &namespace)?;
                    let operator = match obj.spec.verify_interval {
                        Some(_) => None,
                        None => operator_verify_interval(&client).await,
                    };
                    render::assignment_status(&obj, now, operator.as_deref())
                }
                Kind::Guard => render::guard_status(&decode(obj, &r, &namespace)?, now),
            };
            print!("{text}");
            Ok(0)
        }
        Task::Ack(r) => acknowledge(client, &namespace, &r).await,
        Task::Drift(all_namespaces) => {
            let scope = if all_namespaces {
                String::from("in all namespaces")
            } else {
                format!("in namespace {namespace:?}")
            };
            let ns = (!all_namespaces).then_some(namespace.as_str());
            if let Some(ns) = ns {
                check_namespace(&client, ns).await?;
            }
            let mut objects = list(&client, ns, Kind::Assignment).await?;
            objects.extend(list(&client, ns, Kind::Guard).await?);
            let report = render::drift(&objects, all_namespaces, &scope);
            print!("{}", report.text);
            Ok(if report.not_delivered > 0 {
                EXIT_DRIFT
            } else {
                EXIT_OK
            })
        }
    }
}

/// A command with its object reference read.
enum Task {
    Reprocess(ObjectRef, Option<Duration>),
    Status(ObjectRef),
    Drift(bool),
    Ack(target::AckRef),
}

/// Sets the mass-drift acknowledgement annotation on a guard or a connection, and says
/// what it resumes (with a guard's breaker numbers, when it is tripped).
async fn acknowledge(client: Client, namespace: &str, r: &target::AckRef) -> anyhow::Result<u8> {
    let ar = r.kind.api_resource();
    let api: Api<DynamicObject> = if r.kind.namespaced() {
        Api::namespaced_with(client.clone(), namespace, &ar)
    } else {
        Api::all_with(client.clone(), &ar)
    };
    let where_ = if r.kind.namespaced() {
        format!(" in namespace {namespace:?}")
    } else {
        String::new()
    };
    let obj = api
        .get_opt(&r.name)
        .await
        .with_context(|| format!("cannot read {} {:?}{where_}", r.kind, r.name))?
        .ok_or_else(|| anyhow::anyhow!("{} {:?} not found{where_}", r.kind, r.name))?;
    let current = obj
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(MASS_DRIFT_ACK_ANNOTATION))
        .cloned();
    let tripped = obj.data.pointer("/status/massDrift").cloned();
    let value = fresh_value(current.as_deref());
    let patch =
        serde_json::json!({"metadata": {"annotations": {MASS_DRIFT_ACK_ANNOTATION: value}}});
    api.patch(&r.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("cannot annotate {} {:?}{where_}", r.kind, r.name))?;
    println!(
        "{} {:?}{where_}: mass drift acknowledged ({MASS_DRIFT_ACK_ANNOTATION}={value})",
        r.kind, r.name
    );
    match (r.kind, tripped) {
        (target::AckKind::Guard, Some(md)) => println!(
            "its breaker tripped at {} on {} of {} delivered assignments; the next sweep repairs within maxReprocessPerSweep and the reprocess rate",
            md["trippedTime"].as_str().unwrap_or("?"),
            md["drifted"],
            md["delivered"]
        ),
        (target::AckKind::Guard, None) => println!(
            "its breaker is not tripped now; the acknowledgement applies to the package's declared assignments"
        ),
        _ => println!(
            "every tripped package of its declared assignments resumes at their next reconcile"
        ),
    }
    Ok(0)
}

/// A client from the kubeconfig, the namespace to use and the server's URL.
async fn connect(cli: &Cli) -> anyhow::Result<(Client, String, String)> {
    let options = KubeConfigOptions {
        context: cli.context.clone(),
        ..Default::default()
    };
    let config = match &cli.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read the kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &options).await
        }
        None => Config::from_kubeconfig(&options).await,
    }
    .context("cannot load the kubeconfig (set KUBECONFIG, --kubeconfig or --context)")?;
    let namespace = cli
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let server = config.cluster_url.to_string();
    let client = Client::try_from(config).context("cannot build a Kubernetes client")?;
    Ok((client, namespace, server))
}

fn api_resource(kind: Kind) -> ApiResource {
    match kind {
        Kind::Assignment => ApiResource::erase::<AccessPackageAssignment>(&()),
        Kind::Guard => ApiResource::erase::<AccessPackageGuard>(&()),
    }
}

fn dynamic_api(client: &Client, namespace: Option<&str>, kind: Kind) -> Api<DynamicObject> {
    let ar = api_resource(kind);
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    }
}

/// The object as the server has it, untyped (decoded by the caller, so a malformed status
/// is an error naming the object rather than a bare serde message).
async fn get(client: &Client, namespace: &str, r: &ObjectRef) -> anyhow::Result<DynamicObject> {
    match dynamic_api(client, Some(namespace), r.kind)
        .get_opt(&r.name)
        .await
    {
        Ok(Some(obj)) => Ok(obj),
        Ok(None) => bail!(render::not_found(r.kind, &r.name, namespace)),
        Err(e) => Err(e).with_context(|| {
            format!(
                "cannot read {} {:?} in namespace {namespace:?}",
                r.kind, r.name
            )
        }),
    }
}

fn decode<K: Resource + serde::de::DeserializeOwned>(
    obj: DynamicObject,
    r: &ObjectRef,
    namespace: &str,
) -> anyhow::Result<K> {
    obj.try_parse::<K>().with_context(|| {
        format!(
            "{} {:?} in namespace {namespace:?} does not decode as {}",
            r.kind,
            r.name,
            r.kind.kind()
        )
    })
}

async fn list(client: &Client, namespace: Option<&str>, kind: Kind) -> anyhow::Result<Vec<Listed>> {
    let where_ = namespace.map_or_else(
        || String::from("in any namespace"),
        |ns| format!("in namespace {ns:?}"),
    );
    let items = dynamic_api(client, namespace, kind)
        .list(&ListParams::default())
        .await
        .map_err(|e| {
            let plural = api_resource(kind).plural;
            let hint = match &e {
                // Only a 404 for the resource itself says the CRD is missing.
                kube::Error::Api(status) if status.code == 404 => {
                    " (are Redeliver's CRDs installed? kubectl apply --server-side -f crds/)"
                }
                _ => "",
            };
            anyhow::Error::new(e).context(format!("cannot list {plural} {where_}{hint}"))
        })?
        .items;
    let mut out: Vec<Listed> = items
        .into_iter()
        .map(|obj| {
            let namespace = obj.metadata.namespace.clone().unwrap_or_default();
            let name = obj.metadata.name.clone().unwrap_or_default();
            let malformed = |e: kube::core::dynamic::ParseDynamicObjectError| Listed::Malformed {
                kind,
                namespace: namespace.clone(),
                name: name.clone(),
                error: e.to_string(),
            };
            match kind {
                Kind::Assignment => obj
                    .try_parse::<AccessPackageAssignment>()
                    .map(|o| Listed::Assignment(Box::new(o)))
                    .unwrap_or_else(malformed),
                Kind::Guard => obj
                    .try_parse::<AccessPackageGuard>()
                    .map(|o| Listed::Guard(Box::new(o)))
                    .unwrap_or_else(malformed),
            }
        })
        .collect();
    out.sort_by_key(sort_key);
    Ok(out)
}

/// The `--verify-interval` of the Redeliver controller Deployment(s) in the cluster (the
/// flag, its environment variable, or the default 10m), each named: `None` when none can be
/// read (not installed as a Deployment, or no permission to list Deployments).
async fn operator_verify_interval(client: &Client) -> Option<String> {
    use k8s_openapi::api::apps::v1::Deployment;
    let api: Api<Deployment> = Api::all(client.clone());
    let list = api.list(&ListParams::default()).await.ok()?;
    let found: Vec<String> = list
        .items
        .iter()
        .filter_map(|d| {
            let spec = d.spec.as_ref()?.template.spec.as_ref()?;
            let container = spec.containers.iter().find(|c| {
                c.args
                    .as_ref()
                    .is_some_and(|a| a.first().map(String::as_str) == Some("controller"))
            })?;
            let args = container.args.as_deref().unwrap_or_default();
            let from_args = args.iter().enumerate().find_map(|(i, a)| {
                a.strip_prefix("--verify-interval=")
                    .map(str::to_string)
                    .or_else(|| (a == "--verify-interval").then(|| args.get(i + 1).cloned())?)
            });
            let from_env = container.env.as_ref().and_then(|env| {
                env.iter()
                    .find(|e| e.name == "REDELIVER_VERIFY_INTERVAL")
                    .and_then(|e| e.value.clone())
            });
            let interval = from_args.or(from_env).unwrap_or_else(|| "10m".into());
            Some(format!(
                "{interval} (Deployment {}/{})",
                d.metadata.namespace.as_deref().unwrap_or_default(),
                d.metadata.name.as_deref().unwrap_or_default()
            ))
        })
        .collect();
    (!found.is_empty()).then(|| found.join(" or "))
}

/// Fails when `namespace` does not exist, so that an empty list is never reported as
/// "everything delivered" for a namespace that is not there. A server that does not let
/// us read namespaces (RBAC) is not a reason to fail: the list is then trusted as is.
async fn check_namespace(client: &Client, namespace: &str) -> anyhow::Result<()> {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    match api.get_opt(namespace).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => bail!(
            "namespace {namespace:?} does not exist; check -n (or use -A for every namespace)"
        ),
        Err(kube::Error::Api(status)) if status.code == 403 => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot read namespace {namespace:?}")),
    }
}

fn sort_key(o: &Listed) -> (String, String) {
    match o {
        Listed::Assignment(a) => (
            a.metadata.namespace.clone().unwrap_or_default(),
            a.metadata.name.clone().unwrap_or_default(),
        ),
        Listed::Guard(g) => (
            g.metadata.namespace.clone().unwrap_or_default(),
            g.metadata.name.clone().unwrap_or_default(),
        ),
        Listed::Malformed {
            namespace, name, ..
        } => (namespace.clone(), name.clone()),
    }
}

/// A value the annotation has not held: the current time (the documented convention, so a
/// human reading the object sees when it was asked), made unique against the current value.
fn fresh_value(current: Option<&str>) -> String {
    let now = jiff::Timestamp::now();
    let value = now.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
    if current == Some(value.as_str()) {
        format!("{value}-1")
    } else {
        value
    }
}

async fn reprocess(
    client: Client,
    namespace: &str,
    r: &ObjectRef,
    wait: Option<Duration>,
) -> anyhow::Result<u8> {
    let obj = get(&client, namespace, r).await?;
    let current = obj
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REPROCESS_ANNOTATION))
        .cloned();
    match r.kind {
        Kind::Guard => {}
        Kind::Assignment => {
            let typed: AccessPackageAssignment = decode(obj, r, namespace)?;
            if typed.spec.reprocess.mode == ReprocessMode::Disabled {
                let why = format!(
                    "{} {:?} in namespace {namespace:?} has reprocess.mode Disabled: the \
                     controller ignores the reprocess annotation",
                    r.kind, r.name
                );
                if wait.is_some() {
                    bail!("{why}; nothing was changed");
                }
                eprintln!("warning: {why}");
            }
            if typed.spec.suspend {
                eprintln!(
                    "warning: {} {:?} has spec.suspend: true; no reprocess is sent while it is suspended",
                    r.kind, r.name
                );
            }
        }
    }

    let value = fresh_value(current.as_deref());
    let patch = serde_json::json!({"metadata": {"annotations": {REPROCESS_ANNOTATION: value}}});
    dynamic_api(&client, Some(namespace), r.kind)
        .patch(&r.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| {
            format!(
                "cannot annotate {} {:?} in namespace {namespace:?}",
                r.kind, r.name
            )
        })?;
    println!(
        "{} {namespace}/{}: reprocess requested ({REPROCESS_ANNOTATION}={value})",
        r.kind, r.name
    );
    let Some(timeout) = wait else {
        return Ok(0);
    };
    match r.kind {
        Kind::Assignment => {
            wait_handled::<AccessPackageAssignment>(client, namespace, r, &value, timeout).await
        }
        Kind::Guard => {
            wait_handled::<AccessPackageGuard>(client, namespace, r, &value, timeout).await
        }
    }
}

/// Watches the one object (a LIST and a WATCH with `metadata.name=`, re-established by the
/// watcher when the server ends it) until its status echoes `value`.
async fn wait_handled<K: render::Echoes>(
    client: Client,
    namespace: &str,
    r: &ObjectRef,
    value: &str,
    timeout: Duration,
) -> anyhow::Result<u8> {
    let api: Api<K> = Api::namespaced(client, namespace);
    let mut events = kube::runtime::watcher::watch_object(api, &r.name).boxed();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut seen: Option<String> = None;
    let mut last_error: Option<String> = None;
    loop {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Err(_) | Ok(None) => break,
            Ok(Some(Ok(Some(obj)))) => {
                if render::handled(&obj, value) {
                    let (text, ok) = render::reprocess_outcome(&obj, value);
                    print!("{text}");
                    return Ok(if ok { 0 } else { 1 });
                }
                seen = obj.last_handled().map(str::to_string);
            }
            Ok(Some(Ok(None))) => bail!(
                "{} {:?} in namespace {namespace:?} was deleted while waiting for its reprocess",
                r.kind,
                r.name
            ),
            Ok(Some(Err(e))) => {
                // The watcher starts over on the next poll; pause so a failing server is not
                // hammered, and keep the error for the timeout message.
                last_error = Some(e.to_string());
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    let mut message = format!(
        "timed out after {} waiting for {} {:?} in namespace {namespace:?} to echo {value:?} in \
         its status's lastHandledRequest (it holds {}); is the controller running and leading?",
        format_duration(timeout),
        r.kind,
        r.name,
        seen.map_or_else(|| String::from("nothing"), |s| format!("{s:?}")),
    );
    if let Some(e) = last_error {
        message.push_str(&format!(" Last watch error: {e}"));
    }
    bail!(message)
}
