//! The Graph client driving the real bundled simulator over HTTP(S): the read flow the
//! operator uses, repairs (reprocess, adminAdd, request reprocess), throttling faults,
//! token expiry, paging, delta and batching.

use std::time::{Duration, Instant};

use redeliver::graph::models::{AssignmentState, DirectoryObject, Page, RequestState, RequestType};
use redeliver::graph::{BatchItem, GraphClient, GraphSettings, Secret};
use redeliver_sim::{
    FaultScope, FaultSpec, Scenario, SimHandle, SimOptions, Simulator, TlsOptions,
};

const FINANCE: &str = "9f1c0c7e-0000-4000-8000-000000000001";
const ENG: &str = "9f1c0c7e-0000-4000-8000-000000000002";

fn args_for(h: &SimHandle) -> GraphSettings {
    crate::fault_support::args_for(h)
}

fn client_for(h: &SimHandle) -> GraphClient {
    let mut config = args_for(h).validate().unwrap();
    config.backoff_base = Duration::from_millis(20);
    config.backoff_cap = Duration::from_millis(100);
    GraphClient::new(config).unwrap()
}

async fn demo(opts: SimOptions) -> (SimHandle, GraphClient) {
    let h = Simulator::start(Scenario::demo(), opts).await.unwrap();
    let c = client_for(&h);
    (h, c)
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn reads_the_demo_tenant_like_the_operator_does() {
    let (h, c) = demo(SimOptions::fast()).await;
    c.check_token().await.unwrap();

    let alice = c.get_user("alice@contoso.com").await.unwrap().unwrap();
    assert_eq!(Some(alice.id.clone()), h.user_id("alice@contoso.com"));
    assert_eq!(c.get_user("nobody@contoso.com").await.unwrap(), None);

    let found = c.find_access_packages("Finance Analysts").await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, FINANCE);
    assert_eq!(
        found[0].catalog.as_ref().unwrap().display_name.as_deref(),
        Some("Finance")
    );
    assert!(
        c.find_access_packages("O'Brien's")
            .await
            .unwrap()
            .is_empty()
    );

    let pkg = c.get_access_package(FINANCE).await.unwrap().unwrap();
    let scopes = pkg.resource_role_scopes.unwrap();
    let writers = h.group_id("fin-writers").unwrap();
    assert!(scopes.iter().any(|s| {
        let role = s.role.as_ref().unwrap();
        role.origin_system.as_deref() == Some("AadGroup")
            && role.origin_id.as_deref() == Some(&format!("Member_{writers}"))
    }));
    assert!(
        scopes
            .iter()
            .any(|s| s.role.as_ref().unwrap().origin_system.as_deref() == Some("AadApplication"))
    );
    assert!(
        scopes
            .iter()
            .any(|s| s.role.as_ref().unwrap().origin_system.as_deref() == Some("SharePointOnline"))
    );
    assert_eq!(
        c.get_access_package("9f1c0c7e-0000-4000-8000-0000000000ff")
            .await
            .unwrap(),
        None
    );

    let policies = c.list_policies(FINANCE).await.unwrap();
    assert_eq!(policies.len(), 1);
    assert_eq!(
        policies[0].display_name.as_deref(),
        Some("Direct assignment")
    );

    let mine = c.find_assignments(FINANCE, &alice.id).await.unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].state, AssignmentState::Delivered);
    assert_eq!(
        mine[0].target.as_ref().unwrap().object_id.as_deref(),
        Some(alice.id.as_str())
    );
    let all = c.list_assignments(FINANCE).await.unwrap();
    assert_eq!(all.len(), 2);
    let a = c.get_assignment(&mine[0].id).await.unwrap().unwrap();
    assert_eq!(a.access_package.unwrap().id, FINANCE);

    // The drift the operator exists for: Delivered, yet alice is not in fin-writers.
    let members = c.list_group_members(&writers).await.unwrap();
    assert!(!members.contains(&alice.id));
    assert!(members.contains(&h.user_id("bob@contoso.com").unwrap()));
    c.list_group_owners(&writers).await.unwrap();

    let payroll = h.service_principal_id("Payroll").unwrap();
    let grants = c.list_app_role_assignments(&payroll).await.unwrap();
    assert!(grants.iter().any(|g| g.principal_id == alice.id));

    let requests = c.list_requests(ENG).await.unwrap();
    let failed = requests
        .iter()
        .find(|r| r.state == RequestState::DeliveryFailed)
        .expect("dave's failed request");
    let again = c.get_request(&failed.id).await.unwrap().unwrap();
    assert_eq!(again.state, RequestState::DeliveryFailed);

    // One token served every call.
    let s = c.stats();
    assert_eq!(
        s.iter().find(|s| s.operation == "token").unwrap().requests,
        1
    );
    assert!(s.iter().all(|s| s.failures == 0), "{s:?}");
    h.shutdown().await;
}

