//! `redeliver audit`: the engine driven from YAML files instead of a cluster.
//!
//! Report-only by default. With `--reprocess` it repairs (requests missing assignments,
//! reprocesses drifted ones), waits for the repairs to land and verifies again. The same
//! observation code and engine as the controller are used, so what audit says is what the
//! operator would do.

pub mod connections;
pub mod load;
pub mod report;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use futures::StreamExt as _;

use load::{Declarations, Origin};
use redeliver::api::{
    AccessPackageAssignment, AccessPackageAssignmentStatus, AccessPackageGuard,
    AccessPackageGuardStatus, SafetySpec,
};
use redeliver::api::{ConnectionKey, ResourceState, ResourceStatus};
use redeliver::engine::ledger::{RepairKey, RepairLedger};
use redeliver::engine::transaction::{Claim, Transaction, WriteOutcome};
use redeliver::engine::{self, Action, EngineSettings};
use redeliver::graph::GraphError;
use redeliver::graph::models::AssignmentState;
use redeliver::graph::{GraphClient, GraphSettings, Write, Written};
use redeliver::observe::attribution::Attributor;
use redeliver::observe::safety::{SafetyReads, attribute_drift};
use redeliver::observe::{
    AssignmentObservation, GuardObservation, Observer, observe_assignment, observe_guard,
};
use redeliver_cli::GraphArgs;
use report::{Report, Row, Summary, Verdict};
pub use report::{RowAction, WriteKind};

pub use redeliver_cli::{EXIT_DRIFT, EXIT_ERROR, EXIT_OK};

/// Output formats for the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// A terminal table, then details and counts.
    Table,
    /// The whole report as JSON.
    Json,
    /// The whole report as YAML.
    Yaml,
    /// A summary for a pull request comment or `$GITHUB_STEP_SUMMARY`: counts and the rows
    /// that are not delivered.
    Markdown,
    /// JUnit XML, one test case per row, for CI test report views.
    Junit,
}

/// Arguments of `redeliver audit`.
#[derive(Args, Debug)]
#[command(after_help = "EXIT CODES:
  0   every declared assignment is delivered and verified
  1   errors: invalid declarations, unknown or ambiguous packages/policies/users,
      missing Graph permissions, Graph unavailable
  2   drift or missing assignments remain
  64  usage error (unknown flag, bad value, a flag with no effect); nothing was run

SEVERAL TENANTS:
  GraphConnection and ClusterGraphConnection documents in the files pick each declaration's
  tenant as the controller does (connectionRef, else its namespace's GraphConnection named
  default, else the flags). A connection's client secret comes from a Secret in the files
  (a GraphConnection's from its namespace, a ClusterGraphConnection's from
  --cluster-secret-namespace) or from REDELIVER_SECRET_<NAMESPACE>_<NAME>_<KEY> (upper case,
  other characters as _). A connection that cannot be used fails only its own rows.

EXAMPLES:
  # The zero-setup demo: an embedded simulated tenant with drifted, missing and failed
  # assignments (examples/tenant/README.md tells each one's story)
  redeliver audit -f examples/ --simulate --reprocess

  # Report drift in a real tenant (credentials from AZURE_* variables)
  redeliver audit -f declarations/

  # Repair, then verify again, waiting up to 10 minutes for Graph
  redeliver audit -f declarations/ --reprocess --wait 10m

  # In CI: a job summary of what is not delivered, or a JUnit test report
  redeliver audit -f declarations/ -o markdown >> \"$GITHUB_STEP_SUMMARY\"
  redeliver audit -f declarations/ -o junit > redeliver-junit.xml")]
pub struct AuditArgs {
    /// Declaration files or directories (searched recursively for .yaml/.yml; multi-document).
    #[arg(short = 'f', long = "filename", value_name = "PATH", required = true, num_args = 1..)]
    pub paths: Vec<PathBuf>,

    /// Repair: request missing assignments and reprocess drifted ones, then verify again.
    #[arg(long)]
    pub reprocess: bool,

    /// With --reprocess, how long to wait for repairs to land before the final verification.
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = redeliver::api::parse_duration_arg, requires = "reprocess")]
    pub wait: Duration,

    /// With --reprocess, how often to re-verify while waiting (e.g. 2s, 500ms).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = redeliver_cli::parse_duration, hide_short_help = true, requires = "reprocess")]
    pub poll_interval: Duration,

    /// Run against an embedded Graph simulator instead of a real tenant.
    #[arg(long)]
    pub simulate: bool,

    /// With --simulate, the tenant scenario to load (default: the bundled demo tenant).
    #[arg(long, value_name = "FILE", requires = "simulate")]
    pub scenario: Option<PathBuf>,

    /// Report format on stdout: a terminal table, JSON or YAML (the whole report),
    /// markdown (counts and what is not delivered, for a pull request comment or
    /// $GITHUB_STEP_SUMMARY) or junit (JUnit XML, one test case per row, for CI test
    /// reports).
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,

    /// Never draw a progress bar (it is drawn only when stderr is a terminal).
    #[arg(long)]
    pub no_progress: bool,

    /// Namespace whose Secrets hold the client secrets of ClusterGraphConnections in the
    /// files (the operator's namespace in the cluster).
    #[arg(long, value_name = "NAMESPACE", default_value = "redeliver-system")]
    pub cluster_secret_namespace: String,
    /// Repair even where the mass-drift breaker trips (README, "Safety"): say so only after
    /// finding out that the mass removal was a fault.
    #[arg(long)]
    pub acknowledge_mass_drift: bool,

    /// Cross-check each declaration against Microsoft's access drift report (Graph beta,
    /// per catalog, groups and apps only), as the controller's flag does: a disagreement is
    /// a note in the row's message, never a repair or a different verdict.
    #[arg(long, env = "REDELIVER_USE_ACCESS_DRIFT_REPORT", value_name = "BOOL", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub use_access_drift_report: bool,

    #[command(flatten)]
    pub graph: GraphArgs,
}

impl AuditArgs {
    /// The Graph flags as the library's settings.
    fn graph_settings(&self) -> GraphSettings {
        self.graph.clone().into()
    }
}

/// Runs the audit and returns the process exit code. With `--simulate`, `simulated` is
/// the embedded simulator the binary started (the simulator is not part of this library).
pub async fn run(
    args: AuditArgs,
    simulated: Option<redeliver::graph::Endpoint>,
) -> anyhow::Result<u8> {
    let decls = match load_declarations(&args.paths) {
        Ok(decls) => decls,
        Err((error, notes)) => return fail_before_any_row(error, notes, args.output),
    };
    let progress = Progress::new(!args.no_progress && std::io::stderr().is_terminal());
    let groups = connections::group(&decls);
    if groups.len() == 1 && groups.contains_key(&ConnectionKey::Operator) {
        return audit_one_tenant(&args, &decls, simulated, &progress).await;
    }
    audit_several_tenants(&args, &decls, &groups, simulated, &progress).await
}

/// Loads every declaration (all or nothing), saying on stderr what is wrong and what was
/// skipped. `Err` carries the run's error and the notes for a report without rows: a
/// malformed file, or nothing of Redeliver's in the files.
fn load_declarations(paths: &[PathBuf]) -> Result<Declarations, (String, Vec<String>)> {
    let decls = match load::load_paths(paths) {
        Ok(d) => d,
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            // Said on stdout too, in the report's format: a CI job that keeps only stdout
            // (a JUnit file, a job summary) must still show why the run failed.
            let mut error = format!(
                "{} problem(s) in the declarations; nothing was checked or changed",
                errors.len()
            );
            eprintln!("error: {error}");
            for e in &errors {
                error.push_str(&format!("\n{e}"));
            }
            return Err((error, Vec::new()));
        }
    };
    for note in &decls.skipped {
        eprintln!("note: {note}");
    }
    if decls.is_empty() {
        let error = format!(
            "no AccessPackageAssignment or AccessPackageGuard (apiVersion {}) found in {}",
            load::API_VERSION,
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        eprintln!("error: {error}");
        return Err((error, decls.skipped.clone()));
    }
    Ok(decls)
}

