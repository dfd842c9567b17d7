//! Typed Microsoft Graph v1.0 wire models for the entitlement-management and directory
//! subset Redeliver uses (docs/graph.md, "Entitlement management objects and states").
//!
//! Every struct tolerates unknown fields (Graph adds properties over time) and every enum
//! has an `Unknown` fallback so a new server-side literal never breaks decoding.
//! JSON names are Graph's lower-camel v1.0 names.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// One page of a Graph collection: `{"value": [...], "@odata.nextLink": ...}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Page<T> {
    /// Items of this page (pages may be empty).
    #[serde(default = "Vec::new")]
    pub value: Vec<T>,
    /// Absolute URL of the next page; follow it verbatim until absent.
    #[serde(
        rename = "@odata.nextLink",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub next_link: Option<String>,
    /// Present on the last page of a delta round.
    #[serde(
        rename = "@odata.deltaLink",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub delta_link: Option<String>,
}

/// `accessPackageAssignment.state`. Switch on this, never on the free-text `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AssignmentState {
    Delivering,
    PartiallyDelivered,
    Delivered,
    Expired,
    DeliveryFailed,
    #[serde(other)]
    Unknown,
}

impl AssignmentState {
    /// Every state, for parsing.
    const ALL: [Self; 6] = [
        Self::Delivering,
        Self::PartiallyDelivered,
        Self::Delivered,
        Self::Expired,
        Self::DeliveryFailed,
        Self::Unknown,
    ];

    /// The state a wire literal (or a status's `graphState`) names, case-insensitively;
    /// anything else is `Unknown`.
    pub fn from_wire(s: &str) -> Self {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str().eq_ignore_ascii_case(s))
            .unwrap_or(Self::Unknown)
    }

    /// The wire literal, e.g. `delivered`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivering => "delivering",
            Self::PartiallyDelivered => "partiallyDelivered",
            Self::Delivered => "delivered",
            Self::Expired => "expired",
            Self::DeliveryFailed => "deliveryFailed",
            Self::Unknown => "unknownFutureValue",
        }
    }
}

/// `accessPackageAssignmentRequest.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RequestState {
    Submitted,
    PendingApproval,
    Delivering,
    Delivered,
    DeliveryFailed,
    Denied,
    Scheduled,
    Canceled,
    PartiallyDelivered,
    #[serde(other)]
    Unknown,
}

impl RequestState {
    /// The wire literal, e.g. `deliveryFailed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Submitted => "submitted",
            Self::PendingApproval => "pendingApproval",
            Self::Delivering => "delivering",
            Self::Delivered => "delivered",
            Self::DeliveryFailed => "deliveryFailed",
            Self::Denied => "denied",
            Self::Scheduled => "scheduled",
            Self::Canceled => "canceled",
            Self::PartiallyDelivered => "partiallyDelivered",
            Self::Unknown => "unknownFutureValue",
        }
    }

    /// True while the request is still being worked on by entitlement management.
    pub fn is_in_flight(self) -> bool {
        matches!(
            self,
            Self::Submitted | Self::PendingApproval | Self::Delivering | Self::Scheduled
        )
    }
}

/// `accessPackageAssignmentRequest.requestType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RequestType {
    NotSpecified,
    UserAdd,
    UserUpdate,
    UserRemove,
    AdminAdd,
    AdminUpdate,
    AdminRemove,
    SystemAdd,
    SystemUpdate,
    SystemRemove,
    OnBehalfAdd,
    #[serde(other)]
    Unknown,
}

