//! The scale benchmark (`cargo bench --bench scale`):
//! a synthetic tenant in the simulator, Redeliver's full verification and repair measured
//! as a separate process, a naive per-user checker for comparison, and incremental mode
//! (group delta) in steady state.
//!
//! For each scale (delivered assignments over 50 groups and 5 apps, 15 packages promising
//! 3–5 resources each, 1 % drifted by outside removals):
//! 1. **Redeliver verify**: `redeliver audit -f guards/ -o json`, one `AccessPackageGuard`
//!    per package (by id, so nothing is resolved by name) — a guard-sweep style full
//!    verification through `observe` and the engine, run as a child process so its CPU time
//!    and peak RSS are its own (`wait4` rusage). Graph requests, RU and 429s come from the
//!    simulator's admin usage, compared with [`cost::MinimumCost`].
//! 2. **Naive**: [`naive::run`] in this process (its CPU is not what is compared).
//! 3. **Redeliver repair**: the same audit with `--reprocess`, then the simulator is asked
//!    whether every drifted assignment is whole again.
//! 4. **Incremental**: a [`redeliver::observe::delta::DeltaTracker`] over every promised group:
//!    requests and RU per poll when nothing changes, then the time from an outside removal to
//!    its detection and to the membership being back after `reprocess`.

pub mod controller;

/// The Graph connection environment of `redeliver` (and the Azure SDKs): cleared for a child
/// process that must use only the connections it is given.
pub const GRAPH_ENV: [&str; 11] = [
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_AUTHORITY_HOST",
    "REDELIVER_GRAPH_URL",
    "REDELIVER_CLIENT_SECRET_FILE",
    "REDELIVER_NAMESPACES",
    "REDELIVER_LEADER_ELECTION",
    "KUBERNETES_SERVICE_HOST",
    "HTTPS_PROXY",
];
pub mod cost;
pub mod measure;
pub mod naive;
pub mod partition;
pub mod probe;
pub mod report;
pub mod roles;
pub mod shards;
pub mod soak;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rand::SeedableRng;

use cost::{MinimumCost, SIM_EM_PAGE};
use redeliver::graph::{GraphClient, GraphSettings};
use redeliver::observe::delta::DeltaTracker;
use redeliver_sim::{
    LatencyModel, RuBucket, Scenario, SimHandle, SimOptions, Simulator, SyntheticResource,
    SyntheticTenant, Usage, derive_id,
};

/// Options of the benchmark.
#[derive(clap::Args, Debug, Clone)]
#[command(about = "Benchmark full verification, repair and incremental mode at scale")]
pub struct BenchArgs {
    /// Scales to run: delivered assignments, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
    pub scales: Vec<usize>,

    /// Run the naive strategy on every assignment up to this scale; above it, on a random
    /// sample whose requests, RU and wall time are extrapolated.
    #[arg(long, default_value_t = 10_000)]
    pub naive_full_max: usize,

    /// Sample size for the naive strategy above --naive-full-max.
    #[arg(long, default_value_t = 2_000)]
    pub naive_sample: usize,

    /// Skip the naive strategy.
    #[arg(long)]
    pub no_naive: bool,

    /// Skip the naive strategy at scales above this many assignments (its sample's
    /// per-user lookups are what makes the largest scales slow to run, not Redeliver).
    #[arg(long, value_name = "N")]
    pub naive_max_scale: Option<usize>,

    /// Also run the full verification with this latency model in the simulator (e.g.
    /// `em=250ms±100ms,directory=80ms±40ms,token=150ms`; see docs/simulator.md), after
    /// the run without latency, so both show side by side. Everything else runs without.
    #[arg(long, value_name = "MODEL")]
    pub latency: Option<LatencyModel>,

    /// Skip the repair run.
    #[arg(long)]
    pub no_repair: bool,

    /// Skip incremental mode.
    #[arg(long)]
    pub no_incremental: bool,

    /// Delta poll interval in the incremental measurement (the controller's default is
    /// 60 s; a shorter one keeps the benchmark short and changes no per-poll figure).
    #[arg(long, default_value = "5s", value_parser = redeliver::api::parse_duration_arg)]
    pub delta_interval: Duration,

    /// Quiet polls measured per scale in incremental mode.
    #[arg(long, default_value_t = 3)]
    pub quiet_polls: usize,

    /// RU bucket of the simulator per 10 s (8000 = large tenant); 0 turns throttling off.
    #[arg(long, default_value_t = 8000)]
    pub ru_limit: u32,

    /// Graph calls in flight, for Redeliver and the naive strategy alike.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,

    /// Write the results as Markdown to this file (e.g. docs/benchmarks.md).
    #[arg(long, value_name = "FILE")]
    pub markdown: Option<PathBuf>,

    /// Run only the role benchmark at --scales: packages promising a group, an Entra role
    /// and an Azure role; one full verification each, Graph and ARM requests against the
    /// minimum for the role kinds (Markdown section `roles`).
    #[arg(long)]
    pub roles: bool,

    /// Run only the partition benchmark: one package of each of --scales assignments,
    /// spread over each of these numbers of policies, read as one chain and as one chain
    /// per policy side by side, with --latency's model (default
    /// `em=250ms±100ms,directory=80ms±40ms,token=150ms`); Markdown section `partition`.
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    pub partition_policies: Vec<usize>,

    /// The `redeliver` binary measured as Redeliver (default: this executable).
    #[arg(long, env = "REDELIVER_BENCH_BIN", value_name = "PATH")]
    pub redeliver_bin: Option<PathBuf>,
}

/// Figures of one measured Redeliver process.
#[derive(Debug, Clone, Default)]
pub struct ProcessFigures {
    /// Graph requests (`/v1.0`, batch items included; token requests excluded).
    pub requests: u64,
    /// Directory reads among them (metered in RU).
    pub directory_requests: u64,
    /// Entitlement-management requests among them.
    pub em_requests: u64,
    /// Resource units charged.
    pub ru: u64,
    /// `429` answers.
    pub throttled: u64,
    /// Reads the safety rails made before a grant (`GET /users/{id}` for `accountEnabled`,
    /// and Identity Protection's `riskyUsers`), included in `requests`.
    pub account_reads: u64,
    pub wall: Duration,
    pub cpu: Duration,
    pub max_rss_kib: u64,
    pub exit: Option<i32>,
}

