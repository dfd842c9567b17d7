//! Secret hygiene: every log line of a full run (the audit process at trace level, and an
//! in-process run under a trace-level subscriber that also sees the HTTP stack and the
//! simulator) is free of the client secret, the federated token and every access token the
//! token endpoint issued.

use std::time::Duration;

use crate::fault_support::*;
use redeliver::engine::{self, Action, EngineSettings, Write};
use redeliver::observe::Observer;
use redeliver_sim::{Scenario, SimHandle, SimOptions, Simulator};

const ASSERTION: &str = "eyJhbGciOiJSUzI1NiJ9.federated-sa-token-KNOWN-VALUE.c2lnbmF0dXJl";

/// Asserts `text` holds none of the secrets, and that it is a real log (not empty).
fn assert_clean(text: &str, sim: &SimHandle, extra: &[&str]) {
    let tokens = sim.issued_tokens();
    assert!(!tokens.is_empty(), "the run obtained tokens");
    for token in &tokens {
        assert!(
            !text.contains(token.as_str()),
            "an access token appears in the log"
        );
    }
    assert!(
        !text.contains(&sim.client_secret),
        "the client secret appears in the log"
    );
    for secret in extra {
        assert!(!text.contains(secret), "{secret:?} appears in the log");
    }
    // Not even a prefix long enough to replay: `sim.` tokens are 40+ characters.
    for token in &tokens {
        let prefix = &token[..token.len().min(16)];
        assert!(!text.contains(prefix), "a token prefix appears in the log");
    }
}

#[tokio::test]
async fn audit_process_at_trace_level_logs_no_secret_or_token() {
    let sim = Simulator::start(
        Scenario::demo(),
        SimOptions {
            // Short-lived tokens, so the run fetches several.
            token_lifetime: Duration::from_secs(1),
            ..fast()
        },
    )
    .await
    .unwrap();
    let dir = declarations(
        &(declaration("alice-finance", "Finance Analysts", "alice@contoso.com", "")
            + &declaration("carol-finance", "Finance Analysts", "carol@contoso.com", "")
            + &guard("finance", "Finance Analysts")),
    );
    let mut cmd = audit_command(
        &sim,
        dir.path(),
        &[
            "--reprocess",
            "--wait",
            "30s",
            // A whole second between passes: the run must outlive a token (1 s, the
            // shortest the simulator issues) to fetch another.
            "--poll-interval",
            "1s",
        ],
    );
    cmd.env("REDELIVER_LOG", "trace");
    let out = run(cmd).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("graph http exchange"),
        "trace logging was on: {}",
        &out.stderr[..out.stderr.len().min(2000)]
    );
    assert!(
        sim.issued_tokens().len() >= 2,
        "tokens expired and were refreshed during the run"
    );
    assert_clean(&format!("{}\n{}", out.stdout, out.stderr), &sim, &[]);
    sim.shutdown().await;
}

#[tokio::test]
async fn audit_process_with_workload_identity_logs_no_assertion() {
    let mut scenario = Scenario::demo();
    scenario.spec.client.assertion = Some(ASSERTION.into());
    let sim = Simulator::start(scenario, fast()).await.unwrap();
    let dir = declarations(&declaration(
        "alice-finance",
        "Finance Analysts",
        "alice@contoso.com",
        "",
    ));
    let token_dir = tempfile::tempdir().unwrap();
    let file = token_dir.path().join("token");
    std::fs::write(&file, ASSERTION).unwrap();
    let mut cmd = reprocess_command(&sim, dir.path(), "30s", &[]);
    cmd.env_remove("AZURE_CLIENT_SECRET")
        .env("AZURE_FEDERATED_TOKEN_FILE", &file)
        .env("REDELIVER_LOG", "trace");
    let out = run(cmd).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_clean(
        &format!("{}\n{}", out.stdout, out.stderr),
        &sim,
        &[ASSERTION, "federated-sa-token-KNOWN-VALUE"],
    );

    // A refused assertion is reported without echoing it.
    std::fs::write(&file, "eyJ.a-wrong-assertion-value.sig").unwrap();
    let mut cmd = audit_command(&sim, dir.path(), &[]);
    cmd.env_remove("AZURE_CLIENT_SECRET")
        .env("AZURE_FEDERATED_TOKEN_FILE", &file)
        .env("REDELIVER_LOG", "trace");
    let out = run(cmd).await;
    assert_eq!(out.code, 1);
    let all = format!("{}\n{}", out.stdout, out.stderr);
    assert!(all.contains("700213"), "{all}");
    assert!(!all.contains("a-wrong-assertion-value"), "{all}");
    sim.shutdown().await;
}

