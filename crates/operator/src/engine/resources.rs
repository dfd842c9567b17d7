//! What a package promises: decoding `resourceRoleScopes` into things Redeliver can check.

use crate::domain::models::ResourceRoleScope;

pub use crate::api::{OriginSystem, RoleKind, RoleMode};

/// Which relationship to a group a PIM-for-Groups eligibility lets the user activate:
/// Graph's `privilegedAccessGroupRelationships` (`accessId`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GroupAccess {
    /// Eligible membership (`accessId eq 'member'`).
    Member,
    /// Eligible ownership (`accessId eq 'owner'`).
    Owner,
}

impl GroupAccess {
    /// `Member` or `Owner`, as status spells the role.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Member => "Member",
            Self::Owner => "Owner",
        }
    }

    /// `member` or `owner`: Graph's `accessId`.
    pub fn access_id(self) -> &'static str {
        match self {
            Self::Member => "member",
            Self::Owner => "owner",
        }
    }
}

/// The Entra directory scope of a role granted through an access package: the whole
/// directory (entitlement management offers only the root scope for Entra roles).
pub const DIRECTORY_ROOT: &str = "/";

/// How a promised resource is verified.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceKind {
    /// Direct membership of a group.
    GroupMember { group_id: String },
    /// Ownership of a group.
    GroupOwner { group_id: String },
    /// An eligibility for membership or ownership of a group governed by Privileged
    /// Identity Management for Groups: the user may activate it just in time.
    GroupEligible {
        group_id: String,
        access: GroupAccess,
    },
    /// An app role assignment on a service principal.
    AppRole {
        service_principal_id: String,
        app_role_id: String,
    },
    /// A Microsoft Entra role (`DirectoryRole`): the role definition at a directory scope,
    /// eligible or active.
    EntraRole {
        role_definition_id: String,
        directory_scope_id: String,
        mode: RoleMode,
    },
    /// An Azure role (`AzureResources`): a role definition at an Azure scope, eligible or
    /// active.
    AzureRole {
        /// The role definition's GUID, lower-cased: the last segment of its id, the same
        /// whichever scope the id is written under.
        role_definition_guid: String,
        /// `/subscriptions/{id}[/resourceGroups/{name}]` or a management group, as Graph
        /// gave it.
        scope: String,
        mode: RoleMode,
    },
    /// Not checkable through Graph directory APIs (SharePoint sites, custom resources, or a
    /// role/scope Redeliver could not decode). Never blocks Delivered, never triggers a reprocess.
    Unverifiable,
}

/// One resource role a package grants, decoded.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PromisedResource {
    /// Where entitlement management delivers it.
    pub origin_system: OriginSystem,
    /// The scope's `originId`: group id, service principal id, site URL.
    pub origin_id: String,
    /// Display name of the scope (falls back to the origin id).
    pub display_name: String,
    /// Display name of the role, e.g. `Member` (may be empty).
    pub role: String,
    /// How to verify it.
    pub kind: ResourceKind,
    /// Why it is unverifiable, when it is.
    pub note: Option<String>,
}

impl PromisedResource {
    /// `fin-writers (Member)`, `EntraRole Global Reader (Eligible, /)`: how the resource
    /// is named in messages and events.
    pub fn label(&self) -> String {
        if let (Some(kind), Some(mode), Some(scope)) = (self.role_kind(), self.mode(), self.scope())
        {
            return format!("{kind} {} ({}, {scope})", self.display_name, mode.as_str());
        }
        if let Some(kind) = self.role_kind() {
            return format!("{kind} {} ({})", self.display_name, self.role);
        }
        if self.role.is_empty() {
            self.display_name.clone()
        } else {
            format!("{} ({})", self.display_name, self.role)
        }
    }

    /// How a report names the resource in a list of missing ones: a group or app by its
    /// name (`fin-writers`), a role with its kind, mode and scope, since the role's name
    /// alone does not say what was lost.
    pub fn short_name(&self) -> String {
        if self.role_kind().is_some() {
            self.label()
        } else {
            self.display_name.clone()
        }
    }