/// Naive strategy figures (extrapolated when sampled).
#[derive(Debug, Clone, Default)]
pub struct NaiveFigures {
    /// Assignments actually checked.
    pub checked: usize,
    /// True when figures are extrapolated from a sample.
    pub extrapolated: bool,
    pub requests: u64,
    pub ru: u64,
    pub throttled: u64,
    /// Wall time (scaled from the sample when sampled).
    pub wall: Duration,
    /// When sampled: the least time the RU bucket allows for the whole run.
    pub ru_floor: Option<Duration>,
    /// Drift found (extrapolated when sampled).
    pub drift_found: usize,
    /// Drift present among the checked assignments.
    pub drift_in_sample: usize,
    pub errors: usize,
}

/// Incremental-mode figures.
#[derive(Debug, Clone, Default)]
pub struct IncrementalFigures {
    pub groups: usize,
    pub requests_per_poll: f64,
    pub ru_per_poll: f64,
    pub poll_interval: Duration,
    /// From the outside removal to the poll that reported it.
    pub detect: Option<Duration>,
    /// From the outside removal to the membership being back (reprocess landed and a
    /// members read confirms it).
    pub restored: Option<Duration>,
    /// Apps whose role assignments the controller's app-role poll reads each interval.
    pub apps: usize,
    /// Requests and RU of one app-role poll (every app's `appRoleAssignedTo`, all pages).
    pub app_requests_per_poll: f64,
    pub app_ru_per_poll: f64,
    /// From an outside app role removal to the poll that showed it.
    pub app_detect: Option<Duration>,
}

/// Everything measured at one scale.
#[derive(Debug, Clone, Default)]
pub struct ScaleResult {
    pub assignments: usize,
    pub drifted: usize,
    pub minimum: MinimumCost,
    pub verify: ProcessFigures,
    /// The full verification again with `--latency`'s model on, and whether its reads
    /// were minimal too.
    pub verify_latency: Option<(ProcessFigures, bool)>,
    /// Every group's members and every app's role assignments were read exactly once
    /// (page for page), each package's assignments once.
    pub reads_minimal: bool,
    pub drift_found: usize,
    pub repair: Option<ProcessFigures>,
    pub repaired: usize,
    pub naive: Option<NaiveFigures>,
    pub incremental: Option<IncrementalFigures>,
    pub setup: Duration,
}