/// One tenant, the flags': a failure that hits every row is said once.
async fn audit_one_tenant(
    args: &AuditArgs,
    decls: &Declarations,
    simulated: Option<redeliver::graph::Endpoint>,
    progress: &Progress,
) -> anyhow::Result<u8> {
    let client = connect(args, simulated)?;
    let outcome = match audit_group(args, decls, client, None, progress).await {
        Ok(o) => o,
        Err(error) => {
            progress.finish();
            eprintln!("error: {error}");
            eprintln!("error: no declaration could be checked; nothing was changed");
            let rows = unchecked_rows(decls, "");
            let report = Report {
                error: Some(error),
                before: None,
                summary: Summary::of(&rows, 0),
                rows,
                notes: decls.skipped.clone(),
            };
            print_report(&report.without_run_ids(), args.output)?;
            return Ok(EXIT_ERROR);
        }
    };
    progress.finish();
    let mut rows = outcome.rows;
    if outcome.error.is_some() {
        for row in &mut rows {
            row.message.clear();
        }
    }
    let report = Report {
        error: outcome.error,
        before: args.reprocess.then_some(outcome.before),
        summary: Summary::of(&rows, outcome.actions),
        rows,
        notes: decls.skipped.clone(),
    };
    finish(&report, args.output)
}

/// Several tenants: each connection's declarations are audited with its own client,
/// ledger and read cache, all at once; a connection that cannot be used fails its own
/// rows only, each naming it.
async fn audit_several_tenants(
    args: &AuditArgs,
    decls: &Declarations,
    groups: &BTreeMap<ConnectionKey, Declarations>,
    simulated: Option<redeliver::graph::Endpoint>,
    progress: &Progress,
) -> anyhow::Result<u8> {
    let runs = groups.iter().map(|(key, group)| {
        let simulated = simulated.clone();
        async move {
            let client = match key {
                ConnectionKey::Operator => connect(args, simulated).map_err(|e| {
                    format!("{e:#} (the declarations that use no GraphConnection use the flags)")
                }),
                _ => connections::client_for(
                    key,
                    decls,
                    &args.graph_settings(),
                    &args.cluster_secret_namespace,
                ),
            };
            let outcome = match client {
                Ok(client) => {
                    let safety = connections::safety_of(key, decls);
                    audit_group(args, group, client, safety, progress).await
                }
                Err(e) => Err(e),
            };
            (key, group, outcome)
        }
    });
    let results = futures::future::join_all(runs).await;
    progress.finish();
    let report = merge_tenants(results, args.reprocess, decls.skipped.clone());
    finish(&report, args.output)
}

/// One report of every connection's outcome: a connection's failure is on its own rows,
/// naming it, and the run's error only when every connection failed.
fn merge_tenants(
    results: Vec<(&ConnectionKey, &Declarations, Result<GroupOutcome, String>)>,
    reprocess: bool,
    notes: Vec<String>,
) -> Report {
    let groups = results.len();
    let (mut rows, mut before, mut actions, mut failures) = (Vec::new(), Vec::new(), 0, Vec::new());
    for (key, group, outcome) in results {
        match outcome {
            Ok(o) => {
                let mut group_rows = o.rows;
                if let Some(error) = &o.error {
                    failures.push(format!("{key}: {error}"));
                    for row in &mut group_rows {
                        row.message = format!("{key}: {error}");
                    }
                }
                rows.extend(group_rows);
                before.extend(o.before);
                actions += o.actions;
            }
            Err(error) => {
                let message = if error.starts_with(&key.to_string()) {
                    error
                } else {
                    format!("{key}: {error}")
                };
                failures.push(message.clone());
                rows.extend(unchecked_rows(group, &message));
            }
        }
    }
    let every_group_failed = failures.len() == groups;
    Report {
        error: every_group_failed.then(|| failures.join("; ")),
        before: reprocess.then_some(before),
        summary: Summary::of(&rows, actions),
        rows,
        notes,
    }
}

/// Prints the report (on stderr the failure of the whole run, with Graph's ids for a
/// support case; on stdout the report without them, so two runs that met the same failure
/// print the same text) and returns the exit code.
fn finish(report: &Report, output: OutputFormat) -> anyhow::Result<u8> {
    if let Some(error) = &report.error {
        eprintln!("error: {error}");
    }
    print_report(&report.without_run_ids(), output)?;
    Ok(exit_code(report))
}

/// What one connection's audit found.
struct GroupOutcome {
    before: Vec<Row>,
    rows: Vec<Row>,
    actions: usize,
    /// A failure every declaration of the connection met the same way.
    error: Option<String>,
}

/// Audits one connection's declarations with its client: a pass, and with `--reprocess`
/// the writes and passes until nothing is in flight or `--wait` runs out. `Err` when no
/// token could be obtained (nothing was checked).
async fn audit_group(
    args: &AuditArgs,
    decls: &Declarations,
    client: GraphClient,
    safety_spec: Option<SafetySpec>,
    progress: &Progress,
) -> Result<GroupOutcome, String> {
    // A refused credential or an unreachable tenant would fail every row with the same
    // text: say it once, before any row is evaluated. This token is the one the reads use
    // next, so it costs no extra request on success.
    progress.say("obtaining a Graph token");
    client.check_token().await.map_err(|e| e.to_string())?;
    let observer = Observer::new(client, args.graph.graph_concurrency);
    let mut audit = Audit::new(decls, &observer, args.reprocess);
    audit.drift_report = args.use_access_drift_report;
    audit.safety_spec = safety_spec;
    audit.acknowledge_mass_drift = args.acknowledge_mass_drift;

    progress.say("verifying declarations against Graph");
    audit.pass().await;
    let before = audit.rows();
    let mut actions = 0;
    if args.reprocess {
        actions += audit.act(progress).await;
        let deadline = tokio::time::Instant::now() + args.wait;
        while audit.in_flight() && tokio::time::Instant::now() < deadline {
            progress.say(&format!(
                "waiting for {} repair(s) to land",
                audit.in_flight_count()
            ));
            tokio::time::sleep(args.poll_interval).await;
            observer.refresh().await;
            audit.pass().await;
            actions += audit.act(progress).await;
        }
    }
    Ok(GroupOutcome {
        before,
        rows: audit.rows(),
        actions,
        error: audit.common_failure(),
    })
}

/// One error row per declaration of a connection that could not be used.
fn unchecked_rows(decls: &Declarations, message: &str) -> Vec<Row> {
    let assignments = decls.assignments.iter().map(|(origin, a)| {
        error_row(
            declaration_name(&a.metadata, origin),
            a.spec.target.label(),
            a.spec.access_package.label(),
            message.to_string(),
        )
    });
    let guards = decls.guards.iter().map(|(origin, g)| {
        error_row(
            declaration_name(&g.metadata, origin),
            "(all assignments)".into(),
            g.spec.access_package.label(),
            message.to_string(),
        )
    });
    assignments.chain(guards).collect()
}

/// Reports a failure that came before any declaration could be read (invalid files, none
/// found) in the report's format on stdout (already said on stderr): the Markdown error
/// block, one JUnit `<error>`, `error` in JSON/YAML, counted as one error.
fn fail_before_any_row(
    error: String,
    notes: Vec<String>,
    output: OutputFormat,
) -> anyhow::Result<u8> {
    let report = Report {
        error: Some(error),
        before: None,
        rows: Vec::new(),
        summary: Summary::of_failed_run(),
        notes,
    };
    if output != OutputFormat::Table {
        print_report(&report.without_run_ids(), output)?;
    }
    Ok(EXIT_ERROR)
}