    /// The kind status names for a role resource (`EntraRole`) or a group eligibility
    /// (`GroupEligible`); `None` for plain group roles and apps, whose origin system already
    /// says what they are.
    pub fn role_kind(&self) -> Option<RoleKind> {
        match self.kind {
            ResourceKind::GroupEligible { .. } => Some(RoleKind::GroupEligible),
            ResourceKind::EntraRole { .. } => Some(RoleKind::EntraRole),
            ResourceKind::AzureRole { .. } => Some(RoleKind::AzureRole),
            _ => None,
        }
    }

    /// Whether a role is promised eligible or active.
    pub fn mode(&self) -> Option<RoleMode> {
        match self.kind {
            ResourceKind::EntraRole { mode, .. } | ResourceKind::AzureRole { mode, .. } => {
                Some(mode)
            }
            ResourceKind::GroupEligible { .. } => Some(RoleMode::Eligible),
            _ => None,
        }
    }

    /// Where a role is promised: a directory scope (`/`).
    pub fn scope(&self) -> Option<&str> {
        match &self.kind {
            ResourceKind::EntraRole {
                directory_scope_id, ..
            } => Some(directory_scope_id),
            ResourceKind::AzureRole { scope, .. } => Some(scope),
            _ => None,
        }
    }

    /// Whether the resource can be checked at all.
    pub fn is_verifiable(&self) -> bool {
        self.kind != ResourceKind::Unverifiable
    }
}

fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// Decodes a package's `resourceRoleScopes` (expanded with `role` and `scope`). Never fails:
/// anything malformed becomes [`ResourceKind::Unverifiable`] with a note. The result is sorted
/// and free of duplicates, so the same package always yields the same list.
pub fn promised_resources(scopes: &[ResourceRoleScope]) -> Vec<PromisedResource> {
    let mut out: Vec<PromisedResource> = scopes.iter().map(decode).collect();
    out.sort_by(|a, b| {
        (
            &a.origin_system,
            &a.display_name,
            &a.origin_id,
            &a.role,
            &a.kind,
        )
            .cmp(&(
                &b.origin_system,
                &b.display_name,
                &b.origin_id,
                &b.role,
                &b.kind,
            ))
    });
    out.dedup();
    out
}

fn decode(rrs: &ResourceRoleScope) -> PromisedResource {
    let resource = undecoded(rrs);
    if rrs.role.is_none() || rrs.scope.is_none() {
        return unverifiable(
            resource,
            format!(
                "resourceRoleScope {} came without its role or scope expanded; cannot verify",
                rrs.id
            ),
        );
    }
    let origin_system = resource.origin_system.clone();
    match &origin_system {
        OriginSystem::AadGroup => decode_group_role(rrs, resource),
        OriginSystem::AadApplication => decode_app_role(rrs, resource),
        OriginSystem::DirectoryRole => decode_directory_role(rrs, resource),
        OriginSystem::AzureResources => decode_azure_role(rrs, resource),
        OriginSystem::Missing => unverifiable(
            resource,
            "resource has no originSystem; cannot verify".into(),
        ),
        other @ (OriginSystem::SharePointOnline | OriginSystem::Other(_)) => unverifiable(
            resource,
            format!(
                "{} resources cannot be verified through Graph directory APIs",
                other.as_str()
            ),
        ),
    }
}

