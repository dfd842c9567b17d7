//! The shards benchmark (`cargo bench --bench controller -- --shards 1,2,4`): several
//! synthetic tenants (one simulator each, in this process), one namespace per tenant with
//! its `default` `GraphConnection` and Secret in the fake API server, and for each shard
//! count the real `redeliver controller` binary run as that many processes
//! (`--shard-count N --shard-index i`, no connection of its own). For each run: objects per
//! shard (by the connection hash, and the reconciles each process counted), the time until
//! every object is `Delivered=True` (the drifted ones repaired), Graph requests per tenant,
//! and each process's memory.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::ByteString;
use serde_json::{Value, json};

use super::measure;
use redeliver::api::ConnectionKey;
use redeliver::controller::shard::{SHARD_KEY_LABEL, bucket_of, shard_of};
use redeliver_fake_kube::{self as fake_kube, FakeKube, WriteModel};
use redeliver_sim::{Scenario, SimHandle, SimOptions, Simulator, SyntheticTenant};

const PLURAL: &str = "accesspackageassignments";

/// Options of the shards benchmark.
#[derive(Debug, Clone)]
pub struct ShardBenchArgs {
    /// Shard counts to run, in order.
    pub shards: Vec<u32>,
    /// Simulated tenants.
    pub tenants: usize,
    /// Objects per tenant.
    pub per_tenant: usize,
    /// Simulated Graph latency per request.
    pub request_delay: Duration,
    /// The controller's --concurrency.
    pub concurrency: u16,
    /// Give up on a run after this long.
    pub timeout: Duration,
    /// How the fake API server charges writes.
    pub write_model: WriteModel,
    /// Each replica's --reprocess-rate.
    pub reprocess_rate: u32,
    /// After convergence, how long to watch the replicas with nothing changing (their
    /// steady memory and writes).
    pub steady_window: Duration,
    /// Create every object with its shard-key label (replicas starting on a labelled
    /// cluster, as at any restart after the first), instead of without (the first start
    /// after an upgrade: every replica watches all the unlabelled objects until they are
    /// labelled).
    pub labelled: bool,
}

/// One shard count's figures.
#[derive(Debug, Clone, Default)]
pub struct ShardRun {
    pub shards: u32,
    /// Objects each shard owns (by the connection hash).
    pub objects_per_shard: Vec<usize>,
    /// Assignment reconciles each process counted (its `/metrics`), at convergence.
    pub reconciles_per_shard: Vec<u64>,
    /// From the start of the processes until every object is verified once (`Delivered`
    /// True or False).
    pub verified: Option<Duration>,
    /// From the start of the processes until every object is `Delivered=True`.
    pub converged: Option<Duration>,
    /// Graph requests (token endpoint included) per tenant, in tenant order.
    pub requests_per_tenant: Vec<u64>,
    /// Resident memory of each process at convergence, KiB.
    pub rss_kib: Vec<u64>,
    /// Peak resident memory of each process, KiB (from `/proc` while it ran).
    pub peak_rss_kib: Vec<u64>,
    /// Resident memory of each process over the steady window (lowest, highest), KiB,
    /// sampled every 250 ms.
    pub steady_rss_kib: Vec<(u64, u64)>,
    /// Kubernetes writes in the steady window, by request (`POST events`,
    /// `PATCH accesspackageassignments/status`, ...).
    pub steady_writes_by_kind: Vec<(String, u64)>,
    /// Shard-key label writes (merge patches of the objects themselves) to converge.
    pub label_writes: u64,
    /// Objects whose status more than one replica wrote (each replica writes as its own
    /// field manager, `redeliver-shard-<i>`).
    pub written_by_two: usize,
}

fn tenant_ns(t: usize) -> String {
    format!("tenant-{t}")
}

fn secret(namespace: &str, value: &str) -> Value {
    let s = k8s_openapi::api::core::v1::Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("graph".into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        },
        data: Some(
            [(
                "clientSecret".to_string(),
                ByteString(value.as_bytes().to_vec()),
            )]
            .into(),
        ),
        ..Default::default()
    };
    let mut v = serde_json::to_value(s).unwrap_or(Value::Null);
    v["apiVersion"] = json!("v1");
    v["kind"] = json!("Secret");
    v
}

