//! Throttling storms against the simulator over real HTTP: `Retry-After` is honoured
//! (measured from the simulator's own arrival times), retries are bounded, every drift is
//! still repaired afterwards, and no assignment is reprocessed twice for one drift.

use std::time::Duration;

use crate::fault_support::*;
use redeliver::observe::Observer;
use redeliver_sim::{LogEntry, Scenario, SimHandle, Simulator};
use serde_json::json;

/// Every request in a throttled scope that arrived after a 429 was answered came no
/// earlier than that 429's `Retry-After`. `slack_ms` allows for requests already in flight
/// when the 429 was answered (0 when the client sends one request at a time). Items of the
/// same `$batch` as the refused one were sent with it, before the client could know: they
/// are not "after" it.
fn assert_retry_after_honoured(log: &[LogEntry], retry_after_ms: u64, slack_ms: u64) -> usize {
    let envelopes: Vec<u64> = log
        .iter()
        .filter(|e| e.method == "POST" && e.path == "/v1.0/$batch")
        .map(|e| e.time_ms)
        .collect();
    let same_batch = |a: &LogEntry, b: &LogEntry| {
        a.batch && b.batch && !envelopes.iter().any(|&t| t > a.time_ms && t <= b.time_ms)
    };
    let mut checked = 0;
    for throttled in log.iter().filter(|e| e.status == 429) {
        let scope = scope_of(&throttled.path);
        let answered = throttled.time_ms + throttled.duration_ms;
        for later in log.iter().filter(|e| {
            scope_of(&e.path) == scope
                && e.time_ms > answered + slack_ms
                && e.time_ms >= answered
                && !same_batch(throttled, e)
        }) {
            // Clock granularity is 1 ms on both sides.
            assert!(
                later.time_ms + 2 >= answered + retry_after_ms,
                "{} {} arrived {} ms after a 429 (Retry-After {} ms) was answered at {} ms",
                later.method,
                later.path,
                later.time_ms - answered,
                retry_after_ms,
                answered
            );
            checked += 1;
        }
    }
    checked
}

#[tokio::test]
async fn throttle_storm_waits_out_retry_after_then_repairs_each_drift_exactly_once() {
    // 8 users of pkg-0 (2 groups); users 0, 2, 4, 6 were removed from pkg-0-g0 by hand.
    let sim = Simulator::start(Scenario::synthetic("storm", 8, 1, 2, 2), fast())
        .await
        .unwrap();
    let (dir, drifted) = storm_declarations(&sim);

    // The storm: the first 12 Graph calls of any kind are refused with Retry-After 0.4 s,
    // and the first two writes again with 0.3 s.
    sim.clear_request_log();
    sim.inject_fault(fault(
        json!({"kind": "throttle", "retryAfter": 0.4, "count": 12}),
    ));
    sim.inject_fault(fault(json!({
        "kind": "throttle", "retryAfter": 0.3, "count": 2,
        "pathPrefix": "/identityGovernance", "method": "POST"
    })));
    let mut cmd = reprocess_command(&sim, dir.path(), "30s", &["-o", "json"]);
    // One request at a time, so "nothing before Retry-After" can be checked with no slack.
    cmd.env("REDELIVER_GRAPH_CONCURRENCY", "1");
    let started = std::time::Instant::now();
    let out = run(cmd).await;
    let elapsed = started.elapsed();

    assert_eq!(
        out.code, 0,
        "every drift repaired after the storm\n{}\n{}",
        out.stdout, out.stderr
    );
    for row in out.rows() {
        assert_eq!(row["verdict"], "Delivered", "{row}");
    }
    // The world: every hand-removed membership is back.
    for i in 0..8 {
        let upn = format!("user{i}@storm.com");
        assert!(sim.is_member("pkg-0-g0", &upn), "{upn} in pkg-0-g0");
        assert!(sim.is_member("pkg-0-g1", &upn), "{upn} in pkg-0-g1");
    }
    let log = graph_requests(&sim);
    let (throttled, checked) = assert_the_storm_was_waited_out(&log);
    assert_each_drift_reprocessed_once_in_batches(&sim, &log, drifted);
    eprintln!(
        "storm: {} Graph requests, {throttled} throttled, {checked} checked against Retry-After, {:.2} s",
        log.len(),
        elapsed.as_secs_f64()
    );
    sim.shutdown().await;
}