/// Runs the benchmark, prints a table and optionally writes Markdown.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let bin = match &args.redeliver_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("cannot find the redeliver executable")?,
    };
    let machine = Machine::detect();
    eprintln!("machine: {}", machine.describe());
    if args.roles {
        let mut results = Vec::new();
        for &n in &args.scales {
            eprintln!("== roles, {n} assignments");
            let r = roles::run_roles(&bin, n, args.concurrency).await?;
            eprintln!("{}", roles::table(std::slice::from_ref(&r)));
            results.push(r);
        }
        let table = roles::table(&results);
        println!("{table}");
        if let Some(path) = &args.markdown {
            let body = format!(
                "## Roles: Entra roles, Azure roles and PIM for Groups at scale\n\n`cargo bench --bench scale -- --roles --scales {} --markdown docs/benchmarks.md` on {}, load {}. Each package promises a group, an Entra role (eligible), an Azure role (active, on a resource group) and an eligible group membership (PIM for Groups): {} packages, 2 Entra roles, 2 resource groups, 2 PIM groups; 1 % of the assignments miss one of their privileged resources. One full verification (`redeliver audit` over one guard per package, no repair). The minimum is one paged read per Entra role definition and mode, one per Azure scope and mode and one per PIM group and relationship (pages of 100 in the simulator), however many assignments promise them; ARM requests are counted apart from Graph's. The controller's poll (`--delta-interval`) makes these same privileged reads once per interval.\n\n{table}",
                args.scales
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                machine.describe(),
                load_average(),
                4
            );
            report::write_section(path, "roles", &body)
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
        return Ok(());
    }
    if !args.partition_policies.is_empty() {
        return run_partitions(&args, &machine).await;
    }
    let mut results = Vec::new();
    for &n in &args.scales {
        eprintln!("== {n} assignments");
        let r = run_scale(&args, &bin, n).await?;
        eprintln!("{}", table(std::slice::from_ref(&r)));
        results.push(r);
    }
    println!("{}", table(&results));
    if let Some(path) = &args.markdown {
        report::write_section(path, "scale", &markdown(&args, &machine, &results))
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

async fn run_scale(args: &BenchArgs, bin: &Path, n: usize) -> anyhow::Result<ScaleResult> {
    let started = Instant::now();
    let tenant = SyntheticTenant::benchmark(n);
    let opts = SimOptions {
        request_delay: Duration::from_millis(500),
        reprocess_delay: Duration::from_secs(1),
        ru_bucket: (args.ru_limit > 0).then_some(RuBucket {
            capacity: args.ru_limit,
            window_ms: 10_000,
        }),
        ..SimOptions::default()
    };
    let sim = Simulator::start(Scenario::synthetic_tenant(&tenant), opts)
        .await
        .context("the simulator did not start")?;
    let dir = tempfile::tempdir()?;
    let mut package_ids = Vec::new();
    for p in 0..tenant.packages {
        let name = SyntheticTenant::package_name(p);
        package_ids.push(
            sim.package_id(&name)
                .with_context(|| format!("package {name} missing from the simulator"))?,
        );
    }
    write_guards(dir.path(), &package_ids)?;
    let expected: BTreeSet<String> = (0..n)
        .filter(|i| tenant.drifted_resource(*i).is_some())
        .map(|i| tenant.upn(i))
        .collect();
    let mut result = ScaleResult {
        assignments: n,
        drifted: expected.len(),
        minimum: MinimumCost::for_tenant(&tenant, SIM_EM_PAGE),
        setup: started.elapsed(),
        ..ScaleResult::default()
    };
    eprintln!("  tenant ready in {:.1}s", result.setup.as_secs_f64());
    let scale = Scale {
        bin,
        sim: &sim,
        tenant: &tenant,
        guards: dir.path(),
        concurrency: args.concurrency,
        expected: &expected,
    };

    // 1. Full verification, measured as its own process.
    scale.verify(&mut result).await?;

    // 1b. The same with the latency model on.
    if let Some(model) = args.latency {
        result.verify_latency = Some(scale.verify_with_latency(model, result.drift_found).await?);
    }

    // 2. The naive strategy on the same tenant (nothing repaired yet).
    if !args.no_naive && args.naive_max_scale.is_none_or(|max| n <= max) {
        result.naive = Some(run_naive(args, &sim, &tenant).await?);
    }

    // 3. Repair.
    if !args.no_repair {
        scale.repair(&mut result).await?;
    }

    // 4. Incremental mode.
    if !args.no_incremental {
        result.incremental = Some(run_incremental(args, &sim, &tenant).await?);
    }
    sim.shutdown().await;
    Ok(result)
}

/// One scale's tenant and the guards over it, for the `redeliver audit` runs.
struct Scale<'a> {
    bin: &'a Path,
    sim: &'a SimHandle,
    tenant: &'a SyntheticTenant,
    /// The directory of guard files, one per package.
    guards: &'a Path,
    concurrency: usize,
    /// The drifted assignments' users.
    expected: &'a BTreeSet<String>,
}

impl Scale<'_> {
    /// Figures of the audit `run` just made: its Graph usage, whether its reads were
    /// minimal, and how many of the drifted users it reported.
    fn assess(&self, run: &measure::ChildRun) -> anyhow::Result<(ProcessFigures, bool, usize)> {
        let usage = self.sim.usage();
        let f = figures(&usage, run);
        let minimal = reads_are_minimal(self.sim, self.tenant, &usage);
        let found = drifted_targets(&run.stdout)
            .with_context(|| format!("audit output is not a report: {}", run.stderr_tail))?;
        Ok((f, minimal, found.intersection(self.expected).count()))
    }

    /// Phase 1: full verification.
    async fn verify(&self, result: &mut ScaleResult) -> anyhow::Result<()> {
        self.sim.clear_request_log();
        let run = audit(self.bin, self.sim, self.guards, &[], self.concurrency).await?;
        (result.verify, result.reads_minimal, result.drift_found) = self.assess(&run)?;
        eprintln!(
            "  verify: {} requests, {} RU (minimum {}), {} found of {}, {:.2}s, cpu {:.2}s, rss {} MiB",
            result.verify.requests,
            result.verify.ru,
            result.minimum.ru(),
            result.drift_found,
            result.drifted,
            run.wall.as_secs_f64(),
            run.cpu.as_secs_f64(),
            run.max_rss_kib / 1024
        );
        Ok(())
    }

    /// Phase 1b: full verification with the latency model on: its figures and whether
    /// its reads were minimal; it must find the drift the run without found
    /// (`drift_found`).
    async fn verify_with_latency(
        &self,
        model: LatencyModel,
        drift_found: usize,
    ) -> anyhow::Result<(ProcessFigures, bool)> {
        self.sim.clear_request_log();
        self.sim.set_latency(model);
        let run = audit(self.bin, self.sim, self.guards, &[], self.concurrency).await;
        self.sim.set_latency(LatencyModel::default());
        let run = run?;
        let (f, minimal, found) = self.assess(&run)?;
        anyhow::ensure!(
            found == drift_found,
            "the run with latency found different drift"
        );
        eprintln!(
            "  verify with latency {model}: {} requests, {} RU, {:.2}s, cpu {:.2}s, rss {} MiB",
            f.requests,
            f.ru,
            run.wall.as_secs_f64(),
            run.cpu.as_secs_f64(),
            run.max_rss_kib / 1024
        );
        Ok((f, minimal))
    }

    /// Phase 3: the audit with `--reprocess`, then how many drifted assignments are whole
    /// again.
    async fn repair(&self, result: &mut ScaleResult) -> anyhow::Result<()> {
        let (sim, tenant) = (self.sim, self.tenant);
        sim.clear_request_log();
        let run = audit(
            self.bin,
            sim,
            self.guards,
            &["--reprocess", "--wait", "10m"],
            self.concurrency,
        )
        .await?;
        let usage = sim.usage();
        result.repair = Some(figures(&usage, &run));
        result.repaired = (0..result.assignments)
            .filter(|i| tenant.drifted_resource(*i).is_some())
            .filter(|i| {
                let id = assignment_id(tenant, *i);
                sim.missing_resources(&id).is_empty()
            })
            .count();
        eprintln!(
            "  repair: {} repaired of {} in {:.1}s (exit {:?})",
            result.repaired,
            result.drifted,
            run.wall.as_secs_f64(),
            run.exit
        );
        Ok(())
    }
}

