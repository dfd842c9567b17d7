//! `redeliver audit -o markdown|junit` as a real process: the demo tenant's report
//! compared with golden files, "did you mean" for bad names, and a failure that hits every
//! row said once.
//!
//! The golden files are `tests/golden/audit-demo.*`. After an intended change to the
//! output, regenerate them with `UPDATE_GOLDEN=1 cargo test --test it audit_ci_output` and
//! review the diff. The simulator's ids are seeded, and neither format carries a time.

use std::path::{Path, PathBuf};

use crate::fault_support::*;
use redeliver_sim::{Scenario, Simulator};
use serde_json::json;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// Compares `actual` with `tests/golden/<name>`, or rewrites it with `UPDATE_GOLDEN=1`.
fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run with UPDATE_GOLDEN=1", path.display()));
    assert_eq!(
        actual,
        expected,
        "{} differs; run with UPDATE_GOLDEN=1 to accept",
        path.display()
    );
}

/// `redeliver audit --simulate` on the bundled demo tenant.
async fn simulated(dir: &Path, extra: &[&str]) -> Run {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_redeliver"));
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
    cmd.env("NO_PROXY", "127.0.0.1,localhost")
        .args(["audit", "--simulate", "--no-progress", "-f"])
        .arg(dir)
        .args(extra)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    run(cmd).await
}

/// Element names of a well-formed XML document, in order, with the attributes of each.
/// Panics when the text is not well-formed XML.
fn xml_elements(xml: &str) -> Vec<(String, Vec<(String, String)>)> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut out = Vec::new();
    loop {
        match reader.read_event().expect("well-formed XML") {
            Event::Start(e) | Event::Empty(e) => {
                let attrs = e
                    .attributes()
                    .map(|a| {
                        let a = a.expect("valid attribute");
                        (
                            a.key.as_ref().to_string(),
                            a.normalized_value(quick_xml::XmlVersion::Explicit1_0)
                                .expect("escaped value")
                                .into_owned(),
                        )
                    })
                    .collect();
                out.push((e.name().as_ref().to_string(), attrs));
            }
            Event::Eof => break,
            _ => {}
        }
    }
    out
}

fn attr<'a>(el: &'a (String, Vec<(String, String)>), name: &str) -> &'a str {
    el.1.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {name} on {el:?}"))
}

#[tokio::test]
async fn demo_markdown_matches_golden() {
    let out = simulated(&examples(), &["-o", "markdown"]).await;
    assert_eq!(out.code, 2, "drift remains\n{}", out.stderr);
    assert!(
        out.stdout.contains("| access/alice-finance |"),
        "{}",
        out.stdout
    );
    assert!(
        !out.stdout.contains("bob@contoso.com"),
        "delivered rows are only counted"
    );
    golden("audit-demo.md", &out.stdout);
}

#[tokio::test]
async fn demo_junit_matches_golden_and_parses() {
    let out = simulated(&examples(), &["-o", "junit"]).await;
    assert_eq!(out.code, 2, "drift remains\n{}", out.stderr);
    let elements = xml_elements(&out.stdout);
    let suite = elements.iter().find(|e| e.0 == "testsuite").unwrap();
    let cases = elements.iter().filter(|e| e.0 == "testcase").count();
    let failures = elements.iter().filter(|e| e.0 == "failure").count();
    let errors = elements.iter().filter(|e| e.0 == "error").count();
    assert_eq!(attr(suite, "tests"), cases.to_string());
    assert_eq!(attr(suite, "failures"), failures.to_string());
    assert_eq!(attr(suite, "errors"), errors.to_string());
    assert!(
        elements.iter().any(|e| e.0 == "testcase"
            && attr(e, "classname") == "access/bob-finance"
            && attr(e, "name") == "bob@contoso.com / Finance Analysts"),
        "{}",
        out.stdout
    );
    golden("audit-demo.junit.xml", &out.stdout);
}

