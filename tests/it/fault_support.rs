//! Shared helpers for the fault, input and security suites: start the simulator, run
//! `redeliver audit` as a real process against it, build clients, read the simulator's
//! request log. Each test file uses a subset, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use redeliver::graph::{GraphClient, GraphSettings};
use redeliver_sim::{FaultSpec, LogEntry, SimHandle, SimOptions};

/// Environment variables a developer's shell may carry that must not leak into a child run.
pub const CLEARED_ENV: [&str; 13] = [
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_AUTHORITY_HOST",
    "REDELIVER_GRAPH_URL",
    "REDELIVER_ARM_URL",
    "REDELIVER_USE_ACCESS_DRIFT_REPORT",
    "REDELIVER_CLIENT_SECRET_FILE",
    "REDELIVER_CA_FILE",
    "REDELIVER_GRAPH_TIMEOUT",
    "REDELIVER_GRAPH_MAX_RETRIES",
    "REDELIVER_GRAPH_CONCURRENCY",
];

/// How often `redeliver audit --reprocess` re-verifies while it waits in these tests: the
/// simulator's [`fast`] repairs land in 150 ms, so a re-verification a little later
/// usually finds them done.
pub const POLL_INTERVAL: &str = "250ms";

/// Fast background processing so repairs land within a test's patience.
pub fn fast() -> SimOptions {
    processing_after(Duration::from_millis(150))
}

/// The simulator's background processing (of requests and reprocesses alike) after
/// `delay`.
pub fn processing_after(delay: Duration) -> SimOptions {
    SimOptions {
        request_delay: delay,
        reprocess_delay: delay,
        ..SimOptions::default()
    }
}

/// The demo tenant accepting `assertion` as a federated credential and issuing tokens that
/// live one second, with a file holding the assertion (in the returned directory): each
/// token request reads the file again, as the kubelet rotates it.
pub async fn federated_demo(assertion: &str) -> (SimHandle, tempfile::TempDir, PathBuf) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut scenario = redeliver_sim::Scenario::demo();
    scenario.spec.client.assertion = Some(assertion.into());
    let sim = redeliver_sim::Simulator::start(
        scenario,
        SimOptions {
            token_lifetime: Duration::from_secs(1),
            ..SimOptions::fast()
        },
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, assertion).unwrap();
    (sim, dir, file)
}

/// A fault from its JSON form (the admin API's), so tests read like the README.
/// `redeliver sim` as its own process on a random loopback port, and the lines it prints
/// once its first line is out (the environment to reach it: `export` lines). The process
/// is killed when the child is dropped.
pub async fn standalone_sim() -> (
    tokio::process::Child,
    tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    String,
) {
    let mut sim = tokio::process::Command::new(env!("CARGO_BIN_EXE_redeliver"))
        .args(["sim", "--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = sim.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let first = next_line(&mut lines).await;
    (sim, lines, first)
}

/// The next line a standalone simulator prints, within 30 s.
pub async fn next_line(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) -> String {
    tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("sim prints its environment")
        .unwrap()
        .expect("sim keeps running")
}

pub fn fault(json: serde_json::Value) -> FaultSpec {
    serde_json::from_value(json).expect("a valid fault body")
}

/// Outcome of one `redeliver audit` process.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The `-o json` report.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is a JSON report ({e})\nstdout:\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    /// The final rows of the JSON report.
    pub fn rows(&self) -> Vec<serde_json::Value> {
        self.json()["rows"].as_array().cloned().unwrap_or_default()
    }
}

/// A `redeliver audit` command configured for `sim` with the given credentials.
pub fn audit_command(sim: &SimHandle, dir: &Path, extra: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_redeliver"));
    for var in CLEARED_ENV {
        cmd.env_remove(var);
    }
    cmd.envs(sim.graph_env())
        .env("NO_PROXY", "127.0.0.1,localhost")
        .arg("audit")
        .arg("--no-progress")
        .arg("-f")
        .arg(dir)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// `redeliver audit --reprocess --wait WAIT --poll-interval` [`POLL_INTERVAL`] against
/// `sim`, then `extra`.
pub fn reprocess_command(
    sim: &SimHandle,
    dir: &Path,
    wait: &str,
    extra: &[&str],
) -> tokio::process::Command {
    let mut args = vec![
        "--reprocess",
        "--wait",
        wait,
        "--poll-interval",
        POLL_INTERVAL,
    ];
    args.extend_from_slice(extra);
    audit_command(sim, dir, &args)
}

/// Runs `cmd` to completion (bounded: a hung audit fails the test instead of CI).
pub async fn run(mut cmd: tokio::process::Command) -> Run {
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("audit finishes within 90 s")
        .expect("the redeliver binary runs");
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        !run.stderr.contains("panicked"),
        "the audit process panicked:\n{}",
        run.stderr
    );
    run
}

/// `redeliver audit` against `sim` with `extra` arguments.
pub async fn audit(sim: &SimHandle, dir: &Path, extra: &[&str]) -> Run {
    run(audit_command(sim, dir, extra)).await
}

/// `redeliver audit -o json` against `sim` (with `--reprocess` in `extra`, also
/// `--poll-interval` [`POLL_INTERVAL`], which without it would be refused as a flag with no
/// effect): the
/// exit code, the decoded report and stderr.
pub async fn audit_json(
    sim: &SimHandle,
    dir: &Path,
    extra: &[&str],
) -> (i32, serde_json::Value, String) {
    let mut args = vec!["-o", "json"];
    if extra.contains(&"--reprocess") {
        args.extend(["--poll-interval", POLL_INTERVAL]);
    }
    args.extend_from_slice(extra);
    let run = audit(sim, dir, &args).await;
    let report = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("JSON report ({e}):\n{}\n{}", run.stdout, run.stderr));
    (run.code, report, run.stderr)
}

