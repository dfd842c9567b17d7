//! Intent before repair in `redeliver audit` (issue #21), the binary as a real process
//! against the simulator on 127.0.0.1:
//!
//! - a disabled account gets no reprocess; its row is `Held` and says what to do, and the
//!   run exits 2 (not delivered, nothing broken);
//! - `--reprocess` applies the mass-drift breaker: a 30 % removal in a 1,000-assignment
//!   package is reprocessed not at all, and the report says why; with
//!   `--acknowledge-mass-drift` the repairs go out, bounded by the guard's
//!   `maxReprocessPerSweep`;
//! - respected actors declared on a connection in the files are honoured.

use redeliver_sim::{Scenario, SimOptions, Simulator, SyntheticTenant};
use serde_json::Value;

use crate::fault_support::{audit_json, declaration, declarations, reprocess_calls};

fn row<'a>(report: &'a Value, declaration: &str, target: &str) -> &'a Value {
    report["rows"]
        .as_array()
        .and_then(|rows| {
            rows.iter()
                .find(|r| r["declaration"] == declaration && r["target"] == target)
        })
        .unwrap_or_else(|| panic!("no row {declaration} / {target}: {report:#}"))
}

#[tokio::test]
async fn a_disabled_account_is_held_and_the_run_says_why() {
    let sim = Simulator::start(Scenario::demo(), SimOptions::fast())
        .await
        .unwrap();
    sim.set_account_enabled("alice@contoso.com", false).unwrap();
    let dir = declarations(&declaration(
        "alice-finance",
        "Finance Analysts",
        "alice@contoso.com",
        "",
    ));
    let (code, report, stderr) =
        audit_json(&sim, dir.path(), &["--reprocess", "--wait", "5s"]).await;
    assert_eq!(
        code, 2,
        "held: not delivered, nothing broken\n{report:#}\n{stderr}"
    );
    let alice = row(&report, "access/alice-finance", "alice@contoso.com");
    assert_eq!(alice["verdict"], "Held", "{alice:#}");
    assert_eq!(alice["action"], "held");
    assert!(
        alice["message"]
            .as_str()
            .unwrap()
            .starts_with("TargetDisabled: ")
    );
    assert!(
        alice["message"]
            .as_str()
            .unwrap()
            .contains("Re-enable the account"),
        "{alice:#}"
    );
    assert_eq!(report["summary"]["held"], 1);
    assert!(
        reprocess_calls(&sim, false).is_empty(),
        "no reprocess at all"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn reprocess_applies_the_mass_drift_breaker_and_an_acknowledgement_lifts_it() {
    let sim = Simulator::start(
        Scenario::synthetic_tenant(&crate::fault_support::one_package()),
        SimOptions::fast(),
    )
    .await
    .unwrap();
    let group = SyntheticTenant::group_name(0);
    for i in 0..crate::fault_support::ONE_PACKAGE_SIZE * 3 / 10 {
        sim.remove_member(&group, &format!("user{i}@mass.com"))
            .unwrap();
    }
    let package = sim.package_id(&SyntheticTenant::package_name(0)).unwrap();
    let dir = declarations(&format!(
        "apiVersion: redeliver.dev/v1alpha1\nkind: AccessPackageGuard\n\
         metadata: {{name: mass, namespace: access}}\n\
         spec: {{accessPackage: {{id: {package}}}, maxReprocessPerSweep: 40}}\n"
    ));
    let (code, report, stderr) =
        audit_json(&sim, dir.path(), &["--reprocess", "--wait", "2s"]).await;
    assert_eq!(code, 2, "{report:#}\n{stderr}");
    assert!(
        reprocess_calls(&sim, false).is_empty(),
        "stopped before any reprocess"
    );
    let summary = row(&report, "access/mass", "(all 1000 assignments)");
    assert_eq!(summary["verdict"], "Held", "{summary:#}");
    let why = summary["message"].as_str().unwrap();
    assert!(
        why.contains("Mass drift: 300 of 1000 delivered assignments drifted"),
        "the report says why it stopped: {why}"
    );

    // Acknowledged: one repair pass (no waiting) sends exactly the guard's bound.
    let (_, report, stderr) = audit_json(
        &sim,
        dir.path(),
        &["--reprocess", "--wait", "0s", "--acknowledge-mass-drift"],
    )
    .await;
    let sent = reprocess_calls(&sim, true);
    assert_eq!(
        sent.len(),
        40,
        "repairs proceed at maxReprocessPerSweep\n{report:#}\n{stderr}"
    );
    assert!(sent.values().all(|&n| n == 1));
    sim.shutdown().await;
}

#[tokio::test]
async fn respected_actors_on_a_connection_in_the_files_are_honoured() {
    let sim = Simulator::start(Scenario::demo(), SimOptions::fast())
        .await
        .unwrap();
    // bob loses fin-writers to the security lead: a decision, not a fault.
    sim.remove_member_by("fin-writers", "bob@contoso.com", "soc-lead@contoso.com")
        .unwrap();
    let docs = declaration("bob-finance", "Finance Analysts", "bob@contoso.com", "")
        + "---\n"
        + &format!(
            "apiVersion: redeliver.dev/v1alpha1\nkind: GraphConnection\n\
             metadata: {{name: default, namespace: access}}\n\
             spec:\n  tenantId: {tenant}\n  clientId: {client}\n\
             \x20 credential: {{clientSecret: {{name: graph}}}}\n\
             \x20 graphUrl: {graph}\n  authorityHost: {authority}\n\
             \x20 safety: {{respectedActors: {{userPrincipalNames: [soc-lead@contoso.com]}}}}\n\
             ---\napiVersion: v1\nkind: Secret\nmetadata: {{name: graph, namespace: access}}\n\
             stringData: {{clientSecret: {secret}}}\n",
            tenant = sim.tenant_id,
            client = sim.client_id,
            graph = sim.graph_url,
            authority = sim.authority_host,
            secret = sim.client_secret,
        );
    let dir = declarations(&docs);
    let (code, report, stderr) =
        audit_json(&sim, dir.path(), &["--reprocess", "--wait", "2s"]).await;
    assert_eq!(code, 2, "{report:#}\n{stderr}");
    let bob = row(&report, "access/bob-finance", "bob@contoso.com");
    assert_eq!(bob["verdict"], "Held", "{bob:#}");
    assert_eq!(bob["action"], "held");
    assert!(
        bob["message"]
            .as_str()
            .unwrap()
            .starts_with("RemovedDeliberately: ")
    );
    assert!(
        bob["message"]
            .as_str()
            .unwrap()
            .contains("soc-lead@contoso.com"),
        "{bob:#}"
    );
    assert!(reprocess_calls(&sim, false).is_empty());
    sim.shutdown().await;
}
