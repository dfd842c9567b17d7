//! `kubectl-redeliver` as a real process against the in-process Kubernetes API server
//! (`redeliver_fake_kube`), through a kubeconfig file written to a temp dir:
//!
//! - `status` and `drift` render what the server holds, in the kubeconfig context's
//!   namespace, in `-n`, with `-A`, and in another `--context`; a missing object and an
//!   unknown kind are errors naming them;
//! - `reprocess --wait` against the real controller (in-process, Graph simulator over HTTP)
//!   returns once the controller echoes the request, and exactly one reprocess call results
//!   (none before, none after);
//! - without a controller `--wait` times out, exits 1 and says what it waited for; a guard
//!   takes the annotation but refuses `--wait`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use redeliver::controller::Settings;
use redeliver_fake_kube::FakeKube;
use redeliver_sim::{Scenario, SimOptions, Simulator};
use serde_json::{Value, json};

use crate::controller_support::{Controller, operator_context};
use crate::fault_support::{reprocess_calls, reprocess_calls_of};

const NS: &str = "access";
const APA: &str = "accesspackageassignments";
const APG: &str = "accesspackageguards";
const ANNOTATION: &str = "redeliver.dev/reprocess-requested-at";

fn cond(type_: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({"type": type_, "status": status, "reason": reason, "message": message,
           "lastTransitionTime": "2026-01-01T00:00:00Z"})
}

fn assignment(name: &str, namespace: &str, mode: &str, status: Option<Value>) -> Value {
    let mut o = json!({
        "apiVersion": "redeliver.dev/v1alpha1", "kind": "AccessPackageAssignment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "accessPackage": {"displayName": "Finance Analysts", "catalog": "Finance"},
            "target": {"userPrincipalName": "alice@contoso.com"},
            "reprocess": {"mode": mode, "maxAttempts": 3, "cooldown": "5m"}
        }
    });
    if let Some(s) = status {
        o["status"] = s;
    }
    o
}

fn drifted_status() -> Value {
    json!({
        "accessPackageName": "Finance Analysts",
        "targetName": "alice@contoso.com",
        "graphState": "delivered", "graphStatus": "Delivered",
        "resourcesSummary": "1/2",
        "resources": [
            {"originSystem": "AadGroup", "originId": "g1", "displayName": "fin-readers",
             "role": "Member", "state": "Present"},
            {"originSystem": "AadGroup", "originId": "g2", "displayName": "fin-writers",
             "role": "Member", "state": "Missing"}
        ],
        "reprocess": {"attempts": 0},
        "conditions": [cond("Delivered", "False", "ResourcesMissing", "fin-writers (Member) is missing"),
                       cond("Ready", "False", "ReportOnly", "drift reported")]
    })
}

fn guard(name: &str, namespace: &str, status: Option<Value>) -> Value {
    let mut o = json!({
        "apiVersion": "redeliver.dev/v1alpha1", "kind": "AccessPackageGuard",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"accessPackage": {"id": "9f1c0c7e-0000-4000-8000-000000000001"}}
    });
    if let Some(s) = status {
        o["status"] = s;
    }
    o
}

/// A kubeconfig with two contexts on the fake server: `fake` (current, namespace `access`)
/// and `other` (namespace `elsewhere`).
fn kubeconfig(dir: &Path, server: &str) -> PathBuf {
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\n\
         clusters:\n- name: fake\n  cluster:\n    server: {server}\n\
         users:\n- name: nobody\n  user: {{}}\n\
         contexts:\n\
         - name: fake\n  context:\n    cluster: fake\n    user: nobody\n    namespace: {NS}\n\
         - name: other\n  context:\n    cluster: fake\n    user: nobody\n    namespace: elsewhere\n\
         current-context: fake\n"
    );
    std::fs::write(&path, text).expect("write kubeconfig");
    path
}

struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the plugin with `KUBECONFIG` pointing at `config` (and nothing else of the
/// machine's: HOME is a temp dir, so no real ~/.kube/config is read).
async fn plugin(config: &Path, args: &[&str]) -> Output {
    let home = config.parent().unwrap_or(config);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-redeliver"))
        .args(args)
        .env("KUBECONFIG", config)
        .env("HOME", home)
        .kill_on_drop(true)
        .output()
        .await
        .expect("run kubectl-redeliver");
    Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test]
async fn status_and_drift_render_what_the_server_holds() {
    let guard_status = json!({
        "accessPackageName": "Finance Analysts",
        "assignments": {"total": 2, "delivered": 1, "drifted": 1},
        "drifted": [{"target": "carol@contoso.com", "assignmentId": "a-2",
                     "missing": ["fin-readers (Member)"], "since": "2026-01-01T00:00:00Z"}],
        "conditions": [cond("Delivered", "False", "ResourcesMissing", "1 drifted")]
    });
    let delivered = json!({"conditions": [cond("Delivered", "True", "Delivered", "")]});
    let kube = FakeKube::start(vec![
        assignment("alice-finance", NS, "Manual", Some(drifted_status())),
        assignment("bob-finance", NS, "Auto", Some(delivered.clone())),
        guard("finance", "ops", Some(guard_status)),
        guard("quiet", "elsewhere", Some(delivered)),
    ])
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = kubeconfig(dir.path(), &kube.url());

    // The context's namespace, then -n, then the full plural kind name.
    for args in [
        &["status", "apa/alice-finance"][..],
        &["status", "accesspackageassignments/alice-finance", "-n", NS][..],
        &["status", "accesspackageassignment", "alice-finance"][..],
    ] {
        let out = plugin(&config, args).await;
        assert_eq!(out.code, Some(0), "{args:?}: {}", out.stderr);
        assert!(
            out.stdout
                .starts_with("AccessPackageAssignment access/alice-finance\n"),
            "{}",
            out.stdout
        );
        for want in [
            "│  └─ Delivered  False    ResourcesMissing: fin-writers (Member) is missing\n",
            "│  └─ Missing  AadGroup  fin-writers (Member)\n",
            "├─ Reprocess\n│  └─ attempts: 0 of 3 (mode Manual, cooldown 5m)\n",
        ] {
            assert!(out.stdout.contains(want), "{want:?} in\n{}", out.stdout);
        }
    }
    let out = plugin(&config, &["status", "apg/finance", "-n", "ops"]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stdout
            .contains("carol@contoso.com (assignment a-2): Missing fin-readers (Member)"),
        "{}",
        out.stdout
    );

    let out = plugin(&config, &["status", "apa/nope"]).await;
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr
            .contains("accesspackageassignment \"nope\" not found in namespace \"access\""),
        "{}",
        out.stderr
    );
    let out = plugin(&config, &["status", "pod/x"]).await;
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("unknown kind \"pod\""),
        "{}",
        out.stderr
    );

    let out = plugin(&config, &["drift"]).await;
    assert_eq!(out.code, Some(2), "drift found: {}", out.stderr);
    assert_eq!(
        out.stdout,
        "OBJECT              DELIVERED   REASON             MISSING\n\
         apa/alice-finance   False       ResourcesMissing   fin-writers (Member)\n"
    );
    let out = plugin(&config, &["drift", "-A"]).await;
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    assert!(
        lines[1].starts_with("access      apa/alice-finance"),
        "{}",
        out.stdout
    );
    assert!(
        lines[2].starts_with("ops         apg/finance")
            && lines[2].ends_with("carol@contoso.com: fin-readers (Member)"),
        "{}",
        out.stdout
    );
    let out = plugin(&config, &["drift", "--context", "other"]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(
        out.stdout,
        "Every AccessPackageAssignment and AccessPackageGuard in namespace \"elsewhere\" is Delivered (1 objects).\n"
    );
}

