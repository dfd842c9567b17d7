//! One observation of the directory: who is in which group, who owns which group, who holds
//! which app role. Read once per *resource* and shared by every assignment that promises it.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use super::resources::{GroupAccess, PromisedResource, ResourceKind, RoleMode};
use crate::api::ResourceState;

/// One read the observer has to make to fill a [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceRead {
    /// `GET /groups/{id}/members?$select=id`
    GroupMembers(String),
    /// `GET /groups/{id}/owners?$select=id`
    GroupOwners(String),
    /// `GET /servicePrincipals/{id}/appRoleAssignedTo`
    AppRoleAssignments(String),
    /// Everyone holding an Entra role definition, at any directory scope:
    /// `GET /roleManagement/directory/roleAssignments` (active) or
    /// `.../roleEligibilitySchedules` (eligible), `$filter=roleDefinitionId eq '{id}'`.
    DirectoryRoleHolders {
        role_definition_id: String,
        mode: RoleMode,
    },
    /// Everyone holding any Azure role at or above an Azure scope, from Azure Resource
    /// Manager: `GET {scope}/providers/Microsoft.Authorization/roleAssignments` (active) or
    /// `.../roleEligibilityScheduleInstances` (eligible), `$filter=atScope()`.
    AzureRoleHolders { scope: String, mode: RoleMode },
    /// Everyone eligible for a group's membership or ownership through PIM for Groups:
    /// `GET /identityGovernance/privilegedAccess/group/eligibilitySchedules`,
    /// `$filter=groupId eq '{id}' and accessId eq 'member'` (or `'owner'`).
    GroupEligibilities {
        group_id: String,
        access: GroupAccess,
    },
}

impl ResourceRead {
    /// The read that verifies `kind`, if any.
    pub fn for_kind(kind: &ResourceKind) -> Option<Self> {
        match kind {
            ResourceKind::GroupMember { group_id } => Some(Self::GroupMembers(group_id.clone())),
            ResourceKind::GroupOwner { group_id } => Some(Self::GroupOwners(group_id.clone())),
            ResourceKind::AppRole {
                service_principal_id,
                ..
            } => Some(Self::AppRoleAssignments(service_principal_id.clone())),
            // One read per role and mode: every scope and every target share it.
            ResourceKind::EntraRole {
                role_definition_id,
                mode,
                ..
            } => Some(Self::DirectoryRoleHolders {
                role_definition_id: role_definition_id.to_ascii_lowercase(),
                mode: *mode,
            }),
            // One read per scope and mode: every role and every target there share it.
            ResourceKind::AzureRole { scope, mode, .. } => Some(Self::AzureRoleHolders {
                scope: scope.clone(),
                mode: *mode,
            }),
            // One read per group and relationship: every target shares it.
            ResourceKind::GroupEligible { group_id, access } => Some(Self::GroupEligibilities {
                group_id: group_id.clone(),
                access: *access,
            }),
            ResourceKind::Unverifiable => None,
        }
    }
}

/// The reads needed to verify `resources` (each resource read once, in a stable order).
pub fn reads_needed<'a>(
    resources: impl IntoIterator<Item = &'a PromisedResource>,
) -> BTreeSet<ResourceRead> {
    resources
        .into_iter()
        .filter_map(|r| ResourceRead::for_kind(&r.kind))
        .collect()
}

/// Membership reads that must have been made after `since` (a cached copy started
/// earlier is read again); every other read may come from the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreshAfter {
    /// The moment, e.g. when a reprocess was sent.
    pub since: jiff::Timestamp,
    /// The reads it applies to.
    pub reads: BTreeSet<ResourceRead>,
}

impl FreshAfter {
    /// Both demands at once: every read either names, made after the later moment (a read
    /// after the later moment is after the earlier one too).
    pub fn merge(a: Option<FreshAfter>, b: Option<FreshAfter>) -> Option<FreshAfter> {
        match (a, b) {
            (Some(mut a), Some(b)) => {
                a.since = a.since.max(b.since);
                a.reads.extend(b.reads);
                Some(a)
            }
            (a, b) => a.or(b),
        }
    }
}

