//! `AccessPackageGuard`: every assignment of one access package must be truly delivered.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    AccessPackageSelector, DURATION_PATTERN, DURATION_RULE_1M, SpecError, check_duration,
    check_package,
};

/// Shortest accepted `spec.interval`.
pub const MIN_GUARD_INTERVAL: Duration = Duration::from_secs(60);
/// Longest list kept in `status.drifted`.
pub const MAX_DRIFTED_LISTED: usize = 50;
/// Longest list kept in `status.unmanagedMembers.sample`.
pub const MAX_UNMANAGED_SAMPLE: usize = 20;

fn is_zero(n: &i32) -> bool {
    *n == 0
}

fn default_interval() -> String {
    String::from("15m")
}
fn default_max_reprocess() -> i32 {
    50
}

/// Keeps every assignment of one access package honest, declared or not: the portal's bulk
/// "select all users, Reprocess", run continuously.
// Each printcolumn repeats `type_`; clippy reads the derive attributes as duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[kube(
    group = "redeliver.dev",
    version = "v1alpha1",
    kind = "AccessPackageGuard",
    namespaced,
    status = "AccessPackageGuardStatus",
    shortname = "apg",
    category = "redeliver",
    derive = "PartialEq",
    doc = "Keeps every assignment of one Microsoft Entra ID access package truly delivered, whether or not it is declared: each sweep verifies every assignment's group and app-role memberships and, in Enforce mode, reprocesses the drifted ones.",
    printcolumn(
        name = "Package",
        type_ = "string",
        json_path = ".status.accessPackageName",
        description = "Access package display name (or id)"
    ),
    printcolumn(
        name = "Mode",
        type_ = "string",
        json_path = ".spec.mode",
        description = "Enforce reprocesses drifted assignments; Audit only reports"
    ),
    printcolumn(
        name = "Total",
        type_ = "integer",
        json_path = ".status.assignments.total",
        description = "Assignments of the package (not expired)"
    ),
    printcolumn(
        name = "Drifted",
        type_ = "integer",
        json_path = ".status.assignments.drifted",
        description = "Delivered assignments with a missing resource"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = 1,
        description = "Reason of the Ready condition"
    ),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].message",
        priority = 1,
        description = "Message of the Ready condition"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct AccessPackageGuardSpec {
    /// The access package whose assignments are guarded, selected by id or by displayName
    /// (optionally narrowed by catalog).
    pub access_package: AccessPackageSelector,
    /// Enforce (default) reprocesses drifted assignments; Audit only reports them.
    #[serde(default)]
    pub mode: GuardMode,
    /// Time between two sweeps of all assignments, e.g. 15m or 1h. Minimum 1m.
    #[serde(default = "default_interval")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 32))]
    #[x_kube(validation = Rule::new(DURATION_RULE_1M).message("interval must be a duration of at least 1m and at most 999999h, such as 15m or 1h"))]
    pub interval: String,
    /// Most reprocess requests sent in one sweep: a bound against mass reprocessing after a
    /// big outside change. 0 reports without reprocessing, like Audit.
    #[serde(default = "default_max_reprocess")]
    #[schemars(range(min = 0, max = 10000))]
    pub max_reprocess_per_sweep: i32,
    /// The Graph connection (Entra tenant and credential) to use. When unset, the namespace's
    /// GraphConnection named default is used if there is one, otherwise the operator's own
    /// connection (its flags). A GraphConnection is always looked up in this object's
    /// namespace; a missing or broken connection stalls the guard, never falls back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_ref: Option<super::ConnectionRef>,
    /// This guard's own safety settings, each overriding its connection's (README,
    /// "Safety"). Respected actors need attribution, which guards do not look up: set them
    /// on AccessPackageAssignments, or use mode Audit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safety: Option<super::SafetySpec>,
}

/// What a guard does about drift.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum GuardMode {
    /// Reprocess drifted assignments (bounded per sweep).
    #[default]
    Enforce,
    /// Report only.
    Audit,
}

