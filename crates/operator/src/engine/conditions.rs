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

/// A condition type: the four Redeliver writes, in the order they are written.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::VariantArray,
    strum::Display,
)]
pub enum ConditionType {
    /// Summary: True when the object is fully reconciled and delivered.
    Ready,
    /// True only when Graph says delivered and every verifiable resource is present.
    Delivered,
    /// Abnormal-true while work is in flight.
    Reconciling,
    /// Abnormal-true when progress needs a human.
    Stalled,
}

impl ConditionType {
    /// The wire literal (`Ready`, `Delivered`, ...).
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// `Reconciling` and `Stalled` are abnormal-true (kstatus): present only while `True`.
    pub fn is_abnormal_true(self) -> bool {
        matches!(self, Self::Reconciling | Self::Stalled)
    }
}

/// The order conditions are written in.
pub const TYPE_ORDER: &[ConditionType] = <ConditionType as strum::VariantArray>::VARIANTS;

/// A condition reason: one CamelCase word each, the whole vocabulary in one place.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::VariantArray,
    strum::Display,
)]
pub enum Reason {
    /// Graph says delivered and every verifiable resource is present.
    Delivered,
    /// Graph says delivered but at least one verifiable resource is missing.
    ResourcesMissing,
    /// Entitlement management is still delivering the assignment.
    AwaitingDelivery,
    /// Graph reports deliveryFailed or partiallyDelivered.
    DeliveryFailed,
    /// The assignment expired under its policy.
    Expired,
    /// The target holds no assignment of the package.
    NotAssigned,
    /// A membership read failed, so delivery cannot be confirmed.
    VerificationFailed,
    /// Nothing could be verified yet (e.g. the declaration did not resolve).
    NotVerified,
    /// Graph reported a state Redeliver does not know.
    UnknownState,
    /// A reprocess was requested and has not been verified yet.
    Reprocessing,
    /// An assignment request is in flight.
    Requesting,
    /// First pass, nothing observed yet.
    Verifying,
    /// The declaration is invalid.
    InvalidSpec,
    /// No access package matches the declaration.
    PackageNotFound,
    /// Several access packages match the declaration.
    PackageAmbiguous,
    /// No assignment policy matches the declaration.
    PolicyNotFound,
    /// Several assignment policies match and none is named.
    PolicyAmbiguous,
    /// The target user does not exist.
    TargetNotFound,
    /// Graph refused for lack of permission.
    Forbidden,
    /// Reprocess attempts are used up and resources are still missing.
    ReprocessExhausted,
    /// A request or assignment stayed in a transitional state past the bound.
    DeliveryStuck,
    /// The assignment request was denied.
    RequestDenied,
    /// Graph rejected a request or reprocess Redeliver sent.
    Rejected,
    /// `spec.suspend` is true and a change was due.
    Suspended,
    /// Drift is reported only (reprocess mode Disabled/Manual, or guard Audit).
    ReportOnly,
    /// Guard: every assignment is delivered.
    AllDelivered,
    /// The object's Graph connection is missing, not usable yet, or not the one it was
    /// reconciled with.
    ConnectionNotReady,
    /// Connection: a token was obtained and a read of access packages succeeded.
    Connected,
    /// Connection: its Secret, or the key in it, is missing or unreadable.
    SecretUnavailable,
    /// Connection: the token endpoint refused a token.
    AuthenticationFailed,
    /// Connection: a token was issued but the probe read failed.
    ProbeFailed,
    /// Drift was found and a reprocess is due, but the connection's reprocess budget
    /// (`reprocessRate`) is spent: it is sent when a slot frees up.
    RateLimited,
    /// Safety: the target's account is disabled; nothing is granted back.
    TargetDisabled,
    /// Safety: the target no longer exists in the directory.
    TargetDeleted,
    /// Safety: Identity Protection reports the target at risk (safety.holdRiskyUsers).
    TargetAtRisk,
    /// Safety: the target's account could not be confirmed, so nothing is granted.
    TargetUnverified,
    /// Safety: a respected actor removed the resource; it is not undone.
    RemovedDeliberately,
    /// Safety: respected actors are set and the removal is not attributed yet; the repair
    /// waits, bounded by safety.attributionWait.
    AwaitingAttribution,
    /// Safety: respected actors are set, the audit log cannot be read, and
    /// safety.whenUnattributed is Hold.
    AttributionUnavailable,
    /// Safety (guard): every drifted assignment left to repair is held by the account gate.
    AccountsHeld,
    /// Safety: the mass-drift breaker tripped; automatic repair of the package waits for a
    /// person.
    MassDrift,
}

impl Reason {
    /// The wire literal.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// A condition status.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumString, strum::Display,
)]
pub enum Status {
    True,
    False,
    Unknown,
}

