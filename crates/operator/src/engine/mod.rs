//! Pure decision logic, no I/O: from a declaration and one observation of Graph, compute
//! the divergence, the next action and the resulting status. Time is always passed in.
//!
//! Drivers (the controller and `redeliver audit`) do the I/O around it:
//!
//! 1. resolve the declaration ([`ResolvedIds`] or a [`ResolveFailure`]), read the package's
//!    `resourceRoleScopes` and decode them with [`promised_resources`];
//! 2. read every resource once ([`reads_needed`]) into a [`Snapshot`];
//! 3. call [`plan_assignment`] / [`plan_guard_sweep`];
//! 4. perform the [`Action`]; on success of a `RequestAssignment` call
//!    [`record_request_submitted`], on failure [`record_action_failure`];
//! 5. write the status only when [`assignment_status_changed`] says so, emit the events, and
//!    requeue after `requeue_after`.

use std::time::Duration;

pub use crate::domain::Write;
use crate::domain::models::{Assignment, AssignmentRequest, AssignmentState};

mod assignment;
pub mod attribution;
pub mod conditions;
pub mod connection;
mod drift_report;
mod guard;
pub mod ledger;
pub mod removal;
mod resources;
pub mod safety;
mod snapshot;
pub mod target;
pub mod transaction;

pub use assignment::{
    ActionFailure, ActionFailureKind, AssignmentInput, assignment_status_changed,
    attribution_needed, awaiting_reprocess, fresh_reads, needs_latest_request, plan_assignment,
    postpone_for_budget, record_action_failure, record_request_submitted,
};
pub use attribution::{Attribution, names_actor};
pub use drift_report::{
    DriftReport, GUARD_NOTES_SHOWN, drift_report_disagreements, drift_report_unavailable,
    guard_drift_report_disagreements, note_on_delivered,
};
pub use guard::{
    GuardDrift, GuardInput, GuardPlan, InFlight, guard_status_changed, plan_guard_sweep,
    record_guard_outcome, record_sweep_outcome,
};
pub use resources::{
    DIRECTORY_ROOT, GroupAccess, OriginSystem, PromisedResource, ResourceKind, RoleMode,
    promised_resources,
};
pub use safety::{
    BreakerPolicy, HOLD_REASONS, Intent, MassDriftBoard, MassDriftHold, MissingResource, Removed,
    Respected, SafetyPolicy, TargetGate, is_hold, removal_intent, target_gate,
};
pub use snapshot::{
    Check, ELIGIBILITY_IN_EFFECT, FreshAfter, ReadData, ResourceChecker, ResourceRead, Snapshot,
    azure_holding, eligibility_ended, reads_needed,
};
pub use target::{AccountState, Risk, TargetAccount, risk_holds};

/// Operator-wide knobs the engine needs (not per object).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineSettings {
    /// A request or assignment in a transitional state longer than this is reported as
    /// `Stalled=True, reason=DeliveryStuck`.
    pub stuck_after: Duration,
    /// Requeue while waiting for Graph to act on a request or reprocess.
    pub poll_interval: Duration,
    /// Requeue after a membership read failed.
    pub read_failure_retry: Duration,
    /// How long after `completedDateTime` a failed request may still be reprocessed (Graph
    /// documents 14 days).
    pub request_reprocess_window: Duration,
    /// Verify interval used when the declaration's own is unusable.
    pub default_verify_interval: Duration,
    /// Guard: minimum time between two reprocesses of the same assignment.
    pub guard_reprocess_cooldown: Duration,
    /// Guard: reprocess attempts per drifted assignment before reporting it as exhausted.
    pub guard_max_attempts: i32,
    /// How soon an object held by a safety rail (disabled account, mass drift, ...) looks
    /// again, so the repair proceeds about one delta interval after the hold ends.
    pub hold_recheck: Duration,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            stuck_after: Duration::from_secs(30 * 60),
            poll_interval: Duration::from_secs(30),
            read_failure_retry: Duration::from_secs(60),
            request_reprocess_window: Duration::from_secs(14 * 24 * 3600),
            default_verify_interval: Duration::from_secs(10 * 60),
            guard_reprocess_cooldown: Duration::from_secs(10 * 60),
            guard_max_attempts: 3,
            hold_recheck: Duration::from_secs(60),
        }
    }
}

