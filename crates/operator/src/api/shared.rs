//! [`SharedStr`]: a status string that many stored objects repeat, held once in memory.
//!
//! Every object of one access package carries the same package id, policy id and connection
//! in its status, and the same resources (group ids and names, role names and ids). The
//! controller's store holds every object, so at 100,000 objects these copies were about
//! 80 MiB of one replica's memory (docs/benchmarks.md, "Controller at 100,000 objects").
//! Decoding interns them: objects that repeat a value share one allocation.
//!
//! The interner is a set of `Arc<str>` under a mutex rather than a crate's: `internment`'s
//! `ArcIntern` would bring a concurrent map and a second reference count for what is one
//! lookup per decoded field, and the set here is pruned of values no object holds any
//! more, so it stays bounded while objects come and go (its size is
//! `redeliver_state_entries{map="shared_strings"}`).

use std::borrow::{Borrow, Cow};
use std::collections::HashSet;
use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An immutable string shared by every object that holds the same value. Reads, compares,
/// prints and serializes as the string it holds; its schema is a plain string, so the CRD
/// does not change.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SharedStr(Arc<str>);

impl SharedStr {
    /// The value from the process-wide set: one allocation per distinct value. Decoding
    /// uses this; values built in a reconcile are short-lived and need not be shared.
    pub fn interned(s: &str) -> Self {
        let mut set = interner();
        if let Some(found) = set.values.get(s) {
            return Self(found.clone());
        }
        let value: Arc<str> = Arc::from(s);
        set.values.insert(value.clone());
        if set.values.len() >= set.prune_at {
            // Values held only by the set belong to no object any more.
            set.values.retain(|v| Arc::strong_count(v) > 1);
            set.prune_at = (set.values.len() * 2).max(MIN_PRUNE_AT);
        }
        Self(value)
    }

    /// The string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Distinct values held by the interner (for `redeliver_state_entries`).
pub fn interned_len() -> usize {
    interner().values.len()
}

const MIN_PRUNE_AT: usize = 4096;

struct Interner {
    values: HashSet<Arc<str>>,
    /// Prune when the set reaches this size: twice what survived the last pruning, so that
    /// pruning costs O(1) per insertion on average.
    prune_at: usize,
}

fn interner() -> MutexGuard<'static, Interner> {
    static SET: LazyLock<Mutex<Interner>> = LazyLock::new(|| {
        Mutex::new(Interner {
            values: HashSet::new(),
            prune_at: MIN_PRUNE_AT,
        })
    });
    // Poisoning cannot leave the set inconsistent: every change to it is one call.
    SET.lock().unwrap_or_else(|p| p.into_inner())
}

impl Deref for SharedStr {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for SharedStr {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for SharedStr {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<String> for SharedStr {
    fn from(s: String) -> Self {
        Self(Arc::from(s))
    }
}

impl From<&str> for SharedStr {
    fn from(s: &str) -> Self {
        Self(Arc::from(s))
    }
}

impl From<&String> for SharedStr {
    fn from(s: &String) -> Self {
        Self(Arc::from(s.as_str()))
    }
}

impl From<SharedStr> for String {
    fn from(s: SharedStr) -> Self {
        s.0.to_string()
    }
}

impl PartialEq<str> for SharedStr {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for SharedStr {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl PartialEq<String> for SharedStr {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<SharedStr> for String {
    fn eq(&self, other: &SharedStr) -> bool {
        **self == *other.0
    }
}

impl PartialEq<SharedStr> for &str {
    fn eq(&self, other: &SharedStr) -> bool {
        **self == *other.0
    }
}

impl fmt::Display for SharedStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SharedStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl Serialize for SharedStr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SharedStr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = Cow::<'de, str>::deserialize(deserializer)?;
        Ok(Self::interned(&s))
    }
}

impl JsonSchema for SharedStr {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        String::schema_name()
    }

    fn schema_id() -> Cow<'static, str> {
        String::schema_id()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        String::json_schema(generator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoded_values_share_one_allocation_and_read_as_strings() {
        let a: SharedStr = serde_json::from_str("\"fin-readers-7c1d\"").unwrap();
        let b: SharedStr = serde_json::from_str("\"fin-readers-7c1d\"").unwrap();
        assert!(Arc::ptr_eq(&a.0, &b.0));
        assert_eq!(a, "fin-readers-7c1d");
        assert_eq!(serde_json::to_string(&a).unwrap(), "\"fin-readers-7c1d\"");
        assert_eq!(
            format!("{a} {a:?}"),
            "fin-readers-7c1d \"fin-readers-7c1d\""
        );
        // A value built in code is equal, though not shared.
        assert_eq!(SharedStr::from("fin-readers-7c1d"), a);
    }

    #[test]
    fn two_decoded_objects_of_one_package_share_its_strings() {
        let object = |name: &str, user: &str| {
            serde_json::json!({
                "apiVersion": "redeliver.dev/v1alpha1", "kind": "AccessPackageAssignment",
                "metadata": {"name": name, "namespace": "access"},
                "spec": {"accessPackage": {"displayName": "Finance Analysts"},
                         "target": {"userPrincipalName": user}},
                "status": {
                    "accessPackageId": "9f1c0c7e-0000-4000-8000-000000000001",
                    "targetObjectId": user,
                    "resources": [{"originSystem": "AadGroup",
                                   "originId": "8d3f5a2e-0000-4000-8000-00000000000a",
                                   "displayName": "fin-readers", "role": "Member",
                                   "state": "Present"}]
                }
            })
        };
        let a: crate::api::AccessPackageAssignment =
            serde_json::from_value(object("alice", "alice@contoso.com")).unwrap();
        let b: crate::api::AccessPackageAssignment =
            serde_json::from_str(&object("bob", "bob@contoso.com").to_string()).unwrap();
        let (sa, sb) = (a.status.unwrap(), b.status.unwrap());
        let same = |x: &str, y: &str| std::ptr::eq(x.as_ptr(), y.as_ptr());
        assert!(same(
            sa.access_package_id.as_deref().unwrap(),
            sb.access_package_id.as_deref().unwrap()
        ));
        let (ra, rb) = (&sa.resources[0], &sb.resources[0]);
        assert!(same(&ra.origin_id, &rb.origin_id));
        assert!(same(
            ra.display_name.as_deref().unwrap(),
            rb.display_name.as_deref().unwrap()
        ));
    }

    #[test]
    fn values_no_object_holds_are_pruned() {
        let kept = SharedStr::interned("kept-by-a-test-object");
        for i in 0..(3 * MIN_PRUNE_AT) {
            drop(SharedStr::interned(&format!("dropped-{i}")));
        }
        // Pruning ran at least once: far fewer than all the dropped values remain, and the
        // held one is still the shared copy.
        assert!(interned_len() < 2 * MIN_PRUNE_AT + 64, "{}", interned_len());
        assert!(Arc::ptr_eq(
            &kept.0,
            &SharedStr::interned("kept-by-a-test-object").0
        ));
    }

    #[test]
    fn its_schema_is_a_plain_string() {
        let mut generator = SchemaGenerator::default();
        assert_eq!(
            SharedStr::json_schema(&mut generator),
            String::json_schema(&mut generator)
        );
    }
}
