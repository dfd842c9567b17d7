//! Microsoft's access drift report as a cross-check, against the simulator over real HTTP
//! on 127.0.0.1: `redeliver audit` as a real process, and the report's simulator side
//! through its admin API.

use std::path::Path;
use std::process::Stdio;

use redeliver::observe::Observer;
use redeliver_sim::{Scenario, SimHandle, SimOptions, Simulator};

const SUMMARIES: &str = "/beta/identityGovernance/entitlementManagement/accessDriftSummaries";

async fn audit(sim: &SimHandle, extra: &[&str]) -> (i32, serde_json::Value, String) {
    audit_file(sim, "examples/finance.yaml", extra).await
}

async fn audit_file(
    sim: &SimHandle,
    file: &str,
    extra: &[&str],
) -> (i32, serde_json::Value, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_redeliver"));
    for var in [
        "AZURE_TENANT_ID",
        "AZURE_CLIENT_ID",
        "AZURE_CLIENT_SECRET",
        "AZURE_FEDERATED_TOKEN_FILE",
        "AZURE_AUTHORITY_HOST",
        "REDELIVER_GRAPH_URL",
        "REDELIVER_CLIENT_SECRET_FILE",
        "REDELIVER_USE_ACCESS_DRIFT_REPORT",
    ] {
        cmd.env_remove(var);
    }
    let finance = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    cmd.envs(sim.graph_env())
        .env("NO_PROXY", "127.0.0.1,localhost")
        .args(["audit", "-o", "json", "-f"])
        .arg(finance)
        .args(extra)
        .stdin(Stdio::null());
    let out = cmd.output().await.expect("the redeliver binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("JSON report ({e}):\n{stdout}\nstderr:\n{stderr}"));
    (out.status.code().unwrap_or(-1), report, stderr)
}

fn row<'a>(report: &'a serde_json::Value, declaration: &str) -> &'a serde_json::Value {
    report["rows"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["declaration"] == declaration))
        .unwrap_or_else(|| panic!("no row for {declaration} in {report:#}"))
}

/// Everything but the message: what the cross-check must leave alone.
fn verdicts(report: &serde_json::Value) -> Vec<(String, String, String)> {
    report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["declaration"].to_string(),
                r["verdict"].to_string(),
                r["action"].to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn audit_notes_both_kinds_of_disagreement_and_changes_no_verdict() {
    let sim = Simulator::start(Scenario::demo(), SimOptions::fast())
        .await
        .unwrap();
    let (plain_code, plain, _) = audit(&sim, &[]).await;
    assert_eq!(sim.count_requests("GET", "/beta/"), 0, "off by default");

    // A lagging report: bob (who holds fin-writers) reported missing, alice (who lost it)
    // reported in sync.
    sim.set_reported_drift("fin-writers", &["bob@contoso.com"])
        .unwrap();
    sim.clear_request_log();
    let (code, report, stderr) = audit(&sim, &["--use-access-drift-report"]).await;
    assert_eq!(code, plain_code, "{stderr}");
    assert_eq!(verdicts(&report), verdicts(&plain));
    let bob = row(&report, "access/bob-finance")["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        bob,
        "Microsoft's access drift report disagrees: it reports fin-writers missing for bob@contoso.com, Redeliver's read found it present"
    );
    let alice = row(&report, "access/alice-finance")["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        alice.contains(
            "Microsoft's access drift report disagrees: it reports fin-writers in sync for alice@contoso.com, Redeliver's read found it missing"
        ),
        "{alice}"
    );
    // One summaries read for the catalog, shared by every declaration, plus the details
    // of the one summary counting a missing user; never a write.
    assert_eq!(
        sim.count_requests("GET", SUMMARIES),
        2,
        "{:#?}",
        sim.request_log()
    );
    assert_never_a_write(&sim);
}

#[tokio::test]
async fn the_simulated_report_follows_the_state_lags_on_demand_and_can_refuse() {
    let sim = Simulator::start(Scenario::demo(), SimOptions::fast())
        .await
        .unwrap();
    let graph = crate::fault_support::graph_client(&sim).unwrap();
    let package = graph
        .get_access_package(&sim.package_id("Finance Analysts").unwrap())
        .await
        .unwrap()
        .unwrap();
    let catalog = package
        .catalog
        .expect("the package's catalog is expanded")
        .id;
    let alice = sim.user_id("alice@contoso.com").unwrap();
    let bob = sim.user_id("bob@contoso.com").unwrap();
    let writers = sim.group_id("fin-writers").unwrap();

    // From the state: alice lost fin-writers.
    let observer = Observer::new(graph.clone(), 4);
    let report = observer.access_drift(&catalog).await.unwrap();
    assert_eq!(
        report.missing.get(&writers.to_ascii_lowercase()),
        Some(&[alice.to_ascii_lowercase()].into_iter().collect())
    );
    // Read once per pass, whoever asks.
    observer.access_drift(&catalog).await.unwrap();
    assert_eq!(sim.count_requests("GET", SUMMARIES), 2);

    // Lagging on demand.
    sim.set_reported_drift("fin-writers", &["bob@contoso.com"])
        .unwrap();
    observer.refresh().await;
    let report = observer.access_drift(&catalog).await.unwrap();
    assert_eq!(
        report.missing.get(&writers.to_ascii_lowercase()),
        Some(&[bob.to_ascii_lowercase()].into_iter().collect())
    );

    // Refused: a note naming the permission, kept for the pass (asked once).
    sim.set_drift_report_unavailable(Some(403));
    observer.refresh().await;
    sim.clear_request_log();
    let why = observer.access_drift(&catalog).await.unwrap_err();
    assert!(why.contains("EntitlementManagement.Read.All"), "{why}");
    observer.access_drift(&catalog).await.unwrap_err();
    assert_eq!(sim.count_requests("GET", SUMMARIES), 1);

    // Not offered: a note saying where it was looked for.
    sim.set_drift_report_unavailable(Some(404));
    observer.refresh().await;
    let why = observer.access_drift(&catalog).await.unwrap_err();
    assert!(why.contains("not found") && why.contains("/beta/"), "{why}");
}