/// A declaration for each of the storm tenant's eight users and a guard over their package
/// (which must not reprocess what a declaration already did); returns them with the ids of
/// the four drifted assignments.
fn storm_declarations(sim: &SimHandle) -> (tempfile::TempDir, Vec<String>) {
    let mut docs: String = (0..8)
        .map(|i| {
            declaration(
                &format!("user{i}"),
                "pkg-0",
                &format!("user{i}@storm.com"),
                "",
            )
        })
        .collect();
    docs.push_str(&guard("pkg-0-guard", "pkg-0"));
    let drifted: Vec<String> = [0, 2, 4, 6]
        .iter()
        .map(|i| {
            sim.assignment_id(&format!("user{i}@storm.com"), "pkg-0")
                .unwrap()
        })
        .collect();
    for i in [0, 2, 4, 6] {
        assert!(!sim.is_member("pkg-0-g0", &format!("user{i}@storm.com")));
    }
    (declarations(&docs), drifted)
}

/// All 14 refusals were met, and nothing in a refused scope went out before its
/// Retry-After. Returns the refusals and the requests checked against them.
fn assert_the_storm_was_waited_out(log: &[LogEntry]) -> (usize, usize) {
    let throttled = log.iter().filter(|e| e.status == 429).count();
    assert_eq!(throttled, 14, "the storm was felt: 12 + 2 refusals");
    let retry_after = [400, 300];
    let checked = assert_retry_after_honoured(log, retry_after[1], 0);
    assert!(checked > 0, "requests followed the storm");
    // The 0.4 s refusals were checked with the smaller bound above; check them exactly.
    let storm: Vec<LogEntry> = log
        .iter()
        .filter(|e| !(e.status == 429 && e.method == "POST"))
        .cloned()
        .collect();
    assert_retry_after_honoured(&storm, retry_after[0], 0);
    (throttled, checked)
}

/// Exactly one accepted reprocess per drifted assignment (none for the others), sent in
/// batches, each refused write retried exactly once; each target's account read once.
fn assert_each_drift_reprocessed_once_in_batches(
    sim: &SimHandle,
    log: &[LogEntry],
    mut drifted: Vec<String>,
) {
    let accepted = reprocess_calls(sim, true);
    drifted.sort();
    assert_eq!(
        accepted.keys().cloned().collect::<Vec<_>>(),
        drifted,
        "only drifted assignments were reprocessed"
    );
    assert!(
        accepted.values().all(|&n| n == 1),
        "no assignment reprocessed twice for one drift: {accepted:?}"
    );
    // The four reprocesses went out coalesced in one `$batch`, plus one for the refused
    // items (the envelope itself may also have met the storm's refusals); before them, the
    // account gate read the four targets in one envelope of GETs.
    let envelopes: Vec<&LogEntry> = log
        .iter()
        .filter(|e| e.method == "POST" && e.path == "/v1.0/$batch")
        .collect();
    let accepted_envelopes = envelopes.iter().filter(|e| e.status != 429).count();
    let account_reads = log
        .iter()
        .filter(|e| e.method == "GET" && e.path.contains("accountEnabled"))
        .filter(|e| e.status == 200)
        .count();
    assert_eq!(
        account_reads, 4,
        "each target's account read once: {log:#?}"
    );
    assert_eq!(accepted_envelopes, 1 + 2, "{envelopes:?}");
    // Retries are bounded: each refused write cost exactly one extra POST, and in all
    // every refusal was followed by exactly one retry (Graph calls = successes + 429s).
    let posts = log
        .iter()
        .filter(|e| e.method == "POST" && e.path.starts_with("/v1.0/identityGovernance/"));
    assert!(
        posts.clone().all(|e| e.batch),
        "every reprocess rode in a batch"
    );
    let refused_posts = posts.clone().filter(|e| e.status == 429).count();
    assert!(refused_posts >= 2);
    assert_eq!(
        posts.count(),
        4 + refused_posts,
        "4 reprocesses + one retry per 429"
    );
}

