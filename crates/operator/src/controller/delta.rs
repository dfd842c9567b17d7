//! Incremental mode: between full verifications, follow group delta for the groups that
//! delivered assignments rely on, and reconcile an assignment as soon as its user leaves
//! one of them (`observe::delta`), or comes back to one it was missing from (a reprocess
//! landed, or someone put the user back): `Delivered=True` is then written within one
//! delta interval instead of at the next re-check. App roles, group ownership, PIM-for-Groups
//! eligibilities, Entra roles and Azure roles have no change feed that fits (the README's
//! "Detection latency" says why), so each promised one is read again every interval (one
//! paged read per app, owned group, group and relationship, role and mode, Azure scope and
//! mode) and compared with what the objects' status says. The periodic full verification
//! stays the safety net.
//!
//! No blind spot at start-up or failover: the baseline of every tracked group is taken
//! before the first reconcile runs (the controller holds reconciles until then), so the
//! start-up verification reads memberships after the baseline and any later change is
//! reported by a poll. A group tracked later (a new object, a new group) is baselined
//! first and its objects are verified after, for the same reason.
//!
//! Whom a change concerns comes from the objects' own status (`graphState: delivered`,
//! `targetObjectId`, `resources[]` in an `AadGroup`, present or missing), so no extra
//! Graph read is needed. A change drops that group's cached membership and triggers the
//! matching objects; a group whose sync state expired, or that was deleted, triggers
//! every object that relies on it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use futures::SinkExt;
use futures::channel::mpsc::Sender;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::connections::{ConnectionKey, Tenant};
use super::context::{Clock, Context};
use crate::api::{AccessPackageAssignment, ResourceState, ResourceStatus, RoleKind};
use crate::engine::{GroupAccess, OriginSystem, PromisedResource, ResourceKind, ResourceRead};
use crate::graph::models::AssignmentState;
use crate::observe::delta::{DeltaPoll, DeltaTracker};

/// The user and the group resources of a delivered assignment, from its status; `None`
/// for anything else (not yet delivered assignments have nothing to lose: delivery is
/// followed by their request, not by group delta).
fn delivered_groups(
    obj: &AccessPackageAssignment,
) -> Option<(&str, impl Iterator<Item = (&str, ResourceState)>)> {
    let (user, resources) = delivered_resources(obj)?;
    Some((
        user,
        resources
            // A group eligibility is not a membership: an activation ending removes the
            // user from the group on schedule. Eligibilities are polled instead.
            .filter(|r| r.origin_system == OriginSystem::AadGroup && r.kind.is_none())
            .map(|r| (r.origin_id.as_str(), r.state)),
    ))
}

/// The user and every resource of a delivered assignment, from its status.
fn delivered_resources(
    obj: &AccessPackageAssignment,
) -> Option<(&str, impl Iterator<Item = &crate::api::ResourceStatus>)> {
    let status = obj.status.as_ref()?;
    let delivered = status
        .graph_state
        .as_deref()
        .is_some_and(|s| AssignmentState::from_wire(s) == AssignmentState::Delivered);
    if !delivered {
        return None;
    }
    let user = status.target_object_id.as_deref()?;
    Some((user, status.resources.iter()))
}

/// Every group (lower-cased id) whose membership a delivered assignment relies on,
/// present or missing. Runs every delta interval over the whole store, so it allocates
/// per distinct group, not per object.
fn tracked_groups(objs: &[Arc<AccessPackageAssignment>]) -> BTreeSet<String> {
    let mut groups = BTreeSet::new();
    for obj in objs {
        let Some((_, resources)) = delivered_groups(obj) else {
            continue;
        };
        for (group, state) in resources {
            if !matches!(state, ResourceState::Present | ResourceState::Missing) {
                continue;
            }
            if group.bytes().any(|b| b.is_ascii_uppercase()) {
                groups.insert(group.to_ascii_lowercase());
            } else if !groups.contains(group) {
                groups.insert(group.to_string());
            }
        }
    }
    groups
}

/// What one poll found, keyed for matching against the objects' status (lower-cased ids).
#[derive(Debug, Default)]
struct Changes {
    /// (group, user) memberships that ended: drift of an assignment that held them.
    removed: HashSet<(String, String)>,
    /// (group, user) memberships that began: the repair of an assignment that missed them.
    added: HashSet<(String, String)>,
    /// Groups whose changes may have been missed (sync state expired) or that were
    /// deleted: every assignment relying on them is checked.
    whole: BTreeSet<String>,
}

impl Changes {
    fn of(poll: &DeltaPoll) -> Changes {
        let key = |(g, u): &(String, String)| (g.to_ascii_lowercase(), u.to_ascii_lowercase());
        Changes {
            removed: poll.removed.iter().map(key).collect(),
            added: poll.added.iter().map(key).collect(),
            whole: poll
                .resync
                .iter()
                .chain(&poll.deleted_groups)
                .map(|g| g.to_ascii_lowercase())
                .collect(),
        }
    }

    fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.added.is_empty() && self.whole.is_empty()
    }

    /// The objects these changes concern (each once) and the groups that concern them:
    /// one scan of the store, made only when a poll reported something. (An index rebuilt
    /// at every poll cost memory and allocations in proportion to the number of objects,
    /// for changes that are rare; the controller benchmark in docs/benchmarks.md measured
    /// it.)
    fn affected(
        &self,
        objs: &[Arc<AccessPackageAssignment>],
    ) -> (BTreeSet<String>, Vec<ObjectRef<AccessPackageAssignment>>) {
        let mut hit_groups = BTreeSet::new();
        let mut refs = Vec::new();
        for obj in objs {
            let Some((user, resources)) = delivered_groups(obj) else {
                continue;
            };
            let user = user.to_ascii_lowercase();
            let mut hit = false;
            for (group, state) in resources {
                let key = (group.to_ascii_lowercase(), user.clone());
                let concerned = match state {
                    ResourceState::Present => self.removed.contains(&key),
                    ResourceState::Missing => self.added.contains(&key),
                    _ => continue,
                } || self.whole.contains(&key.0);
                if concerned {
                    hit_groups.insert(key.0);
                    hit = true;
                }
            }
            if hit {
                refs.push(ObjectRef::from_obj(obj.as_ref()));
            }
        }
        (hit_groups, refs)
    }
}

fn group_resource(group_id: &str) -> PromisedResource {
    PromisedResource {
        origin_system: OriginSystem::AadGroup,
        origin_id: group_id.to_string(),
        display_name: group_id.to_string(),
        role: "Member".into(),
        kind: ResourceKind::GroupMember {
            group_id: group_id.to_string(),
        },
        note: None,
    }
}

/// The store's objects by connection, computed at most once per `max_age` however many
/// connections ask: each connection's follower takes its part from one partition instead
/// of scanning the store itself.
struct Partition {
    ctx: Arc<Context>,
    store: Store<AccessPackageAssignment>,
    max_age: std::time::Duration,
    last: std::sync::Mutex<Option<(tokio::time::Instant, Arc<Parts>)>>,
}

type Parts = HashMap<ConnectionKey, Arc<Vec<Arc<AccessPackageAssignment>>>>;

impl Partition {
    fn get(&self) -> Arc<Parts> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, parts)) = last.as_ref()
            && at.elapsed() < self.max_age
        {
            return parts.clone();
        }
        let parts: Arc<Parts> = Arc::new(
            by_connection(&self.ctx, &self.store)
                .into_iter()
                .map(|(k, v)| (k, Arc::new(v)))
                .collect(),
        );
        *last = Some((tokio::time::Instant::now(), parts.clone()));
        parts
    }
}

/// One connection's follower: its task's stop switch and the client it was started with.
struct Follower {
    tenant: Arc<Tenant>,
    stop: CancellationToken,
    id: tokio::task::Id,
}

/// Polls every `ctx.delta_interval` until `stop`, sending objects to reconcile into
/// `trigger` (wired to `Controller::reconcile_on`). First, once `synced` says `store` has
/// its first full list, it takes the baseline of every tracked group and then signals
/// `baseline` (the controller holds reconciles until then).
///
/// Each connection (tenant) is followed by a task of its own, so a slow or throttled
/// tenant delays only its own detection; this loop starts and stops them as connections
/// come, go or get a new client, and restarts one that ended.
pub async fn run(
    ctx: Arc<Context>,
    store: Store<AccessPackageAssignment>,
    trigger: Sender<ObjectRef<AccessPackageAssignment>>,
    stop: CancellationToken,
    synced: Arc<super::watch::Synced>,
    baseline: Option<oneshot::Sender<()>>,
) {
    // Not `Store::wait_until_ready`: its single waker slot belongs to the controller.
    tokio::select! {
        _ = stop.cancelled() => return,
        _ = synced.wait() => {}
    }
    let interval = ctx.delta_interval;
    let partition = Arc::new(Partition {
        ctx: ctx.clone(),
        store,
        max_age: interval / 4,
        last: std::sync::Mutex::default(),
    });
    let started = baseline_all(&ctx, &partition).await;
    if let Some(done) = baseline {
        let _ = done.send(());
    }
    let mut followers = Followers {
        ctx,
        partition,
        trigger,
        stop: stop.clone(),
        interval,
        tasks: tokio::task::JoinSet::new(),
        running: HashMap::new(),
    };
    for (key, tenant, tracker, since, _) in started {
        followers.spawn(key, tenant, tracker, since);
    }
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
        }
        followers.match_connections();
        if followers.reap() == Reaped::ControllerGone {
            break;
        }
    }
    followers.shutdown().await;
}

