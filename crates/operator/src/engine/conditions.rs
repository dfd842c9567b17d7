//! Status conditions: the fixed vocabulary (types and reasons) and the helpers that keep
//! them honest under the Kubernetes API conventions and kstatus.
//!
//! - Types are always written in the order [`TYPE_ORDER`], so identical status serialises
//!   identically.
//! - `Reconciling` and `Stalled` are abnormal-true: present only while `True`.
//! - `lastTransitionTime` changes only when `status` flips.
//! - Every condition carries the `observedGeneration` it was computed for.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Summary: True when the object is fully reconciled and delivered.
pub const READY: &str = "Ready";
/// True only when Graph says delivered and every verifiable resource is present.
pub const DELIVERED: &str = "Delivered";
/// Abnormal-true while work is in flight.
pub const RECONCILING: &str = "Reconciling";
/// Abnormal-true when progress needs a human.
pub const STALLED: &str = "Stalled";

/// The order conditions are written in.
pub const TYPE_ORDER: [&str; 4] = [READY, DELIVERED, RECONCILING, STALLED];

/// Reasons: one CamelCase word each, the whole vocabulary in one place.
pub mod reason {
    /// Graph says delivered and every verifiable resource is present.
    pub const DELIVERED: &str = "Delivered";
    /// Graph says delivered but at least one verifiable resource is missing.
    pub const RESOURCES_MISSING: &str = "ResourcesMissing";
    /// Entitlement management is still delivering the assignment.
    pub const AWAITING_DELIVERY: &str = "AwaitingDelivery";
    /// Graph reports deliveryFailed or partiallyDelivered.
    pub const DELIVERY_FAILED: &str = "DeliveryFailed";
    /// The assignment expired under its policy.
    pub const EXPIRED: &str = "Expired";
    /// The target holds no assignment of the package.
    pub const NOT_ASSIGNED: &str = "NotAssigned";
    /// A membership read failed, so delivery cannot be confirmed.
    pub const VERIFICATION_FAILED: &str = "VerificationFailed";
    /// Nothing could be verified yet (e.g. the declaration did not resolve).
    pub const NOT_VERIFIED: &str = "NotVerified";
    /// Graph reported a state Redeliver does not know.
    pub const UNKNOWN_STATE: &str = "UnknownState";

    /// A reprocess was requested and has not been verified yet.
    pub const REPROCESSING: &str = "Reprocessing";
    /// An assignment request is in flight.
    pub const REQUESTING: &str = "Requesting";
    /// First pass, nothing observed yet.
    pub const VERIFYING: &str = "Verifying";

    /// The declaration is invalid.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// No access package matches the declaration.
    pub const PACKAGE_NOT_FOUND: &str = "PackageNotFound";
    /// Several access packages match the declaration.
    pub const PACKAGE_AMBIGUOUS: &str = "PackageAmbiguous";
    /// No assignment policy matches the declaration.
    pub const POLICY_NOT_FOUND: &str = "PolicyNotFound";
    /// Several assignment policies match and none is named.
    pub const POLICY_AMBIGUOUS: &str = "PolicyAmbiguous";
    /// The target user does not exist.
    pub const TARGET_NOT_FOUND: &str = "TargetNotFound";
    /// Graph refused for lack of permission.
    pub const FORBIDDEN: &str = "Forbidden";
    /// Reprocess attempts are used up and resources are still missing.
    pub const REPROCESS_EXHAUSTED: &str = "ReprocessExhausted";
    /// A request or assignment stayed in a transitional state past the bound.
    pub const DELIVERY_STUCK: &str = "DeliveryStuck";
    /// The assignment request was denied.
    pub const REQUEST_DENIED: &str = "RequestDenied";
    /// Graph rejected a request or reprocess Redeliver sent.
    pub const REJECTED: &str = "Rejected";
    /// `spec.suspend` is true and a change was due.
    pub const SUSPENDED: &str = "Suspended";
    /// Drift is reported only (reprocess mode Disabled/Manual, or guard Audit).
    pub const REPORT_ONLY: &str = "ReportOnly";
    /// Guard: every assignment is delivered.
    pub const ALL_DELIVERED: &str = "AllDelivered";
}

/// A condition status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    True,
    False,
    Unknown,
}

impl Status {
    /// The wire literal.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

/// A condition the engine wants, before transition times are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// One of [`TYPE_ORDER`].
    pub type_: &'static str,
    pub status: Status,
    /// One of [`reason`].
    pub reason: &'static str,
    pub message: String,
}

impl Desired {
    /// Shorthand constructor.
    pub fn new(
        type_: &'static str,
        status: Status,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status,
            reason,
            message: message.into(),
        }
    }
}

/// Truncates to whole seconds: `metav1.Time` is stored with second precision, so anything
/// finer would make a freshly built status differ from the stored one.
pub fn to_time(ts: Timestamp) -> Time {
    Time(Timestamp::from_second(ts.as_second()).unwrap_or(ts))
}

/// Finds a condition by type.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// True when the condition of `type_` is present with status `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

/// The reason of the condition of `type_`, if present.
pub fn reason_of<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a str> {
    find(conditions, type_).map(|c| c.reason.as_str())
}