impl RequestType {
    /// The wire literal, e.g. `adminAdd`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotSpecified => "notSpecified",
            Self::UserAdd => "userAdd",
            Self::UserUpdate => "userUpdate",
            Self::UserRemove => "userRemove",
            Self::AdminAdd => "adminAdd",
            Self::AdminUpdate => "adminUpdate",
            Self::AdminRemove => "adminRemove",
            Self::SystemAdd => "systemAdd",
            Self::SystemUpdate => "systemUpdate",
            Self::SystemRemove => "systemRemove",
            Self::OnBehalfAdd => "onBehalfAdd",
            Self::Unknown => "unknownFutureValue",
        }
    }

    /// Requests that grant access (as opposed to removing it).
    pub fn is_add(self) -> bool {
        matches!(
            self,
            Self::UserAdd | Self::AdminAdd | Self::SystemAdd | Self::OnBehalfAdd
        )
    }
}

/// `accessPackageCatalog`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Catalog {
    pub id: String,
    #[serde(default)]
    pub display_name: Option<String>,
}

/// `accessPackage`, optionally with `catalog`, `resourceRoleScopes` and
/// `assignmentPolicies` expanded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessPackage {
    pub id: String,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub is_hidden: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog: Option<Catalog>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_role_scopes: Option<Vec<ResourceRoleScope>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignment_policies: Option<Vec<AssignmentPolicy>>,
}

/// `accessPackageResourceRoleScope`: one thing a package grants.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceRoleScope {
    pub id: String,
    #[serde(default)]
    pub role: Option<ResourceRole>,
    #[serde(default)]
    pub scope: Option<ResourceScope>,
}

/// `accessPackageResourceRole` (docs/graph.md "What a package promises"). For groups
/// `originId` is `Member_{groupId}` or `Owner_{groupId}`; for apps it is the app role id.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceRole {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub origin_id: Option<String>,
    #[serde(default)]
    pub origin_system: Option<String>,
    /// For an Azure role (`AzureResources`): `active` or `eligible`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub role_type: Option<String>,
    /// The catalog resource the role belongs to (`role($expand=resource)`): for an Entra
    /// role its display name is the role's name ("Global Reader") and its `originId` the
    /// role definition id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<ResourceRef>,
}

/// `accessPackageResource`, the fields Redeliver reads when it is expanded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceRef {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub origin_id: Option<String>,
    #[serde(default)]
    pub origin_system: Option<String>,
}

/// `accessPackageResourceScope`. `originId` is the group object id, the service
/// principal object id, or the SharePoint site URL.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceScope {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub origin_id: Option<String>,
    #[serde(default)]
    pub origin_system: Option<String>,
    #[serde(default)]
    pub is_root_scope: Option<bool>,
}

/// `accessPackageAssignmentPolicy`, the fields Redeliver reads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AssignmentPolicy {
    pub id: String,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub allowed_target_scope: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_package: Option<AccessPackageRef>,
}

/// A thin reference to a package as expanded on assignments and policies.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessPackageRef {
    pub id: String,
    #[serde(default)]
    pub display_name: Option<String>,
}

/// A thin reference to a policy as expanded on assignments: its id only, since a sweep holds
/// one per assignment of the tenant and nothing reads the rest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AssignmentPolicyRef {
    pub id: String,
}

/// `accessPackageSubject`, the two fields that say who it is. A full verification holds one
/// per assignment of the tenant (300,000 at Entra's limit), so the subject's own id, display
/// name, email and type, which nothing reads, are not decoded: about 250 bytes saved each.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subject {
    /// The user's (or service principal's) directory object id; `null` if not yet in the tenant.
    #[serde(default)]
    pub object_id: Option<String>,
    #[serde(default)]
    pub principal_name: Option<String>,
}

/// `accessPackageAssignment`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Assignment {
    pub id: String,
    pub state: AssignmentState,
    /// Free text (`Delivered`, `Delivering`, ...): reported, never switched on.
    #[serde(default)]
    pub status: Option<String>,
    /// When it expired; its `schedule` is not decoded, as no decision reads it.
    #[serde(default)]
    pub expired_date_time: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Subject>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_package: Option<AccessPackageRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignment_policy: Option<AssignmentPolicyRef>,
}

/// A thin reference to an assignment as expanded on requests.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AssignmentRef {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Subject>,
}