#[tokio::test]
async fn reprocess_wait_times_out_naming_what_it_waited_for_and_guards_refuse_wait() {
    let kube = FakeKube::start(vec![
        assignment("alice-finance", NS, "Manual", Some(drifted_status())),
        guard("finance", NS, None),
    ])
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = kubeconfig(dir.path(), &kube.url());

    let started = Instant::now();
    let out = plugin(
        &config,
        &[
            "reprocess",
            "apa/alice-finance",
            "--wait",
            "--timeout",
            // The shortest --timeout there is: nothing will echo here, so any wait is waited
            // in full.
            "1s",
        ],
    )
    .await;
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    assert!(started.elapsed() < Duration::from_secs(20));
    let stored = kube.object(APA, NS, "alice-finance").unwrap();
    let value = stored["metadata"]["annotations"][ANNOTATION]
        .as_str()
        .expect("the annotation is set")
        .to_string();
    assert!(
        out.stdout
            .contains(&format!("reprocess requested ({ANNOTATION}={value})")),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains(&format!(
            "timed out after 1s waiting for accesspackageassignment \"alice-finance\" in namespace \"access\" to echo \"{value}\" in its status's lastHandledRequest (it holds nothing)"
        )),
        "{}",
        out.stderr
    );

    // A guard echoes the request too (status.lastHandledRequest); with no controller
    // running here, --wait times out saying what it waited for.
    let out = plugin(
        &config,
        &["reprocess", "apg/finance", "--wait", "--timeout", "1s"],
    )
    .await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("waiting for accesspackageguard \"finance\" in namespace \"access\" to echo"),
        "{}",
        out.stderr
    );
    assert!(
        kube.object(APG, NS, "finance").unwrap()["metadata"]["annotations"][ANNOTATION].is_string(),
        "the request was made before waiting"
    );
    let out = plugin(&config, &["reprocess", "apa/gone"]).await;
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr
            .contains("accesspackageassignment \"gone\" not found in namespace \"access\""),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn ack_annotates_a_guard_or_a_connection_and_says_what_resumes() {
    const ACK: &str = "redeliver.dev/mass-drift-acknowledged-at";
    let tripped = json!({
        "massDrift": {"trippedTime": "2026-12-04T10:00:00Z", "drifted": 300, "delivered": 1000},
        "conditions": [cond("Stalled", "True", "MassDrift", "Mass drift: 300 of 1000")]
    });
    let connection = json!({
        "apiVersion": "redeliver.dev/v1alpha1", "kind": "ClusterGraphConnection",
        "metadata": {"name": "contoso"},
        "spec": {"tenantId": "contoso.onmicrosoft.com",
                 "clientId": "5e1d0c77-3f5a-4b8e-a0c1-7ed1e0e00001",
                 "credential": {"clientSecret": {"name": "graph"}}}
    });
    let kube = FakeKube::start(vec![guard("finance", NS, Some(tripped)), connection])
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = kubeconfig(dir.path(), &kube.url());

    let out = plugin(&config, &["ack", "apg/finance", "-n", NS]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let value = kube.object(APG, NS, "finance").unwrap()["metadata"]["annotations"][ACK]
        .as_str()
        .expect("the annotation is set")
        .to_string();
    assert!(
        out.stdout
            .contains(&format!("mass drift acknowledged ({ACK}={value})")),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("on 300 of 1000 delivered assignments"),
        "{}",
        out.stdout
    );

    // A cluster-scoped connection: every tripped package of its declared assignments.
    let out = plugin(&config, &["ack", "cgconn/contoso"]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let stored = kube
        .object("clustergraphconnections", "", "contoso")
        .expect("the connection is stored");
    assert!(
        stored["metadata"]["annotations"][ACK].is_string(),
        "{stored}"
    );

    // Assignments are acknowledged through their guard or connection, not one by one.
    let out = plugin(&config, &["ack", "apa/alice-finance"]).await;
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr.contains("use apg/NAME (a guard), gconn/NAME"),
        "{}",
        out.stderr
    );
    let out = plugin(&config, &["ack", "gconn/missing", "-n", NS]).await;
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr.contains("graphconnection \"missing\" not found"),
        "{}",
        out.stderr
    );
}