/// A failure of the whole run and errors dominate; then anything not delivered is drift.
fn exit_code(report: &Report) -> u8 {
    if report.error.is_some() || report.rows.iter().any(|r| r.verdict.is_error()) {
        EXIT_ERROR
    } else if report.rows.iter().all(|r| r.verdict.is_delivered()) {
        EXIT_OK
    } else {
        EXIT_DRIFT
    }
}

/// The Graph client of the run: the configured tenant, or (`--simulate`) the simulator the
/// binary started, with the user's tuning flags kept.
fn connect(
    args: &AuditArgs,
    simulated: Option<redeliver::graph::Endpoint>,
) -> anyhow::Result<GraphClient> {
    let config = match simulated {
        Some(endpoint) => args
            .graph_settings()
            .pointed_at(endpoint)
            .validate()
            .context("cannot configure the Graph client for the simulator")?,
        None if args.simulate => anyhow::bail!(
            "--simulate needs the embedded simulator, which the redeliver binary starts"
        ),
        None => args.graph_settings().into_config()?,
    };
    Ok(GraphClient::new(config)?)
}

fn print_report(report: &Report, format: OutputFormat) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(report)?),
        OutputFormat::Yaml => print!("{}", serde_norway::to_string(report)?),
        OutputFormat::Markdown => print!("{}", report::markdown(report)),
        OutputFormat::Junit => print!("{}", report::junit(report)?),
        OutputFormat::Table => {
            let width = report::output_width();
            if let Some(error) = &report.error {
                println!("Error (every declaration): {error}");
            }
            if let Some(before) = &report.before {
                println!("Before:");
                println!("{}", report::table(before, width));
                println!("After:");
            }
            println!("{}", report::table(&report.rows, width));
            let details = report::details(&report.rows, width);
            if !details.is_empty() {
                print!("{details}");
            }
            let s = &report.summary;
            println!(
                "{} row(s): {} delivered, {} drifted, {} not assigned, {} held, {} other, {} errors; {} action(s) taken",
                s.total,
                s.delivered,
                s.drifted,
                s.not_assigned,
                s.held,
                s.other,
                s.errors,
                s.actions_taken
            );
        }
    }
    Ok(())
}

/// A progress line on stderr, only when stderr is a terminal.
struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    fn new(enabled: bool) -> Self {
        Self(enabled.then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        }))
    }

    fn say(&self, message: &str) {
        if let Some(bar) = &self.0 {
            bar.set_message(message.to_string());
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

/// The state of one audit run across its passes.
struct Audit<'a> {
    decls: &'a Declarations,
    observer: &'a Observer,
    repair: bool,
    /// Whether rows are cross-checked against Microsoft's access drift report.
    drift_report: bool,
    settings: EngineSettings,
    assignments: Vec<AssignmentEval>,
    guards: Vec<GuardEval>,
    /// The shared reprocess histories of this run ([`engine::ledger`]): the same rule as
    /// the controller's, so a guard never reprocesses what a declaration (or another guard)
    /// already did, and what audit reports is what the operator would do.
    ledger: Ledger,
    /// The connection's `spec.safety` (none for the flags' connection).
    safety_spec: Option<SafetySpec>,
    /// `--acknowledge-mass-drift`.
    acknowledge_mass_drift: bool,
    /// What the safety rails read: target accounts, respected groups.
    safety: SafetyReads,
    /// Who removed what, looked up only while actors are respected.
    attribution: Attributor,
}

/// What the safety rails decided for one declaration in a pass.
struct Rails {
    policy: engine::SafetyPolicy,
    mass_drift: Option<engine::MassDriftHold>,
}

/// The latest evaluation of one declared assignment.
struct AssignmentEval {
    row: Row,
    /// What this run did for the declaration, kept across passes for the final report.
    taken: Option<RowAction>,
    status: Option<AccessPackageAssignmentStatus>,
    action: Option<Action>,
    in_flight: bool,
    /// Its repair transaction while its write is to be sent (the claim rolls back if it is
    /// not); the same protocol as the controller's (`engine::transaction`).
    tx: Option<Transaction<engine::Plan, Ledger>>,
    /// A Graph failure that kept it from being observed, to tell one that hit every row.
    failure: Option<GraphFailure>,
}

/// The run's repair ledger, shared by every declaration's and guard's claim.
type Ledger = Rc<RefCell<RepairLedger>>;

/// What a declaration carries from one pass to the next: its status and what the run did.
type PreviousAssignment = (Option<AccessPackageAssignmentStatus>, Option<RowAction>);

/// The latest evaluation of one guard.
struct GuardEval {
    rows: Vec<Row>,
    status: Option<AccessPackageGuardStatus>,
    to_reprocess: Vec<String>,
    /// Assignments this run reprocessed, to wait for.
    reprocessed: BTreeSet<String>,
    /// Reprocesses Graph refused for good in this run, with its answer: reported on their
    /// row until the run ends (the attempt stays counted, as in the controller).
    refused: BTreeMap<String, String>,
    in_flight: bool,
    /// Its repair transaction while reprocesses are to be sent.
    tx: Option<Transaction<engine::GuardPlan, Ledger>>,
    /// A Graph failure that kept it from being observed, to tell one that hit every row.
    failure: Option<GraphFailure>,
}

/// A Graph failure of one observation: `key` is its kind (and Graph's code), equal for
/// two rows that failed the same way; `message` says it for the human.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GraphFailure {
    key: String,
    message: String,
}

impl GraphFailure {
    fn of_error(err: &GraphError) -> Self {
        Self {
            key: format!("{}:{}", err.kind(), err.code().unwrap_or_default()),
            message: err.to_string(),
        }
    }

    /// A refused read is reported as a resolution failure (`Forbidden`) naming the field;
    /// the field differs between rows, the refusal does not.
    fn of_resolve(failure: &engine::ResolveFailure) -> Option<Self> {
        (failure.kind == engine::ResolveFailureKind::Forbidden).then(|| {
            let message = failure
                .message
                .split_once(": ")
                .map_or(failure.message.as_str(), |(_, rest)| rest);
            Self {
                key: "forbidden".into(),
                message: message.to_string(),
            }
        })
    }
}

impl<'a> Audit<'a> {
    fn new(decls: &'a Declarations, observer: &'a Observer, repair: bool) -> Self {
        Self {
            decls,
            observer,
            repair,
            drift_report: false,
            settings: EngineSettings::default(),
            assignments: Vec::new(),
            guards: Vec::new(),
            ledger: Rc::default(),
            safety_spec: None,
            acknowledge_mass_drift: false,
            safety: SafetyReads::default(),
            attribution: Attributor::new(Default::default()),
        }
    }

    /// The safety policy of each declaration, each guard's after them (one read per
    /// respected group per run, shared).
    async fn policies(&self) -> (Vec<engine::SafetyPolicy>, Vec<engine::SafetyPolicy>) {
        let graph = self.observer.graph();
        let conn = self.safety_spec.as_ref();
        let mut assignments = Vec::with_capacity(self.decls.assignments.len());
        for (_, apa) in &self.decls.assignments {
            assignments.push(
                self.safety
                    .policy(graph, conn, apa.spec.safety.as_deref())
                    .await,
            );
        }
        let mut guards = Vec::with_capacity(self.decls.guards.len());
        for (_, g) in &self.decls.guards {
            guards.push(
                self.safety
                    .policy(graph, conn, g.spec.safety.as_ref())
                    .await,
            );
        }
        (assignments, guards)
    }

