//! `AccessPackageAssignment`: one user must hold one access package, truly delivered.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    AccessPackageSelector, DURATION_PATTERN, DURATION_RULE_30S, PolicySelector, SpecError,
    TargetSelector, check_duration, check_guid, check_one_of, check_package,
};

/// Shortest accepted `spec.verifyInterval`.
pub const MIN_VERIFY_INTERVAL: Duration = Duration::from_secs(30);
/// Shortest accepted `spec.reprocess.cooldown`.
pub const MIN_COOLDOWN: Duration = Duration::from_secs(30);
/// Highest accepted `spec.reprocess.maxAttempts`.
pub const MAX_ATTEMPTS_LIMIT: i32 = 100;

fn default_cooldown() -> String {
    String::from("5m")
}
fn default_max_attempts() -> i32 {
    3
}

/// Declares that one user must hold one Entra ID access package, and that every group
/// and app role the package promises must really be there.
// Each printcolumn repeats `type_`; clippy reads the derive attributes as duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[kube(
    group = "redeliver.dev",
    version = "v1alpha1",
    kind = "AccessPackageAssignment",
    namespaced,
    status = "AccessPackageAssignmentStatus",
    shortname = "apa",
    category = "redeliver",
    derive = "PartialEq",
    doc = "Declares that one user must hold one Microsoft Entra ID access package, and that every group and app role the package promises is really delivered. Redeliver requests the assignment if it is missing, verifies actual membership, and reprocesses the assignment when it has drifted.",
    printcolumn(
        name = "Package",
        type_ = "string",
        json_path = ".status.accessPackageName",
        description = "Access package display name (or id)"
    ),
    printcolumn(
        name = "Target",
        type_ = "string",
        json_path = ".status.targetName",
        description = "User principal name (or object id) of the target user"
    ),
    printcolumn(
        name = "Graph",
        type_ = "string",
        json_path = ".status.graphStatus",
        description = "Assignment status as Microsoft Graph reports it"
    ),
    printcolumn(
        name = "Delivered",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Delivered\")].status",
        description = "True only when Graph says delivered and every verifiable resource is present"
    ),
    printcolumn(
        name = "Resources",
        type_ = "string",
        json_path = ".status.resourcesSummary",
        description = "Verified present / verifiable resources promised by the package"
    ),
    printcolumn(
        name = "Reprocess",
        type_ = "integer",
        json_path = ".status.reprocess.attempts",
        description = "Reprocess attempts since the assignment was last verified delivered"
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
pub struct AccessPackageAssignmentSpec {
    /// The access package the user must hold, selected by id or by displayName (optionally
    /// narrowed by catalog).
    pub access_package: AccessPackageSelector,
    /// The assignment policy used when Redeliver has to request the assignment (an adminAdd
    /// request). May be omitted when the package has exactly one policy. Not used to match
    /// an existing assignment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    // Boxed: rarely set, and inline it would push every stored object past an allocator
    // size class (see `a_stored_object_fits_one_1_kib_allocation`).
    pub assignment_policy: Option<Box<PolicySelector>>,
    /// The user who must hold the package, selected by objectId or by userPrincipalName.
    pub target: TargetSelector,
    /// How Redeliver repairs the assignment when Graph says delivered but a group membership
    /// or app role is missing, or when delivery failed.
    #[serde(default)]
    pub reprocess: ReprocessPolicy,
    /// How often the user's actual membership is verified against what the package promises,
    /// e.g. 10m or 1h. Minimum 30s. When unset, the operator's --verify-interval applies
    /// (default 10m; Helm value controller.verifyInterval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 32))]
    #[x_kube(validation = Rule::new(DURATION_RULE_30S).message("verifyInterval must be a duration of at least 30s and at most 999999h, such as 10m or 1h"))]
    pub verify_interval: Option<String>,
    /// What happens in Entra ID when this object is deleted. Orphan (default) leaves the
    /// assignment in place. Remove submits an adminRemove request, which revokes the access
    /// and emails the user; choose it deliberately.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// When true, Redeliver still verifies and reports but makes no change in Entra ID: no
    /// request, no reprocess, no removal.
    #[serde(default)]
    pub suspend: bool,
    /// The Graph connection (Entra tenant and credential) to use. When unset, the namespace's
    /// GraphConnection named default is used if there is one, otherwise the operator's own
    /// connection (its flags). A GraphConnection is always looked up in this object's
    /// namespace; a missing or broken connection stalls the object, never falls back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_ref: Option<super::ConnectionRef>,
    /// This object's own safety settings, each overriding its connection's (README,
    /// "Safety").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safety: Option<Box<super::SafetySpec>>,
}

/// How an assignment is repaired.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReprocessPolicy {
    /// Auto reprocesses as soon as drift or a failed delivery is found. Manual reprocesses only
    /// when the annotation redeliver.dev/reprocess-requested-at is set to a new value.
    /// Disabled only reports drift.
    #[serde(default)]
    pub mode: ReprocessMode,
    /// Reprocess attempts allowed before Redeliver gives up (Stalled, reason
    /// ReprocessExhausted) and waits for a human. The count resets once the assignment is
    /// verified delivered again.
    #[serde(default = "default_max_attempts")]
    #[schemars(range(min = 1, max = 100))]
    pub max_attempts: i32,
    /// Minimum time between two reprocess requests for this assignment, e.g. 5m. Gives
    /// entitlement management time to apply the previous one. Minimum 30s.
    #[serde(default = "default_cooldown")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 32))]
    #[x_kube(validation = Rule::new(DURATION_RULE_30S).message("reprocess.cooldown must be a duration of at least 30s and at most 999999h, such as 5m"))]
    pub cooldown: String,
}