/// `--partition-policies`: see [`partition`].
async fn run_partitions(args: &BenchArgs, machine: &Machine) -> anyhow::Result<()> {
    let model = match args.latency {
        Some(m) => m,
        None => "em=250ms±100ms,directory=80ms±40ms,token=150ms"
            .parse()
            .map_err(|e| anyhow::anyhow!("default latency model: {e}"))?,
    };
    let mut results = Vec::new();
    for &n in &args.scales {
        for &k in &args.partition_policies {
            eprintln!("== partition: {n} assignments over {k} policies");
            let r = partition::run_partition(n, k, model, args.concurrency).await?;
            eprintln!("{}", partition::table(std::slice::from_ref(&r)));
            results.push(r);
        }
    }
    let table = partition::table(&results);
    println!("{table}");
    if let Some(path) = &args.markdown {
        let body = format!(
            "## Partition: one package's assignments split by policy\n\n`cargo bench --bench scale -- --scales {} --partition-policies {} --markdown docs/benchmarks.md` on {}, load {}, latency model `{model}`, {} requests in flight. One package, its assignments spread evenly over the policies; read once as the single `accessPackage/id eq` chain Redeliver uses, once as one `... and assignmentPolicy/id eq` chain per policy, all side by side (both reads return the same assignments; checked). Requests are entitlement-management requests (pages of 100 in the simulator).\n\n{table}",
            join(&args.scales),
            join(&args.partition_policies),
            machine.describe(),
            load_average(),
            args.concurrency
        );
        report::write_section(path, "partition", &body)
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn join(ns: &[usize]) -> String {
    ns.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn assignment_id(t: &SyntheticTenant, i: usize) -> String {
    let pkg = SyntheticTenant::package_name(t.package_of(i));
    derive_id(t.seed, "assignment", &format!("{}/{pkg}", t.upn(i)))
}

fn write_guards(dir: &Path, package_ids: &[String]) -> anyhow::Result<()> {
    let mut yaml = String::new();
    for (p, id) in package_ids.iter().enumerate() {
        // The sweep bound is lifted so one run repairs all 1 % drift.
        let _ = write!(
            yaml,
            "apiVersion: redeliver.dev/v1alpha1\nkind: AccessPackageGuard\nmetadata: {{name: syn-pkg-{p}, namespace: bench}}\nspec:\n  accessPackage: {{id: {id}}}\n  mode: Enforce\n  interval: 15m\n  maxReprocessPerSweep: 1000000\n---\n"
        );
    }
    std::fs::write(dir.join("guards.yaml"), yaml)?;
    Ok(())
}

/// Where `sim` is and the credentials it accepts (its CA too, when it serves HTTPS): what
/// a Graph client needs to talk to it. The simulator crate cannot build one itself (it
/// does not depend on the operator).
pub fn endpoint(sim: &SimHandle) -> redeliver::graph::Endpoint {
    redeliver::graph::Endpoint {
        tenant_id: sim.tenant_id.clone(),
        client_id: sim.client_id.clone(),
        client_secret: sim.client_secret.clone(),
        authority_host: sim.authority_host.clone(),
        graph_url: sim.graph_url.clone(),
        arm_url: Some(sim.arm_url.clone()),
        ca_file: sim.ca_file.clone(),
    }
}

fn client_args(sim: &SimHandle, concurrency: usize, max_retries: u32) -> GraphSettings {
    GraphSettings {
        graph_concurrency: concurrency,
        max_retries,
        ..GraphSettings::with_defaults()
    }
    .pointed_at(endpoint(sim))
}

fn client(sim: &SimHandle, concurrency: usize, max_retries: u32) -> anyhow::Result<GraphClient> {
    let config = client_args(sim, concurrency, max_retries)
        .validate()
        .context("simulator client configuration")?;
    Ok(GraphClient::new(config)?)
}

async fn audit(
    bin: &Path,
    sim: &SimHandle,
    dir: &Path,
    extra: &[&str],
    concurrency: usize,
) -> anyhow::Result<measure::ChildRun> {
    let mut cmd = std::process::Command::new(bin);
    for var in [
        "AZURE_FEDERATED_TOKEN_FILE",
        "REDELIVER_CLIENT_SECRET_FILE",
        "REDELIVER_LOG",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(sim.graph_env())
        .env("REDELIVER_GRAPH_CONCURRENCY", concurrency.to_string())
        .env("NO_PROXY", "127.0.0.1,localhost")
        .arg("audit")
        .arg("-f")
        .arg(dir)
        .args(["-o", "json", "--no-progress"])
        .args(extra);
    let run = tokio::task::spawn_blocking(move || measure::run(cmd)).await??;
    if !matches!(run.exit, Some(0) | Some(2)) {
        anyhow::bail!(
            "redeliver audit exited with {:?}: {}",
            run.exit,
            run.stderr_tail
        );
    }
    Ok(run)
}

fn figures(usage: &Usage, run: &measure::ChildRun) -> ProcessFigures {
    let mut f = ProcessFigures {
        wall: run.wall,
        cpu: run.cpu,
        max_rss_kib: run.max_rss_kib,
        exit: run.exit,
        ..ProcessFigures::default()
    };
    for (route, u) in &usage.by_route {
        let path = route.split_once(' ').map(|(_, p)| p).unwrap_or(route);
        if !path.starts_with("/v1.0/") || path == "/v1.0/$batch" {
            continue;
        }
        f.requests += u.requests;
        f.ru += u.ru;
        f.throttled += u.throttled;
        if path == "/v1.0/users/{id}" || path.starts_with("/v1.0/identityProtection/riskyUsers") {
            f.account_reads += u.requests;
        }
        if path.starts_with("/v1.0/identityGovernance/") {
            f.em_requests += u.requests;
        } else {
            f.directory_requests += u.requests;
        }
    }
    f
}

/// Each promised group's members and app's role assignments read exactly once (as many
/// pages as the collection has, each with `$select` and `$top=999`), each package's
/// assignments once.
fn reads_are_minimal(sim: &SimHandle, t: &SyntheticTenant, usage: &Usage) -> bool {
    let (groups, apps) = t.resource_sizes();
    let promised: BTreeSet<SyntheticResource> = (0..t.packages)
        .flat_map(|p| t.package_resources(p))
        .collect();
    let log = sim.request_log();
    let mut ok = true;
    for r in promised {
        let (path, expected) = match r {
            SyntheticResource::Group(g) => {
                let Some(id) = sim.group_id(&SyntheticTenant::group_name(g)) else {
                    return false;
                };
                (
                    format!("/v1.0/groups/{id}/members"),
                    cost::pages(groups[g], cost::DIRECTORY_PAGE),
                )
            }
            SyntheticResource::App(a) => {
                let Some(id) = sim.service_principal_id(&SyntheticTenant::app_name(a)) else {
                    return false;
                };
                (
                    format!("/v1.0/servicePrincipals/{id}/appRoleAssignedTo"),
                    cost::pages(apps[a], cost::DIRECTORY_PAGE),
                )
            }
        };
        let got = usage
            .by_path
            .get(&format!("GET {path}"))
            .map(|u| u.requests)
            .unwrap_or(0);
        ok &= got == expected;
    }
    // Every directory read asked for ids only and full pages.
    ok &= log
        .iter()
        .filter(|e| e.path.starts_with("/v1.0/groups/") && e.path.contains("/members"))
        .all(|e| e.path.contains("%24select=id") || e.path.contains("$select=id"));
    let assignment_reads = usage
        .by_route
        .get("GET /v1.0/identityGovernance/entitlementManagement/assignments")
        .map(|u| u.requests)
        .unwrap_or(0);
    let min = MinimumCost::for_tenant(t, SIM_EM_PAGE);
    ok && assignment_reads == min.assignment_pages
}

fn drifted_targets(stdout: &str) -> anyhow::Result<BTreeSet<String>> {
    let report: serde_json::Value = serde_json::from_str(stdout)?;
    let rows = report["rows"]
        .as_array()
        .context("the report has no rows")?;
    Ok(rows
        .iter()
        .filter(|r| r["verdict"] == "Drifted")
        .filter_map(|r| r["target"].as_str().map(str::to_string))
        .collect())
}

async fn run_naive(
    args: &BenchArgs,
    sim: &SimHandle,
    t: &SyntheticTenant,
) -> anyhow::Result<NaiveFigures> {
    let n = t.assignments;
    let sampled = n > args.naive_full_max;
    let indices: Vec<usize> = if sampled {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let mut v = rand::seq::index::sample(&mut rng, n, args.naive_sample.min(n)).into_vec();
        v.sort_unstable();
        v
    } else {
        (0..n).collect()
    };
    let mut package_ids = BTreeMap::new();
    let mut package_groups = BTreeMap::new();
    for p in 0..t.packages {
        package_ids.insert(
            p,
            sim.package_id(&SyntheticTenant::package_name(p))
                .context("package id")?,
        );
        let groups: Vec<String> = t
            .package_resources(p)
            .into_iter()
            .filter_map(|r| match r {
                SyntheticResource::Group(g) => sim.group_id(&SyntheticTenant::group_name(g)),
                SyntheticResource::App(_) => None,
            })
            .collect();
        package_groups.insert(p, groups);
    }
    let mut items = Vec::with_capacity(indices.len());
    for &i in &indices {
        let p = t.package_of(i);
        items.push(naive::NaiveItem {
            index: i,
            package_id: package_ids[&p].clone(),
            user_id: sim.user_id(&t.upn(i)).context("user id")?,
            group_ids: package_groups[&p].clone(),
        });
    }
    // Group drift is what the naive strategy can see; app-role drift it cannot.
    let drift_in_sample = indices
        .iter()
        .filter(|i| t.drifted_resource(**i).is_some())
        .count();
    let graph = client(sim, args.concurrency, 1000)?;
    sim.clear_request_log();
    eprintln!(
        "  naive: checking {} assignments{}",
        items.len(),
        if sampled { " (sample)" } else { "" }
    );
    let outcome = naive::run(&graph, items, args.concurrency).await;
    let usage = sim.usage();
    let f = figures(&usage, &measure::ChildRun::default());
    let factor = if sampled {
        n as f64 / indices.len().max(1) as f64
    } else {
        1.0
    };
    let scale = |x: u64| (x as f64 * factor).round() as u64;
    let ru = scale(f.ru);
    let wall = outcome.wall.mul_f64(factor);
    // Under the bucket the whole run cannot go faster than the refill rate once the initial
    // capacity is spent — whatever the simulator's own speed on this machine.
    let ru_floor = (sampled && args.ru_limit > 0).then(|| {
        let rate = f64::from(args.ru_limit) / 10.0;
        Duration::from_secs_f64((ru as f64 - f64::from(args.ru_limit)).max(0.0) / rate)
    });
    let figures = NaiveFigures {
        checked: outcome.checked,
        extrapolated: sampled,
        requests: scale(f.requests),
        ru,
        throttled: scale(f.throttled),
        wall,
        ru_floor,
        drift_found: (outcome.drifted.len() as f64 * factor).round() as usize,
        drift_in_sample,
        errors: outcome.errors,
    };
    if let Some(e) = outcome.first_error {
        eprintln!("  naive: {} errors, first: {e}", outcome.errors);
    }
    eprintln!(
        "  naive: {} requests, {} RU, found {} drifted of {} in the checked set, {:.1}s{}",
        figures.requests,
        figures.ru,
        outcome.drifted.len(),
        drift_in_sample,
        figures.wall.as_secs_f64(),
        if sampled { " (extrapolated)" } else { "" }
    );
    Ok(figures)
}

/// The controller's app-role poll (no change feed fits app roles): each interval, every
/// promised app's role assignments are read in full and compared with the previous read.
/// Measures its cost when nothing changes, and how long an outside removal takes to show.
async fn measure_app_role_poll(
    args: &BenchArgs,
    sim: &SimHandle,
    t: &SyntheticTenant,
    graph: &redeliver::graph::GraphClient,
    fig: &mut IncrementalFigures,
) -> anyhow::Result<()> {
    let apps: Vec<String> = (0..t.apps)
        .filter_map(|a| sim.service_principal_id(&SyntheticTenant::app_name(a)))
        .collect();
    fig.apps = apps.len();
    if apps.is_empty() {
        return Ok(());
    }
    let read_all = || async {
        let mut pairs = std::collections::BTreeSet::new();
        for sp in &apps {
            for a in graph.list_app_role_assignments(sp).await? {
                pairs.insert((sp.clone(), a.principal_id, a.app_role_id));
            }
        }
        anyhow::Ok(pairs)
    };
    sim.clear_request_log();
    let polls = args.quiet_polls.max(1);
    let mut previous = read_all().await?;
    let usage = sim.usage();
    let (base_requests, base_ru) = (usage.total.requests, usage.total.ru);
    for _ in 0..polls {
        let now = read_all().await?;
        if now != previous {
            anyhow::bail!("a quiet app-role poll saw a change");
        }
        previous = now;
    }
    let usage = sim.usage();
    fig.app_requests_per_poll = (usage.total.requests - base_requests) as f64 / polls as f64;
    fig.app_ru_per_poll = (usage.total.ru - base_ru) as f64 / polls as f64;

    // An outside removal right after a poll: shown by the next one.
    let Some((i, app)) = undrifted_holder(t, |r| match r {
        SyntheticResource::App(a) => Some(a),
        SyntheticResource::Group(_) => None,
    }) else {
        return Ok(());
    };
    let changed_at = Instant::now();
    sim.remove_app_role(&SyntheticTenant::app_name(app), &t.upn(i), None)?;
    tokio::time::sleep(args.delta_interval).await;
    if read_all().await? != previous {
        fig.app_detect = Some(changed_at.elapsed());
    }
    sim.add_app_role(&SyntheticTenant::app_name(app), &t.upn(i), None)?;
    Ok(())
}

/// The first assignment with nothing drifted whose package promises a resource `pick`
/// accepts: (assignment index, resource index).
fn undrifted_holder(
    t: &SyntheticTenant,
    pick: impl Fn(SyntheticResource) -> Option<usize>,
) -> Option<(usize, usize)> {
    (1..t.assignments)
        .filter(|i| t.drifted_resource(*i).is_none())
        .find_map(|i| {
            t.package_resources(t.package_of(i))
                .into_iter()
                .find_map(&pick)
                .map(|r| (i, r))
        })
}

async fn run_incremental(
    args: &BenchArgs,
    sim: &SimHandle,
    t: &SyntheticTenant,
) -> anyhow::Result<IncrementalFigures> {
    let graph = client(sim, args.concurrency, 5)?;
    let group_ids: Vec<String> = (0..t.groups)
        .filter_map(|g| sim.group_id(&SyntheticTenant::group_name(g)))
        .collect();
    let mut tracker = DeltaTracker::start(graph.clone(), group_ids.clone())
        .await
        .context("starting group delta")?;
    let mut fig = IncrementalFigures {
        groups: group_ids.len(),
        poll_interval: args.delta_interval,
        ..IncrementalFigures::default()
    };
    // Steady state: nothing changes.
    sim.clear_request_log();
    let polls = args.quiet_polls.max(1);
    for _ in 0..polls {
        tokio::time::sleep(args.delta_interval).await;
        let poll = tracker.poll().await;
        if !poll.is_quiet() {
            anyhow::bail!("a quiet delta poll reported changes: {poll:?}");
        }
    }
    let usage = sim.usage();
    fig.requests_per_poll = usage.total.requests as f64 / polls as f64;
    fig.ru_per_poll = usage.total.ru as f64 / polls as f64;
    measure_app_role_poll(args, sim, t, &graph, &mut fig).await?;

    // An outside removal right after a poll (the worst case: a whole interval to wait).
    let Some((i, group)) = undrifted_holder(t, |r| match r {
        SyntheticResource::Group(g) => Some(g),
        SyntheticResource::App(_) => None,
    }) else {
        return Ok(fig);
    };
    let upn = t.upn(i);
    let group_name = SyntheticTenant::group_name(group);
    let group_id = sim.group_id(&group_name).context("group id")?;
    let user_id = sim.user_id(&upn).context("user id")?;
    let _ = tracker.poll().await;
    let changed_at = Instant::now();
    sim.remove_member(&group_name, &upn)?;
    let deadline = changed_at + args.delta_interval * 4 + Duration::from_secs(30);
    loop {
        tokio::time::sleep(args.delta_interval).await;
        let poll = tracker.poll().await;
        if poll
            .removed
            .iter()
            .any(|(g, m)| g.eq_ignore_ascii_case(&group_id) && m.eq_ignore_ascii_case(&user_id))
        {
            fig.detect = Some(changed_at.elapsed());
            break;
        }
        if Instant::now() > deadline {
            return Ok(fig);
        }
    }
    graph
        .reprocess_assignment(&assignment_id(t, i))
        .await
        .context("reprocess after a delta removal")?;
    while Instant::now() < deadline + Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let members = graph.list_group_members(&group_id).await?;
        if members.iter().any(|m| m.eq_ignore_ascii_case(&user_id)) {
            fig.restored = Some(changed_at.elapsed());
            break;
        }
    }
    eprintln!(
        "  incremental: {:.1} requests and {:.1} RU per poll over {} groups; detected after {:?}, restored after {:?}",
        fig.requests_per_poll, fig.ru_per_poll, fig.groups, fig.detect, fig.restored
    );
    Ok(fig)
}

/// The machine the figures come from.
#[derive(Debug, Clone, Default)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory: String,
    pub os: String,
    /// `/proc/loadavg`'s three load averages when the benchmark started.
    pub load: String,
}

/// The 1, 5 and 15 minute load averages, or `unknown`.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(", "))
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

impl Machine {
    /// Reads `/proc` where available.
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let field = |text: &str, key: &str| {
            text.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
                .unwrap_or_else(|| "unknown".into())
        };
        let mem_kib: u64 = field(&meminfo, "MemTotal")
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Self {
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            cpu_model: field(&cpuinfo, "model name"),
            memory: format!("{:.1} GiB", mem_kib as f64 / 1024.0 / 1024.0),
            os: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
            load: load_average(),
        }
    }

    fn describe(&self) -> String {
        format!(
            "{} CPUs ({}), {} RAM, {}",
            self.cpus, self.cpu_model, self.memory, self.os
        )
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn ratio(spent: u64, min: u64) -> String {
    if min == 0 {
        "-".into()
    } else {
        format!("{:.3}", spent as f64 / min as f64)
    }
}

/// The results as a Markdown table (also printed).
pub fn table(results: &[ScaleResult]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| assignments | strategy | Graph requests | RU | RU / minimum | 429s | wall time | CPU | peak RSS | drift found | repaired |"
    );
    let _ = writeln!(s, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        strategy_rows(&mut s, r);
    }
    let incremental: Vec<&ScaleResult> =
        results.iter().filter(|r| r.incremental.is_some()).collect();
    if !incremental.is_empty() {
        let _ = writeln!(s);
        group_delta_table(&mut s, &incremental);
        let _ = writeln!(s);
        app_role_poll_table(&mut s, &incremental);
    }
    s
}

/// One scale's rows of the strategy table: Redeliver's verification (with the latency
/// model too when run), its repair and the naive strategy.
fn strategy_rows(s: &mut String, r: &ScaleResult) {
    let v = &r.verify;
    let strategy = format!(
        "Redeliver full verification ({} account reads)",
        v.account_reads
    );
    verification_row(s, r, &strategy, v);
    if let Some((v, minimal)) = &r.verify_latency {
        let strategy = format!(
            "Redeliver full verification, latency model on{}",
            if *minimal { "" } else { " (reads NOT minimal)" }
        );
        verification_row(s, r, &strategy, v);
    }
    if let Some(p) = &r.repair {
        let _ = writeln!(
            s,
            "| {} | Redeliver repair (verify, reprocess, re-verify; {} account reads, {:.2} per repair) | {} | {} | | {} | {} | {:.2} s | {} MiB | | {} / {} |",
            r.assignments,
            p.account_reads,
            p.account_reads as f64 / r.repaired.max(1) as f64,
            p.requests,
            p.ru,
            p.throttled,
            secs(p.wall),
            p.cpu.as_secs_f64(),
            p.max_rss_kib / 1024,
            r.repaired,
            r.drifted,
        );
    }
    if let Some(nv) = &r.naive {
        let est = if nv.extrapolated { " (est.)" } else { "" };
        let _ = writeln!(
            s,
            "| {} | naive per-user{} | {}{est} | {}{est} | {} | {}{est} | {}{est}{} | | | {}{est} / {} | |",
            r.assignments,
            if nv.extrapolated {
                format!(" (sample of {})", nv.checked)
            } else {
                String::new()
            },
            nv.requests,
            nv.ru,
            ratio(nv.ru, r.minimum.ru()),
            nv.throttled,
            secs(nv.wall),
            nv.ru_floor
                .map(|f| format!("; ≥ {} by the RU bucket alone", secs(f)))
                .unwrap_or_default(),
            nv.drift_found,
            r.drifted,
        );
    }
}

/// A row of the strategy table for a full verification `v` at scale `r`.
fn verification_row(s: &mut String, r: &ScaleResult, strategy: &str, v: &ProcessFigures) {
    let _ = writeln!(
        s,
        "| {} | {strategy} | {} ({} directory, {} EM) | {} | {} (min {}) | {} | {} | {:.2} s | {} MiB | {} / {} | |",
        r.assignments,
        v.requests,
        v.directory_requests,
        v.em_requests,
        v.ru,
        ratio(v.ru, r.minimum.ru()),
        r.minimum.ru(),
        v.throttled,
        secs(v.wall),
        v.cpu.as_secs_f64(),
        v.max_rss_kib / 1024,
        r.drift_found,
        r.drifted,
    );
}

/// Incremental mode: group delta polls, quiet and after an outside removal.
fn group_delta_table(s: &mut String, incremental: &[&ScaleResult]) {
    let _ = writeln!(
        s,
        "| assignments | groups tracked | requests / poll (quiet) | RU / poll (quiet) | RU / minute at 60 s polls | poll interval | change → detected | change → membership back |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in incremental {
        let Some(i) = &r.incremental else { continue };
        let opt = |d: Option<Duration>| d.map(secs).unwrap_or_else(|| "not seen".into());
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} | {:.1} | {:.1} | {} | {} | {} |",
            r.assignments,
            i.groups,
            i.requests_per_poll,
            i.ru_per_poll,
            i.ru_per_poll,
            secs(i.poll_interval),
            opt(i.detect),
            opt(i.restored),
        );
    }
}