/// Sets one condition in place, keeping `lastTransitionTime` unless the status flips, and
/// re-sorting into [`TYPE_ORDER`]. `Reconciling`/`Stalled` with a status other than True are
/// removed (kstatus: abnormal-true conditions are present only while True).
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    desired: Desired,
    generation: Option<i64>,
    now: Timestamp,
) {
    let abnormal = matches!(desired.type_, RECONCILING | STALLED);
    let previous = conditions.iter().position(|c| c.type_ == desired.type_);
    if abnormal && desired.status != Status::True {
        if let Some(i) = previous {
            conditions.remove(i);
        }
        return;
    }
    let last_transition_time = match previous.map(|i| &conditions[i]) {
        Some(p) if p.status == desired.status.as_str() => p.last_transition_time.clone(),
        _ => to_time(now),
    };
    let condition = Condition {
        type_: desired.type_.to_string(),
        status: desired.status.as_str().to_string(),
        reason: desired.reason.to_string(),
        message: desired.message,
        observed_generation: generation,
        last_transition_time,
    };
    match previous {
        Some(i) => conditions[i] = condition,
        None => conditions.push(condition),
    }
    sort_conditions(conditions);
}

/// Removes a condition type.
pub fn remove_condition(conditions: &mut Vec<Condition>, type_: &str) {
    conditions.retain(|c| c.type_ != type_);
}

/// Builds the full condition list from the desired ones: conditions not mentioned are
/// dropped; transition times carry over from `previous` where the status did not flip.
pub fn build_conditions(
    previous: &[Condition],
    desired: Vec<Desired>,
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let mut out: Vec<Condition> = previous
        .iter()
        .filter(|c| desired.iter().any(|d| d.type_ == c.type_))
        .cloned()
        .collect();
    for d in desired {
        set_condition(&mut out, d, generation, now);
    }
    out
}

/// Sorts into [`TYPE_ORDER`]; unknown types go last, by name.
pub fn sort_conditions(conditions: &mut [Condition]) {
    conditions.sort_by(|a, b| {
        let rank = |t: &str| {
            TYPE_ORDER
                .iter()
                .position(|o| *o == t)
                .unwrap_or(TYPE_ORDER.len())
        };
        rank(&a.type_)
            .cmp(&rank(&b.type_))
            .then_with(|| a.type_.cmp(&b.type_))
    });
}

/// Conditions for an object seen for the first time, before Graph has been read: Ready and
/// Delivered Unknown, Reconciling True, all with reason `Verifying`. Lets a driver set
/// conditions on the first visit (kstatus) before any slow I/O.
pub fn first_visit_conditions(generation: Option<i64>, now: Timestamp) -> Vec<Condition> {
    let msg = "Redeliver is reading the assignment and memberships from Microsoft Graph.";
    build_conditions(
        &[],
        vec![
            Desired::new(READY, Status::Unknown, reason::VERIFYING, msg),
            Desired::new(DELIVERED, Status::Unknown, reason::VERIFYING, msg),
            Desired::new(RECONCILING, Status::True, reason::VERIFYING, msg),
        ],
        generation,
        now,
    )
}