    /// The mass-drift breaker over this pass's declarations: every drifted declaration of a
    /// package counts against the package's delivered assignments (as Graph lists them)
    /// before anything is sent, so a mass removal stops the run's repairs as a whole.
    fn breaker(
        &self,
        observed: &[Result<AssignmentObservation, GraphError>],
        policies: Vec<engine::SafetyPolicy>,
        now: jiff::Timestamp,
    ) -> Vec<Rails> {
        let mut board = engine::MassDriftBoard::default();
        if self.acknowledge_mass_drift {
            board.acknowledge_all();
        }
        let drifted = |o: &AssignmentObservation| -> Option<(String, String, String, usize)> {
            let ids = o.resolved.as_ref().ok()?;
            let a = o
                .assignment
                .as_ref()
                .filter(|a| a.state == AssignmentState::Delivered)?;
            let missing = o.resources().iter().any(|r| {
                o.snapshot.check(&r.kind, &ids.target_object_id) == ResourceState::Missing
            });
            let view = o.view.as_ref()?;
            let delivered = view
                .assignments
                .iter()
                .filter(|a| a.state == AssignmentState::Delivered)
                .count();
            missing.then(|| {
                (
                    ids.access_package_id.clone(),
                    view.name().to_string(),
                    a.id.clone(),
                    delivered,
                )
            })
        };
        let found: Vec<Option<(String, String, String, usize)>> = observed
            .iter()
            .map(|o| o.as_ref().ok().and_then(drifted))
            .collect();
        for (f, policy) in found.iter().zip(&policies) {
            if let Some((package, _, assignment, delivered)) = f {
                board.record(
                    &policy.breaker,
                    package,
                    [assignment.as_str()],
                    *delivered,
                    now,
                );
            }
        }
        found
            .into_iter()
            .zip(policies)
            .map(|(f, policy)| Rails {
                mass_drift: f
                    .filter(|_| policy.breaker.enabled)
                    .and_then(|(package, name, _, _)| board.hold(&policy.breaker, &package, &name)),
                policy,
            })
            .collect()
    }

    fn rows(&self) -> Vec<Row> {
        self.assignments
            .iter()
            .map(|a| a.row.clone())
            .chain(self.guards.iter().flat_map(|g| g.rows.iter().cloned()))
            .collect()
    }

    /// The failure, when every declaration failed to be observed in the same way
    /// (credentials refused mid-run, Graph unreachable, a permission every read needs).
    fn common_failure(&self) -> Option<String> {
        let mut failures = self
            .assignments
            .iter()
            .map(|a| a.failure.as_ref())
            .chain(self.guards.iter().map(|g| g.failure.as_ref()));
        let first = failures.next()??;
        failures
            .all(|f| f.is_some_and(|f| f.key == first.key))
            .then(|| format!("{} (every declaration failed this way)", first.message))
    }

    fn in_flight_count(&self) -> usize {
        self.assignments.iter().filter(|a| a.in_flight).count()
            + self.guards.iter().filter(|g| g.in_flight).count()
    }

    fn in_flight(&self) -> bool {
        self.in_flight_count() > 0
    }

    /// One verification pass over every declaration: the same observation as the
    /// controller's ([`redeliver::observe::observe_assignment`], [`redeliver::observe::observe_guard`]),
    /// with every read shared within the pass (each package and each promised resource read
    /// once), then the same plan.
    /// One observation and evaluation of every declaration and guard. The Graph requests
    /// keep the order they always had: the declarations' reads, the drift report, the
    /// safety policies, attribution, the declarations' accounts, then the guards.
    async fn pass(&mut self) {
        self.roll_back_unsent();
        let now = jiff::Timestamp::now();
        let previous = self.previous_assignments();
        let mut observed = self.observe_assignments(&previous).await;
        let drift_notes = self.assignment_drift_notes(&observed).await;
        // Every guard at once: each package's assignment pages are a chain of round trips,
        // so packages read a few at a time would leave Graph idle behind that latency.
        // What bounds the requests in flight is the client's own limit
        // (`--graph-concurrency`, shared with the throttling gates), not how many guards
        // wait for it; guards are few (one per package) and their views are held for the
        // pass anyway. Declarations come first, as before, so the requests a pass makes
        // keep their order (the guards mostly reuse what the declarations read).
        let (policies, guard_policies) = self.policies().await;
        self.attribute(&mut observed, &policies, &previous).await;
        let rails = self.breaker(&observed, policies, now);
        self.confirm_assignment_targets(&mut observed, &previous, &rails, now)
            .await;
        let guards_observed = self.observe_guards(&guard_policies, now).await;
        let guard_notes = self.guard_drift_notes(&guards_observed).await;
        self.assignments = self.evaluate_assignments(observed, previous, drift_notes, rails, now);
        self.guards = self.evaluate_guards(guards_observed, guard_notes, guard_policies, now);
    }

    /// What the last pass claimed and did not send (a report-only run's "would reprocess")
    /// rolls back before this pass plans.
    fn roll_back_unsent(&mut self) {
        for e in &mut self.assignments {
            e.tx = None;
        }
        for g in &mut self.guards {
            g.tx = None;
        }
    }

    /// Each declaration's status and action from the last pass (none on the first).
    fn previous_assignments(&self) -> Vec<PreviousAssignment> {
        if self.assignments.is_empty() {
            vec![(None, None); self.decls.assignments.len()]
        } else {
            self.assignments
                .iter()
                .map(|a| (a.status.clone(), a.taken.clone()))
                .collect()
        }
    }

    /// Reads every declaration, as many at once as the client may send.
    async fn observe_assignments(
        &self,
        previous: &[PreviousAssignment],
    ) -> Vec<Result<AssignmentObservation, GraphError>> {
        let observer = self.observer;
        futures::stream::iter(self.decls.assignments.iter().zip(previous))
            .map(|((_, apa), (status, _))| observe_assignment(observer, &apa.spec, status.as_ref()))
            .buffered(observer.concurrency())
            .collect()
            .await
    }

    /// The access drift report's notes for each declaration (none unless asked for).
    async fn assignment_drift_notes(
        &self,
        observed: &[Result<AssignmentObservation, GraphError>],
    ) -> Vec<Vec<String>> {
        // The report is read once per catalog (the observer's cache), so one at a time is
        // as cheap as all at once.
        let mut drift_notes = Vec::with_capacity(observed.len());
        for o in observed {
            drift_notes.push(match o {
                Ok(o) if self.drift_report => {
                    redeliver::observe::drift_report_notes(self.observer, o)
                        .await
                        .notes
                }
                _ => Vec::new(),
            });
        }
        drift_notes
    }

    /// Looks up who removed what, for the declarations whose policy respects some actors.
    async fn attribute(
        &self,
        observed: &mut [Result<AssignmentObservation, GraphError>],
        policies: &[engine::SafetyPolicy],
        previous: &[PreviousAssignment],
    ) {
        for ((o, policy), (status, _)) in observed.iter_mut().zip(policies).zip(previous) {
            if let Ok(o) = o
                && !policy.respected.is_empty()
            {
                attribute_drift(
                    &self.attribution,
                    self.observer.graph(),
                    o,
                    status.as_ref(),
                    policy,
                )
                .await;
            }
        }
    }

    /// Reads every guard's package at once, and with `--reprocess` the accounts of what
    /// each found drifted.
    async fn observe_guards(
        &self,
        guard_policies: &[engine::SafetyPolicy],
        now: jiff::Timestamp,
    ) -> Vec<Result<GuardObservation, GraphError>> {
        let mut guards_observed: Vec<Result<GuardObservation, GraphError>> =
            futures::future::join_all(
                self.decls
                    .guards
                    .iter()
                    .map(|(_, guard)| observe_guard(self.observer, &guard.spec)),
            )
            .await;
        // A guard may find thousands of drifts: their accounts are read only when the run
        // repairs (a report-only run says "would reprocess" for them, as the controller
        // would after confirming each account). Declarations are few, so even a report-only
        // run confirms theirs and shows a hold as it is.
        if self.repair {
            self.confirm_guard_targets(&mut guards_observed, guard_policies, now)
                .await;
        }
        guards_observed
    }