/// The engine's first-visit plan for one `AccessPackageAssignment` (namespace `ns`, name
/// `x`, generation 1), read through the one observation path audit and the controller use
/// (`observe_assignment`): the status it would write and what it would do.
pub async fn first_plan(
    observer: &redeliver::observe::Observer,
    ns: &str,
    package: &str,
    upn: &str,
) -> redeliver::engine::Plan {
    use redeliver::engine;
    let apa: redeliver::api::AccessPackageAssignment = serde_norway::from_str(&format!(
        "apiVersion: redeliver.dev/v1alpha1\nkind: AccessPackageAssignment\nmetadata: {{name: x, namespace: {ns}, generation: 1}}\nspec:\n  accessPackage: {{displayName: {package}}}\n  target: {{userPrincipalName: {upn}}}\n"
    ))
    .expect("a valid declaration");
    let mut observed = redeliver::observe::observe_assignment(observer, &apa.spec, None)
        .await
        .expect("the simulator answers");
    // The account gate's read, as the drivers make it before a grant.
    if let Ok(ids) = &observed.resolved {
        let target = ids.target_object_id.clone();
        confirm_target(observer, &mut observed.snapshot, &target).await;
    }
    plan_first_visit(
        &apa,
        &observed,
        &format!("AccessPackageAssignment {ns}/x"),
        &engine::EngineSettings::default(),
        jiff::Timestamp::now(),
    )
}

/// The engine's plan for a first visit of `apa` (no previous status, an empty repair
/// ledger, the default safety policy) over what `observed` read, as `who`.
pub fn plan_first_visit(
    apa: &redeliver::api::AccessPackageAssignment,
    observed: &redeliver::observe::AssignmentObservation,
    who: &str,
    settings: &redeliver::engine::EngineSettings,
    now: jiff::Timestamp,
) -> redeliver::engine::Plan {
    use redeliver::engine;
    engine::plan_assignment(
        &engine::AssignmentInput {
            generation: apa.metadata.generation,
            spec: &apa.spec,
            previous: None,
            reprocess_annotation: None,
            resolved: observed.resolved.clone(),
            assignment: observed.assignment.as_ref(),
            latest_request: observed.latest_request.as_ref(),
            resources: observed.resources(),
            snapshot: &observed.snapshot,
            settings,
            ledger: &engine::ledger::RepairLedger::new(),
            who,
            operator_report_only: false,
            safety: &redeliver::engine::SafetyPolicy::default(),
            mass_drift: None,
        },
        now,
    )
}

/// `conditions` hold `Stalled=True` for `ReprocessExhausted`, naming `resource` (what the
/// reprocesses never brought back).
pub fn assert_reprocess_exhausted(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    resource: &str,
) {
    use redeliver::engine::conditions::{ConditionType, Reason, find};
    let stalled = find(conditions, ConditionType::Stalled).expect("Stalled condition");
    assert_eq!(stalled.status, "True");
    assert_eq!(stalled.reason, Reason::ReprocessExhausted);
    assert!(stalled.message.contains(resource), "{}", stalled.message);
}

