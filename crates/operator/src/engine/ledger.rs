//! The repair ledger: one reprocess history per Graph assignment (or assignment request),
//! shared by every object that covers it.
//!
//! The unit of truth is the Graph assignment, not the Kubernetes object. An
//! `AccessPackageAssignment` and an `AccessPackageGuard` (or two declarations) can cover the
//! same assignment; without a shared history each would reprocess it within its own cooldown.
//!
//! The rule, applied by [`gate`] for every object alike:
//! - the history of an assignment is *shared*: how many reprocesses were sent since it was
//!   last verified delivered, when the last one was sent, and by which object;
//! - each object applies *its own limits* to that shared history: it may reprocess only when
//!   at least its own cooldown has passed since the last reprocess (whoever sent it) and fewer
//!   than its own `maxAttempts` have been sent;
//! - a manual request (the reprocess annotation) lifts the attempts limit, never the cooldown;
//! - whichever object decides first sends the reprocess; the others report it as in flight,
//!   naming the object that sent it.
//!
//! So an assignment is reprocessed at most once per cooldown of the object that sends it,
//! however many objects cover it. The ledger is plain data: drivers keep one per run (audit)
//! or per process (controller, rebuilt from the objects' status at start-up).

use std::collections::HashMap;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

/// What a reprocess targets: an assignment, or a failed assignment request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RepairKey {
    /// `POST .../assignments/{id}/reprocess`.
    Assignment(String),
    /// `POST .../assignmentRequests/{id}/reprocess`.
    Request(String),
}

impl RepairKey {
    /// The key of an assignment (ids compare case-insensitively).
    pub fn assignment(id: &str) -> Self {
        Self::Assignment(id.to_ascii_lowercase())
    }

    /// The key of an assignment request.
    pub fn request(id: &str) -> Self {
        Self::Request(id.to_ascii_lowercase())
    }

    /// The Graph object id.
    pub fn id(&self) -> &str {
        match self {
            Self::Assignment(id) | Self::Request(id) => id,
        }
    }
}

/// The shared reprocess history of one assignment or request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairRecord {
    /// Reprocesses sent since the assignment was last verified delivered.
    pub attempts: i32,
    /// When the last one was sent.
    pub last_requested: Timestamp,
    /// Who sent it: `Kind namespace/name` of the covering object.
    pub by: String,
}

/// One object's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepairLimits {
    /// Minimum time since the last reprocess, whoever sent it.
    pub cooldown: Duration,
    /// Reprocesses allowed before the object gives up (a manual request lifts it).
    pub max_attempts: i32,
}

/// What [`gate`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// A reprocess may be sent; `attempts` were sent before it.
    Open { attempts: i32 },
    /// The last reprocess is within the cooldown: wait until `next`.
    CoolingDown {
        record: RepairRecord,
        next: Timestamp,
    },
    /// `maxAttempts` reprocesses did not repair it.
    Exhausted { record: RepairRecord },
}

/// Applies `limits` to `history` at `now`. `forced` (a manual request) lifts the attempts
/// limit, not the cooldown.
pub fn gate(
    history: Option<&RepairRecord>,
    limits: RepairLimits,
    now: Timestamp,
    forced: bool,
) -> Gate {
    let Some(record) = history else {
        return Gate::Open { attempts: 0 };
    };
    let next = add(record.last_requested, limits.cooldown);
    if now < next {
        return Gate::CoolingDown {
            record: record.clone(),
            next,
        };
    }
    if !forced && record.attempts >= limits.max_attempts {
        return Gate::Exhausted {
            record: record.clone(),
        };
    }
    Gate::Open {
        attempts: record.attempts,
    }
}

/// A change a plan makes to the ledger. Drivers apply it with [`RepairLedger::apply`] in
/// the same critical section as the planning, so two objects can never both decide to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerUpdate {
    /// A reprocess is being sent now, by `record.by`.
    Requested {
        key: RepairKey,
        record: RepairRecord,
    },
    /// The assignment was verified delivered: attempts count from 0 again (the last time
    /// still spaces the next reprocess).
    Verified { key: RepairKey },
}

impl LedgerUpdate {
    /// The key it changes.
    pub fn key(&self) -> &RepairKey {
        match self {
            Self::Requested { key, .. } | Self::Verified { key } => key,
        }
    }
}

/// Reprocess histories by key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepairLedger {
    records: HashMap<RepairKey, RepairRecord>,
}