#[tokio::test]
async fn demo_markdown_after_repairs_says_so_and_gives_the_before_counts() {
    let out = simulated(
        &examples(),
        &[
            "--reprocess",
            "--wait",
            "60s",
            "--poll-interval",
            crate::fault_support::POLL_INTERVAL,
            "-o",
            "markdown",
        ],
    )
    .await;
    // Repaired but frank's access, held (his account is disabled): not delivered, exit 2.
    assert_eq!(out.code, 2, "{}\n{}", out.stdout, out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "## Redeliver audit");
    assert!(
        out.stdout.contains("| 8 | 0 | 0 | 1 | 0 | 0 | 5 |"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(
            "Before the repairs: 2 delivered, 5 drifted, 1 not assigned, 1 held, 1 other, 0 errors."
        ),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("| access/frank-contractor | frank@contoso.com | Contractor Portal | Held | held | contractors | TargetDisabled: "),
        "{}",
        out.stdout
    );
}

#[tokio::test]
async fn bad_names_get_the_closest_candidates() {
    let dir = declarations(concat!(
        "apiVersion: redeliver.dev/v1alpha1\nkind: AccessPackageAssignment\n",
        "metadata: {name: typo-package, namespace: access}\n",
        "spec:\n  accessPackage: {displayName: Finance Analyst}\n",
        "  target: {userPrincipalName: alice@contoso.com}\n---\n",
        "apiVersion: redeliver.dev/v1alpha1\nkind: AccessPackageAssignment\n",
        "metadata: {name: typo-user, namespace: access}\n",
        "spec:\n  accessPackage: {displayName: Finance Analysts}\n",
        "  target: {userPrincipalName: alcie@contoso.com}\n---\n",
        "apiVersion: redeliver.dev/v1alpha1\nkind: AccessPackageAssignment\n",
        "metadata: {name: typo-policy, namespace: access}\n",
        "spec:\n  accessPackage: {displayName: Finance Analysts}\n",
        "  assignmentPolicy: {displayName: Direct asignment}\n",
        "  target: {userPrincipalName: carol@contoso.com}\n",
    ));
    let out = simulated(dir.path(), &["-o", "json"]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    let message = |name: &str| {
        out.rows()
            .iter()
            .find(|r| r["declaration"] == format!("access/{name}"))
            .and_then(|r| r["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| panic!("no row {name}: {}", out.stdout))
    };
    assert!(
        message("typo-package").ends_with(
            "no access package named 'Finance Analyst'; did you mean 'Finance Analysts'?"
        ),
        "{}",
        message("typo-package")
    );
    assert!(
        message("typo-user").ends_with(
            "no user 'alcie@contoso.com' in the tenant; did you mean 'alice@contoso.com'?"
        ),
        "{}",
        message("typo-user")
    );
    assert!(
        message("typo-policy").ends_with("; did you mean 'Direct assignment'?"),
        "{}",
        message("typo-policy")
    );
}

#[tokio::test]
async fn a_refused_secret_is_one_error_up_front() {
    let sim = Simulator::start(Scenario::demo(), fast()).await.unwrap();
    let dir = declarations(&format!(
        "{}{}",
        declaration("alice-finance", "Finance Analysts", "alice@contoso.com", ""),
        declaration("bob-finance", "Finance Analysts", "bob@contoso.com", ""),
    ));
    for format in ["markdown", "junit", "json"] {
        let refused = || {
            let mut cmd = audit_command(&sim, dir.path(), &["-o", format]);
            cmd.env("AZURE_CLIENT_SECRET", "not-the-secret");
            run(cmd)
        };
        let out = refused().await;
        assert_eq!(out.code, 1, "{format}: {}\n{}", out.stdout, out.stderr);
        // The same failure renders the same text: Entra's correlation id (new on every
        // sign-in) is on stderr for a support case, never in the report.
        let again = refused().await;
        assert_eq!(out.stdout, again.stdout, "{format}: the same text twice");
        assert!(!out.stdout.contains("correlation-id"), "{}", out.stdout);
        assert!(out.stderr.contains("correlation-id"), "{}", out.stderr);
        assert_eq!(
            out.stderr.matches("invalid_client").count(),
            1,
            "said once: {}",
            out.stderr
        );
        match format {
            "markdown" => {
                assert!(out.stdout.starts_with("## Redeliver audit\n\n**Error:** "));
                assert_eq!(
                    out.stdout.matches("invalid_client").count(),
                    1,
                    "{}",
                    out.stdout
                );
                assert!(!out.stdout.contains("alice"), "{}", out.stdout);
            }
            "junit" => {
                let elements = xml_elements(&out.stdout);
                let suite = elements.iter().find(|e| e.0 == "testsuite").unwrap();
                assert_eq!(attr(suite, "tests"), "1", "{}", out.stdout);
                assert_eq!(attr(suite, "errors"), "1", "{}", out.stdout);
            }
            _ => {
                let report = out.json();
                assert!(report["error"].as_str().unwrap().contains("invalid_client"));
                // Every declaration is an unchecked row, and the counts say so (exit 1).
                let rows = report["rows"].as_array().unwrap();
                assert_eq!(rows.len(), 2, "{report:#}");
                for row in rows {
                    assert_eq!(row["verdict"], "Error", "{row}");
                    assert!(row.get("message").is_none(), "said once: {row}");
                }
                assert_eq!(report["summary"]["errors"], 2, "{report:#}");
                assert_eq!(report["summary"]["total"], 2, "{report:#}");
            }
        }
    }
    assert_eq!(
        sim.request_log()
            .iter()
            .filter(|e| e.path.starts_with("/v1.0/"))
            .count(),
        0,
        "no Graph call without a token"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn a_permission_every_read_needs_is_one_error_not_one_per_row() {
    let sim = Simulator::start(Scenario::demo(), fast()).await.unwrap();
    sim.inject_fault(fault(json!({
        "kind": "error", "status": 403, "method": "GET", "count": 1000,
        "pathPrefix": "/v1.0/identityGovernance"
    })));
    let dir = declarations(&format!(
        "{}{}",
        declaration("alice-finance", "Finance Analysts", "alice@contoso.com", ""),
        declaration(
            "dave-engineering",
            "Engineering Tools",
            "dave@contoso.com",
            ""
        ),
    ));
    let out = audit(&sim, dir.path(), &["-o", "markdown"]).await;
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .starts_with("## Redeliver audit\n\n**Error:** Graph refused the call"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("EntitlementManagement.Read.All"),
        "{}",
        out.stdout
    );
    assert_eq!(
        out.stdout.matches("Graph refused").count(),
        1,
        "{}",
        out.stdout
    );

    let out = audit(&sim, dir.path(), &["-o", "json"]).await;
    assert_eq!(out.code, 1);
    let report = out.json();
    assert!(
        report["error"].as_str().unwrap().contains("forbidden"),
        "{report:#}"
    );
    for row in out.rows() {
        assert_eq!(row["verdict"], "Stalled", "{row}");
        assert!(
            row.get("message").is_none(),
            "not repeated on the row: {row}"
        );
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn graph_refusing_the_token_on_every_read_is_one_error_in_junit() {
    let sim = Simulator::start(Scenario::demo(), fast()).await.unwrap();
    // The token endpoint answers, Graph refuses every token it is shown.
    sim.inject_fault(fault(json!({
        "kind": "error", "status": 401, "method": "GET", "count": 1000, "pathPrefix": "/v1.0/"
    })));
    let dir = declarations(&format!(
        "{}{}",
        declaration("alice-finance", "Finance Analysts", "alice@contoso.com", ""),
        declaration(
            "dave-engineering",
            "Engineering Tools",
            "dave@contoso.com",
            ""
        ),
    ));
    let out = audit(&sim, dir.path(), &["-o", "junit"]).await;
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    let elements = xml_elements(&out.stdout);
    let suite = elements.iter().find(|e| e.0 == "testsuite").unwrap();
    assert_eq!(
        (
            attr(suite, "tests"),
            attr(suite, "failures"),
            attr(suite, "errors")
        ),
        ("1", "0", "1"),
        "{}",
        out.stdout
    );
    let error = elements.iter().find(|e| e.0 == "error").unwrap();
    assert_eq!(attr(error, "type"), "Unavailable");
    assert!(
        out.stdout.contains("every declaration failed this way"),
        "{}",
        out.stdout
    );
    assert_eq!(
        out.stderr
            .matches("every declaration failed this way")
            .count(),
        1,
        "{}",
        out.stderr
    );
    sim.shutdown().await;
}

/// The README's GitHub Actions recipe, its `run:` commands executed by bash as written,
/// against a directory with an invalid declaration: the JUnit file holds an `<error>`, the
/// step summary is not empty, and the step fails with exit code 1 (not 0, not drift's 2).
#[tokio::test]
async fn the_readme_ci_recipe_reports_invalid_declarations_in_both_files() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let recipe = readme
        .split("# GitHub Actions\n")
        .nth(1)
        .expect("the README has a GitHub Actions recipe");
    let script: String = recipe
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("run: |"))
        .skip(1)
        .take_while(|l| l.starts_with("    "))
        .map(|l| format!("{}\n", l.trim_start()))
        .collect();
    assert!(script.contains("redeliver audit"), "{script}");

    let work = tempfile::tempdir().unwrap();
    let decls = work.path().join("declarations");
    std::fs::create_dir(&decls).unwrap();
    std::fs::write(
        decls.join("finance.yaml"),
        "apiVersion: redeliver.dev/v1alpha1\nkind: AccessPackageAssignment\nmetadata: {name: alice, namespace: access}\nspec:\n  accessPackage: {displayName: Finance Analysts}\n  target: {userPrincipalName: alice@contoso.com}\n  verifyIntervall: 5m\n",
    )
    .unwrap();
    let summary = work.path().join("step-summary.md");
    let bin = Path::new(env!("CARGO_BIN_EXE_redeliver")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(work.path())
        .env("PATH", path)
        .env("GITHUB_STEP_SUMMARY", &summary)
        .env("AZURE_TENANT_ID", "00000000-0000-4000-8000-000000000001")
        .env("AZURE_CLIENT_ID", "00000000-0000-4000-8000-000000000002")
        .env(
            "AZURE_CLIENT_SECRET",
            "unused: the declarations are refused first",
        )
        .output()
        .await
        .expect("bash runs the recipe");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let md = std::fs::read_to_string(&summary).unwrap();
    assert!(
        md.starts_with("## Redeliver audit\n\n**Error:** 1 problem(s)"),
        "{md}"
    );
    assert!(md.contains("spec.verifyIntervall"), "{md}");
    let xml = std::fs::read_to_string(work.path().join("redeliver-junit.xml")).unwrap();
    let elements = xml_elements(&xml);
    let suite = elements.iter().find(|e| e.0 == "testsuite").unwrap();
    assert_eq!(attr(suite, "errors"), "1", "{xml}");
    assert!(elements.iter().any(|e| e.0 == "error"), "{xml}");
    assert!(xml.contains("finance.yaml:7"), "{xml}");
}