/// The ids a declaration resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedIds {
    /// Object id of the access package.
    pub access_package_id: String,
    /// Its display name, when known.
    pub access_package_name: Option<String>,
    /// The policy to request with, or why none could be chosen. Only needed when an
    /// assignment has to be requested, so a failure here does not stop verification.
    pub policy: Result<String, ResolveFailure>,
    /// Directory object id of the target user.
    pub target_object_id: String,
    /// The target's user principal name, when known.
    pub target_name: Option<String>,
}

/// Why a declaration could not be resolved to ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolveFailure {
    pub kind: ResolveFailureKind,
    /// A sentence naming the field and, for ambiguity, the candidates.
    pub message: String,
}

impl ResolveFailure {
    /// Shorthand constructor.
    pub fn new(kind: ResolveFailureKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// Kinds of [`ResolveFailure`]; each maps to a `Stalled` reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResolveFailureKind {
    InvalidSpec,
    PackageNotFound,
    PackageAmbiguous,
    PolicyNotFound,
    PolicyAmbiguous,
    TargetNotFound,
    Forbidden,
}

impl ResolveFailureKind {
    /// The condition reason.
    pub fn reason(self) -> conditions::Reason {
        use conditions::Reason;
        match self {
            Self::InvalidSpec => Reason::InvalidSpec,
            Self::PackageNotFound => Reason::PackageNotFound,
            Self::PackageAmbiguous => Reason::PackageAmbiguous,
            Self::PolicyNotFound => Reason::PolicyNotFound,
            Self::PolicyAmbiguous => Reason::PolicyAmbiguous,
            Self::TargetNotFound => Reason::TargetNotFound,
            Self::Forbidden => Reason::Forbidden,
        }
    }
}

/// What the driver should do in Graph next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing to do.
    None,
    /// Change something in Entra ID: the very write the driver sends (`adminAdd`, or a
    /// reprocess of an assignment or of a failed request).
    Write(Write),
    /// Work is in flight (or a cooldown runs); check again at `requeue_after`.
    Wait { reason: conditions::Reason },
    /// A human must act (the reason is the `Stalled` reason). No Graph write; the object is
    /// still re-verified at `requeue_after`.
    GiveUp { reason: conditions::Reason },
}

impl Action {
    /// True for actions that change something in Entra ID.
    pub fn is_write(&self) -> bool {
        matches!(self, Self::Write(_))
    }

    /// True for a reprocess (of an assignment or of a request), which the reprocess limits
    /// and the repair ledger govern.
    pub fn is_reprocess(&self) -> bool {
        matches!(
            self,
            Self::Write(Write::ReprocessAssignment { .. } | Write::ReprocessRequest { .. })
        )
    }

    /// The Graph write this action is, if it is one.
    pub fn write(&self) -> Option<&Write> {
        match self {
            Self::Write(w) => Some(w),
            Self::None | Self::Wait { .. } | Self::GiveUp { .. } => None,
        }
    }
}

/// Kinds of events the engine emits (the Kubernetes event `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    DriftDetected,
    ReprocessRequested,
    DeliveryVerified,
    AssignmentRequested,
    ReprocessExhausted,
    DeliveryFailed,
    DeliveryStuck,
    Expired,
    InvalidSpec,
    PermissionDenied,
    ResolveFailed,
    RequestDenied,
    ActionFailed,
    /// Another object covering the same Graph assignment reprocessed it: not repeated.
    ReprocessInFlight,
    /// Deletion with `deletionPolicy: Remove`: an `adminRemove` was submitted.
    RemovalRequested,
    /// Deletion with `deletionPolicy: Remove`: Entra ID no longer lists the assignment.
    AssignmentRemoved,
    /// Deleted while `spec.suspend` is true: the assignment was left in place.
    RemovalSkipped,
    /// Safety: a grant was held because of the target's account (disabled, deleted, at risk,
    /// not confirmable).
    TargetHeld,
    /// Safety: a respected actor removed the access; not undone.
    RemovedDeliberately,
    /// Safety: respected actors are set and the audit log cannot be read.
    AttributionUnavailable,
    /// Safety: the mass-drift breaker tripped.
    MassDrift,
}