    /// The access drift report's notes for each guard, by assignment id (none unless
    /// asked for).
    async fn guard_drift_notes(
        &self,
        guards_observed: &[Result<GuardObservation, GraphError>],
    ) -> Vec<BTreeMap<String, Vec<String>>> {
        let mut guard_notes = Vec::with_capacity(guards_observed.len());
        for o in guards_observed {
            guard_notes.push(match o {
                Ok(o) if self.drift_report => guard_row_notes(self.observer, o).await,
                _ => BTreeMap::new(),
            });
        }
        guard_notes
    }

    /// Evaluates every declaration on what this pass read, with its drift report notes
    /// and what the run already did for it.
    fn evaluate_assignments(
        &self,
        observed: Vec<Result<AssignmentObservation, GraphError>>,
        previous: Vec<PreviousAssignment>,
        drift_notes: Vec<Vec<String>>,
        rails: Vec<Rails>,
        now: jiff::Timestamp,
    ) -> Vec<AssignmentEval> {
        self.decls
            .assignments
            .iter()
            .zip(observed)
            .zip(previous)
            .zip(drift_notes)
            .zip(rails)
            .map(
                |(((((origin, apa), observed), (previous, taken)), notes), rails)| {
                    let mut eval = self.evaluate_assignment(
                        origin,
                        apa,
                        observed,
                        previous.as_ref(),
                        &rails,
                        now,
                    );
                    if !notes.is_empty() {
                        if let Some(status) = eval.status.as_mut() {
                            engine::note_on_delivered(&mut status.conditions, &notes);
                        }
                        // A delivered row shows no message otherwise: the note must show.
                        let extra = notes.join("; ");
                        eval.row.message = if eval.row.message.is_empty() {
                            extra
                        } else {
                            format!("{}; {extra}", eval.row.message)
                        };
                    }
                    // Once repaired, say what was done rather than "none".
                    if let Some(taken) = taken {
                        if matches!(
                            eval.action,
                            None | Some(Action::None) | Some(Action::Wait { .. })
                        ) {
                            eval.row.action = taken.clone();
                        }
                        eval.taken = Some(taken);
                    }
                    eval
                },
            )
            .collect()
    }

    /// Evaluates every guard on what this pass read, carrying what the run already
    /// reprocessed or was refused, and puts each drift report note on its row.
    fn evaluate_guards(
        &self,
        guards_observed: Vec<Result<GuardObservation, GraphError>>,
        guard_notes: Vec<BTreeMap<String, Vec<String>>>,
        guard_policies: Vec<engine::SafetyPolicy>,
        now: jiff::Timestamp,
    ) -> Vec<GuardEval> {
        type Carried = (
            Option<AccessPackageGuardStatus>,
            BTreeSet<String>,
            BTreeMap<String, String>,
        );
        let previous: Vec<Carried> = if self.guards.is_empty() {
            vec![(None, BTreeSet::new(), BTreeMap::new()); self.decls.guards.len()]
        } else {
            self.guards
                .iter()
                .map(|g| (g.status.clone(), g.reprocessed.clone(), g.refused.clone()))
                .collect()
        };
        self.decls
            .guards
            .iter()
            .zip(guards_observed)
            .zip(previous)
            .zip(guard_notes)
            .zip(guard_policies)
            .map(
                |(
                    ((((origin, guard), observed), (previous, reprocessed, refused)), notes),
                    policy,
                )| {
                    let mut eval = self.evaluate_guard(
                        origin,
                        guard,
                        observed,
                        previous.as_ref(),
                        (reprocessed, refused),
                        &policy,
                        now,
                    );
                    // A drifted assignment's row carries its own notes; the guard's summary
                    // row the rest (assignments without a row, the report's unavailability).
                    let mut notes = notes;
                    let add = |row: &mut Row, found: Vec<String>| {
                        let extra = found.join("; ");
                        row.message = if row.message.is_empty() {
                            extra
                        } else {
                            format!("{}; {extra}", row.message)
                        };
                    };
                    for row in &mut eval.rows {
                        if let Some(found) =
                            row.assignment_id.as_deref().and_then(|id| notes.remove(id))
                        {
                            add(row, found);
                        }
                    }
                    let rest: Vec<String> = notes.into_values().flatten().collect();
                    if !rest.is_empty()
                        && let Some(summary) =
                            eval.rows.iter_mut().find(|r| r.assignment_id.is_none())
                    {
                        add(summary, rest);
                    }
                    eval
                },
            )
            .collect()
    }

    fn evaluate_assignment(
        &self,
        origin: &Origin,
        apa: &AccessPackageAssignment,
        observed: Result<AssignmentObservation, GraphError>,
        previous: Option<&AccessPackageAssignmentStatus>,
        rails: &Rails,
        now: jiff::Timestamp,
    ) -> AssignmentEval {
        let declaration = declaration_name(&apa.metadata, origin);
        let target_label = apa.spec.target.label();
        let package_label = apa.spec.access_package.label();
        let observed = match observed {
            Ok(o) => o,
            Err(err) => {
                return AssignmentEval {
                    failure: Some(GraphFailure::of_error(&err)),
                    row: error_row(declaration, target_label, package_label, err.to_string()),
                    taken: None,
                    status: previous.cloned(),
                    action: None,
                    in_flight: false,
                    tx: None,
                };
            }
        };
        let failure = observed
            .resolved
            .as_ref()
            .err()
            .and_then(GraphFailure::of_resolve);
        let who = format!("AccessPackageAssignment {declaration}");
        let (plan, claim) = Claim::plan(self.ledger.clone(), |l| {
            self.plan_assignment(apa, &observed, previous, rails, l, &who, now)
        });
        let action_text = describe_action(&plan.action, self.repair);
        let in_flight = engine::conditions::is_true(
            &plan.status.conditions,
            engine::conditions::ConditionType::Reconciling,
        );
        let package = observed
            .view
            .as_ref()
            .map(|v| v.name().to_string())
            .unwrap_or(package_label);
        AssignmentEval {
            row: row_from_status(
                declaration,
                target_label,
                package,
                &plan.status,
                action_text,
            ),
            taken: None,
            status: Some(plan.status.clone()),
            action: Some(plan.action.clone()),
            in_flight,
            tx: Some(Transaction::begin(plan, claim, previous.cloned(), || {
                uuid::Uuid::new_v4().to_string()
            })),
            failure,
        }
    }

