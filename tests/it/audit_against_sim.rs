//! `redeliver audit` and the observation layer against the Graph simulator over real HTTP
//! on 127.0.0.1: request counts, repair bounds and permissions, measured from the
//! simulator's own request log.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use redeliver::api::AccessPackageAssignment;
use redeliver::engine::{self, Action, EngineSettings, Write};
use redeliver::graph::GraphClient;
use redeliver::observe::Observer;
use redeliver_sim::{Scenario, SimHandle, SimOptions, Simulator};

const CLEARED_ENV: [&str; 7] = [
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_AUTHORITY_HOST",
    "REDELIVER_GRAPH_URL",
    "REDELIVER_CLIENT_SECRET_FILE",
];

fn fast() -> SimOptions {
    SimOptions {
        request_delay: Duration::from_millis(200),
        reprocess_delay: Duration::from_millis(200),
        ..SimOptions::default()
    }
}

/// Runs the audit binary against `sim` and returns (exit code, stdout, stderr).
async fn audit(sim: &SimHandle, dir: &Path, extra: &[&str]) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_redeliver"));
    for var in CLEARED_ENV {
        cmd.env_remove(var);
    }
    cmd.envs(sim.graph_env())
        .env("NO_PROXY", "127.0.0.1,localhost")
        .arg("audit")
        .arg("-f")
        .arg(dir)
        .args(extra)
        .stdin(Stdio::null());
    let out = cmd.output().await.expect("the redeliver binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn declaration(name: &str, package: &str, upn: &str, reprocess: &str) -> String {
    format!(
        "apiVersion: redeliver.dev/v1alpha1\nkind: AccessPackageAssignment\nmetadata: {{name: {name}, namespace: access}}\nspec:\n  accessPackage: {{displayName: {package}}}\n  target: {{userPrincipalName: {upn}}}\n{reprocess}---\n"
    )
}

fn client_for(sim: &SimHandle) -> GraphClient {
    crate::fault_support::graph_client(sim).expect("client for the simulator")
}