/// One `AccessPackageAssignment` document.
pub fn declaration(name: &str, package: &str, upn: &str, reprocess: &str) -> String {
    format!(
        "apiVersion: redeliver.dev/v1alpha1\nkind: AccessPackageAssignment\nmetadata: {{name: {name}, namespace: access}}\nspec:\n  accessPackage: {{displayName: {package}}}\n  target: {{userPrincipalName: {upn}}}\n{reprocess}---\n"
    )
}

/// One `AccessPackageGuard` document in Enforce mode.
pub fn guard(name: &str, package: &str) -> String {
    format!(
        "apiVersion: redeliver.dev/v1alpha1\nkind: AccessPackageGuard\nmetadata: {{name: {name}, namespace: access}}\nspec:\n  accessPackage: {{displayName: {package}}}\n  mode: Enforce\n---\n"
    )
}

/// Graph arguments for `sim` with its own credentials.
pub fn args_for(sim: &SimHandle) -> GraphSettings {
    GraphSettings::with_defaults().pointed_at(redeliver_bench::endpoint(sim))
}

/// A Graph client for `sim` with its own credentials.
pub fn graph_client(sim: &SimHandle) -> Result<GraphClient, redeliver::graph::GraphError> {
    GraphClient::new(args_for(sim).validate()?)
}

/// A client for `sim` with `tweak` applied to the arguments.
pub fn client_with(sim: &SimHandle, tweak: impl FnOnce(&mut GraphSettings)) -> GraphClient {
    let mut args = args_for(sim);
    tweak(&mut args);
    GraphClient::new(args.validate().expect("valid config")).expect("client builds")
}

/// A client for `sim` configured as by hand (tenant, client, authority and Graph URL;
/// no ARM endpoint or CA file): signing in with the federated assertion in `token_file`,
/// or with the client secret without one.
pub fn minimal_client(sim: &SimHandle, token_file: Option<&Path>) -> GraphClient {
    let mut args = GraphSettings {
        tenant_id: Some(sim.tenant_id.clone()),
        client_id: Some(sim.client_id.clone()),
        authority_host: sim.authority_host.clone(),
        graph_url: sim.graph_url.clone(),
        ..GraphSettings::with_defaults()
    };
    match token_file {
        Some(file) => args.federated_token_file = Some(file.to_path_buf()),
        None => args.client_secret = Some(redeliver::graph::Secret::new(sim.client_secret.clone())),
    }
    GraphClient::new(args.validate().unwrap()).unwrap()
}

/// The client's throttling scope for a logged path (mirrors the client: Graph throttles
/// entitlement management, the directory and the token endpoint separately).
pub fn scope_of(path: &str) -> &'static str {
    if path.contains("/identityGovernance/") {
        "entitlement"
    } else if path.contains("/oauth2/") {
        "token"
    } else {
        "directory"
    }
}

/// Requests to Graph (`/v1.0`, not the admin API), in arrival order.
pub fn graph_requests(sim: &SimHandle) -> Vec<LogEntry> {
    let mut log: Vec<LogEntry> = sim
        .request_log()
        .into_iter()
        .filter(|e| e.path.starts_with("/v1.0/") || e.path.contains("/oauth2/"))
        .collect();
    log.sort_by_key(|e| e.time_ms);
    log
}

/// Assignment reprocess calls per assignment id, from the simulator's log; with
/// `accepted_only`, only those Graph accepted (2xx), i.e. the reprocesses that happened.
pub fn reprocess_calls(sim: &SimHandle, accepted_only: bool) -> BTreeMap<String, usize> {
    let mut calls = BTreeMap::new();
    for e in sim.request_log() {
        if e.method != "POST" || !e.path.ends_with("/reprocess") {
            continue;
        }
        if accepted_only && !(200..300).contains(&e.status) {
            continue;
        }
        if let Some(rest) = e
            .path
            .strip_prefix("/v1.0/identityGovernance/entitlementManagement/assignments/")
        {
            let id = rest.trim_end_matches("/reprocess").to_string();
            *calls.entry(id).or_default() += 1;
        }
    }
    calls
}

/// Reprocess calls (accepted or not) of assignment `id`, whatever case its id is logged in.
pub fn reprocess_calls_of(sim: &SimHandle, id: &str) -> usize {
    reprocess_calls(sim, false)
        .into_iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(id))
        .map(|(_, n)| n)
        .sum()
}