    /// The engine's plan for one declaration (as the controller plans it).
    #[allow(clippy::too_many_arguments)]
    fn plan_assignment(
        &self,
        apa: &AccessPackageAssignment,
        observed: &AssignmentObservation,
        previous: Option<&AccessPackageAssignmentStatus>,
        rails: &Rails,
        ledger: &RepairLedger,
        who: &str,
        now: jiff::Timestamp,
    ) -> engine::Plan {
        engine::plan_assignment(
            &engine::AssignmentInput {
                generation: apa.metadata.generation,
                spec: &apa.spec,
                previous,
                reprocess_annotation: apa
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(redeliver::api::REPROCESS_ANNOTATION))
                    .map(String::as_str),
                resolved: observed.resolved.clone(),
                assignment: observed.assignment.as_ref(),
                latest_request: observed.latest_request.as_ref(),
                resources: observed.resources(),
                snapshot: &observed.snapshot,
                settings: &self.settings,
                ledger,
                who,
                operator_report_only: false,
                safety: &rails.policy,
                mass_drift: rails.mass_drift.as_ref(),
            },
            now,
        )
    }

    /// The engine's sweep of one guard (as the controller sweeps it).
    #[allow(clippy::too_many_arguments)]
    fn plan_guard(
        &self,
        guard: &AccessPackageGuard,
        observed: &GuardObservation,
        previous: Option<&AccessPackageGuardStatus>,
        policy: &engine::SafetyPolicy,
        ledger: &RepairLedger,
        who: &str,
        now: jiff::Timestamp,
    ) -> engine::GuardPlan {
        let annotation = |key: &str| {
            guard
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(key))
                .map(String::as_str)
        };
        engine::plan_guard_sweep(
            &engine::GuardInput {
                generation: guard.metadata.generation,
                spec: &guard.spec,
                previous,
                resolved: observed.resolved.clone(),
                assignments: observed.assignments(),
                resources: observed.resources(),
                snapshot: &observed.snapshot,
                settings: &self.settings,
                ledger,
                who,
                reprocess_budget: None,
                operator_report_only: false,
                reprocess_annotation: annotation(redeliver::api::REPROCESS_ANNOTATION),
                safety: policy,
                mass_drift_ack: annotation(redeliver::api::MASS_DRIFT_ACK_ANNOTATION),
                mass_drift_acknowledged: self.acknowledge_mass_drift,
            },
            now,
        )
    }

    /// Reads, in one batch, the accounts of the declarations whose plans would grant
    /// something (a healthy declaration costs no read), and records them for the engine.
    async fn confirm_assignment_targets(
        &self,
        observed: &mut [Result<AssignmentObservation, GraphError>],
        previous: &[PreviousAssignment],
        rails: &[Rails],
        now: jiff::Timestamp,
    ) {
        let wanted: Vec<Option<String>> = {
            let ledger = self.ledger.borrow();
            self.decls
                .assignments
                .iter()
                .zip(observed.iter())
                .zip(previous)
                .zip(rails)
                .map(|((((_, apa), o), (status, _)), rails)| {
                    let o = o.as_ref().ok()?;
                    self.plan_assignment(apa, o, status.as_ref(), rails, &ledger, "", now)
                        .needs_account
                })
                .collect()
        };
        let targets = wanted
            .iter()
            .zip(rails)
            .filter_map(|(id, r)| id.clone().map(|id| (id, r.policy.hold_risky)));
        let accounts = self.confirm_all(targets).await;
        for (o, id) in observed.iter_mut().zip(wanted) {
            if let (Ok(o), Some(id)) = (o, id)
                && let Some(a) = accounts.account(&id)
            {
                o.snapshot.record_account(id, a.clone());
            }
        }
    }

    /// Reads every `(target, hold risky)` of a pass at once (one batched read per risk
    /// setting), into a snapshot that holds only accounts.
    async fn confirm_all(&self, targets: impl Iterator<Item = (String, bool)>) -> engine::Snapshot {
        let (mut plain, mut risky) = (Vec::new(), Vec::new());
        for (id, hold_risky) in targets {
            if hold_risky { &mut risky } else { &mut plain }.push(id);
        }
        let mut accounts = engine::Snapshot::new();
        for (ids, hold_risky) in [(plain, false), (risky, true)] {
            let policy = engine::SafetyPolicy {
                hold_risky,
                ..Default::default()
            };
            self.safety
                .confirm(self.observer.graph(), &policy, &mut accounts, &ids)
                .await;
        }
        accounts
    }

    /// The guards' counterpart of [`Audit::confirm_assignment_targets`].
    async fn confirm_guard_targets(
        &self,
        observed: &mut [Result<GuardObservation, GraphError>],
        policies: &[engine::SafetyPolicy],
        now: jiff::Timestamp,
    ) {
        let previous: Vec<Option<AccessPackageGuardStatus>> = if self.guards.is_empty() {
            vec![None; self.decls.guards.len()]
        } else {
            self.guards.iter().map(|g| g.status.clone()).collect()
        };
        let wanted: Vec<Vec<String>> = {
            let ledger = self.ledger.borrow();
            self.decls
                .guards
                .iter()
                .zip(observed.iter())
                .zip(&previous)
                .zip(policies)
                .map(|((((_, g), o), prev), policy)| match o {
                    Ok(o) => {
                        self.plan_guard(g, o, prev.as_ref(), policy, &ledger, "", now)
                            .needs_accounts
                    }
                    Err(_) => Vec::new(),
                })
                .collect()
        };
        let targets = wanted
            .iter()
            .zip(policies)
            .flat_map(|(ids, p)| ids.iter().map(|id| (id.clone(), p.hold_risky)));
        let accounts = self.confirm_all(targets).await;
        for (o, ids) in observed.iter_mut().zip(wanted) {
            if let Ok(o) = o {
                for id in ids {
                    if let Some(a) = accounts.account(&id) {
                        o.snapshot.record_account(id, a.clone());
                    }
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn evaluate_guard(
        &self,
        origin: &Origin,
        guard: &AccessPackageGuard,
        observed: Result<GuardObservation, GraphError>,
        previous: Option<&AccessPackageGuardStatus>,
        (reprocessed, refused): (BTreeSet<String>, BTreeMap<String, String>),
        policy: &engine::SafetyPolicy,
        now: jiff::Timestamp,
    ) -> GuardEval {
        let declaration = declaration_name(&guard.metadata, origin);
        let package_label = guard.spec.access_package.label();
        let observed = match observed {
            Ok(o) => o,
            Err(err) => {
                return GuardEval {
                    failure: Some(GraphFailure::of_error(&err)),
                    rows: vec![error_row(
                        declaration,
                        "(all assignments)".into(),
                        package_label,
                        err.to_string(),
                    )],
                    status: previous.cloned(),
                    to_reprocess: Vec::new(),
                    reprocessed,
                    refused,
                    in_flight: false,
                    tx: None,
                };
            }
        };
        let failure = observed
            .resolved
            .as_ref()
            .err()
            .and_then(GraphFailure::of_resolve);
        let view = observed.view.clone();
        let who = format!("AccessPackageGuard {declaration}");
        let (sweep, claim) = Claim::plan(self.ledger.clone(), |l| {
            self.plan_guard(guard, &observed, previous, policy, l, &who, now)
        });
        let ledger = self.ledger.borrow();
        let package = view
            .as_ref()
            .map(|v| v.name().to_string())
            .unwrap_or(package_label);
        let promised = view
            .as_ref()
            .map(|v| v.resources.iter().filter(|r| r.is_verifiable()).count())
            .unwrap_or(0);
        // In flight: reprocessed in this run, by this guard or by another covering object.
        let in_flight = sweep.status.assignments.reprocessing > 0;
        let rows = GuardRows {
            declaration: &declaration,
            package,
            promised,
            sweep: &sweep,
            ledger: &ledger,
            who: &who,
            reprocessed: &reprocessed,
            refused: &refused,
            repair: self.repair,
        }
        .rows();
        drop(ledger);
        GuardEval {
            rows,
            status: Some(sweep.status.clone()),
            to_reprocess: sweep.reprocess.clone(),
            reprocessed,
            refused,
            in_flight,
            tx: Some(Transaction::begin(sweep, claim, previous.cloned(), || {
                uuid::Uuid::new_v4().to_string()
            })),
            failure,
        }
    }

    /// Sends every write this pass planned, declarations' and guards' alike, coalesced
    /// into `$batch` requests (a guard may find thousands). Each write goes once: an
    /// assignment reprocessed earlier in this run is not reprocessed again, and two
    /// declarations asking for the same thing share one request (identical `adminAdd`s
    /// can wedge an assignment). The accepted reprocesses are recorded for this run.
    async fn write_in_batches(&mut self, progress: &Progress) -> WriteResults {
        let mut writes: Vec<(Write, String)> = Vec::new();
        let mut queued: BTreeSet<Write> = BTreeSet::new();
        let declared = self
            .assignments
            .iter()
            .filter_map(|e| e.tx.as_ref())
            .flat_map(|tx| tx.writes().iter().cloned());
        let swept = self.guards.iter().flat_map(|g| {
            g.tx.iter().flat_map(|tx| {
                tx.writes()
                    .iter()
                    .filter(|(w, _)| !sent_earlier(w, &g.reprocessed))
                    .cloned()
            })
        });
        // The ledger already keeps one reprocess per assignment; identical adminAdds of two
        // declarations are merged here.
        for (write, id) in declared.chain(swept) {
            if queued.insert(write.clone()) {
                writes.push((write, id));
            }
        }
        if writes.is_empty() {
            return WriteResults::new();
        }
        progress.say(&format!("sending {} write(s) to Graph", writes.len()));
        let outcomes = self
            .observer
            .graph()
            .write_many_traced(&writes, self.observer.concurrency())
            .await;
        writes.into_iter().map(|(w, _)| w).zip(outcomes).collect()
    }

    /// Carries out the planned actions (only with --reprocess). Returns how many writes
    /// Graph accepted.
    async fn act(&mut self, progress: &Progress) -> usize {
        if !self.repair {
            return 0;
        }
        let results = self.write_in_batches(progress).await;
        let done = results.values().filter(|r| r.is_ok()).count();
        self.record_assignment_results(&results);
        self.record_guard_results(&results);
        done
    }

    /// Puts each declaration's write outcome into its row, and through its transaction into
    /// its status and ledger claim.
    fn record_assignment_results(&mut self, results: &WriteResults) {
        let now = jiff::Timestamp::now();
        for eval in &mut self.assignments {
            let (Some(action), Some(mut tx)) = (eval.action.take(), eval.tx.take()) else {
                continue;
            };
            let Some(write) = action.write() else {
                continue;
            };
            let Some(result) = results.get(write) else {
                continue;
            };
            // A refusal that will not fix itself is recorded as Stalled (the attempt stays
            // counted), so a later pass neither waits for a repair that never started nor
            // hides the refusal behind "Reprocessing"; one that failed in transit claims
            // nothing and leaves the status as it was.
            tx.complete(
                vec![redeliver::repair::outcome_of(result)],
                Duration::ZERO,
                now,
            );
            eval.status = Some(tx.end_status().clone());
            let outcome = result.clone().map(|written| match (&action, written) {
                (_, Written::Requested(request)) => RowAction::Requested {
                    request_id: request.id,
                },
                (Action::Write(Write::ReprocessRequest { request_id }), Written::Accepted) => {
                    RowAction::ReprocessedRequest {
                        request_id: request_id.clone(),
                    }
                }
                (_, Written::Accepted) => RowAction::Reprocessed,
            });
            match outcome {
                Ok(text) => {
                    eval.row.action = text.clone();
                    eval.taken = Some(text);
                    eval.in_flight = true;
                }
                Err(err) => {
                    eval.in_flight = false;
                    eval.row.verdict = Verdict::Error;
                    eval.row.action = RowAction::Failed;
                    eval.row.message = err.to_string();
                }
            }
        }
    }

    /// Puts each guard's reprocess outcomes into its rows and ledger claims.
    fn record_guard_results(&mut self, results: &WriteResults) {
        let now = jiff::Timestamp::now();
        for guard in &mut self.guards {
            // The sweep's transaction: what Graph accepted stays claimed and in flight, a
            // refusal stays counted, what was not sent rolls back (as in the controller).
            if let Some(mut tx) = guard.tx.take() {
                let outcomes: Vec<WriteOutcome> = tx
                    .writes()
                    .iter()
                    .map(|(w, _)| {
                        if sent_earlier(w, &guard.reprocessed) {
                            WriteOutcome::Accepted { request_id: None }
                        } else {
                            results.get(w).map_or(
                                WriteOutcome::NotSent { retry_after: None },
                                redeliver::repair::outcome_of,
                            )
                        }
                    })
                    .collect();
                tx.complete(outcomes, Duration::ZERO, now);
                guard.status = Some(tx.end_status().clone());
            }
            let mut failed = 0usize;
            for assignment_id in std::mem::take(&mut guard.to_reprocess) {
                if guard.reprocessed.contains(&assignment_id) {
                    continue;
                }
                let Some(result) = results.get(&Write::ReprocessAssignment {
                    assignment_id: assignment_id.clone(),
                }) else {
                    continue;
                };
                let row = guard
                    .rows
                    .iter_mut()
                    .find(|r| r.assignment_id.as_deref() == Some(assignment_id.as_str()));
                match result {
                    Ok(_) => {
                        guard.reprocessed.insert(assignment_id.clone());
                        if let Some(row) = row {
                            row.action = RowAction::Reprocessed;
                        }
                    }
                    Err(err) => {
                        failed += 1;
                        if err.is_refusal() {
                            // Final: the attempt stays counted (as in the controller) and the
                            // row keeps saying so for the rest of the run.
                            guard.refused.insert(assignment_id.clone(), err.to_string());
                        }
                        if let Some(row) = row {
                            row.verdict = Verdict::Error;
                            row.action = RowAction::Failed;
                            row.message = format!("reprocess failed: {err}");
                        }
                    }
                }
            }
            if failed > 0
                && let Some(first) = guard.rows.first_mut()
            {
                first.verdict = Verdict::Error;
                first.message = format!(
                    "{failed} reprocess(es) failed; see the rows marked failed. {}",
                    first.message
                );
            }
            guard.in_flight = guard
                .rows
                .iter()
                .any(|r| matches!(r.action, RowAction::Reprocessed | RowAction::InFlightBy(_)));
        }
    }
}

/// Builds the report rows of one guard's sweep: a summary row, then one row per drifted
/// assignment the sweep found.
struct GuardRows<'a> {
    declaration: &'a str,
    package: String,
    /// Verifiable resources the package promises.
    promised: usize,
    sweep: &'a engine::GuardPlan,
    ledger: &'a RepairLedger,
    /// `AccessPackageGuard ns/name`, as the ledger names the guard.
    who: &'a str,
    reprocessed: &'a BTreeSet<String>,
    refused: &'a BTreeMap<String, String>,
    repair: bool,
}

impl GuardRows<'_> {
    fn rows(&self) -> Vec<Row> {
        std::iter::once(self.summary())
            .chain(self.sweep.drifted.iter().map(|d| self.drift(d)))
            .collect()
    }

    fn drift(&self, d: &engine::GuardDrift) -> Row {
        let by_other = self
            .ledger
            .get(&RepairKey::assignment(&d.assignment_id))
            .filter(|r| r.by != self.who)
            .map(|r| r.by.clone());
        let refusal = self.refused.get(&d.assignment_id);
        // Held by the account gate: "TargetDisabled: <what to do>" in the sweep's status.
        let held = self
            .sweep
            .status
            .drifted
            .iter()
            .find(|e| e.assignment_id == d.assignment_id)
            .and_then(|e| e.held.as_deref())
            .and_then(|h| h.split_once(": "))
            .and_then(|(reason, message)| Some((reason.parse().ok()?, message)));
        Row {
            declaration: self.declaration.to_string(),
            target: d.target.clone(),
            package: self.package.clone(),
            assignment_id: Some(d.assignment_id.clone()),
            graph_status: "Delivered".into(),
            present: self.promised.saturating_sub(d.missing.len()),
            promised: self.promised,
            verdict: if refusal.is_some() {
                Verdict::Error
            } else if held.is_some() {
                Verdict::Held
            } else {
                Verdict::Drifted
            },
            action: if refusal.is_some() {
                RowAction::Failed
            } else if let Some((reason, _)) = held {
                RowAction::Held(reason)
            } else if self.reprocessed.contains(&d.assignment_id) {
                RowAction::Reprocessed
            } else if self.sweep.reprocess.contains(&d.assignment_id)
                || (!self.repair && self.sweep.needs_accounts.contains(&d.target_object_id))
            {
                RowAction::Planned {
                    write: WriteKind::Reprocess,
                    sent: self.repair,
                }
            } else if let Some(by) = by_other {
                if self.repair {
                    RowAction::InFlightBy(by)
                } else {
                    // Nothing is sent in a report-only run: say who would send it.
                    RowAction::WouldBy(by)
                }
            } else {
                RowAction::ReportOnly
            },
            missing: d.missing.iter().map(|m| m.short_name()).collect(),
            message: refusal
                .map(|e| format!("reprocess failed: {e}"))
                .or_else(|| held.map(|(reason, m)| format!("{reason}: {m}")))
                .unwrap_or_default(),
        }
    }

    fn summary(&self) -> Row {
        let status = &self.sweep.status;
        let counts = &status.assignments;
        let stalled = engine::conditions::find(
            &status.conditions,
            engine::conditions::ConditionType::Stalled,
        )
        .filter(|c| c.status == engine::conditions::Status::True);
        Row {
            declaration: self.declaration.to_string(),
            target: format!("(all {} assignments)", counts.total),
            package: self.package.clone(),
            assignment_id: None,
            graph_status: "-".into(),
            present: usize::try_from(counts.delivered).unwrap_or(0),
            promised: usize::try_from(counts.total).unwrap_or(0),
            verdict: if !self.refused.is_empty() {
                Verdict::Error
            } else if stalled.is_some_and(|c| c.reason.parse().is_ok_and(engine::is_hold)) {
                Verdict::Held
            } else if stalled.is_some() {
                Verdict::Stalled
            } else if counts.drifted == 0 && counts.failed == 0 {
                Verdict::Delivered
            } else {
                Verdict::Drifted
            },
            action: RowAction::GuardSweep,
            missing: Vec::new(),
            message: match stalled {
                _ if !self.refused.is_empty() => format!(
                    "{} reprocess(es) refused by Graph; see the rows marked failed.",
                    self.refused.len()
                ),
                Some(c) => c.message.clone(),
                None => format!(
                    "{} delivered, {} drifted, {} failed, {} pending; {} unmanaged member(s)",
                    counts.delivered,
                    counts.drifted,
                    counts.failed,
                    counts.pending,
                    status.unmanaged_members.count
                ),
            },
        }
    }
}

/// Outcome of each write a pass sent (an outcome is shared by every declaration and guard
/// that asked for the same write).
type WriteResults = std::collections::HashMap<Write, Result<Written, redeliver::graph::GraphError>>;

/// Whether `write` is a reprocess of an assignment this run already reprocessed (it is not
/// sent again).
fn sent_earlier(write: &Write, reprocessed: &BTreeSet<String>) -> bool {
    matches!(write, Write::ReprocessAssignment { assignment_id } if reprocessed.contains(assignment_id))
}

fn declaration_name(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    origin: &Origin,
) -> String {
    let _ = origin;
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or("?")
    )
}