/// What the last sweep found. Written by the operator; do not edit.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AccessPackageGuardStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The Graph connection this object was last reconciled with (GraphConnection/<name> or
    /// ClusterGraphConnection/<name>; absent for the operator's own connection). An object
    /// never moves to another tenant by itself: when its connection is gone it stalls until
    /// the connection is back or its spec is changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<String>,
    /// Display name of the access package (or its id when the name is not known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_package_name: Option<String>,
    /// Resolved object id of the access package.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_package_id: Option<String>,
    /// When the sweep that found what this status says ran: the last time the result
    /// changed. The guard sweeps every interval, but an unchanged result is not written again
    /// (a quiet cluster sees no status writes), so this time does not move while nothing
    /// changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sweep_time: Option<Time>,
    /// Counts of the package's assignments by verified state.
    #[serde(default)]
    pub assignments: AssignmentCounts,
    /// Drifted assignments, oldest drift first (at most 50 listed; assignments.drifted has
    /// the full count).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drifted: Vec<DriftedAssignment>,
    /// Drifted assignments beyond the 50 listed in drifted. They are reprocessed all the
    /// same (oldest drift first, within maxReprocessPerSweep).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub drifted_not_listed: i32,
    /// Users in a group the package grants who hold no assignment of the package. Reported for
    /// access reviews; never acted on.
    #[serde(default)]
    pub unmanaged_members: UnmanagedMembers,
    /// The last value of the redeliver.dev/reprocess-requested-at annotation handled: a new
    /// value asks for a sweep now, and once this field echoes it that sweep has run (what it
    /// found and reprocessed is in assignments, drifted and the conditions). The guard's
    /// limits (cooldown, maxAttempts, maxReprocessPerSweep) still apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_request: Option<String>,
    /// While the mass-drift breaker is tripped: the numbers it tripped on. Automatic repair of
    /// the package is stopped until the annotation redeliver.dev/mass-drift-acknowledged-at
    /// gets a new value (kubectl redeliver ack) or the drift falls back below the threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mass_drift: Option<super::MassDriftStatus>,
    /// Ready, Delivered, Reconciling and Stalled, following Kubernetes API conventions.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// Counts of a package's assignments (expired assignments are not counted).
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AssignmentCounts {
    /// All assignments that are not expired.
    #[serde(default)]
    pub total: i32,
    /// Graph says delivered and every verifiable resource is present.
    #[serde(default)]
    pub delivered: i32,
    /// Graph says delivered but a resource is missing.
    #[serde(default)]
    pub drifted: i32,
    /// Drifted assignments with a reprocess requested and not yet verified.
    #[serde(default)]
    pub reprocessing: i32,
    /// Graph says deliveryFailed or partiallyDelivered.
    #[serde(default)]
    pub failed: i32,
    /// Graph says delivering (or the membership could not be read).
    #[serde(default)]
    pub pending: i32,
    /// Drifted assignments not repaired because of their account (disabled, deleted, at
    /// risk, or not confirmable).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub held: i32,
}

/// One drifted assignment.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DriftedAssignment {
    /// The user: principal name when known, otherwise object id.
    pub target: String,
    /// Directory object id of the user.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target_object_id: String,
    /// Object id of the assignment.
    pub assignment_id: String,
    /// Missing resources, as "display name (role)".
    #[serde(default)]
    pub missing: Vec<String>,
    /// When the drift was first seen.
    pub since: Time,
    /// When this assignment was last reprocessed (by this guard or another covering object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reprocess_time: Option<Time>,
    /// Reprocess requests sent for this drift since the assignment was last verified
    /// delivered, by this guard or by any other object covering the same assignment.
    #[serde(default)]
    pub reprocess_attempts: i32,
    /// The object that sent the last reprocess, when it was not this guard (an
    /// AccessPackageAssignment covering the same assignment, "Kind namespace/name").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reprocessed_by: Option<String>,
    /// The client-request-id of the last reprocess this guard sent for this drift: quote it to
    /// find the write in Entra's logs or to Microsoft support.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_client_request_id: Option<String>,
    /// Why this drift is not repaired automatically: TargetDisabled, TargetDeleted,
    /// TargetAtRisk or TargetUnverified (the account), with a sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
}

/// Members of a package's groups that hold no assignment of the package.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UnmanagedMembers {
    /// How many distinct users.
    #[serde(default)]
    pub count: i32,
    /// Up to 20 of their object ids (smallest first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sample: Vec<String>,
}

/// Checks what the schema cannot (or what slipped past it). Returns the first problem,
/// naming the field.
pub fn validate_guard_spec(spec: &AccessPackageGuardSpec) -> Result<(), SpecError> {
    guard_spec_checks(spec).into_iter().collect()
}

/// Every problem [`validate_guard_spec`] would name, in its order.
pub fn guard_spec_problems(spec: &AccessPackageGuardSpec) -> Vec<SpecError> {
    guard_spec_checks(spec)
        .into_iter()
        .filter_map(Result::err)
        .collect()
}

fn guard_spec_checks(spec: &AccessPackageGuardSpec) -> [Result<(), SpecError>; 4] {
    let max_reprocess = if spec.max_reprocess_per_sweep < 0 {
        Err(SpecError::new(
            "spec.maxReprocessPerSweep",
            format!(
                "{} is negative; use 0 to only report, or a positive bound",
                spec.max_reprocess_per_sweep
            ),
        ))
    } else {
        Ok(())
    };
    [
        check_package("spec.accessPackage", &spec.access_package),
        check_duration("spec.interval", &spec.interval, MIN_GUARD_INTERVAL),
        max_reprocess,
        super::connection::check_connection_ref(spec.connection_ref.as_ref()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_validation() {
        let mut s: AccessPackageGuardSpec = serde_json::from_value(serde_json::json!({
            "accessPackage": {"id": "9f1c0c7e-0000-4000-8000-000000000001"}
        }))
        .unwrap();
        assert_eq!(s.mode, GuardMode::Enforce);
        assert_eq!(s.interval, "15m");
        assert_eq!(s.max_reprocess_per_sweep, 50);
        assert_eq!(validate_guard_spec(&s), Ok(()));
        s.interval = "30s".into();
        assert_eq!(validate_guard_spec(&s).unwrap_err().field, "spec.interval");
        s.interval = "1h".into();
        s.max_reprocess_per_sweep = -1;
        assert_eq!(
            validate_guard_spec(&s).unwrap_err().field,
            "spec.maxReprocessPerSweep"
        );
        s.max_reprocess_per_sweep = 0;
        s.access_package.display_name = Some("Finance".into());
        assert_eq!(
            validate_guard_spec(&s).unwrap_err().field,
            "spec.accessPackage"
        );
    }
}
