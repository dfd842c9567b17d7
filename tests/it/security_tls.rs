//! Transport security and least privilege, end to end through the audit binary: HTTPS
//! with the simulator's private CA works only when that CA is configured; plain http is
//! refused for anything but loopback before a connection is made; a 403 names the
//! permission to grant for every family of calls.

use crate::fault_support::*;
use redeliver::graph::GraphSettings;
use redeliver_sim::{Scenario, SimOptions, Simulator, TlsOptions};
use serde_json::json;

#[tokio::test]
async fn tls_simulator_is_trusted_only_with_its_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("sim-ca.pem");
    let sim = Simulator::start(
        Scenario::demo(),
        SimOptions {
            tls: Some(TlsOptions {
                ca_out: Some(ca.clone()),
            }),
            ..fast()
        },
    )
    .await
    .unwrap();
    assert!(sim.graph_url.starts_with("https://"));
    let decls = declarations(&declaration(
        "alice-finance",
        "Finance Analysts",
        "alice@contoso.com",
        "",
    ));

    // Without the CA: the handshake fails, nothing reaches the simulator, no repair. No
    // retry can fix an unknown CA, so it fails at once and says which flag to set, in
    // plain text (stderr is not a terminal here).
    let started = std::time::Instant::now();
    let out = audit(&sim, decls.path(), &["--reprocess", "-o", "json"]).await;
    let took = started.elapsed();
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    let all = format!("{}{}", out.stdout, out.stderr).to_lowercase();
    assert!(all.contains("certificate"), "names the TLS failure: {all}");
    assert!(out.stderr.contains("not retried"), "{}", out.stderr);
    assert!(
        out.stderr.contains("--ca-file or REDELIVER_CA_FILE"),
        "names what to set: {}",
        out.stderr
    );
    assert!(!out.stderr.contains('\u{1b}'), "no colour: {}", out.stderr);
    assert!(
        !out.stderr.contains("rustls"),
        "said once, by Redeliver: {}",
        out.stderr
    );
    assert!(
        took < std::time::Duration::from_secs(5),
        "fails fast (it took 13 s of retries before): {took:?}"
    );
    assert!(
        sim.request_log().is_empty(),
        "no request was sent over an unverified connection"
    );
    assert!(!sim.is_member("fin-writers", "alice@contoso.com"));

    // With it: the full repair over HTTPS.
    let mut cmd = reprocess_command(&sim, decls.path(), "20s", &[]);
    cmd.env("REDELIVER_CA_FILE", &ca);
    let out = run(cmd).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(sim.is_member("fin-writers", "alice@contoso.com"));
    sim.shutdown().await;
}

#[test]
fn plain_http_is_refused_for_every_non_loopback_spelling() {
    let with = |graph: &str, authority: &str| {
        GraphSettings {
            tenant_id: Some("contoso.onmicrosoft.com".into()),
            client_id: Some("5e1d0c77-3f5a-4b8e-a0c1-7ed1e0e00001".into()),
            client_secret: Some(redeliver::graph::Secret::new("s")),
            graph_url: graph.into(),
            authority_host: authority.into(),
            ..GraphSettings::with_defaults()
        }
        .validate()
    };
    let https = "https://login.microsoftonline.com";
    for url in [
        "http://graph.microsoft.com",
        "http://10.0.0.1",
        "http://127.0.0.1.nip.io",
        "http://localhost.attacker.example",
        "http://[::ffff:127.0.0.1]",
        "http://0.0.0.0",
        "HTTP://GRAPH.MICROSOFT.COM",
    ] {
        let e = with(url, https).expect_err(url);
        assert!(e.to_string().contains("refusing plain http"), "{url}: {e}");
        let e = with("https://graph.microsoft.com", url).expect_err(url);
        assert!(e.to_string().contains("refusing plain http"), "{url}: {e}");
    }
    for url in [
        "http://127.0.0.1:8080",
        "http://127.1.2.3",
        "http://localhost:1",
        "http://[::1]:8080",
    ] {
        with(url, url).unwrap_or_else(|e| panic!("{url}: {e}"));
    }
    for url in ["ftp://graph.microsoft.com", "file:///etc/passwd"] {
        assert!(with(url, https).is_err(), "{url}");
    }
}