fn error_row(declaration: String, target: String, package: String, message: String) -> Row {
    Row {
        declaration,
        target,
        package,
        assignment_id: None,
        graph_status: "-".into(),
        present: 0,
        promised: 0,
        verdict: Verdict::Error,
        action: RowAction::None,
        missing: Vec::new(),
        message,
    }
}

fn describe_action(action: &Action, repair: bool) -> RowAction {
    let planned = |write| RowAction::Planned {
        write,
        sent: repair,
    };
    match action {
        Action::None => RowAction::None,
        Action::Write(Write::RequestAssignment { .. }) => planned(WriteKind::RequestAssignment),
        Action::Write(Write::ReprocessAssignment { .. }) => planned(WriteKind::Reprocess),
        Action::Write(Write::ReprocessRequest { .. }) => planned(WriteKind::ReprocessRequest),
        Action::Wait { reason } => RowAction::Wait(*reason),
        Action::GiveUp { reason } if engine::is_hold(*reason) => RowAction::Held(*reason),
        Action::GiveUp { reason } => RowAction::Blocked(*reason),
    }
}

/// Turns the engine's status into a report row: the Delivered and Stalled conditions decide
/// the verdict, so audit and `kubectl get apa` always agree.
/// The drift report's notes for a guard's rows, by assignment id; the key `""` holds a
/// note for every row (the report is unavailable).
async fn guard_row_notes(
    observer: &Observer,
    observed: &GuardObservation,
) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    let Some(catalog) = observed
        .view
        .as_ref()
        .and_then(|v| v.package.catalog.as_ref())
        .map(|c| c.id.clone())
    else {
        return out;
    };
    let report = match observer.access_drift(&catalog).await {
        Ok(report) => report,
        Err(why) => {
            out.insert(String::new(), vec![engine::drift_report_unavailable(&why)]);
            return out;
        }
    };
    for a in observed
        .assignments()
        .iter()
        .filter(|a| a.state == redeliver::graph::models::AssignmentState::Delivered)
    {
        let Some(target) = a.target.as_ref() else {
            continue;
        };
        let Some(id) = target.object_id.as_deref() else {
            continue;
        };
        let who = target.principal_name.as_deref().unwrap_or(id);
        let notes = engine::drift_report_disagreements(
            &report,
            observed.resources(),
            &observed.snapshot,
            id,
            who,
        );
        if !notes.is_empty() {
            out.insert(a.id.clone(), notes);
        }
    }
    out
}