/// `accessPackageAssignmentRequest`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AssignmentRequest {
    pub id: String,
    pub request_type: RequestType,
    pub state: RequestState,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub created_date_time: Option<Timestamp>,
    #[serde(default)]
    pub completed_date_time: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_package: Option<AccessPackageRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignment: Option<AssignmentRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requestor: Option<Subject>,
}

/// A directory user (`GET /users/{id|upn}?$select=id,userPrincipalName,displayName`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub id: String,
    #[serde(default)]
    pub user_principal_name: Option<String>,
    #[serde(default)]
    pub display_name: Option<String>,
}

/// Whether a user still exists and may sign in, as read before a grant
/// (`GET /users/{id}?$select=id,accountEnabled,userPrincipalName,displayName`; docs/graph.md
/// "Account state").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserAccount {
    pub id: String,
    /// `None` when Graph leaves it out (a permission that reads only the basic profile):
    /// that is no evidence the account is enabled.
    #[serde(default)]
    pub account_enabled: Option<bool>,
    #[serde(default)]
    pub user_principal_name: Option<String>,
    #[serde(default)]
    pub display_name: Option<String>,
}

/// Identity Protection's assessment of one user (`identityProtection/riskyUsers`;
/// docs/graph.md "Account state"). Enum values are kept as Graph spells them, so a new
/// literal (`unknownFutureValue`) never fails a read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RiskyUser {
    /// The user's object id.
    pub id: String,
    /// `low`, `medium`, `high`, `hidden`, `none`, ...
    #[serde(default)]
    pub risk_level: Option<String>,
    /// `none`, `confirmedSafe`, `remediated`, `dismissed`, `atRisk`, `confirmedCompromised`, ...
    #[serde(default)]
    pub risk_state: Option<String>,
    #[serde(default)]
    pub risk_detail: Option<String>,
    #[serde(default)]
    pub is_deleted: Option<bool>,
    #[serde(default)]
    pub user_principal_name: Option<String>,
    #[serde(default)]
    pub risk_last_updated_date_time: Option<String>,
}

/// A `directoryObject` as listed in `members`/`owners` with `$select=id`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DirectoryObject {
    pub id: String,
    #[serde(
        rename = "@odata.type",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub odata_type: Option<String>,
}

/// A group as returned by `GET /groups/delta?$select=members` (docs/graph.md "Group delta").
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeltaGroup {
    pub id: String,
    /// Membership changes on this page; entries without `@removed` are additions.
    #[serde(
        rename = "members@delta",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub members_delta: Vec<DeltaMember>,
    /// Present when the group itself was deleted.
    #[serde(rename = "@removed", default, skip_serializing_if = "Option::is_none")]
    pub removed: Option<Removed>,
}

/// One `members@delta` entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeltaMember {
    pub id: String,
    #[serde(
        rename = "@odata.type",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub odata_type: Option<String>,
    #[serde(rename = "@removed", default, skip_serializing_if = "Option::is_none")]
    pub removed: Option<Removed>,
}

/// `@removed: {"reason": "changed" | "deleted"}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Removed {
    #[serde(default)]
    pub reason: Option<String>,
}

/// `appRoleAssignment` as listed by `appRoleAssignedTo`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppRoleAssignment {
    #[serde(default)]
    pub id: Option<String>,
    pub app_role_id: String,
    pub principal_id: String,
    #[serde(default)]
    pub principal_type: Option<String>,
    #[serde(default)]
    pub principal_display_name: Option<String>,
    #[serde(default)]
    pub resource_id: Option<String>,
    #[serde(default)]
    pub resource_display_name: Option<String>,
}

/// `unifiedRoleAssignment` or `unifiedRoleEligibilitySchedule`, the fields verification
/// selects: who holds which role definition at which directory scope.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DirectoryRoleHolder {
    #[serde(default)]
    pub id: Option<String>,
    pub principal_id: String,
    #[serde(default)]
    pub role_definition_id: Option<String>,
    /// `/` for the whole directory, `/administrativeUnits/{id}` or an object id otherwise.
    #[serde(default)]
    pub directory_scope_id: Option<String>,
}