fn objects(
    synthetic: &SyntheticTenant,
    sims: &[SimHandle],
    args: &ShardBenchArgs,
) -> anyhow::Result<Vec<Value>> {
    let per_tenant = args.per_tenant;
    let mut out = Vec::new();
    for (t, sim) in sims.iter().enumerate() {
        let ns = tenant_ns(t);
        let labels = if args.labelled {
            let key = ConnectionKey::Namespaced {
                namespace: ns.clone(),
                name: "default".into(),
            };
            json!({ SHARD_KEY_LABEL: bucket_of(&key).to_string() })
        } else {
            json!({})
        };
        out.push(secret(&ns, &sim.client_secret));
        out.push(json!({
            "apiVersion": "redeliver.dev/v1alpha1", "kind": "GraphConnection",
            "metadata": {"name": "default", "namespace": ns},
            "spec": {
                "tenantId": sim.tenant_id, "clientId": sim.client_id,
                "credential": {"clientSecret": {"name": "graph"}},
                "authorityHost": sim.authority_host, "graphUrl": sim.graph_url,
            }
        }));
        for i in 0..per_tenant {
            let package = SyntheticTenant::package_name(synthetic.package_of(i));
            let package_id = sim
                .package_id(&package)
                .with_context(|| format!("package {package} missing"))?;
            let upn = synthetic.upn(i);
            let user = sim
                .user_id(&upn)
                .with_context(|| format!("user {upn} missing"))?;
            out.push(json!({
                "apiVersion": "redeliver.dev/v1alpha1", "kind": "AccessPackageAssignment",
                "metadata": {"name": format!("user{i:06}"), "namespace": ns, "labels": labels},
                "spec": {
                    "accessPackage": {"id": package_id},
                    "target": {"objectId": user},
                    "verifyInterval": "10m",
                    "reprocess": {"mode": "Auto", "maxAttempts": 3, "cooldown": "5m"},
                }
            }));
        }
    }
    Ok(out)
}

/// Runs every shard count and returns its figures.
pub async fn run(args: &ShardBenchArgs, bin: &Path) -> anyhow::Result<Vec<ShardRun>> {
    let synthetic = SyntheticTenant::benchmark(args.per_tenant);
    let mut runs = Vec::new();
    for &shards in &args.shards {
        // Fresh tenants and API server for each run: every run starts from the same state.
        let mut sims = Vec::new();
        for _ in 0..args.tenants {
            let opts = SimOptions {
                request_delay: args.request_delay,
                reprocess_delay: Duration::from_secs(1),
                ..SimOptions::default()
            };
            sims.push(
                Simulator::start(Scenario::synthetic_tenant(&synthetic), opts)
                    .await
                    .context("a simulator did not start")?,
            );
        }
        let kube =
            FakeKube::start_with_write_model(objects(&synthetic, &sims, args)?, args.write_model)
                .await
                .context("the fake API server did not start")?;
        let run = run_once(args, bin, shards, &sims, &kube).await?;
        eprintln!(
            "{shards} shard(s): converged in {}",
            run.converged
                .map(|d| format!("{:.1}s", d.as_secs_f64()))
                .unwrap_or_else(|| "(timed out)".into())
        );
        runs.push(run);
        for sim in sims {
            sim.shutdown().await;
        }
    }
    Ok(runs)
}

