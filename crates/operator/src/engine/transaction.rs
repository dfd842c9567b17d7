//! The repair transaction: how a plan's writes are claimed, sent and accounted for, the
//! same way for the controller's reconciles, its guard sweeps and `redeliver audit`.
//!
//! A write to Entra ID must never go out twice (two objects covering one assignment, or a
//! restart after the write) and never be claimed when it did not go out. The protocol:
//!
//! 1. **Plan and claim in one critical section** ([`Claim::plan`]): the plan's ledger
//!    updates are applied while the ledger is locked, so of two objects covering the same
//!    assignment exactly one decides to send.
//! 2. **Admit** ([`Transaction::admit`]): writes the connection's reprocess budget does not
//!    allow now are dropped from the transaction (their claims roll back) and the plan says
//!    when they will go.
//! 3. **Stamp** each write with its client-request-id, recorded in the status and the
//!    events.
//! 4. **Write ahead** ([`Transaction::write_ahead`]): a reprocess is recorded in the
//!    status before it is sent, so a restart cannot send it again.
//! 5. **Send**, then **complete** ([`Transaction::complete`]) with what happened to each
//!    write: accepted (kept), refused by Graph (kept: a refused attempt stays counted so it
//!    cannot loop, and the status says why), or not sent / failed in transit (rolled back,
//!    and the status written ahead is put back).
//!
//! A [`Claim`] dropped before it is resolved rolls back: an early return, an error or a
//! panic between planning and sending claims nothing. The driver that performs the I/O is
//! `crate::repair`; this module decides everything and does none.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;

use super::ledger::{LedgerUpdate, RepairKey, RepairLedger, RepairRecord, Undo};
use super::{
    ActionFailure, EventKind, GuardPlan, Plan, assignment_status_changed, guard_status_changed,
};
use crate::api::{AccessPackageAssignmentStatus, AccessPackageGuardStatus};
use crate::domain::Write;

/// Where a claim's ledger lives: the controller's per-connection mutex, or the audit's cell.
pub trait LedgerCell {
    /// Runs `f` with the ledger locked.
    fn with<R>(&self, f: impl FnOnce(&mut RepairLedger) -> R) -> R;
}

impl LedgerCell for Mutex<RepairLedger> {
    fn with<R>(&self, f: impl FnOnce(&mut RepairLedger) -> R) -> R {
        f(&mut self.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl LedgerCell for RefCell<RepairLedger> {
    fn with<R>(&self, f: impl FnOnce(&mut RepairLedger) -> R) -> R {
        f(&mut self.borrow_mut())
    }
}

impl<T: LedgerCell + ?Sized> LedgerCell for Arc<T> {
    fn with<R>(&self, f: impl FnOnce(&mut RepairLedger) -> R) -> R {
        (**self).with(f)
    }
}

impl<T: LedgerCell + ?Sized> LedgerCell for Rc<T> {
    fn with<R>(&self, f: impl FnOnce(&mut RepairLedger) -> R) -> R {
        (**self).with(f)
    }
}

impl<T: LedgerCell + ?Sized> LedgerCell for &T {
    fn with<R>(&self, f: impl FnOnce(&mut RepairLedger) -> R) -> R {
        (**self).with(f)
    }
}

/// What happened to one write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Graph accepted it; for an assignment request, the id of the request it created.
    Accepted { request_id: Option<String> },
    /// Graph refused it for good (403, another 4xx): the attempt stays counted.
    Refused(ActionFailure),
    /// It never reached Graph, or failed in transit (throttled, 5xx, a timeout): nothing is
    /// claimed. `retry_after` is Graph's `Retry-After`, when it gave one.
    NotSent { retry_after: Option<Duration> },
}

/// A plan's claim on the shared repair ledger. Resolve it with [`Claim::resolve`] or
/// [`Claim::finish`]; dropped unresolved, it rolls back.
#[must_use = "a claim rolls back when dropped unresolved"]
pub struct Claim<L: LedgerCell> {
    ledger: L,
    undo: Undo,
}

impl<L: LedgerCell> std::fmt::Debug for Claim<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claim").field("undo", &self.undo).finish()
    }
}