#[tokio::test]
async fn a_report_of_many_missing_users_is_read_through_its_pages() {
    // 250 users in one package of the `Synthetic` catalog, every second one missing its
    // first group: 125 missing users, more than one page of details.
    let sim = Simulator::start(
        Scenario::synthetic("fabrikam", 250, 1, 2, 2),
        SimOptions::fast(),
    )
    .await
    .unwrap();
    let graph = crate::fault_support::graph_client(&sim).unwrap();
    let package = graph
        .get_access_package(&sim.package_id("pkg-0").unwrap())
        .await
        .unwrap()
        .unwrap();
    let catalog = package.catalog.expect("catalog expanded").id;
    let observer = Observer::new(graph, 4);
    let report = observer.access_drift(&catalog).await.unwrap();
    let g0 = sim.group_id("pkg-0-g0").unwrap().to_ascii_lowercase();
    let g1 = sim.group_id("pkg-0-g1").unwrap().to_ascii_lowercase();
    assert_eq!(report.missing.get(&g0).map(|m| m.len()), Some(125));
    assert_eq!(report.missing.get(&g1).map(|m| m.len()), Some(0));
    // One summaries page; the details of the one drifted group in two pages; none for
    // the group nobody misses.
    let log = sim.request_log();
    let details: Vec<_> = log
        .iter()
        .filter(|e| e.path.starts_with(SUMMARIES) && e.path.contains("/details"))
        .collect();
    assert_eq!(details.len(), 2, "{details:#?}");
    assert_eq!(sim.count_requests("GET", SUMMARIES), 3);
    // 1 RU a page.
    let ru: u32 = log
        .iter()
        .filter(|e| e.path.starts_with(SUMMARIES))
        .filter_map(|e| e.ru)
        .sum();
    assert_eq!(ru, 3);
}

#[tokio::test]
async fn audit_notes_a_guards_disagreements_on_its_rows() {
    let sim = Simulator::start(Scenario::demo(), SimOptions::fast())
        .await
        .unwrap();
    let (plain_code, plain, _) = audit_file(&sim, "examples/guard.yaml", &[]).await;
    sim.set_reported_drift("fin-writers", &["bob@contoso.com"])
        .unwrap();
    let (code, report, stderr) =
        audit_file(&sim, "examples/guard.yaml", &["--use-access-drift-report"]).await;
    assert_eq!(code, plain_code, "{stderr}");
    assert_eq!(verdicts(&report), verdicts(&plain));
    let messages: Vec<&str> = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["message"].as_str())
        .collect();
    // Alice's drifted row says the report thinks she is in sync; bob has no row of his
    // own (he is delivered), so the guard's summary row says it.
    assert!(
        messages
            .iter()
            .any(|m| m.contains("reports fin-writers in sync for alice@contoso.com")),
        "{report:#}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains("reports fin-writers missing for bob@contoso.com")),
        "{report:#}"
    );
    assert_never_a_write(&sim);
}

#[tokio::test]
async fn a_transient_report_failure_is_a_note_and_is_asked_again() {
    let sim = Simulator::start(Scenario::demo(), SimOptions::fast())
        .await
        .unwrap();
    let graph = crate::fault_support::client_with(&sim, |a| a.max_retries = 0);
    let package = graph
        .get_access_package(&sim.package_id("Finance Analysts").unwrap())
        .await
        .unwrap()
        .unwrap();
    let catalog = package.catalog.expect("catalog expanded").id;
    sim.inject_fault(redeliver_sim::FaultSpec::Error {
        status: 503,
        retry_after: None,
        scope: redeliver_sim::FaultScope {
            path_prefix: Some(SUMMARIES.into()),
            count: Some(1),
            ..Default::default()
        },
    });
    let observer = Observer::new(graph, 4);
    let why = observer.access_drift(&catalog).await.unwrap_err();
    assert!(!why.is_empty());
    // Not kept: the next caller reads again, and gets the report (the failed summaries
    // read, then the summaries and the one drifted resource's details).
    observer.access_drift(&catalog).await.unwrap();
    assert_eq!(sim.count_requests("GET", SUMMARIES), 3);
}

/// No write reached Graph: the only POST a report-only audit makes is the account gate's
/// `$batch`, and every item inside it is a GET.
fn assert_never_a_write(sim: &redeliver_sim::SimHandle) {
    let log = sim.request_log();
    assert!(
        log.iter()
            .filter(|e| e.method == "POST" && e.path.starts_with("/v1.0/"))
            .all(|e| e.path == "/v1.0/$batch"),
        "{log:#?}"
    );
    assert!(
        log.iter().filter(|e| e.batch).all(|e| e.method == "GET"),
        "{log:#?}"
    );
}