async fn wait_until(what: &str, timeout: Duration, done: impl FnMut() -> bool) {
    crate::wait::until(what, timeout, done).await
}

/// The real controller, in-process (as `controller_ledger` runs it), sees the annotation the
/// plugin sets, reprocesses once and echoes it; `--wait` returns on that echo.
#[tokio::test]
async fn reprocess_wait_returns_after_exactly_one_reprocess_by_the_controller() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sim = Simulator::start(Scenario::demo(), SimOptions::fast())
        .await
        .unwrap();
    let id = sim
        .assignment_id("alice@contoso.com", "Finance Analysts")
        .unwrap()
        .to_ascii_lowercase();
    // Manual: the controller reports alice's drift and waits for a human.
    let kube = FakeKube::start(vec![assignment("alice-finance", NS, "Manual", None)])
        .await
        .unwrap();
    let settings = Settings {
        poll_interval: Duration::from_millis(250),
        observation_max_age: Duration::from_millis(200),
        ..crate::controller_support::settings()
    };
    let running = Controller::spawn(operator_context(&kube, &sim, NS, &settings), Vec::new(), 4);
    let reported = || {
        let s = kube
            .object(APA, NS, "alice-finance")
            .map(|o| o["status"].clone())
            .unwrap_or(Value::Null);
        s["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Delivered" && c["reason"] == "ResourcesMissing")
        })
    };
    wait_until(
        "the controller reports alice's drift",
        Duration::from_secs(30),
        reported,
    )
    .await;
    assert_eq!(
        reprocess_calls(&sim, false).values().sum::<usize>(),
        0,
        "Manual mode sends nothing by itself"
    );

    reprocess_wait_returns_once_the_request_is_handled(&kube).await;
    let calls = || reprocess_calls_of(&sim, &id);
    // The controller records the reprocess in status just before it calls Graph (so that a
    // crash in between never sends it twice): the echo can precede the call by moments.
    wait_until(
        "the reprocess reaches Graph",
        Duration::from_secs(10),
        || calls() > 0,
    )
    .await;
    assert_eq!(calls(), 1, "one request, one reprocess");
    // More passes (the re-checks after the repair) send no second one.
    // Three reconciles: the first verification, the one the request triggered (which sent
    // the reprocess) and the re-check one poll interval after it, which finds the repair.
    wait_until(
        "the re-check after the repair",
        Duration::from_secs(20),
        || running.reconciled("AccessPackageAssignment") >= 3,
    )
    .await;
    assert_eq!(calls(), 1, "still one reprocess");
    assert_eq!(reprocess_calls(&sim, false).values().sum::<usize>(), 1);

    running.stop().await;
    sim.shutdown().await;
}

/// `kubectl redeliver reprocess apa/alice-finance --wait` against the running controller:
/// exits 0 once the controller has handled the request it annotated, saying so.
async fn reprocess_wait_returns_once_the_request_is_handled(kube: &FakeKube) {
    let dir = tempfile::tempdir().unwrap();
    let config = kubeconfig(dir.path(), &kube.url());
    let out = plugin(
        &config,
        &[
            "reprocess",
            "apa/alice-finance",
            "--wait",
            "--timeout",
            "60s",
        ],
    )
    .await;
    assert_eq!(
        out.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    let stored = kube.object(APA, NS, "alice-finance").unwrap();
    let value = stored["metadata"]["annotations"][ANNOTATION]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        out.stdout.contains(&format!(
            "accesspackageassignment access/alice-finance: reprocess request \"{value}\" handled; outcome "
        )),
        "{}",
        out.stdout
    );
    assert_eq!(stored["status"]["reprocess"]["lastHandledRequest"], value);
}

