//! Shard-scoped watches: `run_controllers` as two (then three) shards over one in-process
//! Kubernetes API server (`redeliver_fake_kube`, which implements label selectors with the real
//! server's semantics) and two Graph simulators.
//!
//! - objects created without the shard-key label are labelled by the shard that owns their
//!   connection and verified by it; one created later is picked up within seconds;
//! - each shard's watch holds only its own shard's objects;
//! - an object whose connection moves to the other shard is handed over: relabelled and
//!   verified there;
//! - after a change of `--shard-count` (two shards stopped, three started) every object is
//!   reconciled again, by its new shard, with no label rewritten;
//! - throughout, no object is acted on by two shards at once (sampled every millisecond
//!   from each shard's in-flight reconciles);
//! - a rolling `--shard-count` change (a set of three shards started while the set of two
//!   still runs, each replica in its shard-set Lease, `controller::shard_set`): the new set
//!   acts on nothing until the old one has stopped, then takes over every object.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redeliver::api::ConnectionKey;
use redeliver::controller::shard::{SHARD_KEY_LABEL, Shard, bucket_of, shard_of};
use redeliver::controller::shard_set::ShardSetLease;
use redeliver::controller::{Context, Settings, run_in_shard_set};
use redeliver_fake_kube::FakeKube;
use redeliver_sim::SimHandle;
use serde_json::{Value, json};

use crate::controller_support::{Controller, context, graph_connection, kube_client, secret};
use crate::controller_tenants::tenant;

const APA: &str = "accesspackageassignments";
const NAMESPACES: usize = 6;

fn alice(namespace: &str, name: &str, connection: Option<&str>) -> Value {
    let mut o = json!({
        "apiVersion": "redeliver.dev/v1alpha1", "kind": "AccessPackageAssignment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "accessPackage": {"displayName": "Finance Analysts", "catalog": "Finance"},
            "target": {"userPrincipalName": "alice@contoso.com"},
            "reprocess": {"mode": "Auto", "maxAttempts": 3, "cooldown": "5m"}
        }
    });
    if let Some(c) = connection {
        o["spec"]["connectionRef"] = json!({"name": c});
    }
    o
}

fn key(namespace: &str, name: &str) -> ConnectionKey {
    ConnectionKey::Namespaced {
        namespace: namespace.into(),
        name: name.into(),
    }
}

/// [`NAMESPACES`] namespaces over one API server, each with its default connection to one
/// of two simulated tenants (alternating) and alice declared there.
struct Fleet {
    kube: FakeKube,
    namespaces: Vec<String>,
    tenants: [SimHandle; 2],
}

impl Fleet {
    /// Every object starts without the shard-key label, as one created before it existed.
    async fn start() -> Self {
        let tenants = [
            tenant("contoso", 42, "01", true).await,
            tenant("fabrikam", 7, "02", false).await,
        ];
        let namespaces: Vec<String> = (0..NAMESPACES).map(|i| format!("tenant-{i}")).collect();
        let mut objects = Vec::new();
        for (i, ns) in namespaces.iter().enumerate() {
            let sim = &tenants[i % 2];
            objects.push(secret(ns, "graph", "clientSecret", &sim.client_secret));
            objects.push(graph_connection(ns, "default", sim, "graph"));
            objects.push(alice(ns, "alice", None));
        }
        let kube = FakeKube::start(objects).await.unwrap();
        Self {
            kube,
            namespaces,
            tenants,
        }
    }

    /// The shard (of `count`) that owns the namespace's default connection.
    fn owner(&self, ns: &str, count: u32) -> u32 {
        shard_of(&key(ns, "default"), count)
    }

    /// Applies a changed spec of alice in `namespaces` (a new `verifyInterval`, so a new
    /// generation), keeping the label the operator wrote, as `kubectl apply` does.
    fn respec<'a>(&self, namespaces: impl IntoIterator<Item = &'a String>, verify_interval: &str) {
        for ns in namespaces {
            let mut a = alice(ns, "alice", None);
            a["metadata"]["labels"] = json!({SHARD_KEY_LABEL: label(&self.kube, ns, "alice")});
            a["spec"]["verifyInterval"] = json!(verify_interval);
            self.kube.put(a).unwrap();
        }
    }

    fn labels(&self) -> Vec<Option<String>> {
        self.namespaces
            .iter()
            .map(|ns| label(&self.kube, ns, "alice"))
            .collect()
    }

    /// Whether alice is verified at `generation` in each of `namespaces`.
    fn verified<'a>(
        &self,
        mut namespaces: impl Iterator<Item = &'a String>,
        generation: i64,
    ) -> bool {
        namespaces.all(|ns| verified_at(&self.kube, ns, "alice", generation))
    }
}