/// What every resource carries whatever its kind (origin, names), the kind still
/// [`ResourceKind::Unverifiable`] for the decoder of its origin system to settle.
fn undecoded(rrs: &ResourceRoleScope) -> PromisedResource {
    let role = rrs.role.as_ref();
    let scope = rrs.scope.as_ref();
    let origin_system = OriginSystem::parse(
        scope
            .and_then(|s| non_empty(&s.origin_system))
            .or_else(|| role.and_then(|r| non_empty(&r.origin_system)))
            .unwrap_or_default(),
    );
    let scope_origin = scope.and_then(|s| non_empty(&s.origin_id));
    let role_origin = role.and_then(|r| non_empty(&r.origin_id));
    let role_name = role
        .and_then(|r| non_empty(&r.display_name))
        .unwrap_or_default()
        .to_string();
    let origin_id = scope_origin.or(role_origin).unwrap_or_default().to_string();
    // The role's expanded resource names the group, app or site; a root scope may only be
    // called "Root" (Microsoft's resourceRoleScope examples spell it so for groups too).
    let display_name = role
        .and_then(|r| r.resource.as_ref())
        .and_then(|r| non_empty(&r.display_name))
        .or_else(|| scope.and_then(|s| non_empty(&s.display_name)))
        .map(str::to_string)
        .unwrap_or_else(|| {
            if origin_id.is_empty() {
                format!("resourceRoleScope {}", rrs.id)
            } else {
                origin_id.clone()
            }
        });
    PromisedResource {
        origin_system,
        origin_id,
        display_name,
        role: role_name,
        kind: ResourceKind::Unverifiable,
        note: None,
    }
}

/// The resource, marked as one Redeliver cannot check, with the reason.
fn unverifiable(mut resource: PromisedResource, note: String) -> PromisedResource {
    resource.kind = ResourceKind::Unverifiable;
    resource.note = Some(note);
    resource
}

/// A group role as its `originId` spells it.
enum GroupRole {
    Member,
    Owner,
    /// A PIM for Groups eligibility.
    Eligible(GroupAccess),
}

/// `Member_<group>`, `Owner_<group>`, `EligibleMember_<group>` or `EligibleOwner_<group>`,
/// with a non-empty group id.
fn parse_group_role(role_origin: &str) -> Option<(GroupRole, &str)> {
    // `EligibleMember_`/`EligibleOwner_` are PIM for Groups eligibilities
    // (docs/graph.md "What a package promises"); checked before the plain prefixes
    // for clarity, though neither plain prefix is a prefix of them.
    role_origin
        .strip_prefix("EligibleMember_")
        .map(|g| (GroupRole::Eligible(GroupAccess::Member), g))
        .or_else(|| {
            role_origin
                .strip_prefix("EligibleOwner_")
                .map(|g| (GroupRole::Eligible(GroupAccess::Owner), g))
        })
        .or_else(|| {
            role_origin
                .strip_prefix("Member_")
                .map(|g| (GroupRole::Member, g))
        })
        .or_else(|| {
            role_origin
                .strip_prefix("Owner_")
                .map(|g| (GroupRole::Owner, g))
        })
        .filter(|(_, group)| !group.is_empty())
}

/// A group membership, ownership or PIM eligibility: the group id is in the role's
/// `originId` and must agree with the scope's.
fn decode_group_role(rrs: &ResourceRoleScope, mut resource: PromisedResource) -> PromisedResource {
    let scope_origin = rrs.scope.as_ref().and_then(|s| non_empty(&s.origin_id));
    let Some(role_origin) = rrs.role.as_ref().and_then(|r| non_empty(&r.origin_id)) else {
        return unverifiable(resource, "group role has no originId; cannot verify".into());
    };
    let Some((group_role, group)) = parse_group_role(role_origin) else {
        return unverifiable(
            resource,
            format!(
                "group role originId {role_origin:?} is none of Member_<group id>, Owner_<group id>, EligibleMember_<group id> or EligibleOwner_<group id>; cannot verify"
            ),
        );
    };
    let group_id = group.to_string();
    if let Some(scope_group) = scope_origin
        && scope_group != group_id
    {
        return unverifiable(
            resource,
            format!(
                "group role {role_origin} does not match scope group {scope_group}; cannot verify"
            ),
        );
    }
    if resource.origin_id.is_empty() {
        resource.origin_id = group_id.clone();
    }
    let plain_role = |resource: &mut PromisedResource, name: &str| {
        if resource.role.is_empty() {
            resource.role = name.to_string();
        }
    };
    resource.kind = match group_role {
        GroupRole::Eligible(access) => {
            // Status names the relationship (`GroupEligible fin-admins
            // (Member)`); Graph's role name says "Eligible Member".
            resource.role = access.as_str().to_string();
            ResourceKind::GroupEligible { group_id, access }
        }
        GroupRole::Member => {
            plain_role(&mut resource, "Member");
            ResourceKind::GroupMember { group_id }
        }
        GroupRole::Owner => {
            plain_role(&mut resource, "Owner");
            ResourceKind::GroupOwner { group_id }
        }
    };
    resource
}