async fn run_once(
    args: &ShardBenchArgs,
    bin: &Path,
    shards: u32,
    sims: &[SimHandle],
    kube: &FakeKube,
) -> anyhow::Result<ShardRun> {
    let dir = tempfile::tempdir()?;
    let kubeconfig = crate::probe::kubeconfig(dir.path(), &kube.url(), None)?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut run = ShardRun {
        shards,
        objects_per_shard: objects_per_shard(args, shards),
        ..ShardRun::default()
    };
    let mut children = Vec::new();
    let mut ports = Vec::new();
    let t0 = Instant::now();
    for index in 0..shards {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let cmd = replica_command(args, bin, &kubeconfig, shards, index, port);
        children.push(measure::spawn(cmd).context("cannot start redeliver controller")?);
        ports.push(port);
    }
    let pids: Vec<u32> = children.iter().map(measure::Running::pid).collect();
    let mut peak = vec![0u64; pids.len()];
    let outcome = await_convergence(args, kube, &pids, t0, &mut peak, &mut run).await;
    for port in &ports {
        let url = format!("http://127.0.0.1:{port}/metrics");
        run.reconciles_per_shard.push(
            crate::probe::scrape_reconciles(&http, &url)
                .await
                .unwrap_or(0),
        );
    }
    run.rss_kib = rss_now(&pids);
    run.requests_per_tenant = sims.iter().map(|s| s.usage().total.requests).collect();
    run.label_writes = kube
        .counts()
        .get(&format!("PATCH {PLURAL}"))
        .copied()
        .unwrap_or(0);
    run.written_by_two = written_by_two(kube);
    if outcome.is_ok() && run.converged.is_some() {
        // Steady state: nothing changes; each replica's memory once its start-up (the
        // list, the labelling, the first verifications) is behind it.
        let before = kube.counts();
        run.steady_rss_kib = steady_memory(&pids, args.steady_window).await;
        let after = kube.counts();
        run.steady_writes_by_kind = fake_kube::diff(&after, &before)
            .into_iter()
            .filter(|(k, _)| !k.starts_with("GET "))
            .collect();
    }
    for (i, child) in children.into_iter().enumerate() {
        match measure::terminate(child, Duration::from_secs(30)).await {
            Ok(Some(_)) => {}
            Ok(None) => eprintln!("shard {i} did not exit within 30 s of SIGTERM (killed)"),
            Err(e) => eprintln!("shard {i}: {e}"),
        }
    }
    run.peak_rss_kib = peak;
    outcome?;
    Ok(run)
}

/// Objects each of `shards` shards owns, by the hash of its tenant's connection.
fn objects_per_shard(args: &ShardBenchArgs, shards: u32) -> Vec<usize> {
    let mut owned = vec![0; shards as usize];
    for t in 0..args.tenants {
        let key = ConnectionKey::Namespaced {
            namespace: tenant_ns(t),
            name: "default".into(),
        };
        owned[shard_of(&key, shards) as usize] += args.per_tenant;
    }
    owned
}

/// `redeliver controller` as shard `index` of `shards`, with no connection of its own
/// and its metrics on `port`.
fn replica_command(
    args: &ShardBenchArgs,
    bin: &Path,
    kubeconfig: &Path,
    shards: u32,
    index: u32,
    port: u16,
) -> std::process::Command {
    let mut cmd = std::process::Command::new(bin);
    for var in crate::GRAPH_ENV {
        cmd.env_remove(var);
    }
    cmd.env("KUBECONFIG", kubeconfig)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("POD_NAMESPACE", "redeliver-system")
        .arg("controller")
        .args(["--concurrency", &args.concurrency.to_string()])
        .args(["--reprocess-rate", &args.reprocess_rate.to_string()])
        .args(["--field-manager", &format!("redeliver-shard-{index}")])
        .args(["--shard-count", &shards.to_string()])
        .args(["--shard-index", &index.to_string()])
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .args(["--pod-name", &format!("redeliver-{index}")]);
    cmd
}

/// Polls until every object is `Delivered=True` (noting when every one was verified and
/// when every one was delivered) or the timeout, keeping each replica's peak memory in
/// `peak`; fails when a replica exits.
async fn await_convergence(
    args: &ShardBenchArgs,
    kube: &FakeKube,
    pids: &[u32],
    t0: Instant,
    peak: &mut [u64],
    run: &mut ShardRun,
) -> anyhow::Result<()> {
    let n = args.tenants * args.per_tenant;
    let deadline = t0 + args.timeout;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        for (i, pid) in pids.iter().enumerate() {
            match measure::proc_memory(*pid) {
                Some((rss, hwm)) => peak[i] = peak[i].max(rss).max(hwm),
                None => bail!("controller shard {i} exited"),
            }
        }
        if run.verified.is_none()
            && kube.count_delivered(PLURAL, "True") + kube.count_delivered(PLURAL, "False") == n
        {
            run.verified = Some(t0.elapsed());
        }
        if kube.count_delivered(PLURAL, "True") == n {
            run.converged = Some(t0.elapsed());
            return Ok(());
        }
        if Instant::now() > deadline {
            eprintln!(
                "timed out: {}/{n} delivered",
                kube.count_delivered(PLURAL, "True")
            );
            return Ok(());
        }
    }
}