#[tokio::test]
async fn reprocess_repairs_the_outside_removal() {
    let (h, c) = demo(SimOptions::fast()).await;
    let alice = h.user_id("alice@contoso.com").unwrap();
    let writers = h.group_id("fin-writers").unwrap();
    let assignment = c.find_assignments(FINANCE, &alice).await.unwrap().remove(0);
    c.reprocess_assignment(&assignment.id).await.unwrap();
    eventually("alice back in fin-writers", || async {
        c.list_group_members(&writers)
            .await
            .unwrap()
            .contains(&alice)
    })
    .await;

    // Reprocess of an assignment that is not delivered is refused with 400.
    h.set_assignment_state(&assignment.id, "deliveryFailed")
        .unwrap();
    let e = c.reprocess_assignment(&assignment.id).await.unwrap_err();
    assert_eq!(e.kind(), "bad_request", "{e}");
    assert!(e.request_id().is_some());
    let e = c
        .reprocess_assignment("5b1e8f4a-0000-4000-8000-0000000000ff")
        .await
        .unwrap_err();
    assert!(e.is_not_found(), "{e}");
    h.shutdown().await;
}

#[tokio::test]
async fn admin_add_delivers_and_request_reprocess_recovers_a_failure() {
    let (h, c) = demo(SimOptions::fast()).await;
    let carol = c.get_user("carol@contoso.com").await.unwrap().unwrap().id;
    let policy = c.list_policies(FINANCE).await.unwrap().remove(0).id;
    let req = c
        .request_assignment(FINANCE, &policy, &carol)
        .await
        .unwrap();
    assert_eq!(req.state, RequestState::Submitted);
    eventually("carol's assignment delivered", || async {
        c.find_assignments(FINANCE, &carol)
            .await
            .unwrap()
            .iter()
            .any(|a| a.state == AssignmentState::Delivered)
    })
    .await;
    eventually("carol's request delivered", || async {
        c.get_request(&req.id).await.unwrap().unwrap().state == RequestState::Delivered
    })
    .await;

    let dave_failed = c
        .list_requests(ENG)
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.state == RequestState::DeliveryFailed)
        .unwrap();
    c.reprocess_request(&dave_failed.id).await.unwrap();
    eventually("dave's request delivered", || async {
        c.get_request(&dave_failed.id).await.unwrap().unwrap().state == RequestState::Delivered
    })
    .await;

    // adminRemove: the assignment ends up expired.
    let carols = c.find_assignments(FINANCE, &carol).await.unwrap().remove(0);
    let removal = c.request_removal(&carols.id).await.unwrap();
    assert_eq!(removal.request_type, RequestType::AdminRemove);
    eventually("carol's assignment expired", || async {
        c.get_assignment(&carols.id).await.unwrap().unwrap().state == AssignmentState::Expired
    })
    .await;
    h.shutdown().await;
}

#[tokio::test]
async fn throttle_fault_is_waited_out_exactly() {
    let (h, c) = demo(SimOptions::fast()).await;
    c.check_token().await.unwrap();
    let writers = h.group_id("fin-writers").unwrap();
    h.clear_request_log();
    h.inject_fault(FaultSpec::Throttle {
        retry_after: 1.25,
        scope: FaultScope {
            path_prefix: Some("/v1.0/groups".into()),
            count: Some(1),
            ..FaultScope::default()
        },
    });
    c.list_group_members(&writers).await.unwrap();
    let log: Vec<_> = h
        .request_log()
        .into_iter()
        .filter(|e| e.path.starts_with("/v1.0/groups"))
        .collect();
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!((log[0].status, log[1].status), (429, 200));
    let gap_ms = log[1].time_ms - log[0].time_ms;
    assert!(gap_ms >= 1250, "resent after {gap_ms} ms");
    let s = c
        .stats()
        .into_iter()
        .find(|s| s.operation == "list_group_members")
        .unwrap();
    assert_eq!((s.throttled, s.retries), (1, 1));

    // 503 with Retry-After on a create is retried; the request is created exactly once.
    let policy = c.list_policies(FINANCE).await.unwrap().remove(0).id;
    let carol = h.user_id("carol@contoso.com").unwrap();
    let admin_adds = || async {
        c.list_requests(FINANCE)
            .await
            .unwrap()
            .iter()
            .filter(|r| r.request_type == RequestType::AdminAdd)
            .count()
    };
    let before = admin_adds().await;
    h.clear_request_log();
    h.inject_fault(FaultSpec::Error {
        status: 503,
        retry_after: Some(0.2),
        scope: FaultScope {
            path_prefix: Some("/identityGovernance".into()),
            method: Some("POST".into()),
            count: Some(1),
            ..FaultScope::default()
        },
    });
    c.request_assignment(FINANCE, &policy, &carol)
        .await
        .unwrap();
    let posts: Vec<u16> = h
        .request_log()
        .into_iter()
        .filter(|e| e.method == "POST" && e.path.contains("/assignmentRequests"))
        .map(|e| e.status)
        .collect();
    assert_eq!(posts, vec![503, 201]);
    assert_eq!(admin_adds().await, before + 1);
    h.shutdown().await;
}