/// A `privilegedAccessGroupEligibilitySchedule` (PIM for Groups), with the fields Redeliver
/// reads: who may activate which relationship to which group, and until when.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupEligibilitySchedule {
    #[serde(default)]
    pub id: Option<String>,
    pub principal_id: String,
    #[serde(default)]
    pub group_id: Option<String>,
    /// `member` or `owner`.
    #[serde(default)]
    pub access_id: Option<String>,
    #[serde(default)]
    pub schedule_info: Option<ScheduleInfo>,
}

impl GroupEligibilitySchedule {
    /// When the eligibility ends, if its schedule says (`scheduleInfo.expiration
    /// .endDateTime`); `None` for one without an end (`noExpiration`) or a malformed date.
    pub fn end(&self) -> Option<jiff::Timestamp> {
        self.schedule_info
            .as_ref()?
            .expiration
            .as_ref()?
            .end_date_time
            .as_deref()?
            .parse()
            .ok()
    }
}

/// Graph's `requestSchedule`: when a PIM schedule starts and how it expires.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleInfo {
    #[serde(default)]
    pub start_date_time: Option<String>,
    #[serde(default)]
    pub expiration: Option<ScheduleExpiration>,
}

/// Graph's `expirationPattern`: `noExpiration`, `afterDateTime` (with `endDateTime`) or
/// `afterDuration`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleExpiration {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub end_date_time: Option<String>,
}

/// One page of an Azure Resource Manager collection: `{"value": [...], "nextLink": ...}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArmPage<T> {
    #[serde(default = "Vec::new")]
    pub value: Vec<T>,
    /// Absolute URL of the next page (ARM spells it without `@odata.`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_link: Option<String>,
}

/// An ARM `roleAssignment` or `roleEligibilityScheduleInstance`, the fields verification
/// reads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArmRoleHolder {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub properties: ArmRoleHolderProperties,
}

/// `properties` of an [`ArmRoleHolder`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArmRoleHolderProperties {
    /// `/subscriptions/{id}/providers/Microsoft.Authorization/roleDefinitions/{guid}`.
    #[serde(default)]
    pub role_definition_id: String,
    #[serde(default)]
    pub principal_id: String,
    /// Where the role is assigned (the listing's scope or one above it).
    #[serde(default)]
    pub scope: String,
}

/// Graph's error envelope (docs/graph.md "Errors"): `{"error": {"code", "message", "innerError"}}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

/// The inside of [`ErrorEnvelope`]. Branch on `code` only, never on `message`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inner_error: Option<serde_json::Value>,
}

/// The Entra token endpoint's success body (docs/graph.md "Authentication"). `Debug` leaves
/// the token out.
#[derive(Clone, Serialize, Deserialize)]
pub struct TokenResponse {
    #[serde(default)]
    pub token_type: Option<String>,
    /// Seconds. Entra v2 sends a number; older endpoints and some emulators send a string.
    #[serde(deserialize_with = "number_or_string")]
    pub expires_in: u64,
    pub access_token: String,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("access_token", &"<redacted>")
            .finish()
    }
}

fn number_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Number(n) => Ok(n),
        Raw::Text(t) => t.trim().parse().map_err(serde::de::Error::custom),
    }
}