/// What [`Followers::reap`] found.
#[derive(Debug, PartialEq, Eq)]
enum Reaped {
    /// Ended followers were forgotten (or none had ended).
    Forgotten,
    /// A follower found the controller gone: stop following.
    ControllerGone,
}

/// The running per-connection followers of [`run`] and what starting one takes.
struct Followers {
    ctx: Arc<Context>,
    partition: Arc<Partition>,
    trigger: Sender<ObjectRef<AccessPackageAssignment>>,
    stop: CancellationToken,
    interval: std::time::Duration,
    tasks: tokio::task::JoinSet<FollowerEnd>,
    running: HashMap<ConnectionKey, Follower>,
}

impl Followers {
    /// Starts following `key` with `tenant` from `tracker`'s baseline taken at `since`,
    /// replacing (stopping) a follower it had.
    fn spawn(
        &mut self,
        key: ConnectionKey,
        tenant: Arc<Tenant>,
        tracker: DeltaTracker,
        since: jiff::Timestamp,
    ) {
        let stop = self.stop.child_token();
        let task = follow(
            key.clone(),
            tenant.clone(),
            tracker,
            since,
            self.partition.clone(),
            self.trigger.clone(),
            stop.clone(),
            self.interval,
            self.ctx.clock(),
        );
        let id = self.tasks.spawn(task).id();
        if let Some(old) = self.running.insert(key, Follower { tenant, stop, id }) {
            old.stop.cancel();
        }
    }

    /// One follower per connection that has objects and is ready: a new connection, or one
    /// with a rebuilt client (a rotated Secret), starts over from a new baseline (every
    /// group is baselined again and its objects verified); one without objects stops.
    fn match_connections(&mut self) {
        let parts = self.partition.get();
        for key in parts.keys() {
            let Some(tenant) = self.ctx.connections.ready(key) else {
                continue;
            };
            let current = self
                .running
                .get(key)
                .filter(|f| !f.stop.is_cancelled() && Arc::ptr_eq(&f.tenant, &tenant));
            if current.is_none() {
                let tracker = DeltaTracker::empty(tenant.graph().clone());
                self.spawn(key.clone(), tenant, tracker, self.ctx.now());
            }
        }
        self.running.retain(|k, f| {
            let keep = parts.contains_key(k);
            if !keep {
                f.stop.cancel();
            }
            keep
        });
    }

    /// Forgets the followers that ended (their connection went, or one panicked), so the
    /// next round starts a new one if the connection is still there.
    fn reap(&mut self) -> Reaped {
        while let Some(ended) = self.tasks.try_join_next_with_id() {
            let id = match ended {
                Ok((id, FollowerEnd::Stopped)) => id,
                Ok((_, FollowerEnd::ControllerGone)) => return Reaped::ControllerGone,
                Err(e) => {
                    if e.is_panic() {
                        tracing::error!(error = %e, "a connection's group delta follower panicked; following it again from a new baseline");
                    }
                    e.id()
                }
            };
            self.running.retain(|_, f| f.id != id);
        }
        Reaped::Forgotten
    }

    async fn shutdown(mut self) {
        for f in self.running.values() {
            f.stop.cancel();
        }
        self.tasks.shutdown().await;
    }
}

/// A connection whose groups' baseline was taken: its tenant, tracker, the time it was
/// taken from, and how many groups it follows.
type Baselined = (
    ConnectionKey,
    Arc<Tenant>,
    DeltaTracker,
    jiff::Timestamp,
    usize,
);

/// Takes every ready connection's group delta baseline at once (one slow tenant does not
/// hold the others'), before reconciles open: a tracker per connection, with the time it
/// was started from.
async fn baseline_all(ctx: &Arc<Context>, partition: &Partition) -> Vec<Baselined> {
    // Every tenant's baseline at once (one slow tenant does not hold the others'), all of
    // them before reconciles open.
    let started = futures::future::join_all(partition.get().iter().filter_map(|(key, objs)| {
        let tenant = ctx.connections.ready(key)?;
        Some(async move {
            let mut tracker = DeltaTracker::empty(tenant.graph().clone());
            let since = ctx.now();
            let (groups, failures) = tracker.track(&tracked_groups(objs)).await;
            for e in &failures {
                tracing::warn!(connection = %key, error = %e, "cannot start group delta; its groups are baselined and verified at the next interval");
            }
            (key.clone(), tenant, tracker, since, groups.len())
        })
        // Checked at its objects' first reconcile; followed from the next interval.
    }))
    .await;
    tracing::debug!(
        groups = started.iter().map(|s| s.4).sum::<usize>(),
        "group delta baseline taken"
    );
    started
}