/// A plan whose decisions include ledger updates.
pub trait Claims {
    /// The updates to apply together with the planning.
    fn ledger_updates(&self) -> &[LedgerUpdate];
}

impl Claims for Plan {
    fn ledger_updates(&self) -> &[LedgerUpdate] {
        &self.ledger
    }
}

impl Claims for GuardPlan {
    fn ledger_updates(&self) -> &[LedgerUpdate] {
        &self.ledger
    }
}

impl<L: LedgerCell> Claim<L> {
    /// Plans with `plan` while `ledger` is locked and claims what the plan decided.
    pub fn plan<P: Claims>(ledger: L, plan: impl FnOnce(&RepairLedger) -> P) -> (P, Self) {
        let (planned, undo) = ledger.with(|l| {
            let planned = plan(l);
            let undo = Undo::apply(l, planned.ledger_updates());
            (planned, undo)
        });
        (planned, Self { ledger, undo })
    }

    /// The history `key` had before this claim.
    pub fn previous(&self, key: &RepairKey) -> Option<&RepairRecord> {
        self.undo.previous(key)
    }

    /// Resolves the claim on `key`: an accepted or refused write keeps it, a write that did
    /// not go out rolls it back.
    pub fn resolve(&mut self, key: &RepairKey, outcome: &WriteOutcome) {
        match outcome {
            WriteOutcome::Accepted { .. } | WriteOutcome::Refused(_) => self.undo.keep(key),
            WriteOutcome::NotSent { .. } => {
                let undo = &mut self.undo;
                self.ledger.with(|l| undo.restore(l, Some(key)));
            }
        }
    }

    /// Resolves everything still claimed the same way.
    pub fn finish(mut self, outcome: &WriteOutcome) {
        match outcome {
            WriteOutcome::Accepted { .. } | WriteOutcome::Refused(_) => self.undo = Undo::default(),
            WriteOutcome::NotSent { .. } => self.roll_back(),
        }
    }

    /// Rolls back everything still claimed (to plan again, or when nothing will be sent).
    pub fn abandon(mut self) {
        self.roll_back();
    }

    fn roll_back(&mut self) {
        let undo = &mut self.undo;
        if undo.is_empty() {
            return;
        }
        self.ledger.with(|l| undo.restore(l, None));
    }
}

impl<L: LedgerCell> Drop for Claim<L> {
    fn drop(&mut self) {
        self.roll_back();
    }
}

/// A plan the transaction can carry: its writes, its status, and how outcomes rewrite it.
pub trait Repair: Claims {
    /// The object's status type.
    type Status: Clone;
    /// The writes the plan wants sent, in order.
    fn writes(&self) -> Vec<Write>;
    /// The status to write.
    fn status(&self) -> &Self::Status;
    /// Whether `new` differs from `old` in what matters (see the engine's `*_status_changed`).
    fn changed(old: Option<&Self::Status>, new: &Self::Status) -> bool;
    /// Whether the writes are recorded in the status before they are sent.
    fn writes_ahead(&self) -> bool;
    /// Whether a write that failed in transit leaves the status as it was before the
    /// transaction (one write: the object tries again with backoff), rather than a status
    /// that says what was and was not sent.
    fn puts_back(&self) -> bool;
    /// Records each write's client-request-id in the status and the events.
    fn stamp(&mut self, ids: &[(Write, String)]);
    /// Writes the budget did not admit (and will not be sent now), `wait` until the next
    /// slot: the plan says so. A plan that reports them with the other unsent writes (in
    /// [`Repair::record`]) does nothing here.
    fn postpone(
        &mut self,
        wait: Duration,
        per_minute: u32,
        previous: Option<&Self::Status>,
        now: Timestamp,
    );
    /// Rewrites the plan with what happened to each write (sent, refused, or not sent,
    /// including those the budget did not admit), and resolves its claims. `previous` is
    /// the stored status before the transaction.
    fn record<L: LedgerCell>(
        &mut self,
        outcomes: &[(Write, WriteOutcome)],
        claim: &mut Claim<L>,
        previous: Option<&Self::Status>,
        retry: Duration,
        now: Timestamp,
    );
}

