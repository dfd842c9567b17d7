//! Incremental drift detection with group delta queries (docs/graph.md "Group delta").
//!
//! A full verification reads every promised group's members; between two of them a
//! [`DeltaTracker`] follows one delta link per 50 groups and reports what changed, so an
//! outside removal is seen at the next poll instead of at the next full verification.
//! When nothing changed a poll costs one request (1 RU) per 50 groups.
//!
//! Tracking starts from "now" (`$deltatoken=latest`), not with the initial delta round
//! (which would list every member again): the full read establishes the baseline. So the
//! baseline must be taken *before* that full read: a change made between a read and a
//! later baseline would be absorbed and never reported. [`DeltaTracker::track`] returns
//! the groups it just started to follow, for the caller to verify after the baseline.
//!
//! The controller uses it in `crate::controller::delta` (`--delta-interval`, default 60 s):
//! changes of users whose delivered assignments rely on the group trigger an immediate
//! reconcile of those objects; the scale benchmark measures it against the simulator.

use std::collections::BTreeSet;

use crate::graph::GraphClient;
use crate::graph::client::MAX_DELTA_GROUPS;
use crate::graph::error::GraphError;

/// Follows group delta links for a fixed set of groups.
pub struct DeltaTracker {
    graph: GraphClient,
    chunks: Vec<Chunk>,
}

struct Chunk {
    groups: Vec<String>,
    delta_link: String,
}

/// What one [`DeltaTracker::poll`] found.
#[derive(Debug, Default)]
pub struct DeltaPoll {
    /// `(group id, member id)` pairs removed since the previous poll: each may be drift of a
    /// delivered assignment and deserves an immediate reconcile.
    pub removed: Vec<(String, String)>,
    /// `(group id, member id)` pairs added since the previous poll.
    pub added: Vec<(String, String)>,
    /// Groups whose sync state expired (`410 Gone`, `syncStateNotFound`, `resyncRequired`):
    /// changes may have been missed, so read their members in full. Tracking has already
    /// restarted from now.
    pub resync: Vec<String>,
    /// Groups reported deleted.
    pub deleted_groups: Vec<String>,
    /// Chunks that failed for another reason (throttling, 5xx, network). Their links were
    /// kept, so the next poll reports the changes this one could not.
    pub failed: Vec<GraphError>,
}

impl DeltaPoll {
    /// True when nothing changed and nothing needs a full read.
    pub fn is_quiet(&self) -> bool {
        self.removed.is_empty()
            && self.added.is_empty()
            && self.resync.is_empty()
            && self.deleted_groups.is_empty()
            && self.failed.is_empty()
    }
}

impl DeltaTracker {
    /// Starts tracking `groups` (deduplicated, case-insensitively) from now: one request
    /// per [`MAX_DELTA_GROUPS`] groups.
    pub async fn start(
        graph: GraphClient,
        groups: impl IntoIterator<Item = String>,
    ) -> Result<Self, GraphError> {
        let mut tracker = Self::empty(graph);
        let wanted: BTreeSet<String> = groups.into_iter().collect();
        let (_, failures) = tracker.track(&wanted).await;
        match failures.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(tracker),
        }
    }

    /// A tracker that follows nothing yet.
    pub fn empty(graph: GraphClient) -> Self {
        Self {
            graph,
            chunks: Vec::new(),
        }
    }

    /// Follows exactly `wanted` from now on, keeping the links of groups already followed
    /// (so none of their changes is lost): groups no longer wanted are dropped with their
    /// chunk once none of its groups is wanted, new ones are baselined in new chunks. When
    /// churn has split the groups over more than twice the chunks they need, every chunk
    /// is rebuilt (and every group reported as new). Poll first: a rebuilt chunk starts
    /// from now.
    ///
    /// Returns the groups whose baseline was just taken — their members must be read (and
    /// compared with what the objects expect) after this call — and the chunks that could
    /// not be started (their groups are tried again at the next call).
    pub async fn track(&mut self, wanted: &BTreeSet<String>) -> (Vec<String>, Vec<GraphError>) {
        let wanted: BTreeSet<String> = wanted.iter().map(|g| g.to_ascii_lowercase()).collect();
        self.chunks
            .retain(|c| c.groups.iter().any(|g| wanted.contains(g)));
        let followed: BTreeSet<&str> = self.groups().collect();
        let mut new: Vec<String> = wanted
            .iter()
            .filter(|g| !followed.contains(g.as_str()))
            .cloned()
            .collect();
        let needed = wanted.len().div_ceil(MAX_DELTA_GROUPS);
        let after = self.chunks.len() + new.len().div_ceil(MAX_DELTA_GROUPS);
        if after > 2 * needed.max(1) {
            self.chunks.clear();
            new = wanted.into_iter().collect();
        }
        let mut started = Vec::new();
        let mut failures = Vec::new();
        for groups in new.chunks(MAX_DELTA_GROUPS) {
            match latest_link(&self.graph, groups).await {
                Ok(delta_link) => {
                    started.extend(groups.iter().cloned());
                    self.chunks.push(Chunk {
                        groups: groups.to_vec(),
                        delta_link,
                    });
                }
                Err(e) => failures.push(e),
            }
        }
        (started, failures)
    }

    /// Group ids tracked.
    pub fn groups(&self) -> impl Iterator<Item = &str> {
        self.chunks
            .iter()
            .flat_map(|c| c.groups.iter().map(String::as_str))
    }

    /// Delta queries per poll when nothing changed (one per 50 groups).
    pub fn queries_per_poll(&self) -> usize {
        self.chunks.len()
    }

    /// Follows every delta link once and reports the changes since the previous poll.
    pub async fn poll(&mut self) -> DeltaPoll {
        let mut out = DeltaPoll::default();
        for chunk in &mut self.chunks {
            match self.graph.group_members_delta_next(&chunk.delta_link).await {
                Ok(delta) => {
                    for (group, changes) in delta.changes {
                        for member in changes.removed {
                            out.removed.push((group.clone(), member));
                        }
                        for member in changes.added {
                            out.added.push((group.clone(), member));
                        }
                    }
                    out.deleted_groups.extend(delta.deleted_groups);
                    chunk.delta_link = delta.delta_link;
                }
                Err(err) if err.is_resync_required() => {
                    tracing::info!(groups = chunk.groups.len(), error = %err, "group delta sync state expired; a full read of these groups is needed");
                    match latest_link(&self.graph, &chunk.groups).await {
                        Ok(link) => {
                            chunk.delta_link = link;
                            out.resync.extend(chunk.groups.iter().cloned());
                        }
                        Err(e) => out.failed.push(e),
                    }
                }
                Err(err) => {
                    out.failed.push(err);
                }
            }
        }
        out
    }
}

/// A delta link that reports changes from now on (`$deltatoken=latest`).
async fn latest_link(graph: &GraphClient, groups: &[String]) -> Result<String, GraphError> {
    graph.group_members_delta_latest(groups).await
}
