//! Changing `--shard-count` while replicas run: replicas of two different shard counts
//! disagree on which shard owns a connection, so they must never act at the same time. The
//! per-shard leader Lease does not see that (it keeps one replica *per index* active, and
//! the indexes of two counts overlap), so every acting replica also holds a *shard-set
//! Lease* of its own, `<lease>-shards-<count>-<index>`, labelled with its count, and
//! starts its controllers only once no replica of another count is active.
//!
//! The protocol, on `coordination.k8s.io` Leases only (every write carries the Lease's
//! `resourceVersion` as a precondition, so two writers never both win):
//!
//! 1. Take (or renew) the own Lease with the state `waiting`. A Lease held by another
//!    identity whose renewal is still within its duration is not taken.
//! 2. List the Leases of the set (label [`SET_LABEL`]). While one of another count is
//!    `active` and live, stay `waiting` (renewing) and look again every second.
//! 3. Write `active`, then list again. If one of another count became `active` meanwhile,
//!    write `waiting` again and retry after a random pause: of two replicas that both wrote
//!    `active`, the one that wrote last always sees the other on its second list, so at
//!    most one count gets past this step.
//! 4. Run the controllers while renewing every third of the duration. A renewal that fails
//!    for two thirds of the duration (or finds the Lease taken) stops them: the others
//!    consider the Lease expired only after the whole duration. When the controllers have
//!    stopped (in-flight reconciles finished), the Lease is released (holder cleared), and a
//!    waiting replica of the new count takes over within a second.
//!
//! Liveness compares a Lease's `renewTime` plus its duration with the local clock, as
//! Kubernetes leader election does: it assumes the nodes' clocks agree to within a few
//! seconds.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use rand::Rng;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::shard::Shard;
use crate::domain::clock::{Clock, SystemClock};

/// Label naming the set a shard-set Lease belongs to (the `--lease-name`).
pub const SET_LABEL: &str = "redeliver.dev/shard-set";
/// Label with the holder's `--shard-count`.
pub const COUNT_LABEL: &str = "redeliver.dev/shard-count";
/// Label with the holder's state: `waiting` or `active`.
pub const STATE_LABEL: &str = "redeliver.dev/shard-state";

const WAITING: &str = "waiting";
const ACTIVE: &str = "active";

/// How long a shard-set Lease stays live without a renewal (the leader Lease's figure).
pub const LEASE_DURATION: Duration = Duration::from_secs(15);

/// How often a waiting replica looks again.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// What can stop a replica from taking part in its shard set.
#[derive(Debug, thiserror::Error)]
pub enum ShardSetError {
    /// The API server refused or failed a Lease request.
    #[error(
        "cannot use the shard-set Lease {name}: {source}; grant get/list/create/patch on coordination.k8s.io leases in the Lease namespace"
    )]
    Kube {
        /// The Lease.
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// The Lease could not be renewed in time, or another identity holds it now.
    #[error(
        "lost the shard-set Lease {0}: controllers stopped so that no other shard count acts alongside"
    )]
    Lost(String),
}

/// This replica's membership of its shard set (see the module documentation).
#[derive(Clone)]
pub struct ShardSetLease {
    api: Api<Lease>,
    set: String,
    shard: Shard,
    identity: String,
    duration: Duration,
    /// Wall-clock time for `renewTime` and liveness (the controller's clock).
    clock: Arc<dyn Clock>,
    look_every: Duration,
}

/// What the own Lease looked like at the last read or write.
struct Held {
    resource_version: String,
}