/// The claim key of a write, if it claims anything.
pub fn key_of(write: &Write) -> Option<RepairKey> {
    match write {
        Write::ReprocessAssignment { assignment_id } => Some(RepairKey::assignment(assignment_id)),
        Write::ReprocessRequest { request_id } => Some(RepairKey::request(request_id)),
        Write::RequestAssignment { .. } => None,
    }
}

impl Repair for Plan {
    type Status = AccessPackageAssignmentStatus;

    fn writes(&self) -> Vec<Write> {
        self.action.write().cloned().into_iter().collect()
    }

    fn status(&self) -> &Self::Status {
        &self.status
    }

    fn changed(old: Option<&Self::Status>, new: &Self::Status) -> bool {
        assignment_status_changed(old, new)
    }

    fn writes_ahead(&self) -> bool {
        self.action.is_reprocess()
    }

    fn puts_back(&self) -> bool {
        true
    }

    fn stamp(&mut self, ids: &[(Write, String)]) {
        let Some((_, id)) = ids.first() else {
            return;
        };
        self.status.last_client_request_id = Some(id.clone());
        for e in &mut self.events {
            if matches!(
                e.kind,
                EventKind::ReprocessRequested | EventKind::AssignmentRequested
            ) {
                e.message = format!("{} client-request-id: {id}.", e.message);
            }
        }
    }

    fn postpone(
        &mut self,
        wait: Duration,
        per_minute: u32,
        previous: Option<&Self::Status>,
        now: Timestamp,
    ) {
        let generation = self.status.observed_generation;
        super::postpone_for_budget(self, previous, wait, per_minute, generation, now);
    }

    fn record<L: LedgerCell>(
        &mut self,
        outcomes: &[(Write, WriteOutcome)],
        claim: &mut Claim<L>,
        _previous: Option<&Self::Status>,
        retry: Duration,
        now: Timestamp,
    ) {
        for (write, outcome) in outcomes {
            if let Some(key) = key_of(write) {
                claim.resolve(&key, outcome);
            }
            match outcome {
                WriteOutcome::Accepted {
                    request_id: Some(id),
                } => super::record_request_submitted(&mut self.status, id),
                WriteOutcome::Accepted { request_id: None } | WriteOutcome::NotSent { .. } => {}
                WriteOutcome::Refused(failure) => {
                    super::record_action_failure(self, failure, retry, now);
                }
            }
        }
    }
}

impl Repair for GuardPlan {
    type Status = AccessPackageGuardStatus;

    fn writes(&self) -> Vec<Write> {
        self.reprocess
            .iter()
            .map(|id| Write::ReprocessAssignment {
                assignment_id: id.clone(),
            })
            .collect()
    }

    fn status(&self) -> &Self::Status {
        &self.status
    }

    fn changed(old: Option<&Self::Status>, new: &Self::Status) -> bool {
        guard_status_changed(old, new)
    }

    fn writes_ahead(&self) -> bool {
        !self.reprocess.is_empty()
    }

    fn puts_back(&self) -> bool {
        false
    }

    fn stamp(&mut self, ids: &[(Write, String)]) {
        for d in &mut self.status.drifted {
            let id = ids.iter().find_map(|(w, id)| match w {
                Write::ReprocessAssignment { assignment_id }
                    if *assignment_id == d.assignment_id =>
                {
                    Some(id)
                }
                _ => None,
            });
            if let Some(id) = id {
                d.last_client_request_id = Some(id.clone());
            }
        }
    }