/// An app role: the service principal is the scope's `originId`, the app role id the
/// role's.
fn decode_app_role(rrs: &ResourceRoleScope, mut resource: PromisedResource) -> PromisedResource {
    let scope_origin = rrs.scope.as_ref().and_then(|s| non_empty(&s.origin_id));
    let role_origin = rrs.role.as_ref().and_then(|r| non_empty(&r.origin_id));
    match (scope_origin, role_origin) {
        (Some(sp), Some(app_role)) => {
            resource.kind = ResourceKind::AppRole {
                service_principal_id: sp.to_string(),
                app_role_id: app_role.to_string(),
            };
            resource
        }
        _ => unverifiable(
            resource,
            "application scope or role has no originId (service principal id / app role id); cannot verify".into(),
        ),
    }
}

/// A Microsoft Entra role: role `originId` `Eligible`/`Active`, the role definition id as
/// the role's resource `originId` (the scope's when the resource is not expanded), the
/// root scope (docs/graph.md "Microsoft Entra roles").
fn decode_directory_role(
    rrs: &ResourceRoleScope,
    mut resource: PromisedResource,
) -> PromisedResource {
    let role = rrs.role.as_ref();
    let scope = rrs.scope.as_ref();
    let role_origin = role
        .and_then(|r| non_empty(&r.origin_id))
        .unwrap_or_default();
    let Some(mode) = RoleMode::parse(role_origin) else {
        return unverifiable(
            resource,
            format!(
                "Entra role originId {role_origin:?} is neither Eligible nor Active; cannot verify"
            ),
        );
    };
    let role_resource = role.and_then(|r| r.resource.as_ref());
    let Some(role_definition_id) = role_resource
        .and_then(|r| non_empty(&r.origin_id))
        .or_else(|| scope.and_then(|s| non_empty(&s.origin_id)))
        .map(str::to_string)
    else {
        return unverifiable(
            resource,
            "Entra role has no role definition id (resource or scope originId); cannot verify"
                .into(),
        );
    };
    if scope.and_then(|s| s.is_root_scope) == Some(false) {
        return unverifiable(
            resource,
            format!(
                "Entra role {role_definition_id} is granted at a scope other than the directory root; Redeliver verifies Entra roles at the root scope only"
            ),
        );
    }
    // The scope of an Entra role is named "Root": the role's name is on its resource.
    resource.display_name = role_resource
        .and_then(|r| non_empty(&r.display_name))
        .unwrap_or(&role_definition_id)
        .to_string();
    resource.origin_id = role_definition_id.clone();
    if resource.role.is_empty() {
        resource.role = format!("{} Member", mode.as_str());
    }
    resource.kind = ResourceKind::EntraRole {
        role_definition_id,
        directory_scope_id: DIRECTORY_ROOT.to_string(),
        mode,
    };
    resource
}

