//! `$batch` with some inner requests failing, against the simulator: throttled parts are
//! resent alone after their Retry-After; other failures come back as per-item results
//! with the same typed errors a direct call gives; successes are never repeated.

use crate::fault_support::*;
use redeliver::graph::models::{DirectoryObject, Page};
use redeliver::graph::{BatchItem, Write, Written};
use redeliver_sim::{Scenario, Simulator};
use serde_json::json;

#[tokio::test]
async fn batch_resends_only_throttled_items_and_reports_other_failures_per_item() {
    let sim = Simulator::start(Scenario::synthetic("batch", 5, 1, 6, 0), fast())
        .await
        .unwrap();
    let client = client_with(&sim, |_| {});
    let groups: Vec<String> = (0..6)
        .map(|k| sim.group_id(&format!("pkg-0-g{k}")).unwrap())
        .collect();
    let mut items: Vec<BatchItem> = groups
        .iter()
        .enumerate()
        .map(|(i, g)| BatchItem::get(format!("g{i}"), format!("/groups/{g}/members?$select=id")))
        .collect();
    items.push(BatchItem::get(
        "user",
        format!("/users/{}", sim.user_id("user0@batch.com").unwrap()),
    ));
    items.push(BatchItem::get(
        "gone",
        "/groups/00000000-0000-4000-8000-00000000dead/members",
    ));
    sim.clear_request_log();
    // The first three inner group reads are throttled, the user read fails with 503.
    sim.inject_fault(fault(json!({
        "kind": "throttle", "retryAfter": 0.3, "count": 3, "pathPrefix": "/v1.0/groups"
    })));
    sim.inject_fault(fault(json!({
        "kind": "error", "status": 503, "count": 1, "pathPrefix": "/v1.0/users"
    })));
    let results = client
        .batch(&items)
        .await
        .expect("the batch itself succeeds");
    assert_eq!(results.len(), items.len());
    let ids: Vec<&str> = results.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        ids,
        items.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        "results come back in request order"
    );
    for r in &results[..6] {
        assert!(r.is_success(), "{} recovered: {}", r.id, r.status);
        let page: Page<DirectoryObject> = r.clone().into_result("list_group_members").unwrap();
        assert_eq!(page.value.len(), 5, "every user is a member of {}", r.id);
    }
    let user = results[6].clone();
    assert_eq!(user.status, 503);
    let err = user
        .into_result::<serde_json::Value>("get_user")
        .unwrap_err();
    assert_eq!(err.kind(), "server");
    let gone = results[7].clone();
    assert_eq!(gone.status, 404);
    assert!(
        gone.into_result::<serde_json::Value>("list_group_members")
            .unwrap_err()
            .is_not_found()
    );

    // The world as the simulator saw it: two outer batches; the second carried only the
    // three throttled reads, sent no earlier than their Retry-After.
    let log = sim.request_log();
    let outer: Vec<_> = log.iter().filter(|e| e.path == "/v1.0/$batch").collect();
    assert_eq!(outer.len(), 2, "one resend round");
    let inner: Vec<_> = log.iter().filter(|e| e.batch).collect();
    assert_eq!(inner.len(), 8 + 3, "8 items once, the 3 throttled twice");
    let throttled: Vec<_> = inner.iter().filter(|e| e.status == 429).collect();
    assert_eq!(throttled.len(), 3);
    let first_answer = outer[0].time_ms + outer[0].duration_ms;
    assert!(
        outer[1].time_ms + 2 >= first_answer + 300,
        "resent {} ms after the throttled batch was answered",
        outer[1].time_ms - first_answer
    );
    for g in &groups[..3] {
        let n = inner.iter().filter(|e| e.path.contains(g.as_str())).count();
        assert_eq!(n, 2, "throttled item {g} sent twice");
    }
    for g in &groups[3..] {
        let n = inner.iter().filter(|e| e.path.contains(g.as_str())).count();
        assert_eq!(n, 1, "successful item {g} never repeated");
    }
    assert_eq!(
        inner
            .iter()
            .filter(|e| e.path.starts_with("/v1.0/users"))
            .count(),
        1,
        "a 503 inside a batch is reported, not resent blindly"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn batched_writes_resend_a_reprocess_after_a_504_but_never_an_uncertain_adminadd() {
    let sim = Simulator::start(Scenario::demo(), fast()).await.unwrap();
    let client = client_with(&sim, |_| {});
    let package = sim.package_id("Finance Analysts").unwrap();
    let policy = sim.policy_id("Finance Analysts", None).unwrap();
    let add = |upn: &str| Write::RequestAssignment {
        access_package_id: package.clone(),
        policy_id: policy.clone(),
        target_object_id: sim.user_id(upn).unwrap(),
    };
    let reprocess = |upn: &str| Write::ReprocessAssignment {
        assignment_id: sim.assignment_id(upn, "Finance Analysts").unwrap(),
    };
    let creates = |sim: &redeliver_sim::SimHandle| {
        sim.request_log()
            .iter()
            .filter(|e| e.method == "POST" && e.path.ends_with("/assignmentRequests"))
            .map(|e| (e.status, e.batch))
            .collect::<Vec<_>>()
    };
    let reprocesses = |sim: &redeliver_sim::SimHandle| {
        sim.request_log()
            .iter()
            .filter(|e| e.method == "POST" && e.path.ends_with("/reprocess"))
            .map(|e| (e.status, e.batch))
            .collect::<Vec<_>>()
    };
    let create_prefix = "/v1.0/identityGovernance/entitlementManagement/assignmentRequests";
    let reprocess_prefix = "/v1.0/identityGovernance/entitlementManagement/assignments/";

    // Round 1: the gateway times out on carol's adminAdd and on alice's reprocess, inside
    // the one batch that carries both (and bob's reprocess).
    sim.clear_request_log();
    for prefix in [create_prefix, reprocess_prefix] {
        sim.inject_fault(fault(json!({
            "kind": "error", "status": 504, "count": 1, "method": "POST", "pathPrefix": prefix
        })));
    }
    let writes = [
        add("carol@contoso.com"),
        reprocess("alice@contoso.com"),
        reprocess("bob@contoso.com"),
    ];
    let results = client.write_many(&writes, 2).await;
    assert_eq!(results.len(), 3, "one result per write, in order");
    let err = results[0].as_ref().unwrap_err();
    assert_eq!(err.kind(), "server", "{err}");
    assert_eq!(err.operation(), Some("request_assignment"));
    assert!(
        matches!(results[1], Ok(Written::Accepted)),
        "alice's reprocess was resent: {:?}",
        results[1]
    );
    assert!(
        matches!(results[2], Ok(Written::Accepted)),
        "{:?}",
        results[2]
    );
    assert_eq!(
        creates(&sim),
        vec![(504, true)],
        "an adminAdd that may have been processed is never sent again"
    );
    assert_eq!(
        reprocesses(&sim),
        vec![(504, true), (202, true), (202, false)],
        "the reprocess that timed out went again, on its own; bob's once"
    );

    // Round 2: carol's adminAdd is throttled inside the batch: Graph did not act on it, so
    // the batch resends it and it is created exactly once.
    sim.clear_request_log();
    sim.inject_fault(fault(json!({
        "kind": "throttle", "retryAfter": 0.2, "count": 1, "method": "POST",
        "pathPrefix": create_prefix
    })));
    let results = client.write_many(&[add("carol@contoso.com")], 2).await;
    let Ok(Written::Requested(request)) = &results[0] else {
        panic!("carol's request was created: {results:?}");
    };
    assert!(!request.id.is_empty());
    assert_eq!(creates(&sim), vec![(429, true), (201, true)]);
    sim.shutdown().await;
}