impl Default for ReprocessPolicy {
    fn default() -> Self {
        Self {
            mode: ReprocessMode::default(),
            max_attempts: default_max_attempts(),
            cooldown: default_cooldown(),
        }
    }
}

/// When Redeliver may reprocess.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum ReprocessMode {
    /// Reprocess automatically on drift or failed delivery.
    #[default]
    Auto,
    /// Reprocess only when asked through the reprocess-requested-at annotation.
    Manual,
    /// Never reprocess; report only.
    Disabled,
}

/// What deleting the custom resource does in Entra ID.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum DeletionPolicy {
    /// Leave the assignment in Entra ID.
    #[default]
    Orphan,
    /// Remove the assignment with an adminRemove request (revokes access, emails the user).
    Remove,
}

/// What Redeliver observed and did. Written by the operator; do not edit.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AccessPackageAssignmentStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The Graph connection this object was last reconciled with (GraphConnection/<name> or
    /// ClusterGraphConnection/<name>; absent for the operator's own connection). An object
    /// never moves to another tenant by itself: when its connection is gone it stalls until
    /// the connection is back or its spec is changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<super::SharedStr>,
    /// Display name of the access package (or its id when the name is not known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_package_name: Option<super::SharedStr>,
    /// User principal name of the target (or its object id when the name is not known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_name: Option<String>,
    /// Object id of the Entra ID assignment (accessPackageAssignment) this object tracks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignment_id: Option<String>,
    /// Resolved object id of the access package.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_package_id: Option<super::SharedStr>,
    /// Resolved object id of the assignment policy used for requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_id: Option<super::SharedStr>,
    /// Resolved directory object id of the target user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_object_id: Option<String>,
    /// The assignment's state as Graph reports it (delivering, partiallyDelivered, delivered,
    /// expired, deliveryFailed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph_state: Option<super::SharedStr>,
    /// The assignment's free-text status as Graph reports it (e.g. Delivered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph_status: Option<super::SharedStr>,
    /// Every resource the package promises, and whether the user really has it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<ResourceStatus>,
    /// Verified-present resources over verifiable resources promised, e.g. 2/3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources_summary: Option<super::SharedStr>,
    /// Reprocess bookkeeping.
    #[serde(default)]
    pub reprocess: ReprocessStatus,
    /// When the verification that found what this status says ran: the last time the
    /// result changed. Membership is verified every verifyInterval, but an unchanged result
    /// is not written again (a quiet cluster sees no status writes), so this time does not
    /// move while nothing changes. The controller's redeliver_reconciles_total metric counts
    /// the verifications themselves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_verified_time: Option<Time>,
    /// Id of the assignment request that is in flight, stuck or failed, for support cases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_request_id: Option<String>,
    /// The client-request-id of the last write Redeliver sent to Entra ID for this object
    /// (a reprocess or an assignment request): quote it to find the write in Entra's logs or
    /// to Microsoft support. It is written here before the write is sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_client_request_id: Option<String>,
    /// Ready, Delivered, Reconciling and Stalled, following Kubernetes API conventions.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// One resource (group membership, group ownership, app role, Entra role, site role) the