/// An Azure role: the role definition's full id as role `originId`, `active`/`eligible`
/// as role `type`, the Azure scope as scope `originId` (docs/graph.md "Azure roles").
fn decode_azure_role(rrs: &ResourceRoleScope, mut resource: PromisedResource) -> PromisedResource {
    let role = rrs.role.as_ref();
    let role_origin = role
        .and_then(|r| non_empty(&r.origin_id))
        .unwrap_or_default();
    let guid = role_origin
        .to_ascii_lowercase()
        .split_once("/providers/microsoft.authorization/roledefinitions/")
        .map(|(_, guid)| guid.trim_end_matches('/').to_string())
        .filter(|g| !g.is_empty() && !g.contains('/'));
    let Some(role_definition_guid) = guid else {
        return unverifiable(
            resource,
            format!(
                "Azure role originId {role_origin:?} is not a role definition id (.../providers/Microsoft.Authorization/roleDefinitions/<guid>); cannot verify"
            ),
        );
    };
    let role_type = role
        .and_then(|r| non_empty(&r.role_type))
        .unwrap_or_default();
    let Some(mode) = RoleMode::parse(role_type) else {
        return unverifiable(
            resource,
            format!("Azure role type {role_type:?} is neither active nor eligible; cannot verify"),
        );
    };
    let Some(scope) = rrs
        .scope
        .as_ref()
        .and_then(|s| non_empty(&s.origin_id))
        .filter(|s| s.starts_with('/'))
        .map(|s| s.trim_end_matches('/').to_string())
    else {
        return unverifiable(
            resource,
            "Azure role scope has no originId (/subscriptions/...); cannot verify".into(),
        );
    };
    // Named by the role ("Contributor"); the scope says where.
    if let Some(name) = role.and_then(|r| non_empty(&r.display_name)) {
        resource.display_name = name.to_string();
    }
    resource.origin_id = scope.clone();
    resource.kind = ResourceKind::AzureRole {
        role_definition_guid,
        scope,
        mode,
    };
    resource
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::models::{ResourceRole, ResourceScope};

    fn rrs(
        id: &str,
        system: &str,
        scope_origin: &str,
        scope_name: &str,
        role_origin: &str,
        role_name: &str,
    ) -> ResourceRoleScope {
        ResourceRoleScope {
            id: id.into(),
            role: Some(ResourceRole {
                id: Some(format!("r-{id}")),
                display_name: Some(role_name.into()),
                origin_id: Some(role_origin.into()),
                origin_system: Some(system.into()),
                ..Default::default()
            }),
            scope: Some(ResourceScope {
                id: Some(format!("s-{id}")),
                display_name: Some(scope_name.into()),
                origin_id: Some(scope_origin.into()),
                origin_system: Some(system.into()),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn decodes_group_member_and_owner() {
        let r = promised_resources(&[
            rrs("1", "AadGroup", "g1", "fin-readers", "Member_g1", "Member"),
            rrs("2", "AadGroup", "g2", "fin-admins", "Owner_g2", "Owner"),
        ]);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].display_name, "fin-admins");
        assert_eq!(
            r[0].kind,
            ResourceKind::GroupOwner {
                group_id: "g2".into()
            }
        );
        assert_eq!(
            r[1].kind,
            ResourceKind::GroupMember {
                group_id: "g1".into()
            }
        );
        assert_eq!(r[1].label(), "fin-readers (Member)");
        assert!(r[1].note.is_none());
    }

    #[test]
    fn decodes_pim_for_groups_eligibilities_and_names_them_with_their_relationship() {
        let r = promised_resources(&[
            rrs(
                "1",
                "AadGroup",
                "g1",
                "fin-admins",
                "EligibleMember_g1",
                "Eligible Member",
            ),
            rrs(
                "2",
                "AadGroup",
                "g1",
                "fin-admins",
                "EligibleOwner_g1",
                "Eligible Owner",
            ),
            rrs("3", "AadGroup", "g1", "fin-admins", "Member_g1", "Member"),
        ]);
        let kinds: Vec<&ResourceKind> = r.iter().map(|p| &p.kind).collect();
        let eligible = |access| ResourceKind::GroupEligible {
            group_id: "g1".into(),
            access,
        };
        assert!(kinds.contains(&&eligible(GroupAccess::Member)));
        assert!(kinds.contains(&&eligible(GroupAccess::Owner)));
        assert!(kinds.contains(&&ResourceKind::GroupMember {
            group_id: "g1".into()
        }));
        let labels: Vec<String> = r.iter().map(PromisedResource::label).collect();
        assert!(labels.contains(&"GroupEligible fin-admins (Member)".to_string()));
        assert!(labels.contains(&"GroupEligible fin-admins (Owner)".to_string()));
        assert!(labels.contains(&"fin-admins (Member)".to_string()));
        let member = r
            .iter()
            .find(|p| p.kind == eligible(GroupAccess::Member))
            .expect("decoded");
        assert_eq!(member.mode(), Some(RoleMode::Eligible));
        assert_eq!(member.role_kind(), Some(RoleKind::GroupEligible));
        assert_eq!(member.scope(), None);
    }

    #[test]
    fn an_eligibility_for_another_group_or_an_unknown_form_stays_unverifiable() {
        let r = promised_resources(&[
            rrs(
                "1",
                "AadGroup",
                "g1",
                "a",
                "EligibleMember_g2",
                "Eligible Member",
            ),
            rrs(
                "2",
                "AadGroup",
                "g3",
                "b",
                "EligibleAdmin_g3",
                "Eligible Admin",
            ),
        ]);
        assert!(r.iter().all(|p| p.kind == ResourceKind::Unverifiable));
        let notes: Vec<&str> = r.iter().filter_map(|p| p.note.as_deref()).collect();
        assert!(
            notes
                .iter()
                .any(|n| n.contains("does not match scope group g1"))
        );
        assert!(
            notes
                .iter()
                .any(|n| n.contains("EligibleMember_<group id>"))
        );
    }

    #[test]
    fn decodes_app_role() {
        let r = promised_resources(&[rrs(
            "1",
            "AadApplication",
            "sp1",
            "Payroll",
            "role-1",
            "Approver",
        )]);
        assert_eq!(
            r[0].kind,
            ResourceKind::AppRole {
                service_principal_id: "sp1".into(),
                app_role_id: "role-1".into()
            }
        );
        assert!(r[0].is_verifiable());
    }

    #[test]
    fn sharepoint_and_unknown_systems_are_unverifiable_with_note() {
        let r = promised_resources(&[
            rrs(
                "1",
                "SharePointOnline",
                "https://contoso.sharepoint.com/sites/x",
                "Site X",
                "4",
                "Visitors",
            ),
            rrs("2", "CustomThing", "c1", "Custom", "x", "y"),
        ]);
        assert!(r.iter().all(|p| p.kind == ResourceKind::Unverifiable));
        assert!(r.iter().all(|p| p.note.is_some()));
        assert!(r[1].note.as_deref().unwrap().contains("SharePointOnline"));
    }

    #[test]
    fn malformed_group_roles_are_unverifiable_not_panics() {
        let r = promised_resources(&[
            rrs("1", "AadGroup", "g1", "a", "Guest_g1", "Guest"),
            rrs("2", "AadGroup", "g2", "b", "Member_", "Member"),
            rrs("3", "AadGroup", "g3", "c", "Member_g4", "Member"),
            rrs("4", "AadGroup", "g5", "d", "", "Member"),
        ]);
        assert_eq!(r.len(), 4);
        for p in &r {
            assert_eq!(p.kind, ResourceKind::Unverifiable, "{p:?}");
            assert!(
                p.note.as_deref().unwrap().contains("cannot verify"),
                "{p:?}"
            );
        }
    }

    #[test]
    fn missing_role_or_scope_is_unverifiable() {
        let mut x = rrs("1", "AadGroup", "g1", "a", "Member_g1", "Member");
        x.role = None;
        let mut y = rrs("2", "AadApplication", "sp", "b", "", "Role");
        y.scope.as_mut().unwrap().origin_id = None;
        let r = promised_resources(&[x, y, ResourceRoleScope::default()]);
        assert_eq!(r.len(), 3);
        assert!(r.iter().all(|p| !p.is_verifiable()));
    }

    #[test]
    fn sorted_and_deduplicated() {
        let a = rrs("1", "AadGroup", "g1", "zeta", "Member_g1", "Member");
        let b = rrs("2", "AadGroup", "g2", "alpha", "Member_g2", "Member");
        let r1 = promised_resources(&[a.clone(), b.clone(), a.clone()]);
        let r2 = promised_resources(&[b, a]);
        assert_eq!(r1, r2);
        assert_eq!(r1.len(), 2);
        assert_eq!(r1[0].display_name, "alpha");
    }

    fn entra_role(id: &str, mode: &str, role_def: &str, name: Option<&str>) -> ResourceRoleScope {
        let mut x = rrs(
            id,
            "DirectoryRole",
            role_def,
            "Root",
            mode,
            &format!("{mode} Member"),
        );
        x.scope.as_mut().unwrap().is_root_scope = Some(true);
        x.role.as_mut().unwrap().resource = name.map(|n| crate::domain::models::ResourceRef {
            id: Some(format!("res-{id}")),
            display_name: Some(n.into()),
            origin_id: Some(role_def.into()),
            origin_system: Some("DirectoryRole".into()),
        });
        x
    }

    #[test]
    fn decodes_entra_roles_eligible_and_active() {
        let r = promised_resources(&[
            entra_role(
                "1",
                "Eligible",
                "f2ef992c-3afb-46b9-b7cf-a126ee74c451",
                Some("Global Reader"),
            ),
            entra_role(
                "2",
                "Active",
                "f2ef992c-3afb-46b9-b7cf-a126ee74c451",
                Some("Global Reader"),
            ),
        ]);
        assert_eq!(r.len(), 2);
        let eligible = r
            .iter()
            .find(|p| p.mode() == Some(RoleMode::Eligible))
            .unwrap();
        assert_eq!(
            eligible.kind,
            ResourceKind::EntraRole {
                role_definition_id: "f2ef992c-3afb-46b9-b7cf-a126ee74c451".into(),
                directory_scope_id: "/".into(),
                mode: RoleMode::Eligible,
            }
        );
        assert_eq!(eligible.origin_system, OriginSystem::DirectoryRole);
        assert_eq!(eligible.origin_id, "f2ef992c-3afb-46b9-b7cf-a126ee74c451");
        assert_eq!(eligible.label(), "EntraRole Global Reader (Eligible, /)");
        assert_eq!(eligible.role_kind(), Some(RoleKind::EntraRole));
        let active = r
            .iter()
            .find(|p| p.mode() == Some(RoleMode::Active))
            .unwrap();
        assert_eq!(active.label(), "EntraRole Global Reader (Active, /)");
        assert!(active.is_verifiable());
    }

    #[test]
    fn entra_role_without_expanded_resource_uses_the_scope_origin() {
        let r = promised_resources(&[entra_role("1", "Eligible", "rd-1", None)]);
        assert_eq!(
            r[0].kind,
            ResourceKind::EntraRole {
                role_definition_id: "rd-1".into(),
                directory_scope_id: "/".into(),
                mode: RoleMode::Eligible,
            }
        );
        // "Root" names the scope, not the role: the id is the better name.
        assert_eq!(r[0].label(), "EntraRole rd-1 (Eligible, /)");
    }

    #[test]
    fn malformed_entra_roles_are_unverifiable_with_note() {
        let mut not_root = entra_role("3", "Active", "rd-3", Some("X"));
        not_root.scope.as_mut().unwrap().is_root_scope = Some(false);
        let mut no_id = entra_role("4", "Active", "", None);
        no_id.scope.as_mut().unwrap().origin_id = None;
        let r = promised_resources(&[
            entra_role("1", "Permanent", "rd-1", Some("A")),
            not_root,
            no_id,
        ]);
        assert_eq!(r.len(), 3);
        for p in &r {
            assert_eq!(p.kind, ResourceKind::Unverifiable, "{p:?}");
            assert!(p.note.as_deref().unwrap().contains("Entra role"), "{p:?}");
        }
    }

    fn azure_role(id: &str, role_def: &str, kind: &str, scope: &str) -> ResourceRoleScope {
        let mut x = rrs(
            id,
            "AzureResources",
            scope,
            "/resourceGroups/rg",
            role_def,
            "Contributor",
        );
        x.role.as_mut().unwrap().role_type = Some(kind.into());
        x
    }

    #[test]
    fn decodes_azure_roles_as_graph_spells_them() {
        let rg = "/subscriptions/828b526f-c769-4b19-9797-734b4843b978/resourceGroups/rg";
        let r = promised_resources(&[
            azure_role(
                "1",
                "/subscriptions/828b526f-c769-4b19-9797-734b4843b978/providers/Microsoft.Authorization/roleDefinitions/B24988AC-6180-42A0-AB88-20F7382DD24C",
                "active",
                rg,
            ),
            azure_role(
                "2",
                "/providers/Microsoft.Authorization/roleDefinitions/b24988ac-6180-42a0-ab88-20f7382dd24c",
                "eligible",
                "/providers/Microsoft.Management/managementGroups/mg1",
            ),
        ]);
        let active = r
            .iter()
            .find(|p| p.mode() == Some(RoleMode::Active))
            .unwrap();
        assert_eq!(
            active.kind,
            ResourceKind::AzureRole {
                role_definition_guid: "b24988ac-6180-42a0-ab88-20f7382dd24c".into(),
                scope: rg.into(),
                mode: RoleMode::Active,
            }
        );
        assert_eq!(
            active.label(),
            format!("AzureRole Contributor (Active, {rg})")
        );
        assert_eq!(active.origin_id, rg);
        let eligible = r
            .iter()
            .find(|p| p.mode() == Some(RoleMode::Eligible))
            .unwrap();
        assert_eq!(
            eligible.scope(),
            Some("/providers/Microsoft.Management/managementGroups/mg1")
        );
    }

    #[test]
    fn malformed_azure_roles_are_unverifiable_with_note() {
        let r = promised_resources(&[
            azure_role("1", "Contributor", "active", "/subscriptions/s"),
            azure_role(
                "2",
                "/providers/Microsoft.Authorization/roleDefinitions/g",
                "permanent",
                "/subscriptions/s",
            ),
            azure_role(
                "3",
                "/providers/Microsoft.Authorization/roleDefinitions/g",
                "active",
                "rg",
            ),
        ]);
        assert_eq!(r.len(), 3);
        for p in &r {
            assert_eq!(p.kind, ResourceKind::Unverifiable, "{p:?}");
            assert!(p.note.as_deref().unwrap().contains("Azure role"), "{p:?}");
        }
    }

    #[test]
    fn role_modes_parse_case_insensitively() {
        assert_eq!(RoleMode::parse(" eligible "), Some(RoleMode::Eligible));
        assert_eq!(RoleMode::parse("ACTIVE"), Some(RoleMode::Active));
        assert_eq!(RoleMode::parse("Member"), None);
        assert_eq!(
            OriginSystem::parse("DirectoryRole").as_str(),
            "DirectoryRole"
        );
    }

    #[test]
    fn a_root_scope_is_named_by_the_roles_resource() {
        let mut x = rrs("1", "AadGroup", "g1", "Root", "Member_g1", "Member");
        x.role.as_mut().unwrap().resource = Some(crate::domain::models::ResourceRef {
            display_name: Some("fin-readers".into()),
            origin_id: Some("g1".into()),
            ..Default::default()
        });
        let r = promised_resources(&[x]);
        assert_eq!(r[0].label(), "fin-readers (Member)");
    }

    #[test]
    fn missing_display_names_fall_back() {
        let mut x = rrs("1", "AadGroup", "g1", "", "Member_g1", "");
        x.scope.as_mut().unwrap().display_name = None;
        let r = promised_resources(&[x]);
        assert_eq!(r[0].display_name, "g1");
        assert_eq!(r[0].role, "Member");
    }
}