/// Usage errors exit 64 (not 2, which is drift) and name the flag; nothing is sent.
#[tokio::test]
async fn usage_errors_exit_64_and_are_told_apart_from_drift() {
    let kube = FakeKube::start(vec![assignment("alice-finance", NS, "Manual", None)])
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = kubeconfig(dir.path(), &kube.url());
    let before = kube.counts();
    for (args, says) in [
        (&["drift", "-A", "-n", NS][..], "cannot be used together"),
        (
            &["reprocess", "apa/alice-finance", "--timeout", "5s"][..],
            "--wait",
        ),
        (
            &[
                "reprocess",
                "apa/alice-finance",
                "--wait",
                "--timeout",
                "banana",
            ][..],
            "banana",
        ),
        (&["status"][..], "<OBJECT>"),
        (&["drift", "--bogus"][..], "--bogus"),
    ] {
        let out = plugin(&config, args).await;
        assert_eq!(out.code, Some(64), "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(says), "{args:?}: {}", out.stderr);
    }
    assert_eq!(
        redeliver_fake_kube::writes(&redeliver_fake_kube::diff(&kube.counts(), &before)),
        0,
        "a usage error writes nothing"
    );
    let out = plugin(&config, &["--help"]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
}

/// `drift -n` for a namespace that does not exist is an error, not "everything delivered".
#[tokio::test]
async fn drift_in_a_namespace_that_does_not_exist_is_an_error() {
    let kube = FakeKube::start(vec![assignment("alice-finance", NS, "Manual", None)])
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = kubeconfig(dir.path(), &kube.url());
    let out = plugin(&config, &["drift", "-n", "no-such-namespace"]).await;
    assert_eq!(out.code, Some(1), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr
            .contains("namespace \"no-such-namespace\" does not exist"),
        "{}",
        out.stderr
    );
    assert!(!out.stdout.contains("is Delivered"), "{}", out.stdout);
}

/// A refused connection names the server and does not blame the CRDs; the OS error is said
/// once.
#[tokio::test]
async fn a_refused_connection_is_not_blamed_on_the_crds() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let dir = tempfile::tempdir().unwrap();
    let config = kubeconfig(dir.path(), &format!("http://127.0.0.1:{port}"));
    let out = plugin(&config, &["drift", "-A"]).await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(!out.stderr.contains("CRDs"), "{}", out.stderr);
    assert!(
        out.stderr.starts_with(&format!(
            "error: cannot reach the Kubernetes API server at http://127.0.0.1:{port}/"
        )),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("cannot list accesspackageassignments"),
        "{}",
        out.stderr
    );
    let refused = out
        .stderr
        .to_lowercase()
        .matches("connection refused")
        .count();
    assert_eq!(refused, 1, "said once: {}", out.stderr);
    assert!(
        !out.stderr.contains('\u{1b}'),
        "no colour when piped: {}",
        out.stderr
    );
}

/// `status` names the operator's own `--verify-interval`, read from its Deployment, for an
/// object that sets none (it said "default 10m" whatever the operator ran with).
#[tokio::test]
async fn status_reads_the_operators_verify_interval_from_its_deployment() {
    let kube = FakeKube::start(vec![assignment(
        "alice-finance",
        NS,
        "Manual",
        Some(drifted_status()),
    )])
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = kubeconfig(dir.path(), &kube.url());
    let out = plugin(&config, &["status", "apa/alice-finance"]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stdout.contains(
            "10m unless the operator is run with another; its Deployment could not be read"
        ),
        "{}",
        out.stdout
    );
    kube.put(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "redeliver", "namespace": "redeliver-system"},
        "spec": {"selector": {"matchLabels": {"app": "redeliver"}},
                 "template": {"metadata": {"labels": {"app": "redeliver"}},
                              "spec": {"containers": [{"name": "controller", "image": "redeliver",
                                       "args": ["controller", "--verify-interval=1h"]}]}}}
    }))
    .unwrap();
    let out = plugin(&config, &["status", "apa/alice-finance"]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stdout.contains(
            "within the operator's --verify-interval, 1h (Deployment redeliver-system/redeliver), of the last one"
        ),
        "{}",
        out.stdout
    );
}