/// What one [`ResourceRead`] returned. Shared, not copied: a controller puts the same
/// read of a group into the snapshot of every object that promises it, and a large
/// group's members are thousands of ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadData {
    /// Member or owner object ids ([`ResourceRead::GroupMembers`], [`ResourceRead::GroupOwners`]).
    Ids(Arc<BTreeSet<String>>),
    /// (principalId, appRoleId) pairs ([`ResourceRead::AppRoleAssignments`]);
    /// (principalId, directoryScopeId) pairs ([`ResourceRead::DirectoryRoleHolders`]);
    /// (principalId, [`azure_holding`]) pairs
    /// ([`ResourceRead::AzureRoleHolders`]); (principalId, [`ELIGIBILITY_IN_EFFECT`] or
    /// [`eligibility_ended`]) pairs ([`ResourceRead::GroupEligibilities`]).
    Pairs(Arc<BTreeSet<(String, String)>>),
}

/// How an Azure role holding is keyed in [`ReadData::Pairs`]: the role definition GUID
/// and the scope it is assigned at, lower-cased.
pub fn azure_holding(role_definition_guid: &str, scope: &str) -> String {
    format!(
        "{} {}",
        role_definition_guid.to_ascii_lowercase(),
        scope.trim_end_matches('/').to_ascii_lowercase()
    )
}

/// How a PIM-for-Groups eligibility in effect is keyed in [`ReadData::Pairs`].
pub const ELIGIBILITY_IN_EFFECT: &str = "in effect";

/// How an eligibility whose end date has passed is keyed in [`ReadData::Pairs`]: the
/// moment it ended, as Graph gave it. Such an eligibility was ended by its own schedule
/// (PIM's maximum duration or the package's expiry), not removed by anyone: not drift.
pub fn eligibility_ended(end: &str) -> String {
    format!("ended {end}")
}

/// Shared (id, id) pairs: (principalId, appRoleId) or (principalId, scope).
pub type Pairs = Arc<BTreeSet<(String, String)>>;

/// Pure data: the result of the reads in [`reads_needed`], or why one failed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// group id → direct member object ids.
    pub group_members: BTreeMap<String, Arc<BTreeSet<String>>>,
    /// group id → owner object ids.
    pub group_owners: BTreeMap<String, Arc<BTreeSet<String>>>,
    /// service principal id → (principalId, appRoleId) pairs.
    pub app_role_assignments: BTreeMap<String, Arc<BTreeSet<(String, String)>>>,
    /// (lower-cased role definition id, mode) → (principalId, directoryScopeId) pairs.
    pub directory_roles: BTreeMap<(String, RoleMode), Pairs>,
    /// (Azure scope as Graph spells it, mode) → (principalId, "{role guid} {assigned
    /// scope}", lower-cased).
    pub azure_roles: BTreeMap<(String, RoleMode), Pairs>,
    /// (group id, relationship) → (principalId, [`ELIGIBILITY_IN_EFFECT`] or
    /// [`eligibility_ended`]).
    pub group_eligibilities: BTreeMap<(String, GroupAccess), Pairs>,
    /// Reads that cannot be made here (no permission on an Azure scope, no ARM URL):
    /// resources depending on them are Unverifiable with this note, never Unknown, so they
    /// neither block Delivered nor cause a reprocess.
    pub unreadable: BTreeMap<ResourceRead, String>,
    /// Reads that failed, with a message safe to show (no tokens).
    pub failures: BTreeMap<ResourceRead, String>,
    /// (resource, user object id) → who removed it, for missing resources the driver
    /// looked up in the audit log (`observe::attribution`).
    pub changes: BTreeMap<(ResourceKind, String), super::Attribution>,
    /// user object id → whether the account may still be granted access, read by the
    /// driver only for targets of a write (`observe::accounts`).
    pub accounts: BTreeMap<String, super::TargetAccount>,
}

/// The verdict for one resource, with a note when it is Unknown or Unverifiable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub state: ResourceState,
    pub note: Option<String>,
}

impl Snapshot {
    /// An empty snapshot.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records who removed `kind` from `user_id` (or why that is not known).
    pub fn record_change(
        &mut self,
        kind: ResourceKind,
        user_id: impl Into<String>,
        attribution: super::Attribution,
    ) {
        self.changes.insert((kind, user_id.into()), attribution);
    }

