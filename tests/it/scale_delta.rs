//! Incremental drift detection: `DeltaTracker` against the simulator's group delta over
//! real HTTP — one request per 50 groups when nothing changed, removals and additions
//! reported as (group, member) pairs, and an expired sync state turned into a full-read
//! request for the affected groups.

use redeliver::graph::{GraphClient, GraphSettings, Secret};
use redeliver::observe::delta::DeltaTracker;
use redeliver_sim::{Scenario, SimHandle, SimOptions, Simulator, SyntheticTenant};

/// 120 groups: three delta queries (50 + 50 + 20).
fn tenant() -> SyntheticTenant {
    SyntheticTenant {
        tenant_name: "delta".into(),
        seed: 5,
        assignments: 400,
        groups: 120,
        apps: 0,
        packages: 40,
        min_resources: 3,
        max_resources: 3,
        drift_every: 0,
        policies_per_package: 1,
    }
}

async fn start(t: &SyntheticTenant) -> (SimHandle, GraphClient, Vec<String>) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sim = Simulator::start(Scenario::synthetic_tenant(t), SimOptions::fast())
        .await
        .expect("simulator starts");
    let config = GraphSettings {
        tenant_id: Some(sim.tenant_id.clone()),
        client_id: Some(sim.client_id.clone()),
        client_secret: Some(Secret::new(sim.client_secret.clone())),
        authority_host: sim.authority_host.clone(),
        graph_url: sim.graph_url.clone(),
        ..GraphSettings::with_defaults()
    }
    .validate()
    .expect("simulator config is valid");
    let graph = GraphClient::new(config).expect("client builds");
    let groups = (0..t.groups)
        .map(|g| sim.group_id(&SyntheticTenant::group_name(g)).unwrap())
        .collect();
    (sim, graph, groups)
}

fn delta_requests(sim: &SimHandle) -> (u64, u64) {
    let usage = sim.usage();
    let u = usage
        .by_route
        .get("GET /v1.0/groups/delta")
        .copied()
        .unwrap_or_default();
    (u.requests, u.ru)
}

#[tokio::test]
async fn quiet_polls_cost_one_request_per_50_groups_and_changes_come_as_pairs() {
    let t = tenant();
    let (sim, graph, groups) = start(&t).await;
    sim.clear_request_log();
    let mut tracker = DeltaTracker::start(graph, groups.iter().cloned())
        .await
        .expect("tracking starts");
    assert_eq!(tracker.queries_per_poll(), 3);
    assert_eq!(tracker.groups().count(), 120);
    // Starting from "now" costs one request per chunk and lists no members.
    assert_eq!(delta_requests(&sim).0, 3);

    for _ in 0..3 {
        sim.clear_request_log();
        let poll = tracker.poll().await;
        assert!(poll.is_quiet(), "{poll:?}");
        // ≤ 1 request per 50 groups, 1 RU each ($select: 1 - 1, minimum 1).
        assert_eq!(delta_requests(&sim), (3, 3));
        assert_eq!(sim.usage().total.requests, 3);
    }

    // Outside changes in two different chunks.
    let (g_rm, upn_rm) = (SyntheticTenant::group_name(7), t.upn(2));
    let removed_user = sim.user_id(&upn_rm).unwrap();
    assert!(
        sim.is_member(&g_rm, &upn_rm),
        "user2's package promises group 7"
    );
    assert!(sim.remove_member(&g_rm, &upn_rm).unwrap());
    let g_add = SyntheticTenant::group_name(110);
    let added_user = sim.user_id(&t.upn(0)).unwrap();
    assert!(sim.add_member(&g_add, &t.upn(0)).unwrap());

    let poll = tracker.poll().await;
    assert_eq!(
        poll.removed,
        vec![(sim.group_id(&g_rm).unwrap(), removed_user.clone())]
    );
    assert_eq!(
        poll.added,
        vec![(sim.group_id(&g_add).unwrap(), added_user)]
    );
    assert!(poll.resync.is_empty() && poll.failed.is_empty());
    // Reported once: the next poll is quiet again.
    assert!(tracker.poll().await.is_quiet());
    sim.shutdown().await;
}

#[tokio::test]
async fn an_expired_sync_state_asks_for_a_full_read_and_tracking_resumes() {
    let t = tenant();
    let (sim, graph, groups) = start(&t).await;
    let mut tracker = DeltaTracker::start(graph, groups.iter().cloned())
        .await
        .expect("tracking starts");
    sim.expire_delta_tokens();
    sim.clear_request_log();
    let poll = tracker.poll().await;
    assert!(poll.failed.is_empty(), "{:?}", poll.failed);
    let mut resync = poll.resync.clone();
    resync.sort();
    let mut all = groups.clone();
    all.sort();
    assert_eq!(resync, all, "every group needs a full read");
    // Per chunk: the 410 and one request to start again from now.
    let log = sim.request_log();
    assert_eq!(log.iter().filter(|e| e.status == 410).count(), 3);
    assert_eq!(delta_requests(&sim).0, 6);

    // Tracking resumed: the next change is reported normally.
    let (g, upn) = (SyntheticTenant::group_name(40), t.upn(13));
    assert!(
        sim.is_member(&g, &upn),
        "user13's package promises group 40"
    );
    sim.remove_member(&g, &upn).unwrap();
    let poll = tracker.poll().await;
    assert!(poll.resync.is_empty());
    assert_eq!(
        poll.removed,
        vec![(sim.group_id(&g).unwrap(), sim.user_id(&upn).unwrap())]
    );
    sim.shutdown().await;
}