impl RepairLedger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// The recorded history of `key`.
    pub fn get(&self, key: &RepairKey) -> Option<&RepairRecord> {
        self.records.get(key)
    }

    /// Histories kept.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The history the gate applies to: the ledger's, or the object's own record (from its
    /// status) when the ledger has none or an older one. An object's own status can be newer
    /// only when the ledger lost it (a driver that does not seed, such as a unit test).
    pub fn history<'a>(
        &'a self,
        key: &RepairKey,
        own: Option<&'a RepairRecord>,
    ) -> Option<&'a RepairRecord> {
        match (self.records.get(key), own) {
            (Some(l), Some(o)) if o.last_requested > l.last_requested => Some(o),
            (Some(l), _) => Some(l),
            (None, o) => o,
        }
    }

    /// Applies `update` and returns the record it replaced, so a write that did not happen
    /// can be undone with [`RepairLedger::restore`].
    pub fn apply(&mut self, update: &LedgerUpdate) -> Option<RepairRecord> {
        match update {
            LedgerUpdate::Requested { key, record } => {
                self.records.insert(key.clone(), record.clone())
            }
            LedgerUpdate::Verified { key } => {
                let previous = self.records.get(key).cloned();
                if let Some(r) = self.records.get_mut(key) {
                    r.attempts = 0;
                }
                previous
            }
        }
    }

    /// Puts back what [`RepairLedger::apply`] replaced.
    pub fn restore(&mut self, key: &RepairKey, previous: Option<RepairRecord>) {
        match previous {
            Some(r) => {
                self.records.insert(key.clone(), r);
            }
            None => {
                self.records.remove(key);
            }
        }
    }

    /// Adds a history read from durable state (an object's status), keeping the newer one
    /// when two objects name the same key.
    pub fn seed(&mut self, key: RepairKey, record: RepairRecord) {
        match self.records.get(&key) {
            Some(existing) if existing.last_requested >= record.last_requested => {}
            _ => {
                self.records.insert(key, record);
            }
        }
    }

    /// Forgets histories that can no longer gate anything: no attempt pending and the last
    /// reprocess older than `keep` (the longest cooldown in use), or attempts pending and
    /// the last reprocess older than [`PENDING_KEEP_FACTOR`] × `keep`. An object still
    /// covering a forgotten assignment carries the same history in its own status, which
    /// [`RepairLedger::history`] reads when the ledger has none; without this the ledger
    /// kept the history of every assignment ever repaired and then deleted.
    pub fn prune(&mut self, now: Timestamp, keep: Duration) {
        let pending_keep = keep.saturating_mul(PENDING_KEEP_FACTOR);
        self.records.retain(|_, r| {
            let kept = if r.attempts > 0 { pending_keep } else { keep };
            add(r.last_requested, kept) > now
        });
    }
}

/// How many times longer than a settled one a history with attempts pending is kept.
pub const PENDING_KEEP_FACTOR: u32 = 7;

/// What applying a plan's ledger updates replaced, to undo the `Requested` ones whose write
/// did not happen (refused writes stay counted; only writes that never reached Graph, or
/// failed in transit, are undone).
#[derive(Debug, Default)]
pub struct Undo(Vec<(RepairKey, Option<RepairRecord>)>);

impl Undo {
    /// Applies `updates` to `ledger`, remembering what each `Requested` one replaced.
    pub fn apply(ledger: &mut RepairLedger, updates: &[LedgerUpdate]) -> Self {
        let mut undo = Vec::new();
        for u in updates {
            let previous = ledger.apply(u);
            if let LedgerUpdate::Requested { key, .. } = u {
                undo.push((key.clone(), previous));
            }
        }
        Self(undo)
    }

    /// Puts back the records of `key` (every key when `None`).
    pub fn restore(&mut self, ledger: &mut RepairLedger, key: Option<&RepairKey>) {
        self.0.retain(|(k, previous)| {
            if key.is_some_and(|wanted| wanted != k) {
                return true;
            }
            ledger.restore(k, previous.clone());
            false
        });
    }

    /// Keeps the claim on `key`: its write went out (or was refused), so it is not undone.
    pub fn keep(&mut self, key: &RepairKey) {
        self.0.retain(|(k, _)| k != key);
    }

    /// True when nothing is left to undo.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The record `key` had before the plan claimed it.
    pub fn previous(&self, key: &RepairKey) -> Option<&RepairRecord> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, p)| p.as_ref())
    }
}