/// package promises.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ResourceStatus {
    /// Where the resource lives: AadGroup, AadApplication, DirectoryRole, AzureResources,
    /// SharePointOnline, ...
    pub origin_system: super::OriginSystem,
    /// The resource's id in its origin system: group object id, service principal object
    /// id, Entra role definition id, Azure scope, or site URL.
    pub origin_id: super::SharedStr,
    /// For a role, what kind it is: EntraRole (a Microsoft Entra directory role),
    /// AzureRole (an Azure RBAC role) or GroupEligible (an eligible group membership or
    /// ownership, governed by Privileged Identity Management for Groups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<super::RoleKind>,
    /// For a role or a group eligibility, how it is granted: Eligible (the user may activate
    /// it) or Active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<super::RoleMode>,
    /// For a role, where it applies: `/` for the whole directory (Entra roles), or the
    /// Azure scope, e.g. `/subscriptions/{id}/resourceGroups/rg-fin` (Azure roles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<super::SharedStr>,
    /// Display name of the resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<super::SharedStr>,
    /// The role granted: Member, Owner, an app role name, a site role name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<super::SharedStr>,
    /// Id of the role in its origin system, where it is needed to check the resource: the
    /// app role id of an AadApplication resource, the role definition GUID of an Azure role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_id: Option<super::SharedStr>,
    /// Present, Missing, Unverifiable (Redeliver cannot check this kind of resource) or
    /// Unknown (the read failed this time).
    pub state: ResourceState,
    /// Why the state is Unverifiable or Unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<super::SharedStr>,
    /// While the resource is Missing: who removed it, from Entra's directory audit log, e.g.
    /// `removed by admin@contoso.com at 2026-12-01T10:42:07Z via "Remove member from
    /// group"` (an application is named by display name and app id). Otherwise why that is
    /// not known: "attribution unavailable: ..." (the operator lacks AuditLog.Read.All), or "not found in the audit
    /// log yet" after a few lookups (audit entries can appear minutes late). Kept unchanged
    /// until the resource is Present again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_change: Option<String>,
    /// While the resource is Missing and the audit log named who removed it: who, when and
    /// how, as the audit log says. Kept until the resource is Present again; a removal by a
    /// respected actor (spec.safety.respectedActors) is never undone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    // Boxed: set only on a drifted resource, and inline it would add 88 bytes to every
    // resource of every object the controller's store holds (docs/benchmarks.md, Controller).
    pub removed_by: Option<Box<Removal>>,
    /// While the resource is Missing: when Redeliver first saw it missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_since: Option<Time>,
}

/// Who removed a resource, from Entra's directory audit log.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Removal {
    /// User, Application, or Unknown (the entry names no initiator).
    pub actor_kind: ActorKind,
    /// The user's object id, or the application's (client) id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor_id: Option<String>,
    /// The user's principal name (or display name), or the application's display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor_name: Option<String>,
    /// When the audit log says it happened.
    pub time: Time,
    /// The audit activity, e.g. "Remove member from group".
    pub activity: String,
}

/// Who initiated a change in the audit log.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActorKind {
    User,
    Application,
    Unknown,
}

impl ResourceStatus {
    /// How a report names the resource in a list of missing ones: a group or app by its
    /// name, a role as `EntraRole Global Reader (Eligible, /)`, a group eligibility as
    /// `GroupEligible fin-admins (Member)`.
    pub fn short_name(&self) -> String {
        let name = self.display_name.as_deref().unwrap_or(&self.origin_id);
        match (&self.kind, &self.mode, &self.scope) {
            (Some(kind), Some(mode), Some(scope)) => format!("{kind} {name} ({mode}, {scope})"),
            (Some(kind), _, None) => match self.role.as_deref() {
                Some(role) => format!("{kind} {name} ({role})"),
                None => format!("{kind} {name}"),
            },
            _ => name.to_string(),
        }
    }
}

/// Whether a promised resource is really held.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum ResourceState {
    /// The user holds the resource.
    Present,
    /// The user does not hold the resource although the package promises it.
    Missing,
    /// Redeliver cannot verify this kind of resource (e.g. SharePoint Online sites).
    Unverifiable,
    /// The resource could not be read this time.
    #[default]
    Unknown,
}