/// Writes an `AccessPackageAssignment` of `package` for each of `users` (named after the
/// user, target `USER@fabrikam.com`) in `namespace`, as `all.yaml` in `dir`.
pub fn fabrikam_declarations(
    dir: &Path,
    namespace: &str,
    package: &str,
    users: &[impl std::fmt::Display],
) {
    let docs: String = users
        .iter()
        .map(|u| {
            format!(
                "apiVersion: redeliver.dev/v1alpha1\nkind: AccessPackageAssignment\nmetadata: {{name: {u}, namespace: {namespace}}}\nspec:\n  accessPackage: {{displayName: {package}}}\n  target: {{userPrincipalName: {u}@fabrikam.com}}\n---\n"
            )
        })
        .collect();
    std::fs::write(dir.join("all.yaml"), docs).unwrap();
}

/// The row of declaration `declaration` (`namespace/name`) in a JSON report.
pub fn report_row<'a>(report: &'a serde_json::Value, declaration: &str) -> &'a serde_json::Value {
    report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["declaration"] == declaration)
        .unwrap_or_else(|| panic!("row {declaration} in {report}"))
}

/// Writes `docs` as `decl.yaml` in a fresh directory.
pub fn declarations(docs: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("decl.yaml"), docs).expect("write declarations");
    dir
}

/// How the [`Proxy`] spoils a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spoil {
    /// `200` with an HTML page instead of JSON (a captive portal or a gateway's error page).
    NonJson,
    /// `200` with JSON cut off mid-document (complete as far as HTTP is concerned).
    TruncatedJson,
    /// Headers promise a body, half of it is sent, then the connection is dropped.
    DroppedMidBody,
    /// Graph's `404 Request_ResourceNotFound`, as if the object had just been deleted.
    NotFound,
    /// `200` whose streamed body (no `Content-Length`) never ends before 80 MiB.
    Endless,
}

struct Rule {
    method: Option<String>,
    path_contains: String,
    spoil: Spoil,
    remaining: usize,
}

/// A loopback HTTP proxy in front of the simulator that spoils selected responses, for
/// failures the simulator does not produce itself. Point a client's Graph URL and
/// authority host at [`Proxy::url`]; it rewrites the simulator's origin in bodies (so
/// `@odata.nextLink` stays on the proxy) and the token scope (so the simulator accepts it).
pub struct Proxy {
    pub url: String,
    rules: std::sync::Arc<std::sync::Mutex<Vec<Rule>>>,
    spoiled: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Proxy {
    /// Starts a proxy for `upstream` (the simulator's origin) on a free loopback port.
    pub async fn start(upstream: &str) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let own = format!("http://{}", listener.local_addr().unwrap());
        let rules = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let spoiled = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let ctx = ProxyCtx {
            upstream: upstream.trim_end_matches('/').to_string(),
            own: own.clone(),
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            rules: rules.clone(),
            spoiled: spoiled.clone(),
        };
        let app = axum::Router::new().fallback(proxy_forward).with_state(ctx);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Proxy {
            url: own,
            rules,
            spoiled,
        }
    }

    /// Spoils the next `count` responses whose path and query contain `path_contains`.
    pub fn spoil(&self, path_contains: &str, spoil: Spoil, count: usize) {
        self.rules.lock().unwrap().push(Rule {
            method: None,
            path_contains: path_contains.to_string(),
            spoil,
            remaining: count,
        });
    }

    /// Like [`Proxy::spoil`], for one HTTP method only. The request still reaches the
    /// simulator (and takes effect there); only the answer is spoiled.
    pub fn spoil_method(&self, method: &str, path_contains: &str, spoil: Spoil, count: usize) {
        self.rules.lock().unwrap().push(Rule {
            method: Some(method.to_string()),
            path_contains: path_contains.to_string(),
            spoil,
            remaining: count,
        });
    }