impl ShardSetLease {
    /// The shard-set Lease of `shard` in set `set` (the `--lease-name`), in `namespace`,
    /// held by `identity`.
    pub fn new(client: Client, namespace: &str, set: &str, shard: Shard, identity: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            set: set.to_string(),
            shard,
            identity: identity.to_string(),
            duration: LEASE_DURATION,
            clock: Arc::new(SystemClock),
            look_every: LOOK_EVERY,
        }
    }

    /// The same reading wall-clock time from `clock` (the controller's).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The shard-set Lease a replica holds while it acts: with more than one shard or with
    /// leader election, in the Lease namespace. `None` for a single replica without leader
    /// election (nothing to coordinate with), or when no Lease namespace is known (then a
    /// change of `--shard-count` needs the controller stopped, and a warning says so).
    pub fn for_replica(
        client: &Client,
        shard: Shard,
        leader_election: bool,
        namespace: Option<&str>,
        set: &str,
        identity: &str,
    ) -> Option<Self> {
        if shard.count <= 1 && !leader_election {
            return None;
        }
        let Some(namespace) = namespace else {
            tracing::warn!(
                "no Lease namespace (--lease-namespace or POD_NAMESPACE): this replica takes no shard-set Lease, so a change of --shard-count is only safe with the controller stopped"
            );
            return None;
        };
        Some(Self::new(client.clone(), namespace, set, shard, identity))
    }

    /// The same with another Lease duration (tests).
    pub fn with_duration(mut self, duration: Duration) -> Self {
        self.duration = duration;
        self
    }

    /// The same with a waiting replica looking again every `look_every` instead of every
    /// second (tests).
    pub fn with_look_every(mut self, look_every: Duration) -> Self {
        self.look_every = look_every;
        self
    }

    /// The own Lease's name: `<set>-shards-<count>-<index>`.
    pub fn name(&self) -> String {
        format!(
            "{}-shards-{}-{}",
            self.set, self.shard.count, self.shard.index
        )
    }

    fn err(&self, source: kube::Error) -> ShardSetError {
        ShardSetError::Kube {
            name: self.name(),
            source,
        }
    }

    /// Runs `controllers` (given a token that stops them) once this replica may act, and
    /// for as long as it holds its Lease. Returns `Ok` when `stop` is cancelled (before or
    /// after the start), [`ShardSetError::Lost`] when the Lease was lost (the controllers
    /// have stopped by then).
    pub async fn run<F, Fut>(
        &self,
        stop: CancellationToken,
        controllers: F,
    ) -> Result<(), ShardSetError>
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()>,
    {
        let Some(mut held) = self.acquire(&stop).await? else {
            self.release().await;
            return Ok(());
        };
        tracing::info!(lease = %self.name(), shards = self.shard.count, "no replica of another shard count is active: starting controllers");
        let run_stop = stop.child_token();
        let controllers = controllers(run_stop.clone());
        tokio::pin!(controllers);
        let mut renew = tokio::time::interval(self.duration / 3);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        renew.tick().await;
        let mut last_renewed = tokio::time::Instant::now();
        let mut lost = false;
        loop {
            tokio::select! {
                () = &mut controllers => break,
                _ = renew.tick(), if !lost => {
                    match self.write(ACTIVE, Some(&held)).await {
                        Ok(Some(h)) => {
                            held = h;
                            last_renewed = tokio::time::Instant::now();
                        }
                        Ok(None) => {
                            tracing::error!(lease = %self.name(), "another replica holds the shard-set Lease now; stopping controllers");
                            lost = true;
                        }
                        Err(e) => {
                            tracing::warn!(lease = %self.name(), error = %e, "could not renew the shard-set Lease");
                            // Stop well before the others may consider it expired.
                            lost = last_renewed.elapsed() >= self.duration * 2 / 3;
                        }
                    }
                    if lost {
                        run_stop.cancel();
                    }
                }
            }
        }
        if lost {
            return Err(ShardSetError::Lost(self.name()));
        }
        self.release().await;
        Ok(())
    }

    /// Takes the own Lease and waits until this replica may act (steps 1–3). `None` when
    /// `stop` was cancelled first.
    async fn acquire(&self, stop: &CancellationToken) -> Result<Option<Held>, ShardSetError> {
        let mut said_waiting = false;
        loop {
            if stop.is_cancelled() {
                return Ok(None);
            }
            let mut pause = self.look_every;
            if let Some(held) = self.write(WAITING, None).await? {
                match self.other_active().await? {
                    Some(other) => {
                        if !said_waiting {
                            tracing::info!(lease = %self.name(), other = %other, "a replica of another shard count is active: waiting until it stops");
                            said_waiting = true;
                        }
                    }
                    None => {
                        if let Some(active) = self.write(ACTIVE, Some(&held)).await? {
                            match self.other_active().await? {
                                None => return Ok(Some(active)),
                                Some(other) => {
                                    // Both wrote `active`: step back and let one of us win.
                                    tracing::info!(lease = %self.name(), other = %other, "another shard count became active at the same time: stepping back");
                                    self.write(WAITING, Some(&active)).await?;
                                    pause =
                                        self.look_every.mul_f64(rand::rng().random_range(0.5..2.0));
                                }
                            }
                        }
                    }
                }
            }
            tokio::select! {
                () = stop.cancelled() => return Ok(None),
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// A live, active Lease of the set whose count is not this replica's, by name.
    async fn other_active(&self) -> Result<Option<String>, ShardSetError> {
        let leases = self
            .api
            .list(&ListParams::default().labels(&format!("{SET_LABEL}={}", self.set)))
            .await
            .map_err(|e| self.err(e))?;
        let mine = self.shard.count.to_string();
        let now = self.clock.now();
        Ok(leases
            .items
            .into_iter()
            .find(|l| {
                let labels = l.labels();
                labels.get(COUNT_LABEL) != Some(&mine)
                    && labels.get(STATE_LABEL).map(String::as_str) == Some(ACTIVE)
                    && live(l, now)
            })
            .map(|l| l.name_any()))
    }

    /// Writes the own Lease as held by this replica in `state`: renews it (`held`: the
    /// version last written) or takes it when it is free, expired or already ours. `None`
    /// when another identity holds it live, or it changed since `held`.
    async fn write(&self, state: &str, held: Option<&Held>) -> Result<Option<Held>, ShardSetError> {
        let name = self.name();
        let now = MicroTime(self.clock.now());
        let current = self.api.get_opt(&name).await.map_err(|e| self.err(e))?;
        let Some(current) = current else {
            if held.is_some() {
                return Ok(None);
            }
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    labels: Some(self.labels(state)),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(self.duration_seconds()),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(l) => Ok(Some(Held {
                    resource_version: l.resource_version().unwrap_or_default(),
                })),
                // Another replica created it first: look again next time.
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(None),
                Err(e) => Err(self.err(e)),
            };
        };
        let rv = current.resource_version().unwrap_or_default();
        if let Some(h) = held
            && h.resource_version != rv
        {
            return Ok(None);
        }
        let spec = current.spec.clone().unwrap_or_default();
        let ours = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        let free = spec.holder_identity.as_deref().is_none_or(str::is_empty)
            || !live(&current, self.clock.now());
        if !ours && !free {
            return Ok(None);
        }
        let mut spec_patch = json!({
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.duration_seconds(),
            "renewTime": now,
        });
        if !ours {
            spec_patch["acquireTime"] = json!(now);
            spec_patch["leaseTransitions"] = json!(spec.lease_transitions.unwrap_or(0) + 1);
        }
        let patch = json!({
            "metadata": {"resourceVersion": rv, "labels": self.labels(state)},
            "spec": spec_patch,
        });
        match self
            .api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(l) => Ok(Some(Held {
                resource_version: l.resource_version().unwrap_or_default(),
            })),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(None),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Clears the holder (state `waiting`), so a replica of another count need not wait
    /// out the duration. Best effort: an unreleased Lease expires on its own.
    async fn release(&self) {
        let name = self.name();
        let current = match self.api.get_opt(&name).await {
            Ok(Some(l)) => l,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(lease = %name, error = %e, "could not release the shard-set Lease; it expires on its own");
                return;
            }
        };
        let holder = current
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref());
        if holder != Some(self.identity.as_str()) {
            return;
        }
        let patch = json!({
            "metadata": {
                "resourceVersion": current.resource_version(),
                "labels": self.labels(WAITING),
            },
            "spec": {"holderIdentity": null},
        });
        if let Err(e) = self
            .api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            tracing::warn!(lease = %name, error = %e, "could not release the shard-set Lease; it expires on its own");
        }
    }

    fn labels(&self, state: &str) -> std::collections::BTreeMap<String, String> {
        [
            (SET_LABEL.to_string(), self.set.clone()),
            (COUNT_LABEL.to_string(), self.shard.count.to_string()),
            (STATE_LABEL.to_string(), state.to_string()),
        ]
        .into()
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }
}