/// How often a waiting shard-set replica looks at the others' Leases (and renews its own).
const LOOK_EVERY: Duration = Duration::from_millis(250);

/// The `spec.renewTime` of each of the Leases `names` in `redeliver-system`.
fn renew_times(kube: &FakeKube, names: &[String]) -> Vec<Option<String>> {
    names
        .iter()
        .map(|name| {
            kube.object("leases", "redeliver-system", name)
                .and_then(|l| l["spec"]["renewTime"].as_str().map(String::from))
        })
        .collect()
}

/// Waits until each of the Leases `names` has been renewed `times` more times.
async fn wait_for_renewals(kube: &FakeKube, names: &[String], times: usize) {
    let mut seen: Vec<Vec<Option<String>>> = renew_times(kube, names)
        .into_iter()
        .map(|t| vec![t])
        .collect();
    wait_until(
        &format!("{times} more renewals of {names:?}"),
        Duration::from_secs(20),
        || {
            for (seen, now) in seen.iter_mut().zip(renew_times(kube, names)) {
                if seen.last() != Some(&now) {
                    seen.push(now);
                }
            }
            seen.iter().all(|s| s.len() > times)
        },
    )
    .await;
}

fn settings(index: u32, count: u32) -> Settings {
    Settings {
        poll_interval: Duration::from_secs(1),
        observation_max_age: Duration::from_millis(500),
        delta_interval: Duration::from_secs(1),
        connection_recheck_stalled: Duration::from_secs(1),
        connection_recheck_ready: Duration::from_secs(1),
        instance: Some(format!("shard-{index}-of-{count}")),
        shard: Shard { index, count },
        // The label and relabel passes (1 s and 5 s in production) are what a new or moved
        // object waits for.
        shard_label_every: Duration::from_millis(100),
        shard_relabel_every: Duration::from_millis(250),
        ..crate::controller_support::settings()
    }
}

/// One shard of `count`, waited for until ready.
async fn start_shard(kube: &FakeKube, index: u32, count: u32) -> Controller {
    let ctx = context(kube_client(kube, None), None, &settings(index, count));
    Controller::start(ctx, Vec::new(), 2).await
}

/// A replica of a shard set: its controllers start only once its shard-set Lease
/// (in `redeliver-system`, 3 s, looked at every [`LOOK_EVERY`] while waiting) lets it
/// act. Not waited for.
fn start_in_set(kube: &FakeKube, index: u32, count: u32) -> Controller {
    let client = kube_client(kube, None);
    let ctx = context(client.clone(), None, &settings(index, count));
    let set = ShardSetLease::new(
        client,
        "redeliver-system",
        "redeliver",
        Shard { index, count },
        &format!("pod-{index}-of-{count}"),
    )
    .with_duration(Duration::from_secs(3))
    .with_look_every(LOOK_EVERY);
    Controller::spawn_with(ctx, move |ctx, ready, stop| async move {
        run_in_shard_set(Some(set), ctx, Vec::new(), 2, ready, stop)
            .await
            .expect("the shard-set Lease is kept");
    })
}