    fn postpone(
        &mut self,
        _wait: Duration,
        _per_minute: u32,
        _previous: Option<&Self::Status>,
        _now: Timestamp,
    ) {
        // The sweep's selection already respects the budget it was given; what the budget
        // refuses at send time is reported by `record` with the other unsent writes.
    }

    fn record<L: LedgerCell>(
        &mut self,
        outcomes: &[(Write, WriteOutcome)],
        claim: &mut Claim<L>,
        previous: Option<&Self::Status>,
        _retry: Duration,
        now: Timestamp,
    ) {
        let (mut accepted, mut refused, mut not_sent) = (Vec::new(), 0usize, Vec::new());
        for (write, outcome) in outcomes {
            let Write::ReprocessAssignment { assignment_id } = write else {
                continue;
            };
            match outcome {
                WriteOutcome::Accepted { .. } => accepted.push(assignment_id.clone()),
                WriteOutcome::Refused(_) => refused += 1,
                WriteOutcome::NotSent { .. } => not_sent.push(assignment_id.clone()),
            }
        }
        // What the claim replaced is read before the claims are resolved (resolving
        // forgets it).
        super::record_sweep_outcome(
            self,
            &accepted,
            refused,
            &not_sent,
            |key| claim.previous(key).cloned(),
            previous,
            now,
        );
        for (write, outcome) in outcomes {
            if let Some(key) = key_of(write) {
                claim.resolve(&key, outcome);
            }
        }
    }
}

/// One plan on its way through the protocol (see the module documentation).
pub struct Transaction<P: Repair, L: LedgerCell> {
    plan: P,
    claim: Claim<L>,
    /// The object's stored status now (moved by a write ahead).
    stored: Option<P::Status>,
    /// The stored status before this transaction wrote anything.
    before: Option<P::Status>,
    /// The writes to send, each with its client-request-id.
    ids: Vec<(Write, String)>,
    /// Writes the budget did not admit.
    dropped: Vec<Write>,
    /// When the budget has a slot for them.
    postponed: Option<Duration>,
    /// Some write failed in transit.
    failed: bool,
}

impl<P: Repair, L: LedgerCell> Transaction<P, L> {
    /// Starts a transaction for `plan` and its claim. `stored` is the object's status as
    /// stored now; `new_id` names each write (a UUID in production).
    pub fn begin(
        mut plan: P,
        claim: Claim<L>,
        stored: Option<P::Status>,
        mut new_id: impl FnMut() -> String,
    ) -> Self {
        let ids: Vec<(Write, String)> = plan.writes().into_iter().map(|w| (w, new_id())).collect();
        plan.stamp(&ids);
        Self {
            plan,
            claim,
            before: stored.clone(),
            stored,
            ids,
            dropped: Vec::new(),
            postponed: None,
            failed: false,
        }
    }

    /// Keeps only the writes `admit` lets through now (the connection's reprocess budget);
    /// the others are not sent, their claims roll back, and the plan says when they go.
    pub fn admit(
        &mut self,
        mut admit: impl FnMut(&Write) -> Result<(), Duration>,
        per_minute: u32,
        now: Timestamp,
    ) {
        let mut wait: Option<Duration> = None;
        let mut dropped = Vec::new();
        self.ids.retain(|(w, _)| match admit(w) {
            Ok(()) => true,
            Err(slot) => {
                wait = Some(wait.map_or(slot, |x| x.max(slot)));
                dropped.push(w.clone());
                false
            }
        });
        if let Some(wait) = wait {
            self.plan
                .postpone(wait, per_minute, self.before.as_ref(), now);
            self.dropped = dropped;
            self.postponed = Some(wait);
        }
    }

    /// The writes to send, each with its client-request-id.
    pub fn writes(&self) -> &[(Write, String)] {
        &self.ids
    }

    /// The plan as it stands.
    pub fn plan(&self) -> &P {
        &self.plan
    }

    /// The plan, to add what the driver knows (notes, the connection's name).
    pub fn plan_mut(&mut self) -> &mut P {
        &mut self.plan
    }