#[tokio::test]
async fn expired_token_is_replaced_after_a_401() {
    let (h, c) = demo(SimOptions::fast()).await;
    let writers = h.group_id("fin-writers").unwrap();
    c.list_group_members(&writers).await.unwrap();
    // Simulated time passes beyond the token lifetime: the sim now answers 401 to it,
    // while our cache (real time) still considers it fresh.
    h.advance_clock(Duration::from_secs(2 * 3600));
    c.list_group_members(&writers).await.unwrap();
    let token = c
        .stats()
        .into_iter()
        .find(|s| s.operation == "token")
        .unwrap();
    assert_eq!(token.requests, 2);
    let statuses: Vec<u16> = h
        .request_log()
        .into_iter()
        .filter(|e| e.path.starts_with("/v1.0/groups"))
        .map(|e| e.status)
        .collect();
    assert_eq!(statuses, vec![200, 401, 200]);
    h.shutdown().await;
}

#[tokio::test]
async fn wrong_secret_is_reported_with_the_aadsts_code() {
    let h = Simulator::start(Scenario::demo(), SimOptions::fast())
        .await
        .unwrap();
    let mut a = args_for(&h);
    a.client_secret = Some(Secret::new("not-the-secret"));
    let c = GraphClient::new(a.validate().unwrap()).unwrap();
    let e = c.check_token().await.unwrap_err();
    assert_eq!(e.kind(), "auth", "{e}");
    let text = e.to_string();
    assert!(text.contains("AADSTS7000215"), "{text}");
    assert!(!text.contains("not-the-secret"));
    h.shutdown().await;
}

#[tokio::test]
async fn large_groups_page_and_delta_tracks_changes() {
    let scenario = Scenario::synthetic("bigco", 1500, 1, 1, 0);
    let h = Simulator::start(scenario, SimOptions::fast())
        .await
        .unwrap();
    let c = client_for(&h);
    let group = h.group_id("pkg-0-g0").unwrap();
    let members = c.list_group_members(&group).await.unwrap();
    assert_eq!(members.len(), 1500);
    let pages = h
        .request_log()
        .iter()
        .filter(|e| e.path.starts_with(&format!("/v1.0/groups/{group}/members")))
        .count();
    assert_eq!(pages, 2, "999 + 501");

    let first = c
        .group_members_delta(std::slice::from_ref(&group))
        .await
        .unwrap();
    assert_eq!(first.changes[&group].added.len(), 1500);
    let user = h.user_id("user7@bigco.com").unwrap();
    assert!(h.remove_member(&group, &user).unwrap());
    let next = c.group_members_delta_next(&first.delta_link).await.unwrap();
    assert!(next.changes[&group].removed.contains(&user), "{next:?}");
    assert!(next.changes[&group].added.is_empty());
    h.shutdown().await;
}

#[tokio::test]
async fn batch_reads_several_groups_in_one_call() {
    let (h, c) = demo(SimOptions::fast()).await;
    let groups = ["fin-readers", "fin-writers", "eng-tools"].map(|g| h.group_id(g).unwrap());
    let items: Vec<BatchItem> = groups
        .iter()
        .enumerate()
        .map(|(i, g)| {
            BatchItem::get(
                i.to_string(),
                format!("/groups/{g}/members?$select=id&$top=999"),
            )
        })
        .collect();
    let results = c.batch(&items).await.unwrap();
    assert_eq!(results.len(), 3);
    let writers: Page<DirectoryObject> = results[1]
        .clone()
        .into_result("list_group_members")
        .unwrap();
    let direct = c.list_group_members(&groups[1]).await.unwrap();
    let mut batched: Vec<String> = writers.value.into_iter().map(|o| o.id).collect();
    batched.sort();
    let mut direct_sorted = direct.clone();
    direct_sorted.sort();
    assert_eq!(batched, direct_sorted);
    h.shutdown().await;
}