/// The Entra token endpoint's error body. Safe to log: carries no secret.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TokenErrorResponse {
    #[serde(default)]
    pub error: String,
    #[serde(default)]
    pub error_description: Option<String>,
    #[serde(default)]
    pub error_codes: Option<Vec<i64>>,
    #[serde(default)]
    pub correlation_id: Option<String>,
    #[serde(default)]
    pub trace_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_documented_assignment_and_tolerates_unknowns() {
        let json = r#"{
          "id": "5b1e8f4a-0c6e-4b39-9d8e-2d0f5b7c9a11", "state": "delivered", "status": "Delivered",
          "expiredDateTime": null, "somethingNew": 1,
          "schedule": {"startDateTime": "2025-03-01T08:00:00Z", "recurrence": null,
                       "expiration": {"endDateTime": null, "duration": null, "type": "noExpiration"}},
          "accessPackage": {"id": "p1", "displayName": "Finance Analysts", "isHidden": false},
          "target": {"id": "s1", "objectId": "u1", "principalName": "alice@contoso.com", "subjectType": "user"}
        }"#;
        let a: Assignment = serde_json::from_str(json).unwrap();
        assert_eq!(a.state, AssignmentState::Delivered);
        assert_eq!(a.target.unwrap().object_id.as_deref(), Some("u1"));
        let s: AssignmentState = serde_json::from_str("\"somethingElse\"").unwrap();
        assert_eq!(s, AssignmentState::Unknown);
    }

    #[test]
    fn token_lifetime_accepts_number_or_string() {
        let t: TokenResponse =
            serde_json::from_str(r#"{"token_type":"Bearer","expires_in":3599,"access_token":"a"}"#)
                .unwrap();
        assert_eq!(t.expires_in, 3599);
        let t: TokenResponse = serde_json::from_str(
            r#"{"expires_in":"3599","ext_expires_in":"3599","access_token":"a"}"#,
        )
        .unwrap();
        assert_eq!(t.expires_in, 3599);
        assert!(
            serde_json::from_str::<TokenResponse>(r#"{"expires_in":"soon","access_token":"a"}"#)
                .is_err()
        );
    }
}

/// One entry of the directory audit log (`GET /auditLogs/directoryAudits`), reduced to
/// what drift attribution reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DirectoryAudit {
    /// The entry's id.
    #[serde(default)]
    pub id: String,
    /// When the change was made.
    #[serde(default)]
    pub activity_date_time: Option<Timestamp>,
    /// What was done, e.g. "Remove member from group".
    #[serde(default)]
    pub activity_display_name: String,
    /// `success`, `failure`, ...
    #[serde(default)]
    pub result: Option<String>,
    /// Who did it.
    #[serde(default)]
    pub initiated_by: AuditInitiator,
    /// What it was done to: for a membership change the user and the group; for an app role
    /// change the service principal and the user.
    #[serde(default)]
    pub target_resources: Vec<AuditTarget>,
}

/// `auditActivityInitiator`: a user or an app (one of them is set).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditInitiator {
    /// The user who made the change.
    #[serde(default)]
    pub user: Option<AuditUser>,
    /// The application that made the change.
    #[serde(default)]
    pub app: Option<AuditApp>,
}

/// `userIdentity` in an audit entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditUser {
    /// Object id.
    #[serde(default)]
    pub id: Option<String>,
    /// Display name.
    #[serde(default)]
    pub display_name: Option<String>,
    /// UPN.
    #[serde(default)]
    pub user_principal_name: Option<String>,
}

/// `appIdentity` in an audit entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditApp {
    /// Application (client) id.
    #[serde(default)]
    pub app_id: Option<String>,
    /// Display name.
    #[serde(default)]
    pub display_name: Option<String>,
}

/// `targetResource` in an audit entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditTarget {
    /// Object id.
    #[serde(default)]
    pub id: Option<String>,
    /// `User`, `Group`, `ServicePrincipal`, ...
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Display name.
    #[serde(default)]
    pub display_name: Option<String>,
    /// Changed attributes (e.g. `AppRole.Id` of an app role change).
    #[serde(default)]
    pub modified_properties: Vec<AuditModifiedProperty>,
}

/// `modifiedProperty` in an audit entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditModifiedProperty {
    /// Attribute name, e.g. `AppRole.Id`.
    #[serde(default)]
    pub display_name: Option<String>,
    /// Old value (JSON text).
    #[serde(default)]
    pub old_value: Option<String>,
    /// New value (JSON text).
    #[serde(default)]
    pub new_value: Option<String>,
}
