//! Sharding across replicas: each replica (or leader-elected group of replicas) reconciles
//! the objects of the connections that hash to its shard, so one tenant's Graph budget is
//! spent by one replica. The assignment is by connection, not by object: every object of a
//! tenant lands on the same shard, and the operator's own connection is one connection like
//! the others.
//!
//! **Shard-scoped watches.** Every `AccessPackageAssignment` and `AccessPackageGuard`
//! carries the label [`SHARD_KEY_LABEL`], whose value is the *bucket* of the connection it
//! resolves to: FNV-1a (64-bit) of the connection's name (`namespace/name`,
//! `cluster/name` or `operator`), modulo [`BUCKETS`]. A shard owns the buckets
//! `b` with `b % count == index` and watches only objects whose label is one of them (a
//! label selector `key in (...)`), so a replica holds only its shard's objects. The bucket
//! does not depend on the shard count: a change of `--shard-count` changes which buckets
//! each replica selects, never a label. Objects without the label (created before it
//! existed, or by a user who did not set it) are seen by a small watch of unlabelled
//! objects in every replica; the replica that owns the object's connection labels it, and
//! its scoped watch then picks it up. An object whose connection changed (a new default
//! GraphConnection in its namespace, an edited `spec.connectionRef`) is relabelled by the
//! replica that holds it, once no reconcile of it is in flight there (see
//! `controller::sharding`). The stored copies do not keep the label (a label map costs
//! ~670 bytes an object); each replica keeps its objects' buckets aside
//! (`sharding::ShardKeys`).
//!
//! Ownership itself is decided from the object's live resolution, not from its label
//! ([`Shard::owns`], checked at the start of every reconcile): a stale label can make a
//! replica hold an object it does not own (it then skips it and relabels it), never make two
//! replicas act on one. Connections (`GraphConnection`, `ClusterGraphConnection`) are few
//! and every replica needs all of them to resolve its objects, so they are watched whole and
//! checked only by the shard that owns them.

use crate::api::{AccessPackageAssignment, AccessPackageGuard, ConnectionKey, ConnectionRef};

/// This replica's shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// 0-based index.
    pub index: u32,
    /// Number of shards (1: no sharding).
    pub count: u32,
}

impl Default for Shard {
    fn default() -> Self {
        Self { index: 0, count: 1 }
    }
}

impl Shard {
    /// Whether this shard reconciles the objects of `key`.
    pub fn owns(&self, key: &ConnectionKey) -> bool {
        self.count <= 1 || shard_of(key, self.count) == self.index
    }

    /// The label selector of this shard's objects (`redeliver.dev/shard-key in (...)`, every
    /// bucket it owns), or `None` without sharding (every object is this replica's).
    pub fn label_selector(&self) -> Option<String> {
        if self.count <= 1 {
            return None;
        }
        let buckets: Vec<String> = (0..BUCKETS)
            .filter(|&b| shard_of_bucket(b, self.count) == self.index)
            .map(|b| b.to_string())
            .collect();
        Some(format!("{SHARD_KEY_LABEL} in ({})", buckets.join(",")))
    }

    /// Whether an object labelled with `value` is in this shard's watch.
    pub fn selects(&self, value: Option<&str>) -> bool {
        if self.count <= 1 {
            return true;
        }
        value
            .and_then(|v| v.parse::<u32>().ok())
            .is_some_and(|b| b < BUCKETS && shard_of_bucket(b, self.count) == self.index)
    }

    /// The Lease this shard elects its leader with: `name` without sharding, else
    /// `name-shard-<index>` (one Lease per shard).
    pub fn lease_name(&self, name: &str) -> String {
        if self.count <= 1 {
            name.to_string()
        } else {
            format!("{name}-shard-{}", self.index)
        }
    }
}

/// The label that carries an object's shard key (its connection's bucket, in decimal).
pub const SHARD_KEY_LABEL: &str = "redeliver.dev/shard-key";

/// How often the unlabelled objects are looked at (a new object is labelled within this
/// and one write). Here, below the context whose settings default to it, rather than in
/// `sharding`, which uses the context.
pub const LABEL_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// How often a replica looks for objects it holds whose connection moved.
pub const RELABEL_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Size of the fixed key space the shards split: the most shards `--shard-count` allows.
/// A power of two, so that for 2, 4, 8, ... shards `bucket % count` is the same shard as
/// `hash % count`, the rule before the label existed: no tenant moves on upgrade.
pub const BUCKETS: u32 = 256;