/// Reprocess bookkeeping for one assignment.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReprocessStatus {
    /// Reprocess requests sent since the assignment was last verified delivered.
    #[serde(default)]
    pub attempts: i32,
    /// When the last reprocess was requested, by this object or by another one covering the
    /// same Entra ID assignment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_requested_time: Option<Time>,
    /// The object that sent the last reprocess, when it was not this one: another
    /// AccessPackageAssignment, or an AccessPackageGuard, covering the same Entra ID
    /// assignment ("Kind namespace/name"). Attempts and cooldown are shared by every object
    /// covering an assignment, so it is reprocessed at most once per cooldown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_requested_by: Option<String>,
    /// The last value of the redeliver.dev/reprocess-requested-at annotation that was handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_request: Option<String>,
    /// Outcome of the last reprocess: Requested (sent, not yet verified), Repaired (verified
    /// delivered again), Exhausted (maxAttempts did not repair it) or Rejected (Graph refused
    /// it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_outcome: Option<ReprocessOutcome>,
}

/// What became of the last reprocess.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReprocessOutcome {
    /// Sent, not yet verified.
    Requested,
    /// Verified delivered again.
    Repaired,
    /// maxAttempts reprocesses did not repair it.
    Exhausted,
    /// Graph refused it.
    Rejected,
}

/// Checks what the schema cannot (or what slipped past it, e.g. in `redeliver audit` files).
/// Returns the first problem, naming the field.
pub fn validate_assignment_spec(spec: &AccessPackageAssignmentSpec) -> Result<(), SpecError> {
    assignment_spec_checks(spec).into_iter().collect()
}

/// Every problem [`validate_assignment_spec`] would name, in its order (one per field
/// group: a field whose first check fails is not checked further).
pub fn assignment_spec_problems(spec: &AccessPackageAssignmentSpec) -> Vec<SpecError> {
    assignment_spec_checks(spec)
        .into_iter()
        .filter_map(Result::err)
        .collect()
}