/// Incremental mode: the app-role poll.
fn app_role_poll_table(s: &mut String, incremental: &[&ScaleResult]) {
    let _ = writeln!(
        s,
        "App roles have no change feed that fits (README, \"Detection latency\"): the controller reads every promised app's `appRoleAssignedTo` each delta interval and compares it with the objects' status.\n"
    );
    let _ = writeln!(
        s,
        "| assignments | apps polled | requests / poll | RU / poll | RU / minute at 60 s polls | change → detected |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|");
    for r in incremental {
        let Some(i) = &r.incremental else { continue };
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} | {:.1} | {:.1} | {} |",
            r.assignments,
            i.apps,
            i.app_requests_per_poll,
            i.app_ru_per_poll,
            i.app_ru_per_poll,
            i.app_detect.map(secs).unwrap_or_else(|| "not seen".into()),
        );
    }
}

fn markdown(args: &BenchArgs, machine: &Machine, results: &[ScaleResult]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "## Scale: full verification, repair and incremental mode\n"
    );
    let _ = writeln!(
        s,
        "Last run: {} on {} (release build).\n",
        jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M UTC"),
        machine.describe(),
    );
    let _ = writeln!(
        s,
        "Command: `cargo bench --bench scale -- --scales {} --ru-limit {} --concurrency {} --naive-full-max {} --naive-sample {}{}{} --delta-interval {}s --markdown docs/benchmarks.md`\n",
        args.scales
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(","),
        args.ru_limit,
        args.concurrency,
        args.naive_full_max,
        args.naive_sample,
        args.naive_max_scale
            .map(|n| format!(" --naive-max-scale {n}"))
            .unwrap_or_default(),
        args.latency
            .map(|m| format!(" --latency {m}"))
            .unwrap_or_default(),
        args.delta_interval.as_secs()
    );
    let _ = writeln!(
        s,
        "Load average (1, 5, 15 min) at the start: {}; at the end: {}. The machine is shared, so another build may have run alongside and inflated wall times.\n",
        machine.load,
        load_average(),
    );
    if let Some(model) = args.latency {
        let _ = writeln!(
            s,
            "Latency model of the \"latency model on\" rows: `{model}` (docs/simulator.md, \"Latency model\"; each `$batch` waits for its slowest item). The other rows run without latency.\n"
        );
    }
    s.push_str(HOW_TO_RUN);
    let _ = writeln!(s, "### Results\n");
    s.push_str(&table(results));
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "Minimum cost per scale (pages of 999 directory objects; 100 assignments per simulator page):\n"
    );
    let _ = writeln!(
        s,
        "| assignments | member pages (2 RU) | app role pages (1 RU) | assignment pages (0 RU) | minimum RU | minimum requests | each resource read once |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---|");
    for r in results {
        let m = &r.minimum;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.assignments,
            m.member_pages,
            m.app_role_pages,
            m.assignment_pages,
            m.ru(),
            m.requests(),
            if r.reads_minimal { "yes" } else { "NO" }
        );
    }
    let _ = writeln!(s);
    for r in results {
        if let Some(nv) = &r.naive
            && r.verify.ru > 0
        {
            let _ = writeln!(
                s,
                "- {} assignments: naive RU / Redeliver RU = {:.0}×{}.",
                r.assignments,
                nv.ru as f64 / r.verify.ru as f64,
                if nv.extrapolated {
                    " (naive extrapolated from its sample)"
                } else {
                    ""
                }
            );
        }
    }
    s.push_str(WHAT_IS_MEASURED);
    s
}