#[tokio::test]
async fn auditing_200_assignments_sharing_3_groups_reads_each_group_once() {
    let sim = Simulator::start(Scenario::synthetic("fabrikam", 200, 1, 3, 0), fast())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let docs: String = (0..200)
        .map(|i| {
            declaration(
                &format!("user{i}"),
                "pkg-0",
                &format!("user{i}@fabrikam.com"),
                "",
            )
        })
        .collect();
    std::fs::write(dir.path().join("all.yaml"), docs).unwrap();
    sim.clear_request_log();

    let (code, stdout, stderr) = audit(&sim, dir.path(), &["-o", "json"]).await;
    assert_eq!(code, 0, "all delivered\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["summary"]["delivered"], 200);

    let members_reads = sim.count_requests("GET", "/v1.0/groups/");
    assert_eq!(
        members_reads, 3,
        "one members read per group, not per assignment"
    );
    let assignment_lists = sim.count_requests(
        "GET",
        "/v1.0/identityGovernance/entitlementManagement/assignments",
    );
    // One listing of the package's assignments: 200 items at Graph's default page size of
    // 100 is exactly two pages.
    assert_eq!(
        assignment_lists, 2,
        "the package's assignments are listed once (2 pages)"
    );
    // Every declared user holds an assignment of the package, which names them: no user
    // needs a read of its own (the controller's rule too, one observation for both).
    let user_lookups = sim.count_requests("GET", "/v1.0/users/");
    assert_eq!(
        user_lookups, 0,
        "users are found in the package's assignments"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn disabled_reprocess_mode_reports_drift_and_never_reprocesses() {
    let sim = Simulator::start(Scenario::demo(), fast()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("alice.yaml"),
        declaration(
            "alice-finance",
            "Finance Analysts",
            "alice@contoso.com",
            "  reprocess: {mode: Disabled}\n",
        ),
    )
    .unwrap();
    let (code, stdout, stderr) = audit(
        &sim,
        dir.path(),
        &[
            "--reprocess",
            "--poll-interval",
            crate::fault_support::POLL_INTERVAL,
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(code, 2, "drift remains\n{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["rows"][0]["verdict"], "Drifted");
    assert_eq!(report["summary"]["actionsTaken"], 0);
    assert_eq!(sim.count_requests("POST", "/v1.0/identityGovernance"), 0);
    assert!(!sim.is_member("fin-writers", "alice@contoso.com"));
    sim.shutdown().await;
}

#[tokio::test]
async fn forbidden_membership_read_names_the_missing_permission() {
    let sim = Simulator::start(Scenario::demo(), fast()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bob.yaml"),
        declaration("bob-finance", "Finance Analysts", "bob@contoso.com", ""),
    )
    .unwrap();
    let fault: redeliver_sim::FaultSpec = serde_json::from_value(serde_json::json!({
        "kind": "error", "status": 403, "pathPrefix": "/v1.0/groups", "count": 100
    }))
    .unwrap();
    sim.inject_fault(fault);
    let (code, stdout, stderr) = audit(&sim, dir.path(), &[]).await;
    assert_eq!(code, 1, "cannot verify → error\n{stdout}\n{stderr}");
    assert!(stdout.contains("GroupMember.Read.All"), "{stdout}");
    sim.shutdown().await;
}

#[tokio::test]
async fn max_attempts_bound_reprocess_that_never_lands() {
    let sim = Simulator::start(Scenario::demo(), fast()).await.unwrap();
    let fault: redeliver_sim::FaultSpec = serde_json::from_value(
        serde_json::json!({"kind": "silentReprocess", "durationMs": 600000}),
    )
    .unwrap();
    sim.inject_fault(fault);
    let observer = Observer::new(client_for(&sim), 4);
    let apa: AccessPackageAssignment = serde_norway::from_str(
        "apiVersion: redeliver.dev/v1alpha1\nkind: AccessPackageAssignment\nmetadata: {name: alice, namespace: access, generation: 1}\nspec:\n  accessPackage: {displayName: Finance Analysts}\n  target: {userPrincipalName: alice@contoso.com}\n  reprocess: {mode: Auto, maxAttempts: 2, cooldown: 5m}\n",
    )
    .unwrap();
    let settings = EngineSettings::default();
    let mut status = None;
    let mut now = jiff::Timestamp::now();
    let mut reprocessed = 0;
    // Far more passes than attempts, each past the cooldown: the engine must stop at 2.
    for _ in 0..6 {
        observer.refresh().await;
        let package_id = observer
            .resolve_package_id(&apa.spec.access_package)
            .await
            .unwrap();
        let view = observer.package_view(&package_id).await.unwrap();
        let target = observer.resolve_target(&apa.spec.target).await.unwrap();
        let mut snapshot = observer.snapshot(view.resources.iter()).await;
        crate::fault_support::confirm_target(&observer, &mut snapshot, &target).await;
        let assignment = view.assignment_for(&target);
        let plan = engine::plan_assignment(
            &engine::AssignmentInput {
                generation: Some(1),
                spec: &apa.spec,
                previous: status.as_ref(),
                reprocess_annotation: None,
                resolved: Ok(engine::ResolvedIds {
                    access_package_id: package_id.clone(),
                    access_package_name: view.package.display_name.clone(),
                    policy: Observer::resolve_policy(&view, None),
                    target_object_id: target.clone(),
                    target_name: None,
                }),
                assignment: assignment.as_ref(),
                latest_request: None,
                resources: &view.resources,
                snapshot: &snapshot,
                settings: &settings,
                ledger: &engine::ledger::RepairLedger::new(),
                who: "AccessPackageAssignment test/declaration",
                operator_report_only: false,
                safety: &redeliver::engine::SafetyPolicy::default(),
                mass_drift: None,
            },
            now,
        );
        if let Action::Write(Write::ReprocessAssignment { assignment_id }) = &plan.action {
            observer
                .graph()
                .reprocess_assignment(assignment_id)
                .await
                .unwrap();
            reprocessed += 1;
            // A reprocess that worked would have landed once the simulator settles.
            assert!(
                sim.settle(Duration::from_secs(10)).await,
                "the simulator settles"
            );
        }
        status = Some(plan.status);
        now += jiff::SignedDuration::from_secs(6 * 60);
    }
    let status = status.unwrap();
    assert_eq!(reprocessed, 2, "maxAttempts bounds the reprocess calls");
    assert_eq!(
        sim.count_requests(
            "POST",
            "/v1.0/identityGovernance/entitlementManagement/assignments/"
        ),
        2,
        "the simulator saw exactly two reprocess calls"
    );
    crate::fault_support::assert_reprocess_exhausted(&status.conditions, "fin-writers");
    sim.shutdown().await;
}

#[tokio::test]
async fn standalone_sim_then_repair_then_plain_audit_is_in_sync() {
    // `redeliver sim` as its own process, configured only by the export lines it prints.
    let (mut sim, mut lines, mut line) = crate::fault_support::standalone_sim().await;
    let mut env = Vec::new();
    loop {
        if let Some(rest) = line.strip_prefix("export ") {
            let (k, v) = rest.split_once('=').unwrap();
            env.push((k.to_string(), v.trim_matches(['\'', '"']).to_string()));
        }
        if env.len() == 5 {
            break;
        }
        line = crate::fault_support::next_line(&mut lines).await;
    }
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let run = |extra: &'static [&'static str]| {
        let env = env.clone();
        let examples = examples.clone();
        async move {
            let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_redeliver"));
            for var in CLEARED_ENV {
                cmd.env_remove(var);
            }
            cmd.envs(env)
                .env("NO_PROXY", "127.0.0.1,localhost")
                .arg("audit")
                .arg("-f")
                .arg(examples)
                .args(extra);
            let out = cmd.output().await.unwrap();
            (
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    // Everything converges but frank's access, held because his account is disabled: not
    // delivered (exit 2), and the same answer on every run.
    let (code, out, err) = run(&["--reprocess", "--wait", "60s", "--poll-interval", "250ms"]).await;
    assert_eq!(code, 2, "repair converges\n{out}\n{err}");
    assert!(
        out.contains("0 drifted, 0 not assigned, 1 held, 0 other, 0 errors"),
        "{out}"
    );
    let (code, out, err) = run(&[]).await;
    assert_eq!(code, 2, "a plain audit afterwards is in sync\n{out}\n{err}");
    assert!(!out.contains("Drifted"), "{out}");
    assert!(out.contains("1 held"), "{out}");
    sim.kill().await.ok();
}

#[tokio::test]
async fn a_repair_sends_its_writes_in_one_batch_and_an_identical_request_once() {
    let sim = Simulator::start(Scenario::demo(), fast()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // alice drifted (reprocess); carol and bob have no assignment where declared
    // (adminAdd); carol's Finance assignment is declared twice under two names, which
    // must still be one request: identical adminAdds can wedge an assignment.
    let docs = [
        declaration("alice-finance", "Finance Analysts", "alice@contoso.com", ""),
        declaration("carol-finance", "Finance Analysts", "carol@contoso.com", ""),
        declaration(
            "carol-finance-again",
            "Finance Analysts",
            "carol@contoso.com",
            "",
        ),
        declaration("carol-eng", "Engineering Tools", "carol@contoso.com", ""),
        declaration("bob-eng", "Engineering Tools", "bob@contoso.com", ""),
    ]
    .concat();
    std::fs::write(dir.path().join("all.yaml"), docs).unwrap();
    sim.clear_request_log();

    let (code, stdout, stderr) = audit(&sim, dir.path(), &["--reprocess", "-o", "json"]).await;
    assert_eq!(code, 0, "everything delivered\n{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["summary"]["delivered"], 5, "{stdout}");

    let log = sim.request_log();
    let writes: Vec<_> = log
        .iter()
        .filter(|e| {
            e.method == "POST"
                && (e.path.ends_with("/assignmentRequests") || e.path.ends_with("/reprocess"))
        })
        .collect();
    assert_eq!(
        writes
            .iter()
            .filter(|e| e.path.ends_with("/reprocess"))
            .count(),
        1,
        "alice reprocessed once"
    );
    assert_eq!(
        writes
            .iter()
            .filter(|e| e.path.ends_with("/assignmentRequests"))
            .count(),
        3,
        "one adminAdd per distinct (user, package)"
    );
    assert!(
        writes.iter().all(|e| e.batch),
        "every write went in a $batch"
    );
    let envelopes = log
        .iter()
        .filter(|e| e.method == "POST" && e.path == "/v1.0/$batch")
        .count();
    // Before the writes, the account gate reads the targets (alice, carol, bob) in one
    // envelope of its own; the four writes share one more.
    let account_reads = log
        .iter()
        .filter(|e| e.batch && e.method == "GET" && e.path.starts_with("/v1.0/users/"))
        .count();
    assert_eq!(account_reads, 3, "each target's account read once, batched");
    assert_eq!(
        envelopes, 2,
        "the account reads share one batch, and the four writes of the repair pass one more"
    );
    for upn in ["carol@contoso.com", "bob@contoso.com"] {
        assert!(
            sim.is_member("eng-tools", upn),
            "{upn} got Engineering Tools"
        );
    }
    assert!(sim.is_member("fin-writers", "alice@contoso.com"));
    sim.shutdown().await;
}