fn row_from_status(
    declaration: String,
    target: String,
    package: String,
    status: &AccessPackageAssignmentStatus,
    action: RowAction,
) -> Row {
    let promised = status
        .resources
        .iter()
        .filter(|r| r.state != ResourceState::Unverifiable)
        .count();
    let present = status
        .resources
        .iter()
        .filter(|r| r.state == ResourceState::Present)
        .count();
    let missing: Vec<String> = status
        .resources
        .iter()
        .filter(|r| r.state == ResourceState::Missing)
        .map(ResourceStatus::short_name)
        .collect();
    use engine::conditions::{ConditionType, Reason, Status};
    let stalled = engine::conditions::find(&status.conditions, ConditionType::Stalled)
        .filter(|c| c.status == Status::True);
    let delivered = engine::conditions::find(&status.conditions, ConditionType::Delivered);
    let verdict = if let Some(s) = stalled {
        if s.reason.parse().is_ok_and(engine::is_hold) {
            Verdict::Held
        } else {
            Verdict::Stalled
        }
    } else {
        match delivered.map(|c| (c.status.parse(), c.reason.parse())) {
            Some((Ok(Status::True), _)) => Verdict::Delivered,
            Some((_, Ok(Reason::ResourcesMissing))) => Verdict::Drifted,
            Some((_, Ok(Reason::NotAssigned))) => Verdict::NotAssigned,
            Some((_, Ok(Reason::DeliveryFailed))) => Verdict::Failed,
            Some((_, Ok(Reason::Expired))) => Verdict::Expired,
            Some((_, Ok(Reason::AwaitingDelivery))) => Verdict::Pending,
            Some((Ok(Status::Unknown), _)) => Verdict::Unknown,
            _ => Verdict::Pending,
        }
    };
    let missing = if matches!(
        verdict,
        Verdict::Drifted | Verdict::Failed | Verdict::Stalled | Verdict::Held
    ) {
        missing
    } else {
        Vec::new()
    };
    let message = stalled
        .map(|c| {
            if verdict == Verdict::Held {
                format!("{}: {}", c.reason, c.message)
            } else {
                c.message.clone()
            }
        })
        .or_else(|| {
            delivered
                .filter(|c| c.status != engine::conditions::Status::True)
                .map(|c| c.message.clone())
        })
        .unwrap_or_default();
    Row {
        declaration,
        target,
        package,
        assignment_id: status.assignment_id.clone(),
        graph_status: status.graph_status.as_deref().unwrap_or("-").to_string(),
        present,
        promised,
        verdict,
        action,
        missing,
        message,
    }
}
