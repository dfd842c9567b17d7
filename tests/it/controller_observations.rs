//! The controller's shared read cache over the real simulator: one read per resource per
//! window however many reconciles ask at once, the same data (not copies) handed to every
//! object, and a fresh read once a write invalidated it (first) or the window has passed
//! (in the background, the previous answer served meanwhile).

use std::sync::Arc;
use std::time::Duration;

use redeliver::controller::observation::Observations;
use redeliver::engine::{ReadData, ResourceRead};
use redeliver_sim::{Scenario, SimOptions, Simulator};

#[tokio::test]
async fn concurrent_reconciles_share_one_read_per_resource_per_window() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sim = Simulator::start(Scenario::demo(), SimOptions::fast())
        .await
        .unwrap();
    let observations = Arc::new(Observations::new(
        crate::fault_support::graph_client(&sim).unwrap(),
        Duration::from_millis(600),
        4,
    ));
    let package = sim.package_id("Finance Analysts").unwrap();
    let view = observations.package_view(&package).await.unwrap();
    let resources = view.resources.clone();
    assert!(resources.len() >= 3);
    let members_reads = |sim: &redeliver_sim::SimHandle| {
        sim.request_log()
            .iter()
            .filter(|e| e.path.contains("/members") || e.path.contains("/appRoleAssignedTo"))
            .count()
    };
    let distinct = redeliver::engine::reads_needed(&resources).len();
    sim.clear_request_log();

    // Sixteen objects promising the same resources reconcile at once.
    let snapshots = futures::future::join_all((0..16).map(|_| {
        let observations = observations.clone();
        let resources = resources.clone();
        async move { observations.snapshot(&resources).await }
    }))
    .await;
    assert_eq!(members_reads(&sim), distinct, "one read per resource");
    let writers = ResourceRead::GroupMembers(sim.group_id("fin-writers").unwrap());
    let first = snapshots[0].data(&writers).expect("fin-writers was read");
    for s in &snapshots {
        assert!(s.failures.is_empty(), "{:?}", s.failures);
        match (s.data(&writers), &first) {
            (Some(ReadData::Ids(a)), ReadData::Ids(b)) => {
                assert!(Arc::ptr_eq(&a, b), "shared, not copied")
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    // Within the window: no read at all.
    observations.snapshot(&resources).await;
    assert_eq!(members_reads(&sim), distinct);

    // A write to the package invalidates its resources: read again, once, before anyone
    // is answered.
    observations.invalidate_package(&package, &resources).await;
    let written = observations.snapshot(&resources).await;
    assert_eq!(members_reads(&sim), 2 * distinct);
    let ids = |s: &redeliver::engine::Snapshot| match s.data(&writers) {
        Some(ReadData::Ids(ids)) => ids,
        other => panic!("unexpected {other:?}"),
    };
    let after_write = ids(&written);

    // After the window: read again, once, in the background, while the answers read after
    // the write are still served (for at most one more window). The cache ages on tokio's
    // clock.
    crate::clock::skip(Duration::from_millis(700)).await;
    let during = futures::future::join_all((0..4).map(|_| observations.snapshot(&resources))).await;
    for s in &during {
        assert!(Arc::ptr_eq(&ids(s), &after_write), "the previous answer");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while members_reads(&sim) < 3 * distinct {
        assert!(std::time::Instant::now() < deadline, "the refresh was made");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let renewed = observations.snapshot(&resources).await;
    assert!(
        !Arc::ptr_eq(&ids(&renewed), &after_write),
        "the renewed answer"
    );
    assert_eq!(members_reads(&sim), 3 * distinct, "once per resource");
    sim.shutdown().await;
}

/// A write to one package renews that package's view only.
#[tokio::test]
async fn invalidating_a_package_renews_only_its_view() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sim = redeliver_sim::Simulator::start(
        redeliver_sim::Scenario::demo(),
        redeliver_sim::SimOptions::fast(),
    )
    .await
    .unwrap();
    let obs = Observations::new(
        crate::fault_support::graph_client(&sim).unwrap(),
        Duration::from_secs(600),
        4,
    );
    let ids: Vec<String> = ["Finance Analysts", "Engineering Tools"]
        .iter()
        .filter_map(|n| sim.package_id(n))
        .collect();
    assert_eq!(ids.len(), 2, "the demo scenario's packages");
    let reads = |id: &str| {
        sim.count_requests(
            "GET",
            &format!("/v1.0/identityGovernance/entitlementManagement/accessPackages/{id}"),
        )
    };
    for id in &ids {
        obs.package_view(id).await.unwrap();
        obs.package_view(id).await.unwrap();
        assert_eq!(reads(id), 1, "one read per window");
    }
    let view = obs.package_view(&ids[0]).await.unwrap();
    obs.invalidate_package(&ids[0], &view.resources).await;
    obs.package_view(&ids[0]).await.unwrap();
    obs.package_view(&ids[1]).await.unwrap();
    assert_eq!(reads(&ids[0]), 2, "the written package is read again");
    assert_eq!(reads(&ids[1]), 1, "the other package's view is kept");
}

/// A group delta poll that saw one user's membership change makes that user's next
/// snapshot read the group again, once; every other object keeps the copy at hand (at
/// 100,000 objects, dropping the whole group for each repair kept every reconcile in the
/// repaired groups waiting on re-reads). What is remembered goes after twice the window.
#[tokio::test]
async fn a_reported_change_renews_the_group_for_its_user_only() {
    use redeliver::controller::context::{Clock, FixedClock};
    use redeliver::observe::Reads;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sim = Simulator::start(Scenario::demo(), SimOptions::fast())
        .await
        .unwrap();
    let clock = Arc::new(FixedClock::at(jiff::Timestamp::now()));
    let observations = Observations::new(
        crate::fault_support::graph_client(&sim).unwrap(),
        Duration::from_secs(600),
        4,
    )
    .with_clock(clock.clone());
    let package = sim.package_id("Finance Analysts").unwrap();
    let resources = observations
        .package_view(&package)
        .await
        .unwrap()
        .resources
        .clone();
    let writers = sim.group_id("fin-writers").unwrap();
    let (alice, bob) = (
        sim.user_id("alice@contoso.com").unwrap(),
        sim.user_id("bob@contoso.com").unwrap(),
    );
    let writers_reads = || sim.count_requests("GET", &format!("/v1.0/groups/{writers}/members"));
    let before = observations.snapshot(&resources).await;
    assert_eq!(writers_reads(), 1);
    assert!(observations.changed_for(Some(&alice), &resources).is_none());

    // Group ids and user ids as a delta poll reports them: any case.
    observations.note_membership_changes([(writers.to_uppercase(), alice.to_uppercase())]);
    assert!(
        observations.changed_for(Some(&bob), &resources).is_none(),
        "bob's copy is current"
    );
    let fresh = observations
        .changed_for(Some(&alice), &resources)
        .expect("alice must read fin-writers again");
    assert_eq!(
        fresh.reads.into_iter().collect::<Vec<_>>(),
        [ResourceRead::GroupMembers(writers.clone())]
    );
    assert_eq!(fresh.since, clock.now());
    // A guard sweeps every assignment: anyone's change counts.
    assert_eq!(
        observations
            .changed_for(None, &resources)
            .map(|f| f.reads.len()),
        Some(1)
    );

    // Bob is answered from the copy at hand, without a read.
    let bobs = observations.memberships(&resources, None).await;
    assert_eq!(writers_reads(), 1);
    assert_eq!(
        bobs.data(&ResourceRead::GroupMembers(writers.clone())),
        before.data(&ResourceRead::GroupMembers(writers.clone()))
    );
    // Alice's snapshot reads fin-writers again, once, and only it.
    let total = sim.request_log().len();
    let fresh = observations.changed_for(Some(&alice), &resources);
    observations.memberships(&resources, fresh.as_ref()).await;
    assert_eq!(writers_reads(), 2);
    assert_eq!(
        sim.request_log().len(),
        total + 1,
        "one read: {:?}",
        sim.request_log()
    );

    // Past twice the window every copy is newer than the change: forgotten at the next note.
    clock.advance(jiff::SignedDuration::from_secs(1201));
    observations.note_membership_changes(Vec::new());
    assert!(observations.changed_for(Some(&alice), &resources).is_none());
    sim.shutdown().await;
}