/// Objects waiting to be reconciled because a poll concerned them. When the queue is full
/// a follower waits for room (its next poll waits too): no trigger is dropped, and a flood of
/// changes cannot hold more than this many references.
pub const TRIGGER_QUEUE: usize = 1024;

/// Sends every ref, waiting for room. False when the controller is gone.
async fn send_all(
    trigger: &Sender<ObjectRef<AccessPackageAssignment>>,
    refs: Vec<ObjectRef<AccessPackageAssignment>>,
) -> bool {
    let mut trigger = trigger.clone();
    for r in refs {
        if trigger.send(r).await.is_err() {
            return false;
        }
    }
    true
}

/// Why a follower ended.
enum FollowerEnd {
    /// Told to stop (shutdown, the connection went, or its client changed).
    Stopped,
    /// The controller no longer takes triggers.
    ControllerGone,
}

/// Follows one connection: every `interval`, its groups' delta, the app roles its objects
/// rely on, and the groups to follow from now on.
#[allow(clippy::too_many_arguments)]
async fn follow(
    key: ConnectionKey,
    tenant: Arc<Tenant>,
    mut tracker: DeltaTracker,
    mut since: jiff::Timestamp,
    partition: Arc<Partition>,
    trigger: Sender<ObjectRef<AccessPackageAssignment>>,
    stop: CancellationToken,
    interval: std::time::Duration,
    clock: Arc<dyn Clock>,
) -> FollowerEnd {
    // The time of the last privileged poll (app roles, owners, roles, eligibilities).
    let mut privileged_since = since;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return FollowerEnd::Stopped,
            _ = tokio::time::sleep(interval) => {}
        }
        let parts = partition.get();
        let Some(objs) = parts.get(&key).cloned() else {
            return FollowerEnd::Stopped;
        };
        let polled_at = clock.now();
        let poll = tokio::select! {
            _ = stop.cancelled() => return FollowerEnd::Stopped,
            poll = tracker.poll() => poll,
        };
        for e in &poll.failed {
            tracing::warn!(connection = %key, error = %e, "group delta poll failed; its changes come next poll");
        }
        let changes = Changes::of(&poll);
        register_mass_drift(&tenant, &objs, &changes, polled_at);
        // The removals of this window happened after the previous poll: one audit-log
        // query answers who made all of them.
        tenant
            .attribution
            .detected(since, changes.removed.iter().cloned());
        since = polled_at;
        if !send(&tenant, &objs, &trigger, &changes, "changed").await {
            return FollowerEnd::ControllerGone;
        }
        // Follow the groups the objects rely on now; a group followed from now on is
        // verified after its baseline, so nothing between its last read and now is lost.
        let (started, failures) = tracker.track(&tracked_groups(&objs)).await;
        for e in &failures {
            tracing::warn!(connection = %key, error = %e, "cannot start group delta for new groups; retrying next interval");
        }
        let started = Changes {
            whole: started.into_iter().collect(),
            ..Changes::default()
        };
        if !send(&tenant, &objs, &trigger, &started, "started to follow").await {
            return FollowerEnd::ControllerGone;
        }
        if !poll_privileged(&tenant, &objs, &trigger, &mut privileged_since, clock.now()).await {
            return FollowerEnd::ControllerGone;
        }
    }
}

/// Counts a window's removals against each package's mass-drift breaker (the connection's
/// policy) before any object they concern is reconciled: a mass removal trips the breaker
/// before the first repair, instead of after the first few objects have been repaired.
fn register_mass_drift(
    tenant: &Tenant,
    objs: &[Arc<AccessPackageAssignment>],
    changes: &Changes,
    now: jiff::Timestamp,
) {
    if changes.removed.is_empty() {
        return;
    }
    record_drift(tenant, drift_by_package(objs, changes), now);
}

/// Records each package's drifted assignments (and how many it has delivered) against the
/// connection's mass-drift breaker, when the breaker is on.
fn record_drift(
    tenant: &Tenant,
    packages: HashMap<&str, (usize, Vec<&str>)>,
    now: jiff::Timestamp,
) {
    let policy =
        crate::engine::SafetyPolicy::from_spec(&tenant.safety_spec.clone().unwrap_or_default());
    if !policy.breaker.enabled {
        return;
    }
    let mut board = tenant.breaker();
    for (package, (delivered, drifted)) in packages {
        if !drifted.is_empty()
            && board.record(
                &policy.breaker,
                package,
                drifted.iter().copied(),
                delivered,
                now,
            )
        {
            tracing::warn!(
                package,
                drifted = drifted.len(),
                delivered,
                "mass drift: automatic repair of the package stopped until acknowledged"
            );
        }
    }
}