const HOW_TO_RUN: &str = "\
### How to run

```sh
cargo bench --bench scale                                  # 1,000 / 10,000 / 100,000
cargo bench --bench scale -- --scales 1000,10000           # pick scales
cargo bench --bench scale -- --no-naive --no-repair        # verification only
cargo bench --bench scale -- --markdown docs/benchmarks.md # rewrite this section
cargo bench --bench scale -- --latency 'em=250ms±100ms,directory=80ms±40ms,token=150ms'
```

Other flags: `--ru-limit N` (RU per 10 s, 0 = no throttling), `--concurrency N`,
`--naive-full-max N` / `--naive-sample N` (the naive strategy runs on every assignment up
to N, above that on a random sample whose figures are extrapolated), `--delta-interval`,
`--quiet-polls`, `--no-incremental`, `--naive-max-scale N` (no naive run above N
assignments), `--latency MODEL` (run the full verification a second time with the
simulator's latency model on, docs/simulator.md). At 1,000 / 10,000 / 100,000 it runs in
about 10 minutes on 2 cores, most of it the naive runs; 300,000 adds about as much again.

";

const WHAT_IS_MEASURED: &str = "
### What is measured

- **Tenant**: `SyntheticTenant::benchmark(n)` in the bundled simulator — 50 groups, 5 apps
  (one app role each), 15 access packages promising 3–5 of those resources, one delivered
  assignment (and its `adminAdd` request) per user, and 1 % of assignments drifted by an
  outside removal of one of their groups or app roles. The simulator's RU token bucket is
  on (8,000 RU per 10 s unless `--ru-limit` says otherwise).
- **Redeliver full verification**: `redeliver audit -o json` over one
  `AccessPackageGuard` per package (by id: no name resolution), run as a child process;
  CPU time (user + system) and peak RSS are that process's own, from `wait4(2)` (it is
  started by a small launcher, so its peak RSS is not the benchmark's: see
  `crates/bench/src/measure.rs`). Graph
  requests, RU and 429s come from the simulator's usage counters (`GET /_sim/usage`) for
  that run: every `/v1.0` request including `$batch` items, excluding the token endpoint.
  Directory requests are the metered ones; EM requests (packages, policies, assignments,
  requests) are not in Graph's published RU tables and cost 0 RU here.