#[tokio::test]
async fn https_simulator_is_trusted_through_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("sim-ca.pem");
    let opts = SimOptions {
        tls: Some(TlsOptions {
            ca_out: Some(ca.clone()),
        }),
        ..SimOptions::fast()
    };
    let h = Simulator::start(Scenario::demo(), opts).await.unwrap();
    assert!(h.graph_url.starts_with("https://"));
    let mut a = args_for(&h);
    a.ca_file = Some(ca);
    let c = GraphClient::new(a.validate().unwrap()).unwrap();
    assert!(c.get_user("bob@contoso.com").await.unwrap().is_some());
    h.shutdown().await;
}

#[tokio::test]
async fn federated_token_file_authenticates_and_a_stale_one_is_explained() {
    use redeliver_sim::{ClientSpec, ScenarioBuilder};
    let scenario = ScenarioBuilder::new("wi")
        .client(ClientSpec {
            assertion: Some("projected-sa-jwt-1".into()),
            ..ClientSpec::default()
        })
        .user("erin@wi.com", "Erin")
        .build();
    // One-second tokens: after a second the client needs a new one and re-reads the file.
    let opts = SimOptions {
        token_lifetime: Duration::from_secs(1),
        ..SimOptions::fast()
    };
    let h = Simulator::start(scenario, opts).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("azure-identity-token");
    std::fs::write(&file, "projected-sa-jwt-1\n").unwrap();
    let mut a = args_for(&h);
    a.client_secret = None;
    a.federated_token_file = Some(file.clone());
    let c = GraphClient::new(a.validate().unwrap()).unwrap();
    c.check_token().await.unwrap();

    // The app's federated credential no longer matches what the kubelet writes.
    std::fs::write(&file, "projected-sa-jwt-2").unwrap();
    // The client's token cache runs on tokio's clock: age the token past its refresh point.
    crate::clock::skip(Duration::from_millis(1000)).await;
    let e = c.check_token().await.unwrap_err();
    assert_eq!(e.kind(), "auth", "{e}");
    let text = e.to_string();
    assert!(text.contains("federated credential"), "{text}");
    assert!(!text.contains("projected-sa-jwt"));
    h.shutdown().await;
}

#[tokio::test]
async fn bulk_reprocess_is_coalesced_into_batches_with_a_result_per_assignment() {
    let h = Simulator::start(Scenario::synthetic("bulk", 45, 1, 2, 0), SimOptions::fast())
        .await
        .unwrap();
    let c = client_for(&h);
    let mut ids: Vec<String> = (0..45)
        .map(|i| {
            h.assignment_id(&format!("user{i}@bulk.com"), "pkg-0")
                .unwrap()
        })
        .collect();
    // One the service refuses (not delivered) and one it does not know, mid-list.
    h.set_assignment_state(&ids[7], "deliveryFailed").unwrap();
    ids.insert(30, "5b1e8f4a-0000-4000-8000-0000000000ff".into());
    h.clear_request_log();

    let traced: Vec<(String, String)> = ids
        .iter()
        .map(|id| (id.clone(), uuid::Uuid::new_v4().to_string()))
        .collect();
    let results = c.reprocess_assignments(&traced, 2).await;
    // Each write carried its own client-request-id inside the batch.
    let log = h.request_log();
    for (id, trace) in &traced {
        let sent: Vec<_> = log
            .iter()
            .filter(|e| e.method == "POST" && e.path.contains(id.as_str()))
            .collect();
        assert!(
            sent.iter()
                .all(|e| e.client_request_id.as_deref() == Some(trace.as_str())),
            "{id}: {sent:?}"
        );
    }

    assert_eq!(results.len(), 46, "one result per id, in order");
    for (i, r) in results.iter().enumerate() {
        match i {
            7 => assert_eq!(r.as_ref().unwrap_err().kind(), "bad_request", "{r:?}"),
            30 => assert!(r.as_ref().unwrap_err().is_not_found(), "{r:?}"),
            _ => assert!(r.is_ok(), "item {i}: {r:?}"),
        }
    }
    let log = h.request_log();
    let envelopes = log
        .iter()
        .filter(|e| e.method == "POST" && e.path == "/v1.0/$batch")
        .count();
    assert_eq!(envelopes, 3, "46 reprocesses in batches of at most 20");
    let inner: Vec<_> = log
        .iter()
        .filter(|e| e.method == "POST" && e.path.contains("/reprocess"))
        .collect();
    assert_eq!(inner.len(), 46);
    assert!(inner.iter().all(|e| e.batch), "none was sent on its own");
    h.shutdown().await;
}