#[tokio::test]
async fn retry_after_holds_back_calls_queued_behind_the_concurrency_limit() {
    // Six groups read by an observer fanning out 8 wide through a client that allows one
    // call in flight: five reads wait for the permit while the first is refused. None of
    // them may go out before Retry-After, even though they passed the gate before it closed.
    let sim = Simulator::start(Scenario::synthetic("queue", 4, 1, 6, 0), fast())
        .await
        .unwrap();
    let client = client_with(&sim, |a| a.graph_concurrency = 1);
    let observer = Observer::new(client, 8);
    let package = sim.package_id("pkg-0").unwrap();
    let view = observer.package_view(&package).await.unwrap();
    assert_eq!(view.resources.len(), 6);
    sim.clear_request_log();
    sim.inject_fault(fault(json!({
        "kind": "throttle", "retryAfter": 0.5, "count": 1, "pathPrefix": "/v1.0/groups"
    })));
    let snapshot = observer.snapshot(view.resources.iter()).await;
    assert!(
        snapshot.failures.is_empty(),
        "every read succeeded after waiting: {:?}",
        snapshot.failures
    );
    assert_eq!(snapshot.group_members.len(), 6);
    let log = graph_requests(&sim);
    assert_eq!(log.iter().filter(|e| e.status == 429).count(), 1);
    assert_eq!(
        log.iter().filter(|e| e.status == 200).count(),
        6,
        "six reads, each exactly once after the refusal"
    );
    let checked = assert_retry_after_honoured(&log, 500, 0);
    assert_eq!(checked, 6, "the retried read and the five queued ones");
    sim.shutdown().await;
}

#[tokio::test]
async fn endless_throttling_is_bounded_by_max_retries_and_never_reports_delivered() {
    let sim = Simulator::start(Scenario::demo(), fast()).await.unwrap();
    let dir = declarations(&declaration(
        "bob-finance",
        "Finance Analysts",
        "bob@contoso.com",
        "",
    ));
    // Member reads are refused for a minute: longer than any test should wait.
    sim.inject_fault(fault(json!({
        "kind": "throttle", "retryAfter": 0.2, "durationMs": 60000,
        "pathPrefix": "/v1.0/groups"
    })));
    sim.clear_request_log();
    let mut cmd = audit_command(&sim, dir.path(), &["-o", "json"]);
    cmd.env("REDELIVER_GRAPH_MAX_RETRIES", "2");
    let started = std::time::Instant::now();
    let out = run(cmd).await;
    let elapsed = started.elapsed();
    assert_eq!(
        out.code, 1,
        "membership unknown is an error\n{}",
        out.stdout
    );
    let rows = out.rows();
    assert_eq!(rows.len(), 1);
    assert_ne!(rows[0]["verdict"], "Delivered", "{}", rows[0]);
    // Finance Analysts promises two groups: each read is tried 1 + 2 times, no more.
    let group_reads = sim.count_requests("GET", "/v1.0/groups/");
    assert_eq!(group_reads, 2 * 3, "retries bounded by --max-retries 2");
    assert!(
        elapsed < Duration::from_secs(20),
        "gave up promptly: {elapsed:?}"
    );
    // Bob really is a member of everything: nothing was written while unsure.
    assert_eq!(sim.count_requests("POST", "/v1.0/identityGovernance"), 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn throttle_storm_at_default_concurrency_sends_nothing_new_before_retry_after() {
    // The shipped defaults: 8 calls in flight, reads fanned out. Requests already in flight
    // when a 429 is answered cannot be recalled, so anything arriving within 100 ms of the
    // answer is allowed; everything later must wait out the full Retry-After.
    let sim = Simulator::start(Scenario::synthetic("wide", 12, 2, 4, 3), fast())
        .await
        .unwrap();
    let docs: String = (0..12)
        .map(|i| {
            declaration(
                &format!("user{i}"),
                &format!("pkg-{}", i % 2),
                &format!("user{i}@wide.com"),
                "",
            )
        })
        .collect();
    let dir = declarations(&docs);
    sim.clear_request_log();
    sim.inject_fault(fault(
        json!({"kind": "throttle", "retryAfter": 0.6, "count": 10}),
    ));
    let out = audit(
        &sim,
        dir.path(),
        &[
            "--reprocess",
            "--wait",
            "30s",
            "--poll-interval",
            crate::fault_support::POLL_INTERVAL,
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    for i in (0..12).step_by(3) {
        let upn = format!("user{i}@wide.com");
        assert!(sim.is_member(&format!("pkg-{}-g0", i % 2), &upn), "{upn}");
    }
    let log = graph_requests(&sim);
    assert_eq!(log.iter().filter(|e| e.status == 429).count(), 10);
    let checked = assert_retry_after_honoured(&log, 600, 100);
    assert!(checked > 0);
    let accepted = reprocess_calls(&sim, true);
    assert_eq!(
        accepted.len(),
        4,
        "users 0, 3, 6 and 9 drifted: {accepted:?}"
    );
    assert!(accepted.values().all(|&n| n == 1), "{accepted:?}");
    sim.shutdown().await;
}
