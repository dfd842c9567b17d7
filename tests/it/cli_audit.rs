//! `redeliver audit` as a real process: the demo story, exit codes and bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn redeliver() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_redeliver"));
    // Never let a developer's real tenant leak into a test.
    for var in [
        "AZURE_TENANT_ID",
        "AZURE_CLIENT_ID",
        "AZURE_CLIENT_SECRET",
        "AZURE_FEDERATED_TOKEN_FILE",
        "AZURE_AUTHORITY_HOST",
        "REDELIVER_GRAPH_URL",
        "REDELIVER_CLIENT_SECRET_FILE",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("NO_PROXY", "127.0.0.1,localhost");
    cmd
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// A temporary directory holding the demo's finance declarations plus one more file.
fn finance_plus(name: &str, text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        examples().join("finance.yaml"),
        dir.path().join("good.yaml"),
    )
    .unwrap();
    std::fs::write(dir.path().join(name), text).unwrap();
    dir
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("the redeliver binary runs");
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

fn json_rows(stdout: &str) -> Vec<serde_json::Value> {
    let report: serde_json::Value = serde_json::from_str(stdout).expect("JSON report on stdout");
    report["rows"].as_array().expect("rows").clone()
}

fn row<'a>(rows: &'a [serde_json::Value], declaration: &str) -> &'a serde_json::Value {
    rows.iter()
        .find(|r| r["declaration"] == declaration)
        .unwrap_or_else(|| panic!("no row for {declaration} in {rows:#?}"))
}

#[test]
fn demo_without_reprocess_reports_drift_and_changes_nothing() {
    let (code, stdout, stderr) = run(redeliver()
        .args(["audit", "--simulate", "-o", "json", "-f"])
        .arg(examples()));
    assert_eq!(
        code, 2,
        "drift remains → exit 2\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let rows = json_rows(&stdout);
    let alice = row(&rows, "access/alice-finance");
    assert_eq!(alice["verdict"], "Drifted");
    assert_eq!(alice["graphStatus"], "Delivered");
    assert_eq!(alice["missing"], serde_json::json!(["fin-writers"]));
    assert_eq!(alice["action"], "would reprocess");
    assert_eq!(row(&rows, "access/bob-finance")["verdict"], "Delivered");
    assert_eq!(row(&rows, "access/carol-finance")["verdict"], "NotAssigned");
    assert_eq!(
        row(&rows, "access/carol-finance")["action"],
        "would request assignment"
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["summary"]["actionsTaken"], 0);
}

#[test]
fn demo_with_reprocess_repairs_and_verifies_delivered() {
    let (code, stdout, stderr) = run(redeliver()
        .args([
            "audit",
            "--simulate",
            "--reprocess",
            "--wait",
            "60s",
            "-o",
            "json",
            "-f",
        ])
        .arg(examples()));
    assert_eq!(
        code, 2,
        "everything repaired but frank, held → exit 2\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let before = report["before"].as_array().expect("before rows");
    assert_eq!(row(before, "access/alice-finance")["verdict"], "Drifted");
    for r in json_rows(&stdout) {
        if r["declaration"] == "access/frank-contractor" {
            // A leaver's disabled account gets nothing back; the row says why and what to do.
            assert_eq!(r["verdict"], "Held", "row {r:#}");
            assert_eq!(r["action"], "none (TargetDisabled)", "row {r:#}");
            assert!(
                r["message"]
                    .as_str()
                    .unwrap()
                    .contains("Re-enable the account"),
                "row {r:#}"
            );
        } else {
            assert_eq!(r["verdict"], "Delivered", "row {r:#}");
        }
    }
    assert_eq!(report["summary"]["held"], 1);
    assert!(report["summary"]["actionsTaken"].as_u64().unwrap() >= 3);
}

#[test]
fn demo_table_output_tells_the_story() {
    let (code, stdout, _) = run(redeliver()
        .args(["audit", "--simulate", "-f"])
        .arg(examples()));
    assert_eq!(code, 2);
    assert!(stdout.contains("alice@contoso.com"), "{stdout}");
    assert!(stdout.contains("Drifted"), "{stdout}");
    assert!(stdout.contains("missing fin-writers"), "{stdout}");
}

#[test]
fn malformed_file_names_file_and_line_and_checks_nothing() {
    let dir = finance_plus(
        "bad.yaml",
        "apiVersion: redeliver.dev/v1alpha1\nkind: AccessPackageAssignment\nmetadata: {name: x, namespace: access}\nspec:\n  accessPackage: {displayName: Finance Analysts}\n  target: {userPrincipalName: [oops}\n",
    );
    let (code, stdout, stderr) = run(redeliver()
        .args(["audit", "--simulate", "--reprocess", "-f"])
        .arg(dir.path()));
    assert_eq!(code, 1, "stderr:\n{stderr}");
    assert!(
        stderr.contains("bad.yaml:6"),
        "names file and line: {stderr}"
    );
    assert!(
        stderr.contains("nothing was checked or changed"),
        "{stderr}"
    );
    assert!(stdout.is_empty(), "no report from an invalid set: {stdout}");
}

#[test]
fn unknown_field_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("typo.yaml"),
        "apiVersion: redeliver.dev/v1alpha1\nkind: AccessPackageAssignment\nmetadata: {name: x, namespace: access}\nspec:\n  accessPackage: {displayName: Finance Analysts}\n  target: {userPrincipalName: alice@contoso.com}\n  verifyIntervall: 5m\n",
    )
    .unwrap();
    let (code, _, stderr) = run(redeliver()
        .args(["audit", "--simulate", "-f"])
        .arg(dir.path()));
    assert_eq!(code, 1);
    assert!(stderr.contains("spec.verifyIntervall"), "{stderr}");
}

#[test]
fn unknown_package_is_an_error_for_its_row_only() {
    let dir = finance_plus(
        "unknown.yaml",
        "apiVersion: redeliver.dev/v1alpha1\nkind: AccessPackageAssignment\nmetadata: {name: ghost, namespace: access}\nspec:\n  accessPackage: {displayName: No Such Package}\n  target: {userPrincipalName: alice@contoso.com}\n",
    );
    let (code, stdout, stderr) = run(redeliver()
        .args(["audit", "--simulate", "-o", "json", "-f"])
        .arg(dir.path()));
    assert_eq!(code, 1, "stderr:\n{stderr}");
    let rows = json_rows(&stdout);
    let ghost = row(&rows, "access/ghost");
    assert_eq!(ghost["verdict"], "Stalled");
    assert!(
        ghost["message"]
            .as_str()
            .unwrap()
            .contains("No Such Package"),
        "{ghost:#}"
    );
    assert_eq!(row(&rows, "access/bob-finance")["verdict"], "Delivered");
}

#[test]
fn other_kinds_are_skipped_with_a_note() {
    let dir = finance_plus(
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: unrelated}\ndata: {a: b}\n",
    );
    let (_, _, stderr) = run(redeliver()
        .args(["audit", "--simulate", "-f"])
        .arg(dir.path()));
    assert!(stderr.contains("skipped ConfigMap/unrelated"), "{stderr}");
}

#[test]
fn missing_credentials_say_what_to_set() {
    let (code, _, stderr) = run(redeliver().args(["audit", "-f"]).arg(examples()));
    assert_eq!(code, 1);
    assert!(stderr.contains("AZURE_TENANT_ID"), "{stderr}");
}