#[tokio::test]
async fn audit_refuses_plain_http_to_a_remote_graph_before_connecting() {
    let sim = Simulator::start(Scenario::demo(), fast()).await.unwrap();
    let decls = declarations(&declaration(
        "alice-finance",
        "Finance Analysts",
        "alice@contoso.com",
        "",
    ));
    let mut cmd = audit_command(&sim, decls.path(), &["--reprocess"]);
    // A name that does not resolve: if the process tried to connect, the error would say so.
    cmd.env("REDELIVER_GRAPH_URL", "http://graph.invalid");
    let out = run(cmd).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("refusing plain http"), "{}", out.stderr);
    assert!(
        sim.request_log().is_empty(),
        "not even a token was requested"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn forbidden_names_the_permission_for_every_call_family() {
    let cases = [
        (
            json!({"kind": "error", "status": 403, "pathPrefix": "/identityGovernance", "method": "GET", "count": 1000}),
            "EntitlementManagement.Read.All",
        ),
        (
            json!({"kind": "error", "status": 403, "pathPrefix": "/v1.0/users", "count": 1000}),
            "User.Read.All",
        ),
        (
            json!({"kind": "error", "status": 403, "pathPrefix": "/v1.0/servicePrincipals", "count": 1000}),
            "Application.Read.All",
        ),
        (
            json!({"kind": "error", "status": 403, "pathPrefix": "/identityGovernance", "method": "POST", "count": 1000}),
            "EntitlementManagement.ReadWrite.All",
        ),
    ];
    let sim = Simulator::start(Scenario::demo(), fast()).await.unwrap();
    let decls = declarations(&declaration(
        "alice-finance",
        "Finance Analysts",
        "alice@contoso.com",
        "",
    ));
    for (spec, permission) in cases {
        sim.reset().unwrap();
        sim.inject_fault(fault(spec));
        let out = audit(
            &sim,
            decls.path(),
            &[
                "--reprocess",
                "--wait",
                "2s",
                "--poll-interval",
                crate::fault_support::POLL_INTERVAL,
            ],
        )
        .await;
        assert_eq!(out.code, 1, "{permission}: {}", out.stdout);
        assert!(
            out.stdout.contains(permission) || out.stderr.contains(permission),
            "{permission} is named:\n{}\n{}",
            out.stdout,
            out.stderr
        );
        assert!(
            !out.stdout.contains("Delivered  "),
            "never claims delivered: {}",
            out.stdout
        );
        assert_eq!(
            sim.is_member("fin-writers", "alice@contoso.com"),
            permission == "Application.Read.All",
            "{permission}: only a certain drift is repaired\n{}",
            out.stdout
        );
    }
    sim.shutdown().await;
}

/// A refused connection is retried (a server may be restarting), then said with the URL,
/// how long it tried and what to check.
#[tokio::test]
async fn a_refused_connection_says_where_how_long_and_what_to_check() {
    let sim = Simulator::start(Scenario::demo(), fast()).await.unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let decls = declarations(&declaration(
        "alice-finance",
        "Finance Analysts",
        "alice@contoso.com",
        "",
    ));
    let mut cmd = audit_command(&sim, decls.path(), &["--max-retries", "2"]);
    let url = format!("http://127.0.0.1:{port}");
    cmd.env("AZURE_AUTHORITY_HOST", &url)
        .env("REDELIVER_GRAPH_URL", &url)
        .env("NO_COLOR", "1");
    let out = run(cmd).await;
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains(&format!("127.0.0.1:{port}")),
        "names the URL: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("tried 3 time(s) over"),
        "says how long: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("check the URL"),
        "says what to check: {}",
        out.stderr
    );
    sim.shutdown().await;
}

/// A host name that does not resolve cannot start resolving on a retry: it fails at once
/// and names the flags that hold the host.
#[test]
fn a_host_that_does_not_resolve_fails_at_once_naming_the_flags() {
    let dir = declarations(&declaration(
        "alice-finance",
        "Finance Analysts",
        "alice@contoso.com",
        "",
    ));
    let started = std::time::Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_redeliver"))
        .args(["audit", "--no-progress", "-f"])
        .arg(dir.path())
        .env("AZURE_TENANT_ID", "00000000-0000-4000-8000-000000000001")
        .env("AZURE_CLIENT_ID", "00000000-0000-4000-8000-000000000002")
        .env("AZURE_CLIENT_SECRET", "unused")
        .env("AZURE_AUTHORITY_HOST", "https://login.nonexistent.invalid")
        .env("REDELIVER_GRAPH_URL", "https://graph.nonexistent.invalid")
        .env_remove("REDELIVER_CA_FILE")
        .output()
        .expect("run redeliver audit");
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("not retried: the host name does not resolve"),
        "{stderr}"
    );
    assert!(
        stderr.contains("--authority-host (AZURE_AUTHORITY_HOST)"),
        "{stderr}"
    );
    // One lookup, not five retries with backoff (a resolver that times out may take a
    // few seconds for the one).
    assert!(took < std::time::Duration::from_secs(15), "{took:?}");
}