/// Whether `lease` has a holder whose last renewal is within the Lease's duration.
fn live(lease: &Lease, now: jiff::Timestamp) -> bool {
    let Some(spec) = lease.spec.as_ref() else {
        return false;
    };
    if spec.holder_identity.as_deref().is_none_or(str::is_empty) {
        return false;
    }
    let (Some(renewed), Some(seconds)) = (spec.renew_time.as_ref(), spec.lease_duration_seconds)
    else {
        return false;
    };
    renewed
        .0
        .checked_add(jiff::SignedDuration::from_secs(i64::from(seconds)))
        .is_ok_and(|until| until > now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, renewed_ago: i64, seconds: i32) -> Lease {
        let now = jiff::Timestamp::now();
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_string),
                renew_time: Some(MicroTime(
                    now - jiff::SignedDuration::from_secs(renewed_ago),
                )),
                lease_duration_seconds: Some(seconds),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_lease_is_live_while_held_and_renewed_within_its_duration() {
        let now = jiff::Timestamp::now();
        assert!(live(&lease(Some("a"), 5, 15), now));
        assert!(!live(&lease(Some("a"), 16, 15), now), "expired");
        assert!(!live(&lease(None, 0, 15), now), "released");
        assert!(!live(&lease(Some(""), 0, 15), now), "released");
    }
}