- **Minimum**: pages of members (2 RU each with `$select`) + pages of `appRoleAssignedTo`
  (1 RU each with `$select`) + pages of assignments (0 RU), with 999 directory objects per
  page and an empty collection still one page. \"each resource read once\" checks page for
  page that every promised group and app was read exactly once with `$select` and
  `$top=999`, and each package's assignments once.
- **Naive per-user**: for each assignment, look up its assignment (`$filter` on package
  and target) and call `checkMemberGroups` with the package's groups (4 RU). It has no
  per-user check for app roles, so it cannot find app-role drift. Its requests include the
  429s it got and retried. Above `--naive-full-max` it runs on a random sample and its
  requests, RU and drift are scaled up; its wall time is the sample's scaled up (in the
  simulator, whose filtered assignment lookup scans every assignment, so it is slow at
  100,000) next to the least time the RU bucket alone allows ((RU − capacity) / refill
  rate), which is what a real tenant would impose.
- Redeliver's request count is above the minimum by the entitlement-management reads the
  minimum leaves out (0 RU): per package one `GET accessPackages/{id}` (resources) and
  one page of policies. Assignment requests are not read by a guard sweep (only a
  declared assignment that is not delivered needs them).
- **Latency model on**: the same full verification again, with the simulator delaying
  each request by its route class (`--latency`; docs/simulator.md, \"Latency model\").
  Microsoft publishes no per-route latency figures for Graph; the model used here
  (`em=250ms±100ms,directory=80ms±40ms,token=150ms`) is an estimate of what a client
  sees from a nearby region: entitlement-management lists with expanded `target` and
  `assignmentPolicy` are the slow ones, directory pages of ids with `$select` faster. With
  `--graph-concurrency 8` the floor is roughly (EM requests × 250 ms + directory requests ×
  80 ms) / 8, since every chain of pages, every package and every membership read run
  side by side under that one limit.
- **Redeliver repair**: `redeliver audit --reprocess` on the same guards (verify,
  reprocess every drifted assignment, poll until the repairs land, verify again), then the
  simulator confirms each drifted assignment has every promised resource again.
- **Account reads**: what the safety rails (the README's Safety section) read before a grant: one
  `GET /users/{id}` per repaired assignment's target, batched 20 to a `$batch` envelope
  (counted per item, like every batched request here). A verification reads none: it grants
  nothing, and a report-only guard does not confirm the accounts of the drifts it would
  repair.
- **Incremental**: a `DeltaTracker` over the 50 promised groups (one delta query, ≤ 50 ids)
  polled at `--delta-interval`: requests and RU per quiet poll (at the controller's default
  60 s interval that is the RU per minute), then an outside removal made just after a poll
  (the worst case), the time until a poll reports it, and the time until `reprocess` has put
  the membership back as a members read confirms. The app-role poll reads every promised
  app's `appRoleAssignedTo` (all pages of 999, `$select`) the same number of times:
  requests and RU per poll, then an outside app role removal made just after a poll and
  whether the next poll shows it.
- Wall times include the simulator's own work on the same 2 cores (a package's assignment
  page resumes where the previous page stopped, but the naive strategy's filtered lookup
  scans every assignment), so they are upper bounds for a real tenant's client-side time.
";