/// Per package: how many of its assignments the objects say are delivered, and the
/// assignments among them whose user this window removed from a group they held.
fn drift_by_package<'a>(
    objs: &'a [Arc<AccessPackageAssignment>],
    changes: &Changes,
) -> HashMap<&'a str, (usize, Vec<&'a str>)> {
    drift_by_package_where(objs, |obj| {
        let Some((user, groups)) = delivered_groups(obj) else {
            return false;
        };
        let user = user.to_ascii_lowercase();
        groups.into_iter().any(|(g, state)| {
            state == ResourceState::Present
                && changes
                    .removed
                    .contains(&(g.to_ascii_lowercase(), user.clone()))
        })
    })
}

/// Per package: how many of its assignments the objects say are delivered, and the
/// assignments among them that `lost` says lost something.
fn drift_by_package_where(
    objs: &[Arc<AccessPackageAssignment>],
    lost: impl Fn(&AccessPackageAssignment) -> bool,
) -> HashMap<&str, (usize, Vec<&str>)> {
    let mut packages: HashMap<&str, (usize, Vec<&str>)> = HashMap::new();
    for obj in objs {
        let Some(status) = obj.status.as_ref() else {
            continue;
        };
        let (Some(package), Some(_)) = (status.access_package_id.as_deref(), delivered_groups(obj))
        else {
            continue;
        };
        let entry = packages.entry(package).or_default();
        entry.0 += 1;
        if lost(obj)
            && let Some(a) = status.assignment_id.as_deref()
        {
            entry.1.push(a);
        }
    }
    packages
}

/// The store's objects by the connection each resolves to.
fn by_connection(
    ctx: &Context,
    store: &Store<AccessPackageAssignment>,
) -> HashMap<ConnectionKey, Vec<Arc<AccessPackageAssignment>>> {
    let mut out: HashMap<ConnectionKey, Vec<Arc<AccessPackageAssignment>>> = HashMap::new();
    for obj in store.state() {
        let key = ctx.connections.resolve(
            obj.metadata.namespace.as_deref().unwrap_or_default(),
            obj.spec.connection_ref.as_ref(),
        );
        // Another shard follows the groups of its own tenants.
        if ctx.shard.owns(&key) {
            out.entry(key).or_default().push(obj);
        }
    }
    out
}

/// Drops the cached memberships of the groups `changes` concern and triggers the objects
/// they concern. False when the controller is gone.
async fn send(
    ctx: &Tenant,
    objs: &[Arc<AccessPackageAssignment>],
    trigger: &Sender<ObjectRef<AccessPackageAssignment>>,
    changes: &Changes,
    what: &str,
) -> bool {
    if changes.is_empty() {
        return true;
    }
    let (hit_groups, refs) = changes.affected(objs);
    if refs.is_empty() {
        return true;
    }
    // The reconciles must read these groups again, not reuse this window's copy. A group
    // whose changes may have been missed concerns everyone in it: its copy goes. A change
    // of one user's membership concerns that user only: their next snapshot reads the
    // group again, and every other object keeps the copy at hand meanwhile.
    let whole: Vec<PromisedResource> = hit_groups
        .iter()
        .filter(|g| changes.whole.contains(*g))
        .map(|g| group_resource(g))
        .collect();
    ctx.observations.invalidate_memberships(&whole).await;
    ctx.observations.note_membership_changes(
        changes
            .removed
            .iter()
            .chain(&changes.added)
            .filter(|(g, _)| hit_groups.contains(g))
            .cloned(),
    );
    tracing::info!(
        objects = refs.len(),
        groups = hit_groups.len(),
        "group delta: promised groups {what}; reconciling the affected assignments now"
    );
    send_all(trigger, refs).await
}

/// The kind a delivered assignment's status names, for the kinds followed by a read every
/// interval (app roles, group ownership, PIM-for-Groups eligibilities, Entra roles, Azure
/// roles): `None` for anything else (group membership follows group delta; nothing else is
/// verifiable) and for a state there is nothing to compare with; `Some(None)` when the
/// status lacks what the comparison needs (a status written before role ids were
/// recorded): one reconcile records it.
fn polled_kind(r: &ResourceStatus) -> Option<Option<ResourceKind>> {
    if !matches!(r.state, ResourceState::Present | ResourceState::Missing) {
        return None;
    }
    let id = r.origin_id.to_string();
    let mode = || r.mode;
    Some(match (&r.origin_system, r.kind) {
        (OriginSystem::AadApplication, _) => {
            r.role_id
                .as_deref()
                .map(|app_role_id| ResourceKind::AppRole {
                    service_principal_id: id,
                    app_role_id: app_role_id.to_string(),
                })
        }
        (OriginSystem::AadGroup, None) if r.role.as_deref() == Some("Owner") => {
            Some(ResourceKind::GroupOwner { group_id: id })
        }
        (OriginSystem::AadGroup, Some(RoleKind::GroupEligible)) => {
            let access = match r.role.as_deref() {
                Some("Member") => GroupAccess::Member,
                Some("Owner") => GroupAccess::Owner,
                _ => return Some(None),
            };
            Some(ResourceKind::GroupEligible {
                group_id: id,
                access,
            })
        }
        (OriginSystem::DirectoryRole, Some(RoleKind::EntraRole)) => {
            mode().map(|mode| ResourceKind::EntraRole {
                role_definition_id: id,
                directory_scope_id: r
                    .scope
                    .as_deref()
                    .unwrap_or(crate::engine::DIRECTORY_ROOT)
                    .to_string(),
                mode,
            })
        }
        (OriginSystem::AzureResources, Some(RoleKind::AzureRole)) => {
            match (r.role_id.as_deref(), mode()) {
                (Some(role_definition_guid), Some(mode)) => Some(ResourceKind::AzureRole {
                    role_definition_guid: role_definition_guid.to_string(),
                    scope: r.scope.as_deref().map_or(id, String::from),
                    mode,
                }),
                _ => None,
            }
        }
        _ => return None,
    })
}

