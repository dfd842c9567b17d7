//! `redeliver audit` over several tenants in one run, as a real process: the
//! `GraphConnection`s and `ClusterGraphConnection`s in the files pick each declaration's
//! tenant (the controller's rule), client secrets come from a `Secret` in the files or from
//! the environment, and a connection that cannot be used fails only its own rows.

use std::process::Stdio;

use redeliver_sim::SimHandle;

use crate::controller_tenants::tenant;
use crate::fault_support::{CLEARED_ENV, Run, run};

/// `redeliver audit` with no Graph flags or environment: only the files' connections.
fn audit(dir: &std::path::Path, env: &[(&str, &str)], extra: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_redeliver"));
    for var in CLEARED_ENV {
        cmd.env_remove(var);
    }
    cmd.env("NO_PROXY", "127.0.0.1,localhost")
        .envs(env.iter().copied())
        .arg("audit")
        .arg("--no-progress")
        .arg("-f")
        .arg(dir)
        .args(["-o", "json"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

fn files(contoso: &SimHandle, fabrikam: &SimHandle, extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: graph, namespace: team-a}}
stringData: {{clientSecret: {contoso_secret}}}
---
apiVersion: redeliver.dev/v1alpha1
kind: GraphConnection
metadata: {{name: default, namespace: team-a}}
spec:
  tenantId: {contoso_tenant}
  clientId: {contoso_client}
  credential: {{clientSecret: {{name: graph}}}}
  authorityHost: {contoso_auth}
  graphUrl: {contoso_graph}
---
apiVersion: redeliver.dev/v1alpha1
kind: ClusterGraphConnection
metadata: {{name: fabrikam}}
spec:
  tenantId: {fabrikam_tenant}
  clientId: {fabrikam_client}
  credential: {{clientSecret: {{name: fabrikam-graph}}}}
  authorityHost: {fabrikam_auth}
  graphUrl: {fabrikam_graph}
---
apiVersion: redeliver.dev/v1alpha1
kind: AccessPackageAssignment
metadata: {{name: alice, namespace: team-a}}
spec:
  accessPackage: {{displayName: Finance Analysts, catalog: Finance}}
  target: {{userPrincipalName: alice@contoso.com}}
---
apiVersion: redeliver.dev/v1alpha1
kind: AccessPackageAssignment
metadata: {{name: alice, namespace: team-b}}
spec:
  accessPackage: {{displayName: Finance Analysts, catalog: Finance}}
  target: {{userPrincipalName: alice@contoso.com}}
  connectionRef: {{kind: ClusterGraphConnection, name: fabrikam}}
---
{extra}"#,
        contoso_secret = contoso.client_secret,
        contoso_tenant = contoso.tenant_id,
        contoso_client = contoso.client_id,
        contoso_auth = contoso.authority_host,
        contoso_graph = contoso.graph_url,
        fabrikam_tenant = fabrikam.tenant_id,
        fabrikam_client = fabrikam.client_id,
        fabrikam_auth = fabrikam.authority_host,
        fabrikam_graph = fabrikam.graph_url,
    );
    std::fs::write(dir.path().join("tenants.yaml"), text).unwrap();
    dir
}

fn row(run: &Run, declaration: &str) -> serde_json::Value {
    run.rows()
        .into_iter()
        .find(|r| r["declaration"] == declaration)
        .unwrap_or_else(|| panic!("no row {declaration}: {}", run.stdout))
}

const FABRIKAM_ENV: &str = "REDELIVER_SECRET_REDELIVER_SYSTEM_FABRIKAM_GRAPH_CLIENTSECRET";

#[tokio::test]
async fn one_run_covers_two_tenants_each_with_its_own_credential() {
    let contoso = tenant("contoso", 42, "01", true).await;
    let fabrikam = tenant("fabrikam", 7, "02", false).await;
    let dir = files(&contoso, &fabrikam, "");
    let env = [(FABRIKAM_ENV, fabrikam.client_secret.as_str())];

    let report = run(audit(dir.path(), &env, &[])).await;
    assert_eq!(
        report.code, 2,
        "drift (exit 2) in contoso only: {}\n{}",
        report.stdout, report.stderr
    );
    let a = row(&report, "team-a/alice");
    let b = row(&report, "team-b/alice");
    assert_eq!(
        a["assignmentId"],
        contoso
            .assignment_id("alice@contoso.com", "Finance Analysts")
            .unwrap()
            .as_str(),
        "{a}"
    );
    assert_eq!(
        b["assignmentId"],
        fabrikam
            .assignment_id("alice@contoso.com", "Finance Analysts")
            .unwrap()
            .as_str(),
        "{b}"
    );
    assert_ne!(a["verdict"], b["verdict"], "{a}\n{b}");
    assert!(!report.stdout.contains(&contoso.client_secret));
    assert!(!report.stderr.contains(&fabrikam.client_secret));

    // Repair: the reprocess goes to contoso, nothing is written to fabrikam.
    let repaired = run(audit(
        dir.path(),
        &env,
        &[
            "--reprocess",
            "--wait",
            "20s",
            "--poll-interval",
            crate::fault_support::POLL_INTERVAL,
        ],
    ))
    .await;
    assert_eq!(repaired.code, 0, "{}\n{}", repaired.stdout, repaired.stderr);
    assert!(contoso.is_member("fin-writers", "alice@contoso.com"));
    assert_eq!(
        fabrikam.count_requests(
            "POST",
            "/v1.0/identityGovernance/entitlementManagement/assignments/"
        ),
        0
    );
}

#[tokio::test]
async fn a_connection_that_cannot_be_used_fails_only_its_own_rows() {
    let contoso = tenant("contoso", 42, "01", true).await;
    let fabrikam = tenant("fabrikam", 7, "02", false).await;
    // team-c has no connection and the run has no flags: no tenant for it.
    let extra = "apiVersion: redeliver.dev/v1alpha1\nkind: AccessPackageAssignment\nmetadata: {name: alice, namespace: team-c}\nspec:\n  accessPackage: {displayName: Finance Analysts}\n  target: {userPrincipalName: alice@contoso.com}\n";
    let dir = files(&contoso, &fabrikam, extra);
    // No secret for fabrikam anywhere.
    let report = run(audit(dir.path(), &[], &[])).await;
    assert_eq!(
        report.code, 1,
        "errors (exit 1): {}\n{}",
        report.stdout, report.stderr
    );
    let b = row(&report, "team-b/alice");
    assert_eq!(b["verdict"], "Error", "{b}");
    let message = b["message"].as_str().unwrap();
    assert!(
        message.contains("ClusterGraphConnection fabrikam"),
        "{message}"
    );
    assert!(message.contains(FABRIKAM_ENV), "{message}");
    let c = row(&report, "team-c/alice");
    assert_eq!(c["verdict"], "Error", "{c}");
    assert!(c["message"].as_str().unwrap().contains("tenant id"), "{c}");
    // contoso's row is checked all the same.
    let a = row(&report, "team-a/alice");
    assert_ne!(a["verdict"], "Error", "{a}");
    assert!(report.json()["error"].is_null());
    assert_eq!(fabrikam.issued_tokens().len(), 0);
}