    /// What the audit log said about `kind` missing for `user_id`, if it was looked up.
    pub fn change(&self, kind: &ResourceKind, user_id: &str) -> Option<&super::Attribution> {
        self.changes.get(&(kind.clone(), user_id.to_string()))
    }

    /// Records what the directory says about `user_id`'s account.
    pub fn record_account(&mut self, user_id: impl Into<String>, account: super::TargetAccount) {
        self.accounts
            .insert(user_id.into().to_ascii_lowercase(), account);
    }

    /// The account facts read for `user_id`, if the driver read them.
    pub fn account(&self, user_id: &str) -> Option<&super::TargetAccount> {
        self.accounts.get(&user_id.to_ascii_lowercase())
    }

    /// Records a group's direct members (replacing any earlier read).
    pub fn record_group_members(
        &mut self,
        group_id: impl Into<String>,
        members: impl IntoIterator<Item = impl Into<String>>,
    ) {
        let id = group_id.into();
        self.failures
            .remove(&ResourceRead::GroupMembers(id.clone()));
        self.group_members
            .insert(id, Arc::new(members.into_iter().map(Into::into).collect()));
    }

    /// Records a group's owners (replacing any earlier read).
    pub fn record_group_owners(
        &mut self,
        group_id: impl Into<String>,
        owners: impl IntoIterator<Item = impl Into<String>>,
    ) {
        let id = group_id.into();
        self.failures.remove(&ResourceRead::GroupOwners(id.clone()));
        self.group_owners
            .insert(id, Arc::new(owners.into_iter().map(Into::into).collect()));
    }

    /// Records a service principal's app role assignments as (principalId, appRoleId).
    pub fn record_app_role_assignments(
        &mut self,
        service_principal_id: impl Into<String>,
        assignments: impl IntoIterator<Item = (String, String)>,
    ) {
        let id = service_principal_id.into();
        self.failures
            .remove(&ResourceRead::AppRoleAssignments(id.clone()));
        self.app_role_assignments
            .insert(id, Arc::new(assignments.into_iter().collect()));
    }

    /// Records what `read` returned, sharing `data` (replacing any earlier read). Data of
    /// the wrong shape for the read is recorded as a failed read, never as a membership.
    pub fn record(&mut self, read: ResourceRead, data: ReadData) {
        self.failures.remove(&read);
        self.unreadable.remove(&read);
        match (read, data) {
            (ResourceRead::GroupMembers(g), ReadData::Ids(ids)) => {
                self.group_members.insert(g, ids);
            }
            (ResourceRead::GroupOwners(g), ReadData::Ids(ids)) => {
                self.group_owners.insert(g, ids);
            }
            (ResourceRead::AppRoleAssignments(sp), ReadData::Pairs(pairs)) => {
                self.app_role_assignments.insert(sp, pairs);
            }
            (
                ResourceRead::DirectoryRoleHolders {
                    role_definition_id,
                    mode,
                },
                ReadData::Pairs(pairs),
            ) => {
                self.directory_roles
                    .insert((role_definition_id, mode), pairs);
            }
            (ResourceRead::AzureRoleHolders { scope, mode }, ReadData::Pairs(pairs)) => {
                self.azure_roles.insert((scope, mode), pairs);
            }
            (ResourceRead::GroupEligibilities { group_id, access }, ReadData::Pairs(pairs)) => {
                self.group_eligibilities.insert((group_id, access), pairs);
            }
            (read, _) => self.record_failure(read, "internal error: data of the wrong shape"),
        }
    }