    /// How many responses were spoiled so far.
    pub fn spoiled(&self) -> usize {
        self.spoiled.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// What the [`Proxy`]'s handler shares: where to forward, its own origin (rewritten to the
/// upstream's in requests and back in answers), and the spoiling rules.
#[derive(Clone)]
struct ProxyCtx {
    upstream: String,
    own: String,
    http: reqwest::Client,
    rules: std::sync::Arc<std::sync::Mutex<Vec<Rule>>>,
    spoiled: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

async fn proxy_forward(State(ctx): State<ProxyCtx>, req: Request) -> Response {
    let path_q = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let spoil = {
        let mut rules = ctx.rules.lock().unwrap();
        let method = req.method().as_str().to_string();
        rules
            .iter_mut()
            .find(|r| {
                r.remaining > 0
                    && path_q.contains(&r.path_contains)
                    && r.method.as_deref().is_none_or(|m| m == method)
            })
            .map(|r| {
                r.remaining -= 1;
                r.spoil
            })
    };
    let method = req.method().clone();
    let headers = req.headers().clone();
    let body = axum::body::to_bytes(req.into_body(), usize::MAX)
        .await
        .unwrap_or_default();
    let own_enc: String = url::form_urlencoded::byte_serialize(ctx.own.as_bytes()).collect();
    let up_enc: String = url::form_urlencoded::byte_serialize(ctx.upstream.as_bytes()).collect();
    let body = String::from_utf8_lossy(&body)
        .replace(&own_enc, &up_enc)
        .replace(&ctx.own, &ctx.upstream);
    let mut up = ctx
        .http
        .request(method, format!("{}{}", ctx.upstream, path_q))
        .body(body);
    for (name, value) in headers.iter() {
        if name != "host" && name != "content-length" {
            up = up.header(name, value);
        }
    }
    let resp = match up.send().await {
        Ok(r) => r,
        Err(e) => {
            return Response::builder()
                .status(502)
                .body(Body::from(format!("proxy: {e}")))
                .unwrap();
        }
    };
    let status = resp.status();
    let mut builder = Response::builder().status(status);
    for (name, value) in resp.headers() {
        if name != "content-length" && name != "transfer-encoding" {
            builder = builder.header(name, value);
        }
    }
    let text = resp.text().await.unwrap_or_default();
    let text = text.replace(&ctx.upstream, &ctx.own);
    let Some(spoil) = spoil else {
        return builder.body(Body::from(text)).unwrap();
    };
    ctx.spoiled
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    spoiled_response(spoil, &text)
}

/// The response `spoil` makes of the simulator's answer `text`.
fn spoiled_response(spoil: Spoil, text: &str) -> Response {
    match spoil {
        Spoil::NonJson => Response::builder()
            .status(200)
            .header("content-type", "text/html")
            .body(Body::from("<html><body>Gateway says hello</body></html>"))
            .unwrap(),
        Spoil::TruncatedJson => Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(Body::from(text[..text.len() / 2].to_string()))
            .unwrap(),
        Spoil::NotFound => Response::builder()
            .status(404)
            .header("content-type", "application/json")
            .body(Body::from(
                serde_json::json!({"error": {
                    "code": "Request_ResourceNotFound",
                    "message": "Resource does not exist or one of its queried reference-property objects are not present."
                }})
                .to_string(),
            ))
            .unwrap(),
        Spoil::Endless => {
            let chunk = bytes::Bytes::from(vec![b' '; 1024 * 1024]);
            let stream = futures::stream::iter(
                (0..80).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
            );
            Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .body(Body::from_stream(stream))
                .unwrap()
        }
        Spoil::DroppedMidBody => {
            let half = bytes::Bytes::from(text[..text.len() / 2].to_string());
            let stream = futures::stream::iter(vec![
                Ok::<_, std::io::Error>(half),
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "proxy drops the connection",
                )),
            ]);
            Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .header("content-length", text.len().to_string())
                .body(Body::from_stream(stream))
                .unwrap()
        }
    }
}

/// A `MakeWriter` appending every formatted event to a shared buffer.
#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Runs `test` on a current-thread runtime under a trace-level subscriber that writes into
/// the [`Capture`] handed to `test`. One thread, so the simulator, the HTTP stack, kube and
/// the clients all log on it, under this subscriber.
pub fn under_trace_capture<F: Future<Output = ()>>(test: impl FnOnce(Capture) -> F) {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(capture.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(test(capture));
}

/// The account gate's read, as the drivers make it before a grant: records `target`'s
/// account (read from the simulator) in `snapshot`.
pub async fn confirm_target(
    observer: &redeliver::observe::Observer,
    snapshot: &mut redeliver::engine::Snapshot,
    target: &str,
) {
    redeliver::observe::safety::SafetyReads::default()
        .confirm(
            observer.graph(),
            &Default::default(),
            snapshot,
            &[target.to_string()],
        )
        .await;
}

/// Assignments in the one package of [`one_package`].
pub const ONE_PACKAGE_SIZE: usize = 1000;

/// One package of 1,000 delivered assignments promising one group (`syn-g0`), users
/// `user{i}@mass.com`: the mass-drift scenario.
pub fn one_package() -> redeliver_sim::SyntheticTenant {
    redeliver_sim::SyntheticTenant {
        tenant_name: "mass".into(),
        seed: 21,
        assignments: ONE_PACKAGE_SIZE,
        groups: 1,
        apps: 0,
        packages: 1,
        min_resources: 1,
        max_resources: 1,
        drift_every: 0,
        policies_per_package: 1,
    }
}