/// Every read the followed kinds of delivered assignments need, each once: one per app,
/// per owned group, per group and relationship made eligible, per Entra role and mode,
/// per Azure scope and mode, whatever the number of assignments promising it.
fn tracked_reads(objs: &[Arc<AccessPackageAssignment>]) -> BTreeMap<ResourceRead, ResourceKind> {
    let mut reads = BTreeMap::new();
    for obj in objs {
        let Some((_, resources)) = delivered_resources(obj) else {
            continue;
        };
        for kind in resources.filter_map(polled_kind).flatten() {
            if let Some(read) = ResourceRead::for_kind(&kind) {
                reads.entry(read).or_insert(kind);
            }
        }
    }
    reads
}

/// Reads every followed resource again (one paged read per app, owned group, group
/// eligibility, Entra role and mode, Azure scope and mode; shared with the reconciles it
/// triggers) and triggers each delivered assignment whose status no longer matches: a
/// Present resource now missing (drift), a Missing one now present (the repair landed),
/// or one that can no longer be verified (an eligibility that ended on schedule). A read
/// that fails triggers nothing. False when the controller is gone.
async fn poll_privileged(
    ctx: &Tenant,
    objs: &[Arc<AccessPackageAssignment>],
    trigger: &Sender<ObjectRef<AccessPackageAssignment>>,
    since: &mut jiff::Timestamp,
    polled_at: jiff::Timestamp,
) -> bool {
    let reads = tracked_reads(objs);
    if reads.is_empty() || !ctx.privileged_poll_due() {
        return true;
    }
    let resources: Vec<PromisedResource> = reads
        .values()
        .map(|kind| PromisedResource {
            origin_system: OriginSystem::Missing,
            origin_id: String::new(),
            display_name: String::new(),
            role: String::new(),
            kind: kind.clone(),
            note: None,
        })
        .collect();
    let snapshot = ctx.observations.snapshot_fresh(&resources).await;
    // What the objects' status says against what was just read.
    let now_of = |r: &ResourceStatus, user: &str| match polled_kind(r) {
        None => None,
        Some(None) => Some(None),
        Some(Some(kind)) => match snapshot.check(&kind, user) {
            // The read failed: nothing is known, nothing is compared.
            ResourceState::Unknown => None,
            now => Some(Some(now)),
        },
    };
    let mut refs = Vec::new();
    for obj in objs {
        let Some((user, mut resources)) = delivered_resources(obj) else {
            continue;
        };
        let diverged = resources.any(|r| match now_of(r, user) {
            None => false,
            Some(None) => true,
            Some(Some(now)) => now != r.state,
        });
        if diverged {
            refs.push(ObjectRef::from_obj(obj.as_ref()));
        }
    }
    if refs.is_empty() {
        *since = polled_at;
        return true;
    }
    // The removals this poll found happened after the previous one: one audit-log query
    // names who made all of them (app roles and group owners; roles are not looked up).
    let mut removed = Vec::new();
    for obj in objs {
        let Some((user, resources)) = delivered_resources(obj) else {
            continue;
        };
        for r in resources {
            if r.state == ResourceState::Present
                && now_of(r, user) == Some(Some(ResourceState::Missing))
                && let Some(Some(kind)) = polled_kind(r)
                && let Some(target) = crate::observe::attribution::attributable_target(&kind)
            {
                removed.push((target.to_string(), user.to_string()));
            }
        }
    }
    ctx.attribution.detected(*since, removed);
    *since = polled_at;
    // Counted against each package's mass-drift breaker before any repair, as group delta's
    // removals are: a role taken from everyone at once trips it before the first reprocess.
    record_drift(
        ctx,
        drift_by_package_where(objs, |obj| {
            delivered_resources(obj).is_some_and(|(user, mut resources)| {
                resources.any(|r| {
                    r.state == ResourceState::Present
                        && now_of(r, user) == Some(Some(ResourceState::Missing))
                })
            })
        }),
        polled_at,
    );
    tracing::info!(
        objects = refs.len(),
        reads = reads.len(),
        "app roles, group owners, group eligibilities or roles changed; reconciling the affected assignments now"
    );
    send_all(trigger, refs).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::RoleMode;
    use kube::runtime::reflector::store;
    use kube::runtime::watcher::Event;

    fn apa(
        name: &str,
        state: &str,
        user: &str,
        groups: &[(&str, &str)],
    ) -> AccessPackageAssignment {
        let resources: Vec<serde_json::Value> = groups
            .iter()
            .map(
                |(g, s)| serde_json::json!({"originSystem": "AadGroup", "originId": g, "state": s}),
            )
            .collect();
        serde_json::from_value(serde_json::json!({
            "apiVersion": "redeliver.dev/v1alpha1",
            "kind": "AccessPackageAssignment",
            "metadata": {"name": name, "namespace": "access"},
            "spec": {"accessPackage": {"id": "p1"}, "target": {"objectId": user}},
            "status": {"graphState": state, "targetObjectId": user, "resources": resources},
        }))
        .expect("a valid object")
    }

    fn store_of(
        objs: Vec<AccessPackageAssignment>,
    ) -> kube::runtime::reflector::Store<AccessPackageAssignment> {
        let (reader, mut writer) = store::<AccessPackageAssignment>();
        writer.apply_watcher_event(&Event::Init);
        for obj in objs {
            writer.apply_watcher_event(&Event::InitApply(obj));
        }
        writer.apply_watcher_event(&Event::InitDone);
        reader
    }

    fn tenant() -> Vec<Arc<AccessPackageAssignment>> {
        store_of(vec![
            apa(
                "alice",
                "delivered",
                "U-A",
                &[("G-1", "Present"), ("G-2", "Missing")],
            ),
            apa("bob", "delivering", "u-b", &[("g-1", "Present")]),
            apa("carol", "Delivered", "u-c", &[("g-3", "Present")]),
            apa("dave", "delivered", "u-d", &[("g-1", "Present")]),
        ])
        .state()
    }

    fn names(refs: &[ObjectRef<AccessPackageAssignment>]) -> Vec<&str> {
        let mut names: Vec<&str> = refs.iter().map(|r| r.name.as_str()).collect();
        names.sort();
        names
    }

    fn pair(g: &str, u: &str) -> (String, String) {
        (g.to_string(), u.to_string())
    }

    #[test]
    fn a_windows_removals_count_against_their_package_before_anything_is_reconciled() {
        let objs: Vec<AccessPackageAssignment> = (0..20)
            .map(|i| {
                let mut o = apa(
                    &format!("u{i}"),
                    "delivered",
                    &format!("u-{i}"),
                    &[("g-1", "Present")],
                );
                let s = o.status.as_mut().unwrap();
                s.access_package_id = Some("p1".into());
                s.assignment_id = Some(format!("a-{i}"));
                o
            })
            .collect();
        let objs = store_of(objs).state();
        let changes = Changes {
            removed: (0..12).map(|i| pair("g-1", &format!("u-{i}"))).collect(),
            ..Changes::default()
        };
        let found = drift_by_package(&objs, &changes);
        let (delivered, mut drifted) = found["p1"].clone();
        drifted.sort();
        assert_eq!(delivered, 20);
        assert_eq!(drifted.len(), 12);
        // 12 of 20 at once trips the default breaker before any of them is reconciled.
        let policy = crate::engine::SafetyPolicy::default().breaker;
        let mut board = crate::engine::MassDriftBoard::default();
        assert!(board.record(&policy, "p1", drifted, delivered, jiff::Timestamp::now()));
        assert!(board.hold(&policy, "p1", "Finance").is_some());
    }

    fn privileged(name: &str, state: &str, user: &str) -> AccessPackageAssignment {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "redeliver.dev/v1alpha1",
            "kind": "AccessPackageAssignment",
            "metadata": {"name": name, "namespace": "access"},
            "spec": {"accessPackage": {"id": "p1"}, "target": {"objectId": user}},
            "status": {"graphState": state, "targetObjectId": user, "resources": [
                {"originSystem": "AadGroup", "originId": "g-own", "role": "Owner", "state": "Present"},
                {"originSystem": "AadGroup", "originId": "g-mem", "role": "Member", "state": "Present"},
                {"originSystem": "AadGroup", "originId": "g-pim", "kind": "GroupEligible",
                 "mode": "Eligible", "role": "Member", "state": "Missing"},
                {"originSystem": "DirectoryRole", "originId": "rd-1", "kind": "EntraRole",
                 "mode": "Eligible", "scope": "/", "state": "Present"},
                {"originSystem": "AzureResources", "originId": "/subscriptions/s1", "kind": "AzureRole",
                 "mode": "Active", "scope": "/subscriptions/s1", "roleId": "guid-1", "state": "Present"},
                {"originSystem": "AadApplication", "originId": "sp-1", "roleId": "r-1", "state": "Present"},
                {"originSystem": "SharePointOnline", "originId": "https://x", "state": "Unverifiable"},
            ]},
        }))
        .expect("a valid object")
    }

    #[test]
    fn every_followed_kind_is_read_once_whatever_the_number_of_objects() {
        let objs = store_of(
            (0..50)
                .map(|i| privileged(&format!("u{i}"), "delivered", &format!("u-{i}")))
                .chain([privileged("late", "delivering", "u-late")])
                .collect(),
        )
        .state();
        let reads: Vec<ResourceRead> = tracked_reads(&objs).into_keys().collect();
        assert_eq!(
            reads,
            vec![
                ResourceRead::GroupOwners("g-own".into()),
                ResourceRead::AppRoleAssignments("sp-1".into()),
                ResourceRead::DirectoryRoleHolders {
                    role_definition_id: "rd-1".into(),
                    mode: RoleMode::Eligible,
                },
                ResourceRead::AzureRoleHolders {
                    scope: "/subscriptions/s1".into(),
                    mode: RoleMode::Active,
                },
                ResourceRead::GroupEligibilities {
                    group_id: "g-pim".into(),
                    access: GroupAccess::Member,
                },
            ]
        );
        // The eligibility is not a membership group delta follows.
        assert_eq!(
            tracked_groups(&objs).into_iter().collect::<Vec<_>>(),
            vec!["g-mem".to_string(), "g-own".to_string()]
        );
    }

    #[test]
    fn tracks_the_groups_of_delivered_assignments_only() {
        // bob's assignment is still being delivered: its request is followed, not delta.
        assert_eq!(
            tracked_groups(&tenant()).into_iter().collect::<Vec<_>>(),
            vec!["g-1".to_string(), "g-2".to_string(), "g-3".to_string()]
        );
    }

    #[test]
    fn a_removal_concerns_who_held_the_membership_and_an_addition_who_missed_it() {
        let store = tenant();
        let poll = |removed: Vec<(String, String)>, added: Vec<(String, String)>| DeltaPoll {
            removed,
            added,
            ..DeltaPoll::default()
        };
        // Ids compare case-insensitively: Graph and the status may differ in case.
        let (groups, refs) =
            Changes::of(&poll(vec![pair("g-1", "u-a"), pair("G-1", "U-B")], vec![]))
                .affected(&store);
        assert_eq!(names(&refs), vec!["alice"], "bob is not delivered yet");
        assert_eq!(groups.into_iter().collect::<Vec<_>>(), vec!["g-1"]);
        // alice misses g-2: its removal means nothing, its addition is her repair landing.
        let (_, refs) = Changes::of(&poll(vec![pair("g-2", "u-a")], vec![])).affected(&store);
        assert!(refs.is_empty());
        let (groups, refs) = Changes::of(&poll(vec![], vec![pair("g-2", "u-a")])).affected(&store);
        assert_eq!(names(&refs), vec!["alice"]);
        assert_eq!(groups.into_iter().collect::<Vec<_>>(), vec!["g-2"]);
        // Two changes of one object trigger it once.
        let (_, refs) =
            Changes::of(&poll(vec![pair("g-1", "u-a")], vec![pair("g-2", "u-a")])).affected(&store);
        assert_eq!(names(&refs), vec!["alice"]);
        // Another user's change of the same group concerns nobody here.
        let changes = Changes::of(&poll(vec![pair("g-1", "u-z")], vec![]));
        assert!(!changes.is_empty());
        assert!(changes.affected(&store).1.is_empty());
    }

    #[test]
    fn an_expired_or_deleted_group_concerns_everyone_relying_on_it() {
        let store = tenant();
        let resync = DeltaPoll {
            resync: vec!["G-1".into()],
            ..DeltaPoll::default()
        };
        let (groups, refs) = Changes::of(&resync).affected(&store);
        assert_eq!(names(&refs), vec!["alice", "dave"]);
        assert_eq!(groups.into_iter().collect::<Vec<_>>(), vec!["g-1"]);
        let deleted = DeltaPoll {
            deleted_groups: vec!["g-3".into()],
            ..DeltaPoll::default()
        };
        assert_eq!(
            names(&Changes::of(&deleted).affected(&store).1),
            vec!["carol"]
        );
        assert!(Changes::of(&DeltaPoll::default()).is_empty());
    }
}