    /// What `read` returned, if it was recorded (shared, not copied).
    pub fn data(&self, read: &ResourceRead) -> Option<ReadData> {
        match read {
            ResourceRead::GroupMembers(g) => self.group_members.get(g).cloned().map(ReadData::Ids),
            ResourceRead::GroupOwners(g) => self.group_owners.get(g).cloned().map(ReadData::Ids),
            ResourceRead::AppRoleAssignments(sp) => self
                .app_role_assignments
                .get(sp)
                .cloned()
                .map(ReadData::Pairs),
            ResourceRead::DirectoryRoleHolders {
                role_definition_id,
                mode,
            } => self
                .directory_roles
                .get(&(role_definition_id.clone(), *mode))
                .cloned()
                .map(ReadData::Pairs),
            ResourceRead::AzureRoleHolders { scope, mode } => self
                .azure_roles
                .get(&(scope.clone(), *mode))
                .cloned()
                .map(ReadData::Pairs),
            ResourceRead::GroupEligibilities { group_id, access } => self
                .group_eligibilities
                .get(&(group_id.clone(), *access))
                .cloned()
                .map(ReadData::Pairs),
        }
    }

    /// Records that `read` cannot be made (a missing Azure permission on its scope, no
    /// ARM URL): what it verifies is Unverifiable with `why`.
    pub fn record_unreadable(&mut self, read: ResourceRead, why: impl Into<String>) {
        self.record_failure(read.clone(), "unreadable");
        self.failures.remove(&read);
        self.unreadable.insert(read, why.into());
    }

    /// Records that a read failed; resources depending on it become Unknown.
    pub fn record_failure(&mut self, read: ResourceRead, error: impl Into<String>) {
        match &read {
            ResourceRead::GroupMembers(id) => {
                self.group_members.remove(id);
            }
            ResourceRead::GroupOwners(id) => {
                self.group_owners.remove(id);
            }
            ResourceRead::AppRoleAssignments(id) => {
                self.app_role_assignments.remove(id);
            }
            ResourceRead::DirectoryRoleHolders {
                role_definition_id,
                mode,
            } => {
                self.directory_roles
                    .remove(&(role_definition_id.clone(), *mode));
            }
            ResourceRead::AzureRoleHolders { scope, mode } => {
                self.azure_roles.remove(&(scope.clone(), *mode));
            }
            ResourceRead::GroupEligibilities { group_id, access } => {
                self.group_eligibilities
                    .remove(&(group_id.clone(), *access));
            }
        }
        self.unreadable.remove(&read);
        self.failures.insert(read, error.into());
    }

    /// Whether the target holds the resource.
    pub fn check(&self, kind: &ResourceKind, target_object_id: &str) -> ResourceState {
        self.check_detail(kind, target_object_id).state
    }

    /// [`Snapshot::check`] with the reason for Unknown/Unverifiable.
    pub fn check_detail(&self, kind: &ResourceKind, target_object_id: &str) -> Check {
        if let Err(verdict) = self.gate(kind) {
            return verdict;
        }
        let present = match kind {
            ResourceKind::GroupMember { group_id } => self
                .group_members
                .get(group_id)
                .map(|m| m.contains(target_object_id)),
            ResourceKind::GroupOwner { group_id } => self
                .group_owners
                .get(group_id)
                .map(|m| m.contains(target_object_id)),
            ResourceKind::GroupEligible { group_id, access } => {
                return match self.group_eligibilities.get(&(group_id.clone(), *access)) {
                    Some(pairs) => eligibility_check(pairs, target_object_id),
                    None => present_or_unread(None),
                };
            }
            _ => self
                .pairs_of(kind)
                .map(|(pairs, wanted)| pairs.contains(&(target_object_id.to_string(), wanted))),
        };
        present_or_unread(present)
    }

