//! The closed and open vocabularies of `status.resources[]`: where a resource lives
//! (`originSystem`), what kind of role it is (`kind`) and how it is granted (`mode`). The
//! engine decides over these types and status stores them as they are, so no text is
//! compared or spelled twice.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

/// A resource's `originSystem`: where entitlement management delivers it. Graph may add
/// systems, so the set stays open ([`OriginSystem::Other`]) and text round-trips exactly.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum OriginSystem {
    /// Entra groups (membership or ownership).
    AadGroup,
    /// Applications: app role assignments on a service principal.
    AadApplication,
    /// SharePoint Online sites.
    SharePointOnline,
    /// Microsoft Entra roles (directory roles), granted eligible or active.
    DirectoryRole,
    /// Azure roles (Azure RBAC) on a management group, subscription or resource group.
    AzureResources,
    /// Graph sent no `originSystem`.
    #[default]
    Missing,
    /// A system Redeliver does not know, kept as Graph spelled it.
    Other(String),
}

impl OriginSystem {
    /// Reads Graph's text (trimmed; empty means [`OriginSystem::Missing`]).
    pub fn parse(text: &str) -> Self {
        match text.trim() {
            "AadGroup" => Self::AadGroup,
            "AadApplication" => Self::AadApplication,
            "SharePointOnline" => Self::SharePointOnline,
            "DirectoryRole" => Self::DirectoryRole,
            "AzureResources" => Self::AzureResources,
            "" => Self::Missing,
            other => Self::Other(other.to_string()),
        }
    }

    /// The wire text, as Graph and `status.resources[].originSystem` spell it.
    pub fn as_str(&self) -> &str {
        match self {
            Self::AadGroup => "AadGroup",
            Self::AadApplication => "AadApplication",
            Self::SharePointOnline => "SharePointOnline",
            Self::DirectoryRole => "DirectoryRole",
            Self::AzureResources => "AzureResources",
            Self::Missing => "",
            Self::Other(text) => text,
        }
    }
}

// Ordered by wire text, so status lists resources in the same order whatever the enum's
// variant order.
impl Ord for OriginSystem {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl PartialOrd for OriginSystem {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq<OriginSystem> for String {
    fn eq(&self, other: &OriginSystem) -> bool {
        self == other.as_str()
    }
}

/// For a role or a group eligibility, how it is granted: Eligible (the user may activate
/// it) or Active.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum RoleMode {
    /// An active role assignment.
    Active,
    /// A role eligibility.
    Eligible,
}

impl RoleMode {
    /// Reads entitlement management's role `originId` (`Eligible` / `Active`).
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim() {
            t if t.eq_ignore_ascii_case("Eligible") => Some(Self::Eligible),
            t if t.eq_ignore_ascii_case("Active") => Some(Self::Active),
            _ => None,
        }
    }

    /// `Eligible` or `Active`, as status spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "Active",
            Self::Eligible => "Eligible",
        }
    }
}

// Status stores the wire text; any text is accepted back (Graph may add systems).
impl Serialize for OriginSystem {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for OriginSystem {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Cow::<str>::deserialize(deserializer)?;
        Ok(Self::parse(&text))
    }
}

// A plain string in the CRD: an `enum` there would make the API server refuse a status
// naming a system Graph added after this release.
impl JsonSchema for OriginSystem {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "OriginSystem".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        String::json_schema(generator)
    }
}

impl std::fmt::Display for OriginSystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl std::fmt::Display for RoleMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// For a role, what kind it is: EntraRole (a Microsoft Entra directory role),
/// AzureRole (an Azure RBAC role) or GroupEligible (an eligible group membership or
/// ownership, governed by Privileged Identity Management for Groups).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    JsonSchema,
    strum::IntoStaticStr,
    strum::Display,
)]
pub enum RoleKind {
    /// A Microsoft Entra role (directory role).
    EntraRole,
    /// An Azure role (Azure RBAC) at a scope.
    AzureRole,
    /// An eligible group membership or ownership, governed by Privileged Identity Management
    /// for Groups.
    GroupEligible,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_text_round_trips_whatever_graph_sends() {
        for text in ["AadGroup", "AzureResources", "", "SomethingNew"] {
            let system: OriginSystem = serde_json::from_value(serde_json::json!(text)).unwrap();
            assert_eq!(
                serde_json::to_value(&system).unwrap(),
                serde_json::json!(text)
            );
        }
        assert_eq!(
            serde_json::from_value::<OriginSystem>(serde_json::json!("SomethingNew")).unwrap(),
            OriginSystem::Other("SomethingNew".into())
        );
    }

    #[test]
    fn kind_and_mode_are_spelled_as_status_always_spelled_them() {
        assert_eq!(
            serde_json::to_value(RoleKind::GroupEligible).unwrap(),
            "GroupEligible"
        );
        assert_eq!(
            serde_json::to_value(RoleMode::Eligible).unwrap(),
            "Eligible"
        );
        assert_eq!(RoleKind::EntraRole.to_string(), "EntraRole");
        assert!(serde_json::from_value::<RoleMode>(serde_json::json!("Sometimes")).is_err());
    }
}