fn assignment_spec_checks(spec: &AccessPackageAssignmentSpec) -> [Result<(), SpecError>; 7] {
    let policy = || {
        if let Some(policy) = &spec.assignment_policy {
            check_one_of(
                "spec.assignmentPolicy",
                ("id", policy.id.as_deref()),
                ("displayName", policy.display_name.as_deref()),
            )?;
            if let Some(id) = &policy.id {
                check_guid("spec.assignmentPolicy.id", id)?;
            }
        }
        Ok(())
    };
    let target = || {
        check_one_of(
            "spec.target",
            ("objectId", spec.target.object_id.as_deref()),
            (
                "userPrincipalName",
                spec.target.user_principal_name.as_deref(),
            ),
        )?;
        if let Some(id) = &spec.target.object_id {
            check_guid("spec.target.objectId", id)?;
        }
        if let Some(upn) = &spec.target.user_principal_name {
            let mut parts = upn.split('@');
            let ok = matches!((parts.next(), parts.next(), parts.next()), (Some(l), Some(d), None) if !l.is_empty() && !d.is_empty())
                && !upn.chars().any(char::is_whitespace);
            if !ok {
                return Err(SpecError::new(
                    "spec.target.userPrincipalName",
                    format!(
                        "{upn:?} is not a user principal name; write it as user@domain, e.g. alice@contoso.com"
                    ),
                ));
            }
        }
        Ok(())
    };
    let max_attempts = || {
        if !(1..=MAX_ATTEMPTS_LIMIT).contains(&spec.reprocess.max_attempts) {
            return Err(SpecError::new(
                "spec.reprocess.maxAttempts",
                format!(
                    "{} is out of range; use a value from 1 to {MAX_ATTEMPTS_LIMIT}",
                    spec.reprocess.max_attempts
                ),
            ));
        }
        Ok(())
    };
    [
        check_package("spec.accessPackage", &spec.access_package),
        policy(),
        target(),
        max_attempts(),
        check_duration(
            "spec.reprocess.cooldown",
            &spec.reprocess.cooldown,
            MIN_COOLDOWN,
        ),
        spec.verify_interval.as_ref().map_or(Ok(()), |interval| {
            check_duration("spec.verifyInterval", interval, MIN_VERIFY_INTERVAL)
        }),
        super::connection::check_connection_ref(spec.connection_ref.as_ref()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const PKG: &str = "9f1c0c7e-0000-4000-8000-000000000001";
    const USER: &str = "7deff43e-1f17-44ef-9e5f-d516b0ba11d4";

    fn spec() -> AccessPackageAssignmentSpec {
        serde_json::from_value(serde_json::json!({
            "accessPackage": {"displayName": "Finance Analysts", "catalog": "Finance"},
            "target": {"userPrincipalName": "alice@contoso.com"}
        }))
        .unwrap()
    }

    #[test]
    fn defaults_fill_in() {
        let s = spec();
        assert_eq!(s.reprocess, ReprocessPolicy::default());
        assert_eq!(s.reprocess.mode, ReprocessMode::Auto);
        assert_eq!(s.reprocess.max_attempts, 3);
        assert_eq!(s.reprocess.cooldown, "5m");
        assert_eq!(s.verify_interval, None, "the operator's default applies");
        assert_eq!(s.deletion_policy, DeletionPolicy::Orphan);
        assert!(!s.suspend);
        assert_eq!(validate_assignment_spec(&s), Ok(()));
    }

    #[test]
    fn refuses_both_or_neither_target() {
        let mut s = spec();
        s.target.object_id = Some(USER.into());
        let e = validate_assignment_spec(&s).unwrap_err();
        assert_eq!(e.field, "spec.target");
        assert!(e.message.contains("not both"), "{e}");
        s.target = TargetSelector::default();
        let e = validate_assignment_spec(&s).unwrap_err();
        assert_eq!(e.field, "spec.target");
    }

    #[test]
    fn refuses_bad_ids_and_upn() {
        let mut s = spec();
        s.access_package = AccessPackageSelector {
            id: Some("finance".into()),
            ..Default::default()
        };
        assert_eq!(
            validate_assignment_spec(&s).unwrap_err().field,
            "spec.accessPackage.id"
        );
        s.access_package.id = Some(PKG.into());
        s.target.user_principal_name = Some("alice".into());
        let e = validate_assignment_spec(&s).unwrap_err();
        assert_eq!(e.field, "spec.target.userPrincipalName");
        assert!(e.to_string().contains("user@domain"));
        s.target = TargetSelector {
            object_id: Some("nope".into()),
            user_principal_name: None,
        };
        assert_eq!(
            validate_assignment_spec(&s).unwrap_err().field,
            "spec.target.objectId"
        );
    }

    #[test]
    fn refuses_catalog_without_display_name() {
        let mut s = spec();
        s.access_package = AccessPackageSelector {
            id: Some(PKG.into()),
            display_name: None,
            catalog: Some("Finance".into()),
        };
        assert_eq!(
            validate_assignment_spec(&s).unwrap_err().field,
            "spec.accessPackage.catalog"
        );
    }

    #[test]
    fn a_stored_object_fits_one_1_kib_allocation() {
        // The controller's store holds every object in an `Arc`: two counters, then the
        // object. mimalloc serves up to 1,024 bytes from one size class and the next is
        // 1,280, so a few bytes more here cost 256 bytes per stored object (25 MiB at
        // 100,000 objects). Box a rarely-set field rather than grow this.
        let arc_inner =
            2 * std::mem::size_of::<usize>() + std::mem::size_of::<AccessPackageAssignment>();
        assert!(arc_inner <= 1024, "{arc_inner} bytes");
    }

    #[test]
    fn refuses_policy_with_both() {
        let mut s = spec();
        s.assignment_policy = Some(Box::new(PolicySelector {
            id: Some(PKG.into()),
            display_name: Some("Direct".into()),
        }));
        assert_eq!(
            validate_assignment_spec(&s).unwrap_err().field,
            "spec.assignmentPolicy"
        );
    }

    #[test]
    fn enforces_duration_minimums_and_attempts() {
        let mut s = spec();
        s.reprocess.cooldown = "10s".into();
        let e = validate_assignment_spec(&s).unwrap_err();
        assert_eq!(e.field, "spec.reprocess.cooldown");
        assert!(e.message.contains("minimum 30s"), "{e}");
        s.reprocess.cooldown = "5x".into();
        assert_eq!(
            validate_assignment_spec(&s).unwrap_err().field,
            "spec.reprocess.cooldown"
        );
        s.reprocess.cooldown = "1m".into();
        s.verify_interval = Some("1s".into());
        assert_eq!(
            validate_assignment_spec(&s).unwrap_err().field,
            "spec.verifyInterval"
        );
        s.verify_interval = Some("1h".into());
        s.reprocess.max_attempts = 0;
        assert_eq!(
            validate_assignment_spec(&s).unwrap_err().field,
            "spec.reprocess.maxAttempts"
        );
    }

    #[test]
    fn unknown_enum_literal_is_a_decode_error() {
        let r: Result<AccessPackageAssignmentSpec, _> = serde_json::from_value(serde_json::json!({
            "accessPackage": {"id": PKG},
            "target": {"objectId": USER},
            "reprocess": {"mode": "Sometimes"}
        }));
        assert!(r.is_err());
    }
}