/// Samples every running shard's acting reconciles every millisecond and records any
/// object acted on by two at once.
struct Referee {
    shards: Arc<std::sync::Mutex<Vec<Arc<Context>>>>,
    clash: Arc<std::sync::Mutex<Vec<String>>>,
    acted: Arc<std::sync::Mutex<BTreeSet<(String, String)>>>,
    done: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Referee {
    fn start() -> Self {
        let shards: Arc<std::sync::Mutex<Vec<Arc<Context>>>> = Arc::default();
        let clash: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
        let acted: Arc<std::sync::Mutex<BTreeSet<(String, String)>>> = Arc::default();
        let done = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (shards, clash, acted, done) =
                (shards.clone(), clash.clone(), acted.clone(), done.clone());
            async move {
                while !done.load(Ordering::Acquire) {
                    let running = shards.lock().unwrap().clone();
                    let mut seen: BTreeSet<String> = BTreeSet::new();
                    for ctx in &running {
                        let shard = format!("{}/{}", ctx.shard.index, ctx.shard.count);
                        for object in ctx.in_flight.acting() {
                            acted
                                .lock()
                                .unwrap()
                                .insert((object.clone(), shard.clone()));
                            if !seen.insert(object.clone()) {
                                clash.lock().unwrap().push(object);
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        });
        Self {
            shards,
            clash,
            acted,
            done,
            task,
        }
    }

    fn watch(&self, shard: &Controller) {
        self.shards.lock().unwrap().push(shard.ctx.clone());
    }

    fn forget_all(&self) {
        self.shards.lock().unwrap().clear();
    }

    /// The shards (`index/count`) seen acting on `object` (`Kind namespace/name`).
    fn acted_on(&self, object: &str) -> BTreeSet<String> {
        self.acted
            .lock()
            .unwrap()
            .iter()
            .filter(|(o, _)| o == object)
            .map(|(_, s)| s.clone())
            .collect()
    }

    /// Forgets who acted on `object` so far: what follows is judged on its own.
    fn forget(&self, object: &str) {
        self.acted.lock().unwrap().retain(|(o, _)| o != object);
    }

    async fn finish(self) -> Vec<String> {
        self.done.store(true, Ordering::Release);
        self.task.await.unwrap();
        self.clash.lock().unwrap().clone()
    }
}

async fn wait_until(what: &str, timeout: Duration, done: impl FnMut() -> bool) {
    crate::wait::until(what, timeout, done).await
}

fn label(kube: &FakeKube, namespace: &str, name: &str) -> Option<String> {
    kube.object(APA, namespace, name).and_then(|o| {
        o["metadata"]["labels"][SHARD_KEY_LABEL]
            .as_str()
            .map(String::from)
    })
}

fn verified_at(kube: &FakeKube, namespace: &str, name: &str, generation: i64) -> bool {
    kube.object(APA, namespace, name).is_some_and(|o| {
        let s = &o["status"];
        s["observedGeneration"] == generation
            && s["conditions"].as_array().is_some_and(|cs| {
                cs.iter().any(|c| {
                    c["type"] == "Delivered" && (c["status"] == "True" || c["status"] == "False")
                })
            })
    })
}

fn object_key(namespace: &str, name: &str) -> String {
    format!("AccessPackageAssignment {namespace}/{name}")
}

#[tokio::test]
async fn two_shards_never_act_on_one_object_across_moves_and_a_shard_count_change() {
    let fleet = Fleet::start().await;
    let namespaces = &fleet.namespaces;
    assert!(
        namespaces.iter().any(|ns| fleet.owner(ns, 2) == 0)
            && namespaces.iter().any(|ns| fleet.owner(ns, 2) == 1),
        "both shards get a tenant"
    );
    let referee = Referee::start();

    // 1. Two shards label and verify every object, each its own.
    let (first, second) = two_shards_label_and_verify_their_own(&fleet, &referee).await;
    // 2. An object created later without the label is picked up within seconds.
    a_new_unlabelled_object_is_picked_up(&fleet).await;
    // 3. A connection moving to the other shard.
    a_moved_connection_is_handed_over(&fleet, &referee).await;
    first.stop().await;
    second.stop().await;
    referee.forget_all();
    // 4. A change of --shard-count: three shards over the same labels.
    three_shards_reverify_without_relabelling(&fleet, &referee).await;

    assert_never_two_at_once(referee).await;
}

/// Starts two shards and waits until every object is labelled and verified; each shard has
/// acted only on its own objects, and its watch holds only those.
async fn two_shards_label_and_verify_their_own(
    fleet: &Fleet,
    referee: &Referee,
) -> (Controller, Controller) {
    let (kube, namespaces) = (&fleet.kube, &fleet.namespaces);
    let first = start_shard(kube, 0, 2).await;
    referee.watch(&first);
    let second = start_shard(kube, 1, 2).await;
    referee.watch(&second);
    wait_until(
        "every object is labelled and verified",
        Duration::from_secs(30),
        || {
            namespaces.iter().all(|ns| {
                label(kube, ns, "alice") == Some(bucket_of(&key(ns, "default")).to_string())
                    && verified_at(kube, ns, "alice", 1)
            })
        },
    )
    .await;
    assert!(
        namespaces
            .iter()
            .any(|ns| !referee.acted_on(&object_key(ns, "alice")).is_empty()),
        "the referee sees the shards' reconciles"
    );
    for ns in namespaces {
        let acted = referee.acted_on(&object_key(ns, "alice"));
        assert!(
            acted
                .iter()
                .all(|s| *s == format!("{}/2", fleet.owner(ns, 2))),
            "{ns}/alice acted on by {acted:?}, owned by shard {}",
            fleet.owner(ns, 2)
        );
    }
    // Each shard's watch holds only its own objects.
    for (shard, running) in [(0, &first), (1, &second)] {
        let (held, _) = running.ctx.triggers.snapshot();
        let held: BTreeSet<String> = held
            .iter()
            .map(|a| a.metadata.namespace.clone().unwrap_or_default())
            .collect();
        let own: BTreeSet<String> = namespaces
            .iter()
            .filter(|ns| fleet.owner(ns, 2) == shard)
            .cloned()
            .collect();
        assert_eq!(held, own, "shard {shard} holds exactly its own objects");
    }
    (first, second)
}

async fn a_new_unlabelled_object_is_picked_up(fleet: &Fleet) {
    let (kube, ns) = (&fleet.kube, &fleet.namespaces[0]);
    let started = Instant::now();
    kube.put(alice(ns, "bob", None)).unwrap();
    wait_until(
        "the new object is labelled and verified",
        Duration::from_secs(10),
        || verified_at(kube, ns, "bob", 1),
    )
    .await;
    assert_eq!(
        label(kube, ns, "bob"),
        Some(bucket_of(&key(ns, "default")).to_string())
    );
    eprintln!(
        "unlabelled object labelled and verified in {:?}",
        started.elapsed()
    );
}

/// alice in the first namespace switches to a second GraphConnection there whose name
/// hashes to the other shard: she is relabelled and verified by her new shard.
async fn a_moved_connection_is_handed_over(fleet: &Fleet, referee: &Referee) {
    let (kube, ns) = (&fleet.kube, &fleet.namespaces[0]);
    let from = fleet.owner(ns, 2);
    let other = (0..100)
        .map(|n| format!("moved-{n}"))
        .find(|name| shard_of(&key(ns, name), 2) != from)
        .unwrap();
    kube.put(graph_connection(ns, &other, &fleet.tenants[0], "graph"))
        .unwrap();
    referee.forget(&object_key(ns, "alice"));
    // As `kubectl apply` of the edited spec: the label the operator wrote stays.
    let mut moved = alice(ns, "alice", Some(&other));
    moved["metadata"]["labels"] = json!({SHARD_KEY_LABEL: label(kube, ns, "alice")});
    kube.put(moved).unwrap();
    wait_until(
        "the moved object is relabelled and verified by its new shard",
        Duration::from_secs(30),
        || {
            label(kube, ns, "alice") == Some(bucket_of(&key(ns, &other)).to_string())
                && verified_at(kube, ns, "alice", 2)
        },
    )
    .await;
    // Only the new shard can have verified the new generation: the old one no longer
    // owns the object and hands it over without acting.
    let acted = referee.acted_on(&object_key(ns, "alice"));
    assert!(
        acted.iter().all(|s| *s == format!("{}/2", 1 - from)),
        "after the move only shard {}/2 may act on alice: {acted:?}",
        1 - from
    );
}

/// Three shards start over the labels two wrote. Every object's spec but the moved one's
/// changes, so each must be reconciled again, by its shard among three; no label is
/// rewritten.
async fn three_shards_reverify_without_relabelling(fleet: &Fleet, referee: &Referee) {
    let changed = || fleet.namespaces.iter().skip(1);
    let labels_before = fleet.labels();
    let mut shards = Vec::new();
    for index in 0..3 {
        let r = start_shard(&fleet.kube, index, 3).await;
        referee.watch(&r);
        shards.push(r);
    }
    fleet.respec(changed(), "7m");
    wait_until(
        "three shards verify every changed object",
        Duration::from_secs(30),
        || fleet.verified(changed(), 2),
    )
    .await;
    for ns in changed() {
        let (acted, want) = acted_among_three(referee, ns);
        assert!(
            acted.iter().all(|s| *s == want),
            "{ns}/alice among three shards: acted on by {acted:?}, owned by {want}"
        );
    }
    assert_eq!(
        labels_before,
        fleet.labels(),
        "a shard count change rewrites no label"
    );
    for r in shards {
        r.stop().await;
    }
}

/// The shards of three (`index/3`) seen acting on alice in `ns`, and the one that owns her.
fn acted_among_three(referee: &Referee, ns: &str) -> (BTreeSet<String>, String) {
    let want = format!("{}/3", shard_of(&key(ns, "default"), 3));
    let acted = referee
        .acted_on(&object_key(ns, "alice"))
        .into_iter()
        .filter(|s| s.ends_with("/3"))
        .collect();
    (acted, want)
}

async fn assert_never_two_at_once(referee: Referee) {
    let clashes = referee.finish().await;
    assert!(
        clashes.is_empty(),
        "objects acted on by two shards at once: {clashes:?}"
    );
}

/// A rolling change of `--shard-count` from 2 to 3: the three new replicas start while the
/// two old ones still run (as a Deployment's rolling update does). Old and new disagree on
/// which shard owns a tenant, so the new set must not act on anything until the old set has
/// stopped; then it takes over every object.
#[tokio::test]
async fn a_rolling_shard_count_change_never_lets_two_counts_act_at_once() {
    let fleet = Fleet::start().await;
    // Some tenant changes shard between 2 and 3 shards: the counts disagree on it.
    assert!(
        fleet
            .namespaces
            .iter()
            .any(|ns| fleet.owner(ns, 2) != fleet.owner(ns, 3)),
        "the two counts disagree on some tenant"
    );
    let referee = Referee::start();

    // 1. The old set (two shards) takes its Leases and verifies every object.
    let mut old = Vec::new();
    for index in 0..2 {
        let r = start_in_set(&fleet.kube, index, 2);
        referee.watch(&r);
        r.wait_ready().await;
        old.push(r);
    }
    wait_until(
        "the old set verifies every object",
        Duration::from_secs(30),
        || fleet.verified(fleet.namespaces.iter(), 1),
    )
    .await;
    // 2. The new set (three shards) starts alongside and waits.
    let new = the_new_set_waits_while_the_old_one_works(&fleet, &referee).await;
    // 3. The old set stops (rolled away): the new set takes over within seconds and verifies
    // every object, each by its owner among three.
    for r in old {
        r.stop().await;
    }
    the_new_set_takes_over(&fleet, &referee, &new).await;
    for r in new {
        r.stop().await;
    }

    assert_never_two_at_once(referee).await;
}

/// Starts the new set (three shards) beside the old one. It waits, while the old set goes
/// on working: a spec change is verified by the old set alone.
async fn the_new_set_waits_while_the_old_one_works(
    fleet: &Fleet,
    referee: &Referee,
) -> Vec<Controller> {
    let kube = &fleet.kube;
    let mut new = Vec::new();
    for index in 0..3 {
        let r = start_in_set(kube, index, 3);
        referee.watch(&r);
        new.push(r);
    }
    fleet.respec(&fleet.namespaces, "7m");
    wait_until(
        "the old set verifies every changed object",
        Duration::from_secs(30),
        || fleet.verified(fleet.namespaces.iter(), 2),
    )
    .await;
    // Several renewals of every Lease later, still only the old set has acted: each new
    // replica has looked at the old set's Leases twice more (it renews its own waiting Lease
    // at every look), and each old replica has renewed its active Lease (every second,
    // a third of 3 s). Whether a Lease is live at a given time is unit-tested
    // (`shard_set::tests`); here the question is whether a look lets the new set act.
    let lease_names = |count: u32| -> Vec<String> {
        (0..count)
            .map(|index| format!("redeliver-shards-{count}-{index}"))
            .collect()
    };
    wait_for_renewals(kube, &lease_names(3), 2).await;
    wait_for_renewals(kube, &lease_names(2), 1).await;
    for ns in &fleet.namespaces {
        let acted = referee.acted_on(&object_key(ns, "alice"));
        assert!(
            acted.iter().all(|s| s.ends_with("/2")),
            "{ns}/alice acted on by {acted:?} while the old set of 2 runs"
        );
    }
    assert!(
        new.iter().all(|r| !r.ready.get()),
        "the new set has not started its controllers"
    );
    for index in 0..3 {
        let lease = kube
            .object(
                "leases",
                "redeliver-system",
                &format!("redeliver-shards-3-{index}"),
            )
            .expect("each new replica holds its shard-set Lease");
        assert_eq!(
            lease["metadata"]["labels"]["redeliver.dev/shard-state"], "waiting",
            "{lease}"
        );
    }
    new
}

/// Once the old set has stopped, the new set starts its controllers and verifies a spec
/// change of every object, each by its owner among three alone.
async fn the_new_set_takes_over(fleet: &Fleet, referee: &Referee, new: &[Controller]) {
    let stopped = Instant::now();
    wait_until(
        "the new set starts its controllers",
        Duration::from_secs(10),
        || new.iter().all(|r| r.ready.get()),
    )
    .await;
    eprintln!(
        "new shard set took over {:?} after the old one stopped",
        stopped.elapsed()
    );
    fleet.respec(&fleet.namespaces, "8m");
    wait_until(
        "the new set verifies every changed object",
        Duration::from_secs(30),
        || fleet.verified(fleet.namespaces.iter(), 3),
    )
    .await;
    for ns in &fleet.namespaces {
        let (acted, want) = acted_among_three(referee, ns);
        assert_eq!(
            acted,
            BTreeSet::from([want.clone()]),
            "{ns}/alice among three shards: acted on by {acted:?}, owned by {want}"
        );
    }
}