fn add(ts: Timestamp, d: Duration) -> Timestamp {
    SignedDuration::try_from(d)
        .ok()
        .and_then(|d| ts.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn rec(attempts: i32, at: i64, by: &str) -> RepairRecord {
        RepairRecord {
            attempts,
            last_requested: t(at),
            by: by.into(),
        }
    }

    const LIMITS: RepairLimits = RepairLimits {
        cooldown: Duration::from_secs(300),
        max_attempts: 3,
    };

    #[test]
    fn a_fresh_assignment_is_open() {
        assert_eq!(gate(None, LIMITS, t(0), false), Gate::Open { attempts: 0 });
    }

    #[test]
    fn the_cooldown_counts_from_the_last_reprocess_whoever_sent_it() {
        let by_guard = rec(1, 0, "AccessPackageGuard access/finance");
        match gate(Some(&by_guard), LIMITS, t(299), false) {
            Gate::CoolingDown { record, next } => {
                assert_eq!(record.by, "AccessPackageGuard access/finance");
                assert_eq!(next, t(300));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            gate(Some(&by_guard), LIMITS, t(300), false),
            Gate::Open { attempts: 1 }
        );
        // Each object applies its own cooldown to the shared history.
        let longer = RepairLimits {
            cooldown: Duration::from_secs(600),
            ..LIMITS
        };
        assert!(matches!(
            gate(Some(&by_guard), longer, t(300), false),
            Gate::CoolingDown { .. }
        ));
    }

    #[test]
    fn attempts_are_shared_and_a_manual_request_lifts_only_the_attempts_limit() {
        let spent = rec(3, 0, "AccessPackageAssignment access/alice");
        assert!(matches!(
            gate(Some(&spent), LIMITS, t(400), false),
            Gate::Exhausted { .. }
        ));
        assert_eq!(
            gate(Some(&spent), LIMITS, t(400), true),
            Gate::Open { attempts: 3 }
        );
        assert!(matches!(
            gate(Some(&spent), LIMITS, t(10), true),
            Gate::CoolingDown { .. }
        ));
        let generous = RepairLimits {
            max_attempts: 5,
            ..LIMITS
        };
        assert_eq!(
            gate(Some(&spent), generous, t(400), false),
            Gate::Open { attempts: 3 }
        );
    }

    #[test]
    fn apply_restore_and_verified() {
        let mut ledger = RepairLedger::new();
        let key = RepairKey::assignment("A-1");
        assert_eq!(
            key,
            RepairKey::assignment("a-1"),
            "ids are case-insensitive"
        );
        let previous = ledger.apply(&LedgerUpdate::Requested {
            key: key.clone(),
            record: rec(1, 0, "x"),
        });
        assert_eq!(previous, None);
        assert_eq!(ledger.get(&key), Some(&rec(1, 0, "x")));
        // A write that failed in transit is undone.
        ledger.restore(&key, previous);
        assert!(ledger.is_empty());
        ledger.apply(&LedgerUpdate::Requested {
            key: key.clone(),
            record: rec(2, 10, "x"),
        });
        ledger.apply(&LedgerUpdate::Verified { key: key.clone() });
        assert_eq!(ledger.get(&key), Some(&rec(0, 10, "x")), "time kept");
        ledger.prune(t(10 + 299), Duration::from_secs(300));
        assert_eq!(ledger.len(), 1, "still spaces the next reprocess");
        ledger.prune(t(10 + 300), Duration::from_secs(300));
        assert!(ledger.is_empty());
        // Attempts pending: kept seven times longer, then forgotten too (an object still
        // covering it has the same history in its status).
        ledger.apply(&LedgerUpdate::Requested {
            key: key.clone(),
            record: rec(2, 10, "x"),
        });
        ledger.prune(t(10 + 7 * 300 - 1), Duration::from_secs(300));
        assert_eq!(ledger.len(), 1, "pending: kept");
        ledger.prune(t(10 + 7 * 300), Duration::from_secs(300));
        assert!(
            ledger.is_empty(),
            "pending, a week-equivalent old: forgotten"
        );
    }

    #[test]
    fn undo_puts_back_only_what_it_is_asked_to() {
        let mut ledger = RepairLedger::new();
        let (a, b) = (RepairKey::assignment("a"), RepairKey::assignment("b"));
        ledger.seed(a.clone(), rec(1, 0, "guard"));
        let mut undo = Undo::apply(
            &mut ledger,
            &[
                LedgerUpdate::Requested {
                    key: a.clone(),
                    record: rec(2, 400, "apa"),
                },
                LedgerUpdate::Requested {
                    key: b.clone(),
                    record: rec(1, 400, "apa"),
                },
            ],
        );
        assert_eq!(undo.previous(&a), Some(&rec(1, 0, "guard")));
        undo.restore(&mut ledger, Some(&b));
        assert_eq!(ledger.get(&b), None);
        assert_eq!(ledger.get(&a), Some(&rec(2, 400, "apa")), "a not touched");
        undo.restore(&mut ledger, None);
        assert_eq!(ledger.get(&a), Some(&rec(1, 0, "guard")));
    }

    #[test]
    fn seeding_keeps_the_newest_history_and_the_newer_of_ledger_and_own_applies() {
        let mut ledger = RepairLedger::new();
        let key = RepairKey::assignment("a");
        ledger.seed(key.clone(), rec(1, 50, "guard"));
        ledger.seed(key.clone(), rec(2, 10, "apa"));
        assert_eq!(ledger.get(&key).unwrap().by, "guard");
        let own_old = rec(1, 5, "apa");
        assert_eq!(ledger.history(&key, Some(&own_old)).unwrap().by, "guard");
        let own_new = rec(1, 60, "apa");
        assert_eq!(ledger.history(&key, Some(&own_new)).unwrap().by, "apa");
        assert_eq!(
            ledger.history(&RepairKey::request("r"), Some(&own_new)),
            Some(&own_new)
        );
        assert_eq!(ledger.history(&RepairKey::request("r"), None), None);
    }
}