impl Status {
    /// The wire literal.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Lets a stored [`Condition`]'s string fields be compared with the vocabulary directly
/// (`c.status == Status::True`), so no literal is spelled twice.
macro_rules! compare_with_wire_text {
    ($($t:ty),*) => {$(
        impl PartialEq<$t> for String {
            fn eq(&self, other: &$t) -> bool {
                self == other.as_str()
            }
        }
        impl PartialEq<$t> for str {
            fn eq(&self, other: &$t) -> bool {
                self == other.as_str()
            }
        }
        impl PartialEq<$t> for &str {
            fn eq(&self, other: &$t) -> bool {
                *self == other.as_str()
            }
        }
        impl PartialEq<String> for $t {
            fn eq(&self, other: &String) -> bool {
                self.as_str() == other
            }
        }
        impl PartialEq<str> for $t {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }
    )*};
}
compare_with_wire_text!(ConditionType, Reason, Status);

/// A condition the engine wants, before transition times are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub type_: ConditionType,
    pub status: Status,
    pub reason: Reason,
    pub message: String,
}

impl Desired {
    /// Shorthand constructor.
    pub fn new(
        type_: ConditionType,
        status: Status,
        reason: Reason,
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
pub fn find(conditions: &[Condition], type_: ConditionType) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// True when the condition of `type_` is present with status `True`.
pub fn is_true(conditions: &[Condition], type_: ConditionType) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == Status::True)
}

/// The reason of the condition of `type_`, if present and one of Redeliver's own (a reason
/// some other writer put there is not ours to act on).
pub fn reason_of(conditions: &[Condition], type_: ConditionType) -> Option<Reason> {
    find(conditions, type_).and_then(|c| c.reason.parse().ok())
}