#[test]
fn in_process_run_under_a_trace_subscriber_logs_no_secret_or_token() {
    under_trace_capture(|capture| async move {
        let mut scenario = Scenario::demo();
        scenario.spec.client.assertion = Some(ASSERTION.into());
        let sim = Simulator::start(scenario, fast()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, ASSERTION).unwrap();
        // Two clients: one with the secret, one with the federated token.
        let with_secret = client_with(&sim, |_| {});
        let federated = minimal_client(&sim, Some(&file));
        for client in [with_secret, federated] {
            let observer = Observer::new(client, 4);
            let apa: redeliver::api::AccessPackageAssignment = serde_norway::from_str(
                "apiVersion: redeliver.dev/v1alpha1\nkind: AccessPackageAssignment\nmetadata: {name: alice, namespace: access}\nspec:\n  accessPackage: {displayName: Finance Analysts}\n  target: {userPrincipalName: alice@contoso.com}\n",
            )
            .unwrap();
            let package = observer
                .resolve_package_id(&apa.spec.access_package)
                .await
                .unwrap();
            let view = observer.package_view(&package).await.unwrap();
            let target = observer.resolve_target(&apa.spec.target).await.unwrap();
            let mut snapshot = observer.snapshot(view.resources.iter()).await;
            crate::fault_support::confirm_target(&observer, &mut snapshot, &target).await;
            let assignment = view.assignment_for(&target);
            let plan = engine::plan_assignment(
                &engine::AssignmentInput {
                    generation: None,
                    spec: &apa.spec,
                    previous: None,
                    reprocess_annotation: None,
                    resolved: Ok(engine::ResolvedIds {
                        access_package_id: package.clone(),
                        access_package_name: view.package.display_name.clone(),
                        policy: Observer::resolve_policy(&view, None),
                        target_object_id: target.clone(),
                        target_name: None,
                    }),
                    assignment: assignment.as_ref(),
                    latest_request: None,
                    resources: &view.resources,
                    snapshot: &snapshot,
                    settings: &EngineSettings::default(),
                    ledger: &engine::ledger::RepairLedger::new(),
                    who: "AccessPackageAssignment test/alice",
                    operator_report_only: false,
                    safety: &redeliver::engine::SafetyPolicy::default(),
                    mass_drift: None,
                },
                jiff::Timestamp::now(),
            );
            if let Action::Write(Write::ReprocessAssignment { assignment_id }) = &plan.action {
                observer
                    .graph()
                    .reprocess_assignment(assignment_id)
                    .await
                    .unwrap();
            }
            // A token refresh forced by Graph (401), and a refused call, also logged.
            sim.advance_clock(Duration::from_secs(7200));
            observer.graph().get_user("bob@contoso.com").await.unwrap();
            let _ = observer.graph().get_user("nobody@contoso.com").await;
        }
        assert!(
            sim.settle(Duration::from_secs(10)).await,
            "the repair lands"
        );
        assert!(sim.is_member("fin-writers", "alice@contoso.com"));
        let text = capture.text();
        assert!(
            text.contains("graph http exchange"),
            "the client logged at debug"
        );
        assert!(text.contains("TRACE"), "trace events were captured");
        assert!(sim.issued_tokens().len() >= 4, "both clients refreshed");
        assert_clean(&text, &sim, &[ASSERTION, "federated-sa-token-KNOWN-VALUE"]);
        sim.shutdown().await;
    });
}

#[tokio::test]
async fn simulate_mode_at_trace_level_logs_no_secret_or_token() {
    // The embedded simulator and the client share one process and one log here.
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    // The demo repairs everything but frank's access, which stays held (his account is
    // disabled): exit 2, not delivered, nothing broken.
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_redeliver"));
    for var in CLEARED_ENV {
        cmd.env_remove(var);
    }
    cmd.env("REDELIVER_LOG", "trace")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .args(["audit", "--no-progress", "--simulate", "--reprocess"])
        .args(["--poll-interval", POLL_INTERVAL, "-f"])
        .arg(&examples)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = run(cmd).await;
    assert_eq!(out.code, 2, "{}\n{}", out.stdout, out.stderr);
    let all = format!("{}\n{}", out.stdout, out.stderr);
    assert!(all.contains("graph http exchange"), "trace logging was on");
    let secret = Scenario::demo().spec.client.secret.expect("demo secret");
    assert!(!all.contains(&secret), "the demo client secret appears");
    // Simulator tokens are `sim.` followed by 48 alphanumerics.
    let leaked = all.match_indices("sim.").any(|(i, _)| {
        all[i + 4..]
            .chars()
            .take_while(char::is_ascii_alphanumeric)
            .count()
            >= 24
    });
    assert!(!leaked, "an access token appears in the log");
}

#[test]
fn decoded_token_responses_never_debug_print_the_token() {
    let t: redeliver::graph::models::TokenResponse = serde_json::from_str(
        r#"{"token_type":"Bearer","expires_in":3599,"access_token":"eyJ0eXAi.SECRET-TOKEN.sig"}"#,
    )
    .unwrap();
    let printed = format!("{t:?} {t:#?}");
    assert!(!printed.contains("SECRET-TOKEN"), "{printed}");
    assert!(
        printed.contains("3599"),
        "the rest stays debuggable: {printed}"
    );
}