/// FNV-1a (64-bit) of a connection's metrics label (`namespace/name`, `cluster/name`,
/// `operator`). A fixed function (not the standard library's randomly seeded hasher), so
/// every replica, every version and every user computing a label agrees.
pub fn connection_hash(key: &ConnectionKey) -> u64 {
    fnv1a(key.metric_label().bytes())
}

/// FNV-1a, 64-bit, of `bytes`: the shards' fixed hash.
pub(crate) fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The shard key of a connection: its hash modulo [`BUCKETS`], the value of
/// [`SHARD_KEY_LABEL`] on its objects.
pub fn bucket_of(key: &ConnectionKey) -> u32 {
    (connection_hash(key) % u64::from(BUCKETS)) as u32
}

/// The shard of a connection among `count`: its bucket modulo `count`.
pub fn shard_of(key: &ConnectionKey, count: u32) -> u32 {
    bucket_of(key) % count.max(1)
}

/// The shard that owns `bucket` among `count`.
pub fn shard_of_bucket(bucket: u32, count: u32) -> u32 {
    bucket % count.max(1)
}

/// The StatefulSet ordinal at the end of a pod name (`redeliver-2` → 2).
pub fn ordinal(pod_name: &str) -> Option<u32> {
    pod_name.rsplit_once('-')?.1.parse().ok()
}

/// The objects whose connection decides their shard.
pub trait Connected {
    /// The object's `spec.connectionRef`.
    fn connection_ref(&self) -> Option<&ConnectionRef>;
}

impl Connected for AccessPackageAssignment {
    fn connection_ref(&self) -> Option<&ConnectionRef> {
        self.spec.connection_ref.as_ref()
    }
}

impl Connected for AccessPackageGuard {
    fn connection_ref(&self) -> Option<&ConnectionRef> {
        self.spec.connection_ref.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(n: usize) -> ConnectionKey {
        ConnectionKey::Namespaced {
            namespace: format!("tenant-{n}"),
            name: "default".into(),
        }
    }

    #[test]
    fn every_connection_has_exactly_one_shard_and_it_is_stable() {
        for count in [1, 2, 4, 7] {
            for n in 0..50 {
                let owners = (0..count)
                    .filter(|&index| Shard { index, count }.owns(&ns(n)))
                    .count();
                assert_eq!(owners, 1);
            }
        }
        // Fixed values: a change of the function would move tenants between shards.
        assert_eq!(
            shard_of(&ConnectionKey::Operator, 4),
            shard_of(&ConnectionKey::Operator, 4)
        );
        let spread: std::collections::BTreeSet<u32> =
            (0..50).map(|n| shard_of(&ns(n), 4)).collect();
        assert_eq!(spread.len(), 4, "50 tenants use all 4 shards");
    }

    #[test]
    fn buckets_keep_the_old_shards_for_powers_of_two_and_selectors_partition_them() {
        for n in 0..200 {
            let key = ns(n);
            for count in [1u32, 2, 4, 8, 16, 256] {
                assert_eq!(
                    shard_of(&key, count) as u64,
                    connection_hash(&key) % u64::from(count),
                    "{count} shards: the same shard as before the label"
                );
            }
        }
        // Documented values (docs/install.md 4.6): a user may label objects themselves.
        assert_eq!(
            connection_hash(&ConnectionKey::Operator),
            0x5546_67f2_165f_ec5d
        );
        assert_eq!(bucket_of(&ConnectionKey::Operator), 93);
        assert_eq!(bucket_of(&ns(0)), 110);
        for count in [2u32, 3, 4, 7] {
            let selected: Vec<usize> = (0..count)
                .map(|index| {
                    let shard = Shard { index, count };
                    (0..BUCKETS)
                        .filter(|b| shard.selects(Some(&b.to_string())))
                        .count()
                })
                .collect();
            assert_eq!(selected.iter().sum::<usize>(), BUCKETS as usize);
            assert!(
                Shard { index: 0, count }
                    .label_selector()
                    .is_some_and(|s| s.starts_with("redeliver.dev/shard-key in (0,"))
            );
        }
        assert!(!Shard { index: 0, count: 2 }.selects(None));
        assert!(!Shard { index: 0, count: 2 }.selects(Some("256")));
        assert!(Shard::default().label_selector().is_none());
    }

    #[test]
    fn lease_and_ordinal() {
        assert_eq!(Shard::default().lease_name("redeliver"), "redeliver");
        assert_eq!(
            Shard { index: 2, count: 4 }.lease_name("redeliver"),
            "redeliver-shard-2"
        );
        assert_eq!(ordinal("redeliver-3"), Some(3));
        assert_eq!(ordinal("redeliver-abc"), None);
    }
}