    /// The status to write ahead of the writes, if one is due; call
    /// [`Transaction::written_ahead`] once it is stored. Nothing is claimed in the status
    /// before this, and a failure to store it sends nothing (dropping the transaction rolls
    /// its claims back).
    pub fn write_ahead(&self) -> Option<&P::Status> {
        (!self.ids.is_empty()
            && self.plan.writes_ahead()
            && P::changed(self.stored.as_ref(), self.plan.status()))
        .then(|| self.plan.status())
    }

    /// The status from [`Transaction::write_ahead`] is stored.
    pub fn written_ahead(&mut self) {
        self.stored = Some(self.plan.status().clone());
    }

    /// Records what happened to each write sent (one outcome per write of
    /// [`Transaction::writes`], in order) and resolves every claim; a write without an
    /// outcome counts as not sent. `retry` is when an object whose write Graph refused
    /// looks again.
    pub fn complete(&mut self, outcomes: Vec<WriteOutcome>, retry: Duration, now: Timestamp) {
        let mut outcomes = outcomes.into_iter();
        let mut all: Vec<(Write, WriteOutcome)> = self
            .ids
            .iter()
            .map(|(w, _)| {
                let o = outcomes
                    .next()
                    .unwrap_or(WriteOutcome::NotSent { retry_after: None });
                (w.clone(), o)
            })
            .collect();
        self.failed = all
            .iter()
            .any(|(_, o)| matches!(o, WriteOutcome::NotSent { .. }));
        all.extend(self.dropped.iter().map(|w| {
            (
                w.clone(),
                WriteOutcome::NotSent {
                    retry_after: self.postponed,
                },
            )
        }));
        self.plan
            .record(&all, &mut self.claim, self.before.as_ref(), retry, now);
    }

    /// The status to write at the end, if it differs from what is stored: the plan's, or
    /// (when a write failed in transit and the plan puts back) the one stored before.
    pub fn final_status(&self) -> Option<&P::Status> {
        let end = if self.failed && self.plan.puts_back() {
            self.before.as_ref()?
        } else {
            self.plan.status()
        };
        P::changed(self.stored.as_ref(), end).then_some(end)
    }

    /// The status the object ends with: the plan's, or (a write failed in transit and the
    /// plan puts back) the one it had before, when it had one.
    pub fn end_status(&self) -> &P::Status {
        match (&self.before, self.failed && self.plan.puts_back()) {
            (Some(before), true) => before,
            _ => self.plan.status(),
        }
    }

    /// The final status is stored.
    pub fn written(&mut self) {
        if let Some(end) = self.final_status().cloned() {
            self.stored = Some(end);
        }
    }

    /// When the budget has a slot for the writes it did not admit.
    pub fn postponed(&self) -> Option<Duration> {
        self.postponed
    }

