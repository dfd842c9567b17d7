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
            "--poll-interval",
            crate::fault_support::POLL_INTERVAL,
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
            assert_eq!(r["action"], "held", "row {r:#}");
            assert!(
                r["message"]
                    .as_str()
                    .unwrap()
                    .starts_with("TargetDisabled: "),
                "row {r:#}"
            );
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

/// Piped, the table fits 100 columns (or `COLUMNS`) without splitting a word; the guard's
/// counts are labelled as assignments; a report-only run says who would reprocess.
#[test]
fn the_table_fits_the_width_and_says_what_it_counts() {
    for (columns, width) in [(None, 100), (Some("120"), 120), (Some("160"), 160)] {
        let mut cmd = redeliver();
        cmd.args(["audit", "--simulate", "-f"]).arg(examples());
        match columns {
            Some(c) => cmd.env("COLUMNS", c),
            None => cmd.env_remove("COLUMNS"),
        };
        let (code, stdout, stderr) = run(&mut cmd);
        assert_eq!(code, 2, "{stderr}");
        for line in stdout.lines() {
            assert!(
                line.chars().count() <= width,
                "wider than {width}: {line:?}\n{stdout}"
            );
        }
        for word in [
            "DeliveryFailed",
            "NotAssigned",
            "Engineering",
            "assignments",
        ] {
            assert!(stdout.contains(word), "{word} split at {width}:\n{stdout}");
        }
        assert!(!stdout.contains("in flight"), "nothing was sent: {stdout}");
    }
    // Wide enough, no cell wraps.
    let (_, stdout, _) = run(redeliver()
        .env("COLUMNS", "220")
        .args(["audit", "--simulate", "-f"])
        .arg(examples()));
    assert!(stdout.contains("1/2 assignments"), "{stdout}");
    assert!(
        stdout.contains("none (apa/access/alice-finance would reprocess it)"),
        "{stdout}"
    );
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
    assert!(
        stderr.contains("typo.yaml:7:"),
        "at the field's own line: {stderr}"
    );
}

#[test]
fn every_error_of_a_document_is_listed_at_its_own_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("typos.yaml"),
        "apiVersion: redeliver.dev/v1alpha1\nkind: AccessPackageAssignment\nmetadata: {name: x, namespace: access}\nspec:\n  accessPackage: {displayName: Finance Analysts, catalogg: Finance}\n  target:\n    userPrincipalName: alice@contoso.com\n  reprocess:\n    mood: Auto\n",
    )
    .unwrap();
    let (code, stdout, stderr) = run(redeliver()
        .args(["audit", "--simulate", "-f"])
        .arg(dir.path()));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(
            "typos.yaml:5: AccessPackageAssignment/x: unknown field `spec.accessPackage.catalogg`"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "typos.yaml:9: AccessPackageAssignment/x: unknown field `spec.reprocess.mood`"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("2 problem(s)"), "{stderr}");
    assert!(!stdout.contains("delivered"), "{stdout}");
}

#[test]
fn a_misspelt_kind_of_ours_is_an_error_naming_file_line_and_closest_kind() {
    let dir = finance_plus(
        "typo.yaml",
        "apiVersion: redeliver.dev/v1alpha1\nkind: AccessPackageAsignment\nmetadata: {name: dora, namespace: access}\nspec:\n  accessPackage: {displayName: Finance Analysts}\n  target: {userPrincipalName: dora@contoso.com}\n",
    );
    for output in ["table", "markdown", "junit", "json"] {
        let (code, stdout, stderr) = run(redeliver()
            .args(["audit", "--simulate", "-o", output, "-f"])
            .arg(dir.path()));
        assert_eq!(code, 1, "{output}: {stderr}");
        assert!(
            stderr.contains(
                "typo.yaml:2: kind AccessPackageAsignment is not one of Redeliver's kinds"
            ),
            "{output}: {stderr}"
        );
        assert!(
            stderr.contains("did you mean AccessPackageAssignment?"),
            "{stderr}"
        );
        assert!(!stderr.contains("note:"), "not a skip: {stderr}");
        assert!(!stdout.contains("Everything is delivered"), "{stdout}");
    }
}