/// The reason of the condition of `type_` while it is `True`.
pub fn true_reason(conditions: &[Condition], type_: ConditionType) -> Option<Reason> {
    find(conditions, type_)
        .filter(|c| c.status == Status::True)
        .and_then(|c| c.reason.parse().ok())
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
    let abnormal = desired.type_.is_abnormal_true();
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
        type_: desired.type_.as_str().to_string(),
        status: desired.status.as_str().to_string(),
        reason: desired.reason.as_str().to_string(),
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
pub fn remove_condition(conditions: &mut Vec<Condition>, type_: ConditionType) {
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
                .position(|o| t == *o)
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
            Desired::new(
                ConditionType::Ready,
                Status::Unknown,
                Reason::Verifying,
                msg,
            ),
            Desired::new(
                ConditionType::Delivered,
                Status::Unknown,
                Reason::Verifying,
                msg,
            ),
            Desired::new(
                ConditionType::Reconciling,
                Status::True,
                Reason::Verifying,
                msg,
            ),
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

/// The conditions of an object that does not match its kind's schema (`kind`), `error`
/// saying why: `Ready=False` and `Stalled=True (InvalidSpec)`, and the message. `None`
/// when its conditions already say exactly that: the status write comes back through the
/// watch and must not loop.
pub fn invalid_object_conditions(
    previous: &[Condition],
    kind: &str,
    error: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> Option<(Vec<Condition>, String)> {
    let message = format!(
        "The object does not match the {kind} schema and is skipped until it is fixed: {error}."
    );
    if previous.iter().any(|c| {
        c.type_ == ConditionType::Stalled && c.reason == Reason::InvalidSpec && c.message == message
    }) {
        return None;
    }
    let conditions = build_conditions(
        previous,
        vec![
            Desired::new(
                ConditionType::Ready,
                Status::False,
                Reason::InvalidSpec,
                message.clone(),
            ),
            Desired::new(
                ConditionType::Stalled,
                Status::True,
                Reason::InvalidSpec,
                message.clone(),
            ),
        ],
        generation,
        now,
    );
    Some((conditions, message))
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
            Desired::new(
                ConditionType::Ready,
                Status::Unknown,
                Reason::Verifying,
                "first look",
            ),
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
            Desired::new(ConditionType::Ready, Status::False, Reason::Requesting, "a"),
            Some(1),
            t(0),
        );
        set_condition(
            &mut c,
            Desired::new(
                ConditionType::Ready,
                Status::False,
                Reason::Reprocessing,
                "b",
            ),
            Some(2),
            t(10),
        );
        assert_eq!(c[0].last_transition_time, Time(t(0)));
        assert_eq!(c[0].reason, Reason::Reprocessing);
        assert_eq!(c[0].message, "b");
        assert_eq!(c[0].observed_generation, Some(2));
    }

    #[test]
    fn transition_time_moves_when_status_flips() {
        let mut c = Vec::new();
        set_condition(
            &mut c,
            Desired::new(
                ConditionType::Delivered,
                Status::False,
                Reason::ResourcesMissing,
                "",
            ),
            None,
            t(0),
        );
        set_condition(
            &mut c,
            Desired::new(
                ConditionType::Delivered,
                Status::True,
                Reason::Delivered,
                "",
            ),
            None,
            t(60),
        );
        assert_eq!(c[0].last_transition_time, Time(t(60)));
        set_condition(
            &mut c,
            Desired::new(
                ConditionType::Delivered,
                Status::Unknown,
                Reason::VerificationFailed,
                "",
            ),
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
            Desired::new(
                ConditionType::Stalled,
                Status::True,
                Reason::InvalidSpec,
                "x",
            ),
            None,
            t(0),
        );
        set_condition(
            &mut c,
            Desired::new(
                ConditionType::Reconciling,
                Status::True,
                Reason::Requesting,
                "y",
            ),
            None,
            t(0),
        );
        assert_eq!(c.len(), 2);
        set_condition(
            &mut c,
            Desired::new(
                ConditionType::Stalled,
                Status::False,
                Reason::InvalidSpec,
                "",
            ),
            None,
            t(1),
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].type_, ConditionType::Reconciling);
        set_condition(
            &mut c,
            Desired::new(
                ConditionType::Reconciling,
                Status::Unknown,
                Reason::Requesting,
                "",
            ),
            None,
            t(1),
        );
        assert!(c.is_empty());
        // Never added when not True.
        set_condition(
            &mut c,
            Desired::new(
                ConditionType::Stalled,
                Status::False,
                Reason::InvalidSpec,
                "",
            ),
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
                Desired::new(ConditionType::Stalled, Status::True, Reason::Forbidden, ""),
                Desired::new(
                    ConditionType::Delivered,
                    Status::Unknown,
                    Reason::NotVerified,
                    "",
                ),
                Desired::new(ConditionType::Ready, Status::False, Reason::Forbidden, ""),
            ],
            None,
            t(0),
        );
        let types: Vec<&str> = c.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(
            types,
            [
                ConditionType::Ready,
                ConditionType::Delivered,
                ConditionType::Stalled
            ]
        );
    }

    #[test]
    fn build_drops_unmentioned_and_keeps_times() {
        let first = build_conditions(
            &[],
            vec![
                Desired::new(
                    ConditionType::Ready,
                    Status::False,
                    Reason::Reprocessing,
                    "",
                ),
                Desired::new(
                    ConditionType::Reconciling,
                    Status::True,
                    Reason::Reprocessing,
                    "",
                ),
            ],
            Some(3),
            t(0),
        );
        let second = build_conditions(
            &first,
            vec![Desired::new(
                ConditionType::Ready,
                Status::False,
                Reason::ResourcesMissing,
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
            vec![Desired::new(
                ConditionType::Ready,
                Status::True,
                Reason::Delivered,
                "ok",
            )],
            Some(1),
            t(0),
        );
        let b = build_conditions(
            &[],
            vec![Desired::new(
                ConditionType::Ready,
                Status::True,
                Reason::Delivered,
                "ok",
            )],
            Some(1),
            t(50),
        );
        assert!(conditions_equal_ignoring_transition_times(&a, &b));
        let c = build_conditions(
            &[],
            vec![Desired::new(
                ConditionType::Ready,
                Status::True,
                Reason::Delivered,
                "ok!",
            )],
            Some(1),
            t(0),
        );
        assert!(!conditions_equal_ignoring_transition_times(&a, &c));
        let d = build_conditions(
            &[],
            vec![Desired::new(
                ConditionType::Ready,
                Status::True,
                Reason::Delivered,
                "ok",
            )],
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
                ("Ready", "Unknown", "Verifying"),
                ("Delivered", "Unknown", "Verifying"),
                ("Reconciling", "True", "Verifying")
            ]
        );
        assert!(c.iter().all(|c| c.observed_generation == Some(4)));
    }

    #[test]
    fn reasons_are_single_camel_case_words_and_parse_back() {
        use strum::VariantArray;
        for r in Reason::VARIANTS {
            let text = r.as_str();
            assert!(text.chars().next().unwrap().is_ascii_uppercase(), "{text}");
            assert!(text.chars().all(|c| c.is_ascii_alphanumeric()), "{text}");
            assert_eq!(text.parse::<Reason>().unwrap(), *r);
        }
        for t in TYPE_ORDER {
            assert_eq!(t.as_str().parse::<ConditionType>().unwrap(), *t);
        }
        assert_eq!(
            TYPE_ORDER.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
            ["Ready", "Delivered", "Reconciling", "Stalled"]
        );
        let stored = String::from("True");
        assert!(stored == Status::True && "False" == Status::False);
    }
}