    /// Whether a write failed in transit (the object tries again with backoff).
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// The plan, with every claim resolved (anything unresolved rolls back here).
    pub fn into_plan(self) -> P {
        self.plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::conditions::{ConditionType, find};
    use crate::engine::{Action, ActionFailureKind};

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn claimed(id: &str) -> LedgerUpdate {
        LedgerUpdate::Requested {
            key: RepairKey::assignment(id),
            record: RepairRecord {
                attempts: 1,
                last_requested: t(0),
                by: "AccessPackageAssignment ns/a".into(),
            },
        }
    }

    fn reprocess_plan(id: &str) -> Plan {
        Plan {
            action: Action::Write(Write::ReprocessAssignment {
                assignment_id: id.into(),
            }),
            status: AccessPackageAssignmentStatus::default(),
            requeue_after: Duration::from_secs(60),
            events: Vec::new(),
            missing: Vec::new(),
            ledger: vec![claimed(id)],
            needs_account: None,
        }
    }

    #[test]
    fn a_claim_dropped_unresolved_rolls_back_and_one_resolved_stays() {
        let ledger = Mutex::new(RepairLedger::new());
        let (_plan, claim) = Claim::plan(&ledger, |_| reprocess_plan("a"));
        assert_eq!(ledger.with(|l| l.len()), 1, "claimed while planning");
        drop(claim);
        assert!(
            ledger.with(|l| l.is_empty()),
            "an early return claims nothing"
        );

        let (_plan, claim) = Claim::plan(&ledger, |_| reprocess_plan("a"));
        claim.finish(&WriteOutcome::Accepted { request_id: None });
        assert_eq!(ledger.with(|l| l.len()), 1, "sent: kept");

        let ledger = RefCell::new(RepairLedger::new());
        let (_plan, claim) = Claim::plan(&ledger, |_| reprocess_plan("b"));
        claim.finish(&WriteOutcome::NotSent { retry_after: None });
        assert!(ledger.with(|l| l.is_empty()), "not sent: rolled back");
    }

    #[test]
    fn a_refused_write_stays_counted_and_the_status_says_why() {
        let ledger = Mutex::new(RepairLedger::new());
        let (plan, claim) = Claim::plan(&ledger, |_| reprocess_plan("a"));
        let mut tx = Transaction::begin(plan, claim, None, || "id-1".into());
        assert_eq!(tx.writes().len(), 1);
        assert!(tx.write_ahead().is_some(), "a reprocess is written ahead");
        assert_eq!(
            tx.write_ahead().unwrap().last_client_request_id.as_deref(),
            Some("id-1")
        );
        tx.written_ahead();
        tx.complete(
            vec![WriteOutcome::Refused(ActionFailure {
                kind: ActionFailureKind::Forbidden,
                message: "403".into(),
            })],
            Duration::from_secs(600),
            t(1),
        );
        let end = tx.final_status().expect("the refusal is written").clone();
        assert_eq!(
            find(&end.conditions, ConditionType::Stalled).map(|c| c.reason.as_str()),
            Some("Forbidden")
        );
        let plan = tx.into_plan();
        assert!(matches!(plan.action, Action::GiveUp { .. }));
        assert_eq!(ledger.with(|l| l.len()), 1, "a refused attempt cannot loop");
    }

    #[test]
    fn a_write_failed_in_transit_puts_the_status_back_and_claims_nothing() {
        let ledger = Mutex::new(RepairLedger::new());
        let before = AccessPackageAssignmentStatus {
            last_client_request_id: Some("old".into()),
            ..Default::default()
        };
        let (plan, claim) = Claim::plan(&ledger, |_| reprocess_plan("a"));
        let mut tx = Transaction::begin(plan, claim, Some(before.clone()), || "new".into());
        tx.written_ahead();
        tx.complete(
            vec![WriteOutcome::NotSent {
                retry_after: Some(Duration::from_secs(3)),
            }],
            Duration::from_secs(600),
            t(1),
        );
        assert!(tx.failed());
        assert_eq!(tx.final_status(), Some(&before), "put back: one write");
        drop(tx.into_plan());
        assert!(ledger.with(|l| l.is_empty()));
    }

    #[test]
    fn writes_the_budget_does_not_admit_are_postponed_and_claim_nothing() {
        let ledger = Mutex::new(RepairLedger::new());
        let (plan, claim) = Claim::plan(&ledger, |_| reprocess_plan("a"));
        let mut tx = Transaction::begin(plan, claim, None, || "id".into());
        tx.admit(|_| Err(Duration::from_secs(7)), 30, t(0));
        assert!(tx.writes().is_empty());
        assert_eq!(tx.postponed(), Some(Duration::from_secs(7)));
        assert!(tx.write_ahead().is_none(), "nothing to write ahead");
        tx.complete(Vec::new(), Duration::from_secs(600), t(0));
        let plan = tx.into_plan();
        assert_eq!(
            plan.status.last_client_request_id, None,
            "no id claimed for a write not sent"
        );
        assert!(ledger.with(|l| l.is_empty()));
    }
}