#[test]
fn deeply_nested_yaml_is_refused_in_milliseconds() {
    let dir = tempfile::tempdir().unwrap();
    let depth = 100_000;
    std::fs::write(
        dir.path().join("deep.yaml"),
        format!(
            "apiVersion: redeliver.dev/v1alpha1\nkind: AccessPackageAssignment\nmetadata: {{name: deep}}\nspec: {}{}\n",
            "[".repeat(depth),
            "]".repeat(depth)
        ),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let (code, _, stderr) = run(redeliver()
        .args(["audit", "--simulate", "-f"])
        .arg(dir.path()));
    let took = started.elapsed();
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("deep.yaml:4: nested more than 64 levels deep"),
        "{stderr}"
    );
    // The whole process, start-up included (the parser alone took 20 s before the bound).
    assert!(took < std::time::Duration::from_secs(2), "took {took:?}");
}

/// Usage errors exit 64, never 2 (drift), and nothing is checked.
#[test]
fn usage_errors_exit_64_not_the_drift_code() {
    let e = examples();
    let e = e.to_str().unwrap();
    for (args, says) in [
        (
            vec![
                "audit",
                "--simulate",
                "--reprocess",
                "--wait",
                "banana",
                "-f",
                e,
            ],
            "banana",
        ),
        (
            vec![
                "audit",
                "--simulate",
                "--reprocess",
                "--wait",
                "-1s",
                "-f",
                e,
            ],
            "-1",
        ),
        (vec!["audit", "--simulate"], "--filename"),
        (vec!["audit", "--simulate", "-o", "xml", "-f", e], "xml"),
        // Flags with no effect without --reprocess are refused, not ignored.
        (
            vec!["audit", "--simulate", "--wait", "5m", "-f", e],
            "--reprocess",
        ),
        (
            vec!["audit", "--simulate", "--poll-interval", "1s", "-f", e],
            "--reprocess",
        ),
        (vec!["audit", "--scenario", "x.yaml", "-f", e], "--simulate"),
    ] {
        let (code, stdout, stderr) = run(redeliver().args(&args));
        assert_eq!(code, 64, "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
    }
    let (code, stdout, _) = run(redeliver().args(["audit", "--help"]));
    assert_eq!(code, 0);
    assert!(stdout.contains("64  usage error"), "{stdout}");
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
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        report["summary"]["errors"], 1,
        "the exit code's error: {report:#}"
    );

    // In JUnit the unresolvable declaration is an error too, as the exit code says.
    let (code, stdout, _) = run(redeliver()
        .args(["audit", "--simulate", "-o", "junit", "-f"])
        .arg(dir.path()));
    assert_eq!(code, 1);
    assert!(stdout.contains(" errors=\"1\""), "{stdout}");
    assert!(
        stdout.contains("<error message=\"Stalled: none (PackageNotFound)\" type=\"Stalled\">"),
        "{stdout}"
    );
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

/// `connectionRef.name: ns/name` can never name an object: refused at its line (the CRD's
/// schema refuses it at the API server).
#[test]
fn a_connection_ref_with_a_namespace_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ref.yaml"),
        "apiVersion: redeliver.dev/v1alpha1\nkind: AccessPackageAssignment\nmetadata: {name: x, namespace: access}\nspec:\n  accessPackage: {displayName: Finance Analysts}\n  target: {userPrincipalName: alice@contoso.com}\n  connectionRef:\n    name: team-a/default\n",
    )
    .unwrap();
    let (code, _, stderr) = run(redeliver()
        .args(["audit", "--simulate", "-f"])
        .arg(dir.path()));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("ref.yaml:8: AccessPackageAssignment/x: spec.connectionRef.name: \"team-a/default\" is not an object name"),
        "{stderr}"
    );
}