/// Each process's lowest and highest resident memory over `window`, KiB.
async fn steady_memory(pids: &[u32], window: Duration) -> Vec<(u64, u64)> {
    let end = Instant::now() + window;
    let mut range = vec![(u64::MAX, 0); pids.len()];
    while Instant::now() < end {
        for (r, now) in range.iter_mut().zip(rss_now(pids)) {
            *r = (r.0.min(now), r.1.max(now));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    range
}

/// Resident memory of each process now, KiB (0 for one gone).
fn rss_now(pids: &[u32]) -> Vec<u64> {
    pids.iter()
        .map(|p| measure::proc_memory(*p).map(|m| m.0).unwrap_or(0))
        .collect()
}

/// The steady window's writes, with what they were when there were any.
fn writes_by_kind(r: &ShardRun) -> String {
    if r.steady_writes_by_kind.is_empty() {
        return "0".into();
    }
    let total: u64 = r.steady_writes_by_kind.iter().map(|(_, n)| n).sum();
    let kinds: Vec<String> = r
        .steady_writes_by_kind
        .iter()
        .map(|(k, n)| format!("{k}: {n}"))
        .collect();
    format!("{total} ({})", kinds.join(", "))
}

/// Objects whose status more than one field manager (replica) wrote.
fn written_by_two(kube: &FakeKube) -> usize {
    let mut writers: HashMap<(String, String), BTreeSet<String>> = HashMap::new();
    for w in kube.status_writes_since(0) {
        if w.plural == PLURAL {
            writers
                .entry((w.namespace, w.name))
                .or_default()
                .insert(w.field_manager.unwrap_or_default());
        }
    }
    writers.values().filter(|m| m.len() > 1).count()
}

/// The runs as a Markdown table (also printed).
pub fn markdown(args: &ShardBenchArgs, machine: &str, runs: &[ShardRun]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} simulated tenants (one simulator each, {} ms per Graph request), {} objects each ({} in all, 1 % drifted), one namespace and default GraphConnection per tenant, {}; the real binary as N processes with `--shard-count N`, `--concurrency {}`, `--reprocess-rate {}`, `--field-manager redeliver-shard-<i>`, no connection of its own; Kubernetes writes charged {} µs each, {} at once. Machine: {machine}.\n",
        args.tenants,
        args.request_delay.as_millis(),
        args.per_tenant,
        args.tenants * args.per_tenant,
        if args.labelled {
            "every object created with its shard-key label (as at any start after the first)"
        } else {
            "every object created without the shard-key label (as before the label existed)"
        },
        args.concurrency,
        args.reprocess_rate,
        args.write_model.cost.as_micros(),
        args.write_model.parallel,
    );
    out.push_str("| shards | objects per shard (by hash) | reconciles per shard | time to verify all | time to Delivered=True for all (drift repaired) | Graph requests per tenant (min–max, total) | RSS per replica at convergence (peak) | RSS per replica in the steady window (lowest–highest) | Kubernetes writes in the steady window | label writes | objects written by two replicas |\n");
    out.push_str("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for r in runs {
        let min = r.requests_per_tenant.iter().min().copied().unwrap_or(0);
        let max = r.requests_per_tenant.iter().max().copied().unwrap_or(0);
        let total: u64 = r.requests_per_tenant.iter().sum();
        let mem: Vec<String> = r
            .rss_kib
            .iter()
            .zip(&r.peak_rss_kib)
            .map(|(now, peak)| format!("{} ({}) MiB", now / 1024, peak / 1024))
            .collect();
        let steady: Vec<String> = r
            .steady_rss_kib
            .iter()
            .map(|(low, high)| format!("{}–{} MiB", low / 1024, high / 1024))
            .collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {min}–{max}, {total} | {} | {} | {} | {} | {} |",
            r.shards,
            r.objects_per_shard
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(" / "),
            r.reconciles_per_shard
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(" / "),
            r.verified
                .map(|d| format!("{:.1} s", d.as_secs_f64()))
                .unwrap_or_else(|| "timed out".into()),
            r.converged
                .map(|d| format!("{:.1} s", d.as_secs_f64()))
                .unwrap_or_else(|| "timed out".into()),
            mem.join(" / "),
            steady.join(" / "),
            writes_by_kind(r),
            r.label_writes,
            r.written_by_two,
        );
    }
    out
}