impl EventKind {
    /// The event reason (one CamelCase word).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DriftDetected => "DriftDetected",
            Self::ReprocessRequested => "ReprocessRequested",
            Self::DeliveryVerified => "DeliveryVerified",
            Self::AssignmentRequested => "AssignmentRequested",
            Self::ReprocessExhausted => "ReprocessExhausted",
            Self::DeliveryFailed => "DeliveryFailed",
            Self::DeliveryStuck => "DeliveryStuck",
            Self::Expired => "Expired",
            Self::InvalidSpec => "InvalidSpec",
            Self::PermissionDenied => "PermissionDenied",
            Self::ResolveFailed => "ResolveFailed",
            Self::RequestDenied => "RequestDenied",
            Self::ActionFailed => "ActionFailed",
            Self::ReprocessInFlight => "ReprocessInFlight",
            Self::RemovalRequested => "RemovalRequested",
            Self::AssignmentRemoved => "AssignmentRemoved",
            Self::RemovalSkipped => "RemovalSkipped",
            Self::TargetHeld => "TargetHeld",
            Self::RemovedDeliberately => "RemovedDeliberately",
            Self::AttributionUnavailable => "AttributionUnavailable",
            Self::MassDrift => "MassDrift",
        }
    }

    /// Warning for anything a human may need to look at, Normal otherwise.
    pub fn is_warning(self) -> bool {
        !matches!(
            self,
            Self::ReprocessRequested
                | Self::DeliveryVerified
                | Self::AssignmentRequested
                | Self::ReprocessInFlight
                | Self::RemovalRequested
                | Self::AssignmentRemoved
        )
    }

    /// The event that announces a `Stalled=True` condition.
    pub fn for_stalled(
        stalled: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition,
    ) -> Self {
        stalled
            .reason
            .parse()
            .map_or(Self::ResolveFailed, Self::for_stalled_reason)
    }

    /// The event that announces `Stalled=True` with `reason`: one mapping for both kinds.
    pub fn for_stalled_reason(reason: conditions::Reason) -> Self {
        use conditions::Reason;
        match reason {
            Reason::InvalidSpec => Self::InvalidSpec,
            Reason::Forbidden => Self::PermissionDenied,
            Reason::ReprocessExhausted => Self::ReprocessExhausted,
            Reason::DeliveryStuck => Self::DeliveryStuck,
            Reason::DeliveryFailed => Self::DeliveryFailed,
            Reason::Expired => Self::Expired,
            Reason::RequestDenied => Self::RequestDenied,
            Reason::Rejected => Self::ActionFailed,
            Reason::TargetDisabled
            | Reason::TargetDeleted
            | Reason::TargetAtRisk
            | Reason::TargetUnverified
            | Reason::AccountsHeld => Self::TargetHeld,
            Reason::RemovedDeliberately => Self::RemovedDeliberately,
            Reason::AttributionUnavailable => Self::AttributionUnavailable,
            Reason::MassDrift => Self::MassDrift,
            _ => Self::ResolveFailed,
        }
    }
}

/// An event to record. Emitted only on transitions, so a steady state emits nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineEvent {
    pub kind: EventKind,
    /// A sentence for `kubectl describe`.
    pub message: String,
}

/// Picks the assignment [`plan_assignment`] should look at from all of a target's
/// assignments of one package: a live one before an expired one (Graph lists expired
/// assignments too), delivered first; ties broken by id so the choice is stable.
pub fn pick_assignment(assignments: &[Assignment]) -> Option<&Assignment> {
    let rank = |s: AssignmentState| match s {
        AssignmentState::Delivered => 0,
        AssignmentState::Delivering => 1,
        AssignmentState::PartiallyDelivered => 2,
        AssignmentState::DeliveryFailed => 3,
        AssignmentState::Unknown => 4,
        AssignmentState::Expired => 5,
    };
    assignments.iter().min_by(|a, b| {
        rank(a.state)
            .cmp(&rank(b.state))
            .then_with(|| a.id.cmp(&b.id))
    })
}