    /// A check of `kind` prepared for many targets, as a guard's sweep makes: one per
    /// assignment of the package (300,000 at Entra's limit). What does not depend on the
    /// target (whether the resource is verifiable, whether its read failed) is decided
    /// once, and the holders are put in a hash set, so each target costs one lookup instead
    /// of a string copy and four ordered-map searches.
    pub fn checker(&self, kind: &ResourceKind) -> ResourceChecker<'_> {
        if let Err(verdict) = self.gate(kind) {
            return ResourceChecker::Fixed(verdict);
        }
        let ids = match kind {
            ResourceKind::GroupMember { group_id } => self.group_members.get(group_id),
            ResourceKind::GroupOwner { group_id } => self.group_owners.get(group_id),
            _ => None,
        };
        if let Some(ids) = ids {
            return ResourceChecker::Holders(ids.iter().map(String::as_str).collect());
        }
        // An eligibility that ended by its own end date counts as held here: a sweep must
        // not reprocess what PIM ended on schedule (see `eligibility_check`).
        if let ResourceKind::GroupEligible { group_id, access } = kind {
            return match self.group_eligibilities.get(&(group_id.clone(), *access)) {
                Some(pairs) => {
                    ResourceChecker::Holders(pairs.iter().map(|(p, _)| p.as_str()).collect())
                }
                None => ResourceChecker::Fixed(present_or_unread(None)),
            };
        }
        match self.pairs_of(kind) {
            Some((pairs, wanted)) => ResourceChecker::Holders(
                pairs
                    .iter()
                    .filter(|(_, second)| *second == wanted)
                    .map(|(principal, _)| principal.as_str())
                    .collect(),
            ),
            None => ResourceChecker::Fixed(present_or_unread(None)),
        }
    }

    /// The verdict for `kind` that holds whoever the target is: not verifiable, not
    /// readable here, or its read failed. `Ok` when the target must be looked up.
    fn gate(&self, kind: &ResourceKind) -> Result<(), Check> {
        let Some(read) = ResourceRead::for_kind(kind) else {
            return Err(Check {
                state: ResourceState::Unverifiable,
                note: None,
            });
        };
        if let Some(why) = self.unreadable.get(&read) {
            return Err(Check {
                state: ResourceState::Unverifiable,
                note: Some(why.clone()),
            });
        }
        if let Some(err) = self.failures.get(&read) {
            return Err(Check {
                state: ResourceState::Unknown,
                note: Some(format!("read failed: {err}")),
            });
        }
        Ok(())
    }

    /// For a resource held as (principal, detail) pairs: the recorded pairs and the detail
    /// a holder of `kind` has (the app role, the directory scope, the Azure role at the
    /// promised scope).
    fn pairs_of(&self, kind: &ResourceKind) -> Option<(&BTreeSet<(String, String)>, String)> {
        match kind {
            ResourceKind::AppRole {
                service_principal_id,
                app_role_id,
            } => self
                .app_role_assignments
                .get(service_principal_id)
                .map(|a| (&**a, app_role_id.clone())),
            ResourceKind::EntraRole {
                role_definition_id,
                directory_scope_id,
                mode,
            } => self
                .directory_roles
                .get(&(role_definition_id.to_ascii_lowercase(), *mode))
                .map(|a| (&**a, directory_scope_id.clone())),
            // Only an assignment at the promised scope is what the package delivered: one
            // inherited from above would not come back with a reprocess if removed.
            ResourceKind::AzureRole {
                role_definition_guid,
                scope,
                mode,
            } => self
                .azure_roles
                .get(&(scope.clone(), *mode))
                .map(|a| (&**a, azure_holding(role_definition_guid, scope))),
            _ => None,
        }
    }
}

/// A PIM-for-Groups eligibility: Present while one is in effect; Missing when none is
/// listed; Unverifiable (never drift, never a reprocess) when the only one listed ended by
/// its own end date, which PIM does on schedule when its maximum duration is shorter than
/// the package's (Microsoft Entra docs, "Using groups managed by Privileged Identity
/// Management with access packages").
fn eligibility_check(pairs: &BTreeSet<(String, String)>, target_object_id: &str) -> Check {
    let mut ended = None;
    for (principal, state) in pairs {
        if principal != target_object_id {
            continue;
        }
        if state == ELIGIBILITY_IN_EFFECT {
            return present_or_unread(Some(true));
        }
        ended = ended.or(state.strip_prefix("ended "));
    }
    match ended {
        Some(at) => Check {
            state: ResourceState::Unverifiable,
            note: Some(format!(
                "the eligibility ended on its own end date ({at}), as PIM's policy set it: not drift, not reprocessed"
            )),
        },
        None => present_or_unread(Some(false)),
    }
}

/// Present or Missing from a lookup, Unknown when the read it needs was not made.
fn present_or_unread(present: Option<bool>) -> Check {
    match present {
        Some(true) => Check {
            state: ResourceState::Present,
            note: None,
        },
        Some(false) => Check {
            state: ResourceState::Missing,
            note: None,
        },
        None => Check {
            state: ResourceState::Unknown,
            note: Some("not read in this pass".into()),
        },
    }
}