/// Equal in everything but `lastTransitionTime`.
pub fn conditions_equal_ignoring_transition_times(a: &[Condition], b: &[Condition]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.type_ == y.type_
                && x.status == y.status
                && x.reason == y.reason
                && x.message == y.message
                && x.observed_generation == y.observed_generation
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    #[test]
    fn first_set_stamps_now_truncated() {
        let mut c = Vec::new();
        let now = t(0) + jiff::SignedDuration::from_millis(700);
        set_condition(
            &mut c,
            Desired::new(READY, Status::Unknown, reason::VERIFYING, "first look"),
            Some(1),
            now,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].last_transition_time, Time(t(0)));
        assert_eq!(c[0].observed_generation, Some(1));
        assert_eq!(c[0].status, "Unknown");
    }

    #[test]
    fn transition_time_kept_when_status_unchanged_even_if_reason_changes() {
        let mut c = Vec::new();
        set_condition(
            &mut c,
            Desired::new(READY, Status::False, reason::REQUESTING, "a"),
            Some(1),
            t(0),
        );
        set_condition(
            &mut c,
            Desired::new(READY, Status::False, reason::REPROCESSING, "b"),
            Some(2),
            t(10),
        );
        assert_eq!(c[0].last_transition_time, Time(t(0)));
        assert_eq!(c[0].reason, reason::REPROCESSING);
        assert_eq!(c[0].message, "b");
        assert_eq!(c[0].observed_generation, Some(2));
    }

    #[test]
    fn transition_time_moves_when_status_flips() {
        let mut c = Vec::new();
        set_condition(
            &mut c,
            Desired::new(DELIVERED, Status::False, reason::RESOURCES_MISSING, ""),
            None,
            t(0),
        );
        set_condition(
            &mut c,
            Desired::new(DELIVERED, Status::True, reason::DELIVERED, ""),
            None,
            t(60),
        );
        assert_eq!(c[0].last_transition_time, Time(t(60)));
        set_condition(
            &mut c,
            Desired::new(DELIVERED, Status::Unknown, reason::VERIFICATION_FAILED, ""),
            None,
            t(90),
        );
        assert_eq!(c[0].last_transition_time, Time(t(90)));
    }

    #[test]
    fn abnormal_true_conditions_vanish_when_not_true() {
        let mut c = Vec::new();
        set_condition(
            &mut c,
            Desired::new(STALLED, Status::True, reason::INVALID_SPEC, "x"),
            None,
            t(0),
        );
        set_condition(
            &mut c,
            Desired::new(RECONCILING, Status::True, reason::REQUESTING, "y"),
            None,
            t(0),
        );
        assert_eq!(c.len(), 2);
        set_condition(
            &mut c,
            Desired::new(STALLED, Status::False, reason::INVALID_SPEC, ""),
            None,
            t(1),
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].type_, RECONCILING);
        set_condition(
            &mut c,
            Desired::new(RECONCILING, Status::Unknown, reason::REQUESTING, ""),
            None,
            t(1),
        );
        assert!(c.is_empty());
        // Never added when not True.
        set_condition(
            &mut c,
            Desired::new(STALLED, Status::False, reason::INVALID_SPEC, ""),
            None,
            t(1),
        );
        assert!(c.is_empty());
    }

    #[test]
    fn fixed_order_regardless_of_insertion_order() {
        let c = build_conditions(
            &[],
            vec![
                Desired::new(STALLED, Status::True, reason::FORBIDDEN, ""),
                Desired::new(DELIVERED, Status::Unknown, reason::NOT_VERIFIED, ""),
                Desired::new(READY, Status::False, reason::FORBIDDEN, ""),
            ],
            None,
            t(0),
        );
        let types: Vec<&str> = c.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, [READY, DELIVERED, STALLED]);
    }

    #[test]
    fn build_drops_unmentioned_and_keeps_times() {
        let first = build_conditions(
            &[],
            vec![
                Desired::new(READY, Status::False, reason::REPROCESSING, ""),
                Desired::new(RECONCILING, Status::True, reason::REPROCESSING, ""),
            ],
            Some(3),
            t(0),
        );
        let second = build_conditions(
            &first,
            vec![Desired::new(
                READY,
                Status::False,
                reason::RESOURCES_MISSING,
                "m",
            )],
            Some(3),
            t(100),
        );
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].last_transition_time, Time(t(0)));
    }

    #[test]
    fn equality_ignores_only_transition_times() {
        let a = build_conditions(
            &[],
            vec![Desired::new(READY, Status::True, reason::DELIVERED, "ok")],
            Some(1),
            t(0),
        );
        let b = build_conditions(
            &[],
            vec![Desired::new(READY, Status::True, reason::DELIVERED, "ok")],
            Some(1),
            t(50),
        );
        assert!(conditions_equal_ignoring_transition_times(&a, &b));
        let c = build_conditions(
            &[],
            vec![Desired::new(READY, Status::True, reason::DELIVERED, "ok!")],
            Some(1),
            t(0),
        );
        assert!(!conditions_equal_ignoring_transition_times(&a, &c));
        let d = build_conditions(
            &[],
            vec![Desired::new(READY, Status::True, reason::DELIVERED, "ok")],
            Some(2),
            t(0),
        );
        assert!(!conditions_equal_ignoring_transition_times(&a, &d));
        assert!(!conditions_equal_ignoring_transition_times(&a, &[]));
    }

    #[test]
    fn first_visit_is_unknown_and_reconciling() {
        let c = first_visit_conditions(Some(4), t(0));
        let summary: Vec<(&str, &str, &str)> = c
            .iter()
            .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
            .collect();
        assert_eq!(
            summary,
            [
                (READY, "Unknown", reason::VERIFYING),
                (DELIVERED, "Unknown", reason::VERIFYING),
                (RECONCILING, "True", reason::VERIFYING)
            ]
        );
        assert!(c.iter().all(|c| c.observed_generation == Some(4)));
    }

    #[test]
    fn reasons_are_single_camel_case_words() {
        use reason::*;
        for r in [
            DELIVERED,
            RESOURCES_MISSING,
            AWAITING_DELIVERY,
            DELIVERY_FAILED,
            EXPIRED,
            NOT_ASSIGNED,
            VERIFICATION_FAILED,
            NOT_VERIFIED,
            UNKNOWN_STATE,
            REPROCESSING,
            REQUESTING,
            VERIFYING,
            INVALID_SPEC,
            PACKAGE_NOT_FOUND,
            PACKAGE_AMBIGUOUS,
            POLICY_NOT_FOUND,
            POLICY_AMBIGUOUS,
            TARGET_NOT_FOUND,
            FORBIDDEN,
            REPROCESS_EXHAUSTED,
            DELIVERY_STUCK,
            REQUEST_DENIED,
            REJECTED,
            SUSPENDED,
            REPORT_ONLY,
            ALL_DELIVERED,
        ] {
            assert!(r.chars().next().unwrap().is_ascii_uppercase(), "{r}");
            assert!(r.chars().all(|c| c.is_ascii_alphanumeric()), "{r}");
        }
    }
}