/// Picks the latest request: by `createdDateTime`, where a missing one counts as newest
/// (Graph returns `null` on a request it has just accepted); ties broken by id.
pub fn pick_latest_request(requests: &[AssignmentRequest]) -> Option<&AssignmentRequest> {
    requests.iter().max_by(|a, b| {
        let key = |r: &AssignmentRequest| (r.created_date_time.is_none(), r.created_date_time);
        key(a).cmp(&key(b)).then_with(|| a.id.cmp(&b.id))
    })
}

/// The engine's decision for one `AccessPackageAssignment`.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub action: Action,
    /// The status to write (compare with [`assignment_status_changed`] first).
    pub status: crate::api::AccessPackageAssignmentStatus,
    /// When to look again.
    pub requeue_after: Duration,
    /// Events to record, in order.
    pub events: Vec<EngineEvent>,
    /// Verifiable resources found missing (the drift).
    pub missing: Vec<PromisedResource>,
    /// Changes to the shared repair ledger, to apply together with the planning (see
    /// [`ledger`]); a `Requested` one is undone when the write does not happen.
    pub ledger: Vec<ledger::LedgerUpdate>,
    /// A grant is due but the target's account has not been read: the driver reads it
    /// (`observe::accounts`), records it in the snapshot and plans again. Never set on a plan
    /// that needs no write, so healthy objects cost no account read.
    pub needs_account: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::models::{RequestState, RequestType};

    fn a(id: &str, state: AssignmentState) -> Assignment {
        serde_json::from_value(serde_json::json!({"id": id, "state": state.as_str()})).unwrap()
    }

    fn r(id: &str, created: Option<i64>) -> AssignmentRequest {
        AssignmentRequest {
            id: id.into(),
            request_type: RequestType::AdminAdd,
            state: RequestState::Delivered,
            status: None,
            created_date_time: created.map(|s| jiff::Timestamp::from_second(s).unwrap()),
            completed_date_time: None,
            access_package: None,
            assignment: None,
            requestor: None,
        }
    }

    #[test]
    fn picks_live_assignment_over_expired() {
        let list = [
            a("1", AssignmentState::Expired),
            a("2", AssignmentState::DeliveryFailed),
            a("3", AssignmentState::Delivered),
        ];
        assert_eq!(pick_assignment(&list).unwrap().id, "3");
        assert_eq!(pick_assignment(&list[..2]).unwrap().id, "2");
        assert_eq!(pick_assignment(&list[..1]).unwrap().id, "1");
        assert!(pick_assignment(&[]).is_none());
        let tie = [
            a("b", AssignmentState::Delivered),
            a("a", AssignmentState::Delivered),
        ];
        assert_eq!(pick_assignment(&tie).unwrap().id, "a");
    }

    #[test]
    fn latest_request_treats_missing_creation_time_as_newest() {
        let list = [r("old", Some(100)), r("new", Some(200))];
        assert_eq!(pick_latest_request(&list).unwrap().id, "new");
        let list = [r("old", Some(100)), r("fresh", None), r("new", Some(200))];
        assert_eq!(pick_latest_request(&list).unwrap().id, "fresh");
        assert!(pick_latest_request(&[]).is_none());
    }

    #[test]
    fn event_kinds_are_camel_case_and_severities_sensible() {
        assert_eq!(EventKind::DriftDetected.as_str(), "DriftDetected");
        assert!(EventKind::DriftDetected.is_warning());
        assert!(!EventKind::DeliveryVerified.is_warning());
        assert!(
            Action::Write(Write::ReprocessRequest {
                request_id: "r".into()
            })
            .is_write()
        );
        assert!(
            !Action::Wait {
                reason: conditions::Reason::Reprocessing
            }
            .is_write()
        );
    }
}