/// [`Snapshot::check`] prepared for one resource and many targets ([`Snapshot::checker`]).
#[derive(Debug)]
pub enum ResourceChecker<'a> {
    /// The same verdict for every target (Unverifiable, Unknown).
    Fixed(Check),
    /// Everyone holding the resource.
    Holders(HashSet<&'a str>),
}

impl ResourceChecker<'_> {
    /// Whether `target_object_id` holds the resource.
    pub fn check(&self, target_object_id: &str) -> ResourceState {
        match self {
            Self::Fixed(verdict) => verdict.state,
            Self::Holders(holders) if holders.contains(target_object_id) => ResourceState::Present,
            Self::Holders(_) => ResourceState::Missing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(g: &str) -> ResourceKind {
        ResourceKind::GroupMember { group_id: g.into() }
    }

    #[test]
    fn an_eligibility_is_present_while_in_effect_and_not_drift_once_ended_on_schedule() {
        let mut s = Snapshot::new();
        let read = ResourceRead::GroupEligibilities {
            group_id: "g1".into(),
            access: GroupAccess::Member,
        };
        s.record(
            read.clone(),
            ReadData::Pairs(Arc::new(BTreeSet::from([
                ("u1".to_string(), ELIGIBILITY_IN_EFFECT.to_string()),
                ("u2".to_string(), eligibility_ended("2026-01-01T00:00:00Z")),
            ]))),
        );
        let kind = ResourceKind::GroupEligible {
            group_id: "g1".into(),
            access: GroupAccess::Member,
        };
        assert_eq!(ResourceRead::for_kind(&kind), Some(read.clone()));
        assert_eq!(s.check(&kind, "u1"), ResourceState::Present);
        let ended = s.check_detail(&kind, "u2");
        assert_eq!(ended.state, ResourceState::Unverifiable);
        assert!(
            ended
                .note
                .is_some_and(|n| n.contains("2026-01-01T00:00:00Z"))
        );
        assert_eq!(s.check(&kind, "u3"), ResourceState::Missing);
        // Ownership is another read: not recorded, so not known.
        let owner = ResourceKind::GroupEligible {
            group_id: "g1".into(),
            access: GroupAccess::Owner,
        };
        assert_eq!(s.check(&owner, "u1"), ResourceState::Unknown);
        // A guard's sweep never reprocesses an eligibility that ended on schedule.
        let checker = s.checker(&kind);
        assert_eq!(checker.check("u2"), ResourceState::Present);
        assert_eq!(checker.check("u3"), ResourceState::Missing);
        s.record_failure(read, "forbidden");
        assert_eq!(s.check(&kind, "u1"), ResourceState::Unknown);
    }

    #[test]
    fn group_membership_and_ownership() {
        let mut s = Snapshot::new();
        s.record_group_members("g1", ["u1", "u2"]);
        s.record_group_owners("g1", ["u9"]);
        assert_eq!(s.check(&member("g1"), "u1"), ResourceState::Present);
        assert_eq!(s.check(&member("g1"), "u3"), ResourceState::Missing);
        let owner = ResourceKind::GroupOwner {
            group_id: "g1".into(),
        };
        assert_eq!(s.check(&owner, "u9"), ResourceState::Present);
        assert_eq!(s.check(&owner, "u1"), ResourceState::Missing);
    }

    #[test]
    fn app_roles_match_principal_and_role() {
        let mut s = Snapshot::new();
        s.record_app_role_assignments("sp", [("u1".to_string(), "r1".to_string())]);
        let k = |r: &str| ResourceKind::AppRole {
            service_principal_id: "sp".into(),
            app_role_id: r.into(),
        };
        assert_eq!(s.check(&k("r1"), "u1"), ResourceState::Present);
        assert_eq!(s.check(&k("r2"), "u1"), ResourceState::Missing);
        assert_eq!(s.check(&k("r1"), "u2"), ResourceState::Missing);
    }

    #[test]
    fn failures_and_unread_are_unknown() {
        let mut s = Snapshot::new();
        s.record_group_members("g1", ["u1"]);
        s.record_failure(
            ResourceRead::GroupMembers("g1".into()),
            "HTTP 403 Authorization_RequestDenied",
        );
        let c = s.check_detail(&member("g1"), "u1");
        assert_eq!(c.state, ResourceState::Unknown);
        assert!(c.note.unwrap().contains("403"));
        let c = s.check_detail(&member("g2"), "u1");
        assert_eq!(c.state, ResourceState::Unknown);
        assert!(c.note.unwrap().contains("not read"));
        // A later successful read clears the failure.
        s.record_group_members("g1", ["u1"]);
        assert_eq!(s.check(&member("g1"), "u1"), ResourceState::Present);
    }

    #[test]
    fn entra_roles_match_principal_scope_and_mode() {
        let role = |mode| ResourceKind::EntraRole {
            role_definition_id: "RD-1".into(),
            directory_scope_id: "/".into(),
            mode,
        };
        let read = ResourceRead::for_kind(&role(RoleMode::Eligible)).unwrap();
        // Ids compare case-insensitively: the read key is lower-cased.
        assert_eq!(
            read,
            ResourceRead::DirectoryRoleHolders {
                role_definition_id: "rd-1".into(),
                mode: RoleMode::Eligible,
            }
        );
        let mut s = Snapshot::new();
        s.record(
            read,
            ReadData::Pairs(Arc::new(
                [
                    ("u1".to_string(), "/".to_string()),
                    ("u2".to_string(), "/administrativeUnits/au1".to_string()),
                ]
                .into(),
            )),
        );
        assert_eq!(
            s.check(&role(RoleMode::Eligible), "u1"),
            ResourceState::Present
        );
        // Held only at an administrative unit: not the promised directory-wide role.
        assert_eq!(
            s.check(&role(RoleMode::Eligible), "u2"),
            ResourceState::Missing
        );
        // The active read was not made: Unknown, never guessed from the eligible one.
        assert_eq!(
            s.check(&role(RoleMode::Active), "u1"),
            ResourceState::Unknown
        );
    }

    #[test]
    fn azure_roles_match_role_scope_and_principal_and_unreadable_is_unverifiable() {
        let rg = "/subscriptions/S1/resourceGroups/rg-fin";
        let kind = |guid: &str, mode| ResourceKind::AzureRole {
            role_definition_guid: guid.into(),
            scope: rg.into(),
            mode,
        };
        let read = ResourceRead::for_kind(&kind("g1", RoleMode::Active)).unwrap();
        let mut s = Snapshot::new();
        s.record(
            read.clone(),
            ReadData::Pairs(Arc::new(
                [
                    ("u1".to_string(), azure_holding("G1", rg)),
                    // Inherited from the subscription: not the promised assignment.
                    ("u2".to_string(), azure_holding("g1", "/subscriptions/s1")),
                ]
                .into(),
            )),
        );
        assert_eq!(
            s.check(&kind("g1", RoleMode::Active), "u1"),
            ResourceState::Present
        );
        assert_eq!(
            s.check(&kind("g2", RoleMode::Active), "u1"),
            ResourceState::Missing
        );
        assert_eq!(
            s.check(&kind("g1", RoleMode::Active), "u2"),
            ResourceState::Missing
        );
        assert_eq!(
            s.check(&kind("g1", RoleMode::Eligible), "u1"),
            ResourceState::Unknown
        );
        s.record_unreadable(read.clone(), "no Reader on the scope");
        let c = s.check_detail(&kind("g1", RoleMode::Active), "u1");
        assert_eq!(c.state, ResourceState::Unverifiable);
        assert_eq!(c.note.as_deref(), Some("no Reader on the scope"));
        // A later read makes it verifiable again.
        s.record(read, ReadData::Pairs(Arc::new(BTreeSet::new())));
        assert_eq!(
            s.check(&kind("g1", RoleMode::Active), "u1"),
            ResourceState::Missing
        );
    }

    #[test]
    fn unverifiable_stays_unverifiable() {
        assert_eq!(
            Snapshot::new().check(&ResourceKind::Unverifiable, "u1"),
            ResourceState::Unverifiable
        );
    }

    #[test]
    fn a_prepared_checker_agrees_with_check_detail_for_every_kind_and_target() {
        let rg = "/subscriptions/s1/resourceGroups/rg-fin";
        let mut s = Snapshot::new();
        s.record_group_members("g1", ["u1", "u2"]);
        s.record_group_owners("g1", ["u3"]);
        s.record_group_members("g-failed", ["u1"]);
        s.record_failure(ResourceRead::GroupMembers("g-failed".into()), "HTTP 503");
        s.record_app_role_assignments(
            "sp",
            [
                ("u1".to_string(), "r1".to_string()),
                ("u2".to_string(), "r2".to_string()),
            ],
        );
        s.record(
            ResourceRead::DirectoryRoleHolders {
                role_definition_id: "rd".into(),
                mode: RoleMode::Eligible,
            },
            ReadData::Pairs(Arc::new(
                [
                    ("u1".to_string(), "/".to_string()),
                    ("u2".to_string(), "/administrativeUnits/au1".to_string()),
                ]
                .into(),
            )),
        );
        s.record(
            ResourceRead::AzureRoleHolders {
                scope: rg.into(),
                mode: RoleMode::Active,
            },
            ReadData::Pairs(Arc::new(
                [("u2".to_string(), azure_holding("G1", rg))].into(),
            )),
        );
        s.record_unreadable(
            ResourceRead::AzureRoleHolders {
                scope: "/subscriptions/s2".into(),
                mode: RoleMode::Active,
            },
            "no Reader",
        );
        let azure = |scope: &str, mode| ResourceKind::AzureRole {
            role_definition_guid: "g1".into(),
            scope: scope.into(),
            mode,
        };
        let kinds = [
            member("g1"),
            member("g-failed"),
            member("g-never-read"),
            ResourceKind::GroupOwner {
                group_id: "g1".into(),
            },
            ResourceKind::AppRole {
                service_principal_id: "sp".into(),
                app_role_id: "r1".into(),
            },
            ResourceKind::AppRole {
                service_principal_id: "sp-never-read".into(),
                app_role_id: "r1".into(),
            },
            ResourceKind::EntraRole {
                role_definition_id: "RD".into(),
                directory_scope_id: "/".into(),
                mode: RoleMode::Eligible,
            },
            ResourceKind::EntraRole {
                role_definition_id: "RD".into(),
                directory_scope_id: "/".into(),
                mode: RoleMode::Active,
            },
            azure(rg, RoleMode::Active),
            azure(rg, RoleMode::Eligible),
            azure("/subscriptions/s2", RoleMode::Active),
            ResourceKind::Unverifiable,
        ];
        let mut states = BTreeSet::new();
        for kind in &kinds {
            let checker = s.checker(kind);
            for target in ["u1", "u2", "u3", "u4"] {
                let expected = s.check_detail(kind, target).state;
                assert_eq!(checker.check(target), expected, "{kind:?} for {target}");
                states.insert(format!("{expected:?}"));
            }
        }
        // Every verdict is covered, so the agreement is not vacuous.
        assert_eq!(
            states,
            ["Missing", "Present", "Unknown", "Unverifiable"]
                .map(String::from)
                .into()
        );
    }

    #[test]
    fn reads_needed_once_per_resource() {
        let r = |kind: ResourceKind| PromisedResource {
            origin_system: crate::engine::OriginSystem::Missing,
            origin_id: String::new(),
            display_name: String::new(),
            role: String::new(),
            kind,
            note: None,
        };
        let list = [
            r(member("g1")),
            r(member("g1")),
            r(ResourceKind::GroupOwner {
                group_id: "g1".into(),
            }),
            r(ResourceKind::AppRole {
                service_principal_id: "sp".into(),
                app_role_id: "a".into(),
            }),
            r(ResourceKind::AppRole {
                service_principal_id: "sp".into(),
                app_role_id: "b".into(),
            }),
            r(ResourceKind::Unverifiable),
        ];
        let reads: Vec<ResourceRead> = reads_needed(&list).into_iter().collect();
        assert_eq!(
            reads,
            [
                ResourceRead::GroupMembers("g1".into()),
                ResourceRead::GroupOwners("g1".into()),
                ResourceRead::AppRoleAssignments("sp".into()),
            ]
        );
    }
}
