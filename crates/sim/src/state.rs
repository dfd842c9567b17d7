//! The simulated tenant: directory objects, entitlement-management objects and the
//! operations that change them. Pure data, no HTTP; the server locks it per request.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use jiff::{SignedDuration, Timestamp};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::scenario::{
    AccessPackageSpec, AssignmentSpec, AzureRoleSpec, CatalogSpec, DirectoryRoleSpec, GroupSpec,
    PolicySpec, ResourceSpec, Scenario, ScenarioError, ScenarioSpec, ServicePrincipalSpec,
    SubscriptionSpec, UserSpec, derive_id,
};
use super::states::{AssignmentState, RequestState, RequestType, one_of};
use strum::VariantNames;

/// App role id used for "Default Access" (apps without roles).
pub(crate) const DEFAULT_ACCESS_ROLE: &str = "00000000-0000-0000-0000-000000000000";

#[derive(Debug, Clone)]
pub(crate) struct User {
    pub id: String,
    pub upn: String,
    pub display_name: String,
    pub subject_id: String,
    /// `accountEnabled`: sign-in allowed. Nothing else depends on it (entitlement
    /// management delivers to disabled accounts too).
    pub account_enabled: bool,
}

/// What Identity Protection says about one user (`identityProtection/riskyUsers`).
#[derive(Debug, Clone)]
pub(crate) struct RiskyUser {
    pub user_id: String,
    pub upn: String,
    pub display_name: String,
    pub risk_level: String,
    pub risk_state: String,
    pub risk_detail: String,
    pub updated: Timestamp,
    /// The user was deleted after being flagged; Identity Protection keeps the entry.
    pub is_deleted: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct Group {
    pub id: String,
    pub display_name: String,
    pub description: Option<String>,
    pub members: BTreeSet<String>,
    pub owners: BTreeSet<String>,
    pub created: Timestamp,
}

#[derive(Debug, Clone)]
pub(crate) struct AppRole {
    pub id: String,
    pub value: String,
    pub display_name: String,
}

#[derive(Debug, Clone)]
pub(crate) struct AppRoleAssignment {
    pub id: String,
    pub app_role_id: String,
    pub principal_id: String,
    pub created: Timestamp,
}

#[derive(Debug, Clone)]
pub(crate) struct ServicePrincipal {
    pub id: String,
    pub app_id: String,
    pub display_name: String,
    pub app_roles: Vec<AppRole>,
    pub assigned_to: Vec<AppRoleAssignment>,
}

/// A Microsoft Entra role definition.
#[derive(Debug, Clone)]
pub(crate) struct RoleDefinition {
    pub id: String,
    pub display_name: String,
}

/// An active directory role assignment or a role eligibility schedule: a principal
/// holds a role definition at a directory scope.
#[derive(Debug, Clone)]
pub(crate) struct DirectoryRoleGrant {
    pub id: String,
    pub role_definition_id: String,
    pub principal_id: String,
    pub directory_scope_id: String,
    pub created: Timestamp,
}

/// An eligibility for a group's membership or ownership through Privileged Identity
/// Management for Groups (`privilegedAccessGroupEligibilitySchedule`).
#[derive(Debug, Clone)]
pub(crate) struct GroupEligibility {
    pub id: String,
    pub group_id: String,
    pub principal_id: String,
    /// Eligible ownership (`accessId: owner`) rather than membership (`member`).
    pub owner: bool,
    pub created: Timestamp,
    /// When the eligibility ends; `None` for `noExpiration`.
    pub end: Option<Timestamp>,
}

/// An Azure subscription and its resource groups.
#[derive(Debug, Clone)]
pub(crate) struct Subscription {
    pub id: String,
    pub display_name: String,
    pub resource_groups: Vec<String>,
}

/// An Azure role assignment or role eligibility schedule instance (ARM): a principal
/// holds a role definition at an ARM scope.
#[derive(Debug, Clone)]
pub(crate) struct ArmRoleGrant {
    /// The assignment's GUID (its `name`).
    pub name: String,
    /// The role definition GUID.
    pub role_guid: String,
    pub principal_id: String,
    /// `/subscriptions/{id}` or `/subscriptions/{id}/resourceGroups/{name}`.
    pub scope: String,
    pub created: Timestamp,
}

#[derive(Debug, Clone)]
pub(crate) struct Catalog {
    pub id: String,
    pub display_name: String,
    pub description: Option<String>,
    pub created: Timestamp,
}

/// What one resource role scope of a package grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Grant {
    GroupMember(String),
    GroupOwner(String),
    /// An eligible membership (`owner: false`) or ownership of a group, through PIM for
    /// Groups.
    GroupEligible {
        group_id: String,
        owner: bool,
    },
    AppRole {
        sp_id: String,
        role_id: String,
    },
    SharePoint {
        site: String,
        role: String,
        role_origin_id: String,
    },
    /// An Entra role at the directory root, eligible or active.
    EntraRole {
        role_definition_id: String,
        eligible: bool,
    },
    /// An Azure role at an ARM scope (subscription or resource group), eligible or active.
    AzureRole {
        role_guid: String,
        subscription_id: String,
        scope: String,
        eligible: bool,
    },
}

#[derive(Debug, Clone)]
pub(crate) struct RoleScope {
    pub grant: Grant,
    pub role_id: String,
    pub scope_id: String,
}

#[derive(Debug, Clone)]
pub(crate) struct Package {
    pub id: String,
    pub display_name: String,
    pub description: Option<String>,
    pub catalog_id: String,
    pub role_scopes: Vec<RoleScope>,
    pub created: Timestamp,
}

#[derive(Debug, Clone)]
pub(crate) struct Policy {
    pub id: String,
    pub display_name: String,
    pub description: Option<String>,
    pub package_id: String,
    pub created: Timestamp,
}

#[derive(Debug, Clone)]
pub(crate) struct Assignment {
    pub id: String,
    pub package_id: String,
    pub policy_id: String,
    pub target_id: String,
    pub state: AssignmentState,
    pub start: Timestamp,
    pub expired: Option<Timestamp>,
    /// Bumped whenever the admin API forces a state, so in-flight background work
    /// started before that notices and stops.
    pub rev: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub id: String,
    pub request_type: RequestType,
    pub state: RequestState,
    pub created: Option<Timestamp>,
    pub completed: Option<Timestamp>,
    pub package_id: String,
    pub policy_id: String,
    pub target_id: String,
    pub assignment_id: Option<String>,
    pub justification: Option<String>,
    pub rev: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct DeltaChange {
    pub version: u64,
    pub group_id: String,
    pub member_id: String,
    pub added: bool,
}

/// The whole simulated tenant.
#[derive(Debug, Clone)]
pub(crate) struct World {
    pub tenant_id: String,
    pub tenant_name: String,
    pub tenant_domain: String,
    pub client_id: String,
    pub client_secret: String,
    pub client_assertion: Option<String>,
    pub client_display_name: String,
    pub client_sp_id: String,
    pub users: Vec<User>,
    user_by_id: HashMap<String, usize>,
    user_by_upn: HashMap<String, usize>,
    pub groups: Vec<Group>,
    group_by_id: HashMap<String, usize>,
    /// Positions of scenario-loaded assignments by lower-cased id; assignments are never
    /// removed, and ones created later are found by the linear fallback.
    assignment_by_id: HashMap<String, usize>,
    pub sps: Vec<ServicePrincipal>,
    pub role_definitions: Vec<RoleDefinition>,
    /// `roleManagement/directory/roleAssignments`.
    pub role_assignments: Vec<DirectoryRoleGrant>,
    /// `roleManagement/directory/roleEligibilitySchedules`.
    pub role_eligibilities: Vec<DirectoryRoleGrant>,
    /// `identityGovernance/privilegedAccess/group/eligibilitySchedules`.
    pub group_eligibilities: Vec<GroupEligibility>,
    pub subscriptions: Vec<Subscription>,
    /// Azure role definitions: (GUID, display name).
    pub azure_roles: Vec<RoleDefinition>,
    /// ARM `roleAssignments`.
    pub arm_assignments: Vec<ArmRoleGrant>,
    /// ARM `roleEligibilityScheduleInstances`.
    pub arm_eligibilities: Vec<ArmRoleGrant>,
    /// Lower-cased ARM scopes where the simulated app has no Reader: reads at or below
    /// them get 403 `AuthorizationFailed`.
    pub arm_denied: Vec<String>,
    pub catalogs: Vec<Catalog>,
    pub packages: Vec<Package>,
    pub policies: Vec<Policy>,
    pub assignments: Vec<Assignment>,
    pub requests: Vec<Request>,
    rng: ChaCha8Rng,
    pub seed_value: u64,
    pub clock_offset: SignedDuration,
    pub delta_version: u64,
    pub delta_log: Vec<DeltaChange>,
    /// Delta tokens older than this version have expired (`POST /_sim/delta/expire`).
    pub delta_floor: u64,
    /// Assignment ids seen while loading the scenario (keeps loading linear).
    loaded_assignment_ids: HashSet<String>,
    /// The directory audit log (`auditLogs/directoryAudits`).
    pub audit: super::audit::AuditLog,
    /// Identity Protection's risky users by lower-cased user id (`PUT /_sim/riskyUsers`).
    pub risky_users: BTreeMap<String, RiskyUser>,
    /// Application permissions taken from the app (`DELETE /_sim/permissions/{name}`),
    /// lower-cased: the reads that need one answer 403.
    pub revoked: BTreeSet<String>,
}

fn lc(s: &str) -> String {
    s.to_lowercase()
}

fn valid_guid(field: &str, id: &str) -> Result<String, ScenarioError> {
    uuid::Uuid::parse_str(id)
        .map(|u| u.to_string())
        .map_err(|_| ScenarioError::invalid(field, format!("{id:?} is not a GUID")))
}

fn id_or_derived(
    given: &Option<String>,
    field: &str,
    seed: u64,
    kind: &str,
    name: &str,
) -> Result<String, ScenarioError> {
    match given {
        Some(id) => valid_guid(field, id),
        None => Ok(derive_id(seed, kind, name)),
    }
}

impl World {
    /// Builds the tenant from a scenario, applying delivered assignments' grants.
    pub fn from_scenario(sc: &Scenario) -> Result<World, ScenarioError> {
        let spec = &sc.spec;
        let now = Timestamp::now();
        let created = now - SignedDuration::from_hours(24 * 30);
        let mut w = World::empty(spec)?;
        w.load_users(&spec.users)?;
        w.load_groups(&spec.groups, created)?;
        w.load_service_principals(&spec.service_principals, created)?;
        w.load_directory_roles(&spec.directory_roles, created)?;
        w.load_subscriptions(&spec.subscriptions)?;
        w.load_azure_roles(&spec.azure_roles)?;
        w.load_catalogs(&spec.catalogs, created)?;
        w.load_packages(&spec.access_packages, created)?;
        w.load_assignments(&spec.assignments, created)?;
        for (i, r) in spec.requests.iter().enumerate() {
            w.scenario_request(&format!("spec.requests[{i}]"), r, now)?;
        }
        // Scenario loading is not a change clients should see through delta.
        w.delta_log.clear();
        w.delta_version = 1;
        Ok(w)
    }

    /// The tenant and its client app, with no objects yet.
    fn empty(spec: &ScenarioSpec) -> Result<World, ScenarioError> {
        let seed = spec.seed;
        let tname = spec.tenant.name.clone();
        if tname.trim().is_empty() {
            return Err(ScenarioError::invalid(
                "spec.tenant.name",
                "must not be empty",
            ));
        }
        let tenant_id = id_or_derived(&spec.tenant.id, "spec.tenant.id", seed, "tenant", &tname)?;
        let client_id = id_or_derived(&spec.client.id, "spec.client.id", seed, "client", &tname)?;
        Ok(World {
            tenant_domain: spec
                .tenant
                .domain
                .clone()
                .unwrap_or_else(|| format!("{tname}.onmicrosoft.com")),
            tenant_id,
            client_secret: spec
                .client
                .secret
                .clone()
                .unwrap_or_else(|| format!("sim-secret-{tname}")),
            client_assertion: spec.client.assertion.clone(),
            client_display_name: spec
                .client
                .display_name
                .clone()
                .unwrap_or_else(|| "Redeliver".into()),
            client_sp_id: derive_id(seed, "client-sp", &client_id),
            client_id,
            tenant_name: tname,
            users: Vec::with_capacity(spec.users.len()),
            user_by_id: HashMap::with_capacity(spec.users.len()),
            user_by_upn: HashMap::with_capacity(spec.users.len()),
            groups: Vec::new(),
            group_by_id: HashMap::new(),
            assignment_by_id: HashMap::with_capacity(spec.assignments.len()),
            sps: Vec::new(),
            role_definitions: Vec::new(),
            role_assignments: Vec::new(),
            role_eligibilities: Vec::new(),
            group_eligibilities: Vec::new(),
            subscriptions: Vec::new(),
            azure_roles: Vec::new(),
            arm_assignments: Vec::new(),
            arm_eligibilities: Vec::new(),
            arm_denied: Vec::new(),
            audit: Default::default(),
            catalogs: Vec::new(),
            packages: Vec::new(),
            policies: Vec::new(),
            assignments: Vec::new(),
            requests: Vec::new(),
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0x005E_ED0F_5111),
            seed_value: seed,
            clock_offset: SignedDuration::ZERO,
            delta_version: 0,
            delta_log: Vec::new(),
            delta_floor: 0,
            loaded_assignment_ids: HashSet::new(),
            risky_users: BTreeMap::new(),
            revoked: BTreeSet::new(),
        })
    }

    /// `spec.users`.
    fn load_users(&mut self, users: &[UserSpec]) -> Result<(), ScenarioError> {
        let seed = self.seed_value;
        for (i, u) in users.iter().enumerate() {
            let field = format!("spec.users[{i}]");
            if !u.upn.contains('@') {
                return Err(ScenarioError::invalid(
                    format!("{field}.upn"),
                    format!("{:?} is not a userPrincipalName (name@domain)", u.upn),
                ));
            }
            let id = id_or_derived(&u.id, &format!("{field}.id"), seed, "user", &u.upn)?;
            if self.user_by_upn.contains_key(&lc(&u.upn)) || self.user_by_id.contains_key(&id) {
                return Err(ScenarioError::invalid(
                    field,
                    format!("user {} is declared twice", u.upn),
                ));
            }
            let display_name = u
                .display_name
                .clone()
                .unwrap_or_else(|| u.upn.split('@').next().unwrap_or(&u.upn).to_string());
            self.user_by_upn.insert(lc(&u.upn), self.users.len());
            self.user_by_id.insert(id.clone(), self.users.len());
            self.users.push(User {
                subject_id: derive_id(seed, "subject", &u.upn),
                id,
                upn: u.upn.clone(),
                display_name,
                account_enabled: u.account_enabled.unwrap_or(true),
            });
        }
        Ok(())
    }

    /// `spec.groups`, with their members and owners.
    fn load_groups(
        &mut self,
        groups: &[GroupSpec],
        created: Timestamp,
    ) -> Result<(), ScenarioError> {
        for (i, g) in groups.iter().enumerate() {
            let field = format!("spec.groups[{i}]");
            let id = id_or_derived(
                &g.id,
                &format!("{field}.id"),
                self.seed_value,
                "group",
                &g.name,
            )?;
            if self.group_named(&g.name).is_some() {
                return Err(ScenarioError::invalid(
                    field,
                    format!("group {} is declared twice", g.name),
                ));
            }
            let mut members = BTreeSet::new();
            for (j, m) in g.members.iter().enumerate() {
                members.insert(self.scenario_user(&format!("{field}.members[{j}]"), m)?);
            }
            let mut owners = BTreeSet::new();
            for (j, m) in g.owners.iter().enumerate() {
                owners.insert(self.scenario_user(&format!("{field}.owners[{j}]"), m)?);
            }
            self.group_by_id.insert(id.clone(), self.groups.len());
            self.groups.push(Group {
                id,
                display_name: g.name.clone(),
                description: g.description.clone(),
                members,
                owners,
                created,
            });
        }
        Ok(())
    }

    /// `spec.servicePrincipals`, with their app roles and the users assigned to them.
    fn load_service_principals(
        &mut self,
        sps: &[ServicePrincipalSpec],
        created: Timestamp,
    ) -> Result<(), ScenarioError> {
        let seed = self.seed_value;
        for (i, s) in sps.iter().enumerate() {
            let field = format!("spec.servicePrincipals[{i}]");
            let id = id_or_derived(&s.id, &format!("{field}.id"), seed, "sp", &s.name)?;
            let app_id = id_or_derived(&s.app_id, &format!("{field}.appId"), seed, "app", &s.name)?;
            let mut roles = Vec::new();
            for (j, r) in s.app_roles.iter().enumerate() {
                roles.push(AppRole {
                    id: id_or_derived(
                        &r.id,
                        &format!("{field}.appRoles[{j}].id"),
                        seed,
                        "approle",
                        &format!("{}/{}", s.name, r.value),
                    )?,
                    value: r.value.clone(),
                    display_name: r.display_name.clone().unwrap_or_else(|| r.value.clone()),
                });
            }
            self.sps.push(ServicePrincipal {
                id,
                app_id,
                display_name: s.name.clone(),
                app_roles: roles,
                assigned_to: Vec::new(),
            });
            let sp_idx = self.sps.len() - 1;
            for (j, a) in s.assignments.iter().enumerate() {
                let f = format!("{field}.assignments[{j}]");
                let user = self.scenario_user(&format!("{f}.user"), &a.user)?;
                let role =
                    self.resolve_app_role(sp_idx, a.role.as_deref(), &format!("{f}.role"))?;
                let sp_id = self.sps[sp_idx].id.clone();
                self.add_app_role(&sp_id, &user, &role, created);
            }
        }
        Ok(())
    }

    /// `spec.directoryRoles`, with their active and eligible holders.
    fn load_directory_roles(
        &mut self,
        roles: &[DirectoryRoleSpec],
        created: Timestamp,
    ) -> Result<(), ScenarioError> {
        for (i, r) in roles.iter().enumerate() {
            let field = format!("spec.directoryRoles[{i}]");
            let id = id_or_derived(
                &r.id,
                &format!("{field}.id"),
                self.seed_value,
                "roledef",
                &r.name,
            )?;
            if self.role_definition_named(&r.name).is_some() {
                return Err(ScenarioError::invalid(
                    field,
                    format!("directory role {} is declared twice", r.name),
                ));
            }
            self.role_definitions.push(RoleDefinition {
                id: id.clone(),
                display_name: r.name.clone(),
            });
            for (list, eligible) in [(&r.active, false), (&r.eligible, true)] {
                for (j, upn) in list.iter().enumerate() {
                    let key = if eligible { "eligible" } else { "active" };
                    let user = self.scenario_user(&format!("{field}.{key}[{j}]"), upn)?;
                    self.add_directory_role(&id, &user, eligible, created);
                }
            }
        }
        Ok(())
    }

    /// `spec.subscriptions`, and the scopes under them the app may not read.
    fn load_subscriptions(
        &mut self,
        subscriptions: &[SubscriptionSpec],
    ) -> Result<(), ScenarioError> {
        for (i, sub) in subscriptions.iter().enumerate() {
            let field = format!("spec.subscriptions[{i}]");
            let id = id_or_derived(
                &sub.id,
                &format!("{field}.id"),
                self.seed_value,
                "subscription",
                &sub.name,
            )?;
            for (j, deny) in sub.deny_reads.iter().enumerate() {
                let scope = if deny.starts_with('/') {
                    deny.clone()
                } else {
                    format!("/subscriptions/{id}/{}", deny.trim_start_matches('/'))
                };
                if !scope.to_ascii_lowercase().starts_with("/subscriptions/") {
                    return Err(ScenarioError::invalid(
                        format!("{field}.denyReads[{j}]"),
                        "use resourceGroups/{name} or a /subscriptions/... scope",
                    ));
                }
                self.arm_denied
                    .push(scope.trim_end_matches('/').to_ascii_lowercase());
            }
            self.subscriptions.push(Subscription {
                id,
                display_name: sub.name.clone(),
                resource_groups: sub.resource_groups.clone(),
            });
        }
        Ok(())
    }

    /// `spec.azureRoles`.
    fn load_azure_roles(&mut self, roles: &[AzureRoleSpec]) -> Result<(), ScenarioError> {
        for (i, r) in roles.iter().enumerate() {
            let field = format!("spec.azureRoles[{i}]");
            let id = id_or_derived(
                &r.id,
                &format!("{field}.id"),
                self.seed_value,
                "azurerole",
                &r.name,
            )?;
            self.azure_roles.push(RoleDefinition {
                id,
                display_name: r.name.clone(),
            });
        }
        Ok(())
    }

    /// `spec.catalogs`.
    fn load_catalogs(
        &mut self,
        catalogs: &[CatalogSpec],
        created: Timestamp,
    ) -> Result<(), ScenarioError> {
        for (i, c) in catalogs.iter().enumerate() {
            let field = format!("spec.catalogs[{i}]");
            let id = id_or_derived(
                &c.id,
                &format!("{field}.id"),
                self.seed_value,
                "catalog",
                &c.name,
            )?;
            self.catalogs.push(Catalog {
                id,
                display_name: c.name.clone(),
                description: c.description.clone(),
                created,
            });
        }
        Ok(())
    }

    /// `spec.accessPackages`, each with its resource role scopes and policies.
    fn load_packages(
        &mut self,
        packages: &[AccessPackageSpec],
        created: Timestamp,
    ) -> Result<(), ScenarioError> {
        for (i, p) in packages.iter().enumerate() {
            let field = format!("spec.accessPackages[{i}]");
            let id = id_or_derived(
                &p.id,
                &format!("{field}.id"),
                self.seed_value,
                "package",
                &p.name,
            )?;
            if self.package_named(&p.name).is_some() {
                return Err(ScenarioError::invalid(
                    field,
                    format!("access package {} is declared twice", p.name),
                ));
            }
            let catalog_id = self
                .catalogs
                .iter()
                .find(|c| c.display_name.eq_ignore_ascii_case(&p.catalog))
                .map(|c| c.id.clone())
                .ok_or_else(|| {
                    ScenarioError::invalid(
                        format!("{field}.catalog"),
                        format!("no catalog named {:?}; add it to spec.catalogs", p.catalog),
                    )
                })?;
            let role_scopes = self.scenario_role_scopes(&field, &p.resources, &catalog_id)?;
            self.packages.push(Package {
                id: id.clone(),
                display_name: p.name.clone(),
                description: p.description.clone(),
                catalog_id,
                role_scopes,
                created,
            });
            self.load_policies(&field, p, &id, created)?;
        }
        Ok(())
    }

    /// The resource role scopes of a package in catalog `catalog_id` (`{field}.resources`).
    fn scenario_role_scopes(
        &self,
        field: &str,
        resources: &[ResourceSpec],
        catalog_id: &str,
    ) -> Result<Vec<RoleScope>, ScenarioError> {
        let seed = self.seed_value;
        let mut role_scopes = Vec::new();
        for (j, r) in resources.iter().enumerate() {
            let grant = self.resolve_grant(&format!("{field}.resources[{j}]"), r)?;
            let info = self.grant_info(&grant);
            // Roles and scopes belong to the catalog's resource, so two packages of one
            // catalog granting the same role share its id (as in Graph).
            role_scopes.push(RoleScope {
                role_id: role_id_for(seed, catalog_id, info.origin_system, &info.role_key()),
                scope_id: scope_id_for(seed, catalog_id, &info.scope_origin),
                grant,
            });
        }
        Ok(role_scopes)
    }

    /// The policies of package `p` (id `package_id`): one "Direct assignment" when it
    /// declares none.
    fn load_policies(
        &mut self,
        field: &str,
        p: &AccessPackageSpec,
        package_id: &str,
        created: Timestamp,
    ) -> Result<(), ScenarioError> {
        let default_policy = [PolicySpec {
            name: "Direct assignment".into(),
            ..Default::default()
        }];
        let policies = if p.policies.is_empty() {
            &default_policy[..]
        } else {
            &p.policies[..]
        };
        for (j, pol) in policies.iter().enumerate() {
            let pid = id_or_derived(
                &pol.id,
                &format!("{field}.policies[{j}].id"),
                self.seed_value,
                "policy",
                &format!("{}/{}", p.name, pol.name),
            )?;
            self.policies.push(Policy {
                id: pid,
                display_name: pol.name.clone(),
                description: pol.description.clone(),
                package_id: package_id.to_string(),
                created,
            });
        }
        Ok(())
    }

    /// `spec.assignments`, each with the `adminAdd` request that created it.
    fn load_assignments(
        &mut self,
        assignments: &[AssignmentSpec],
        created: Timestamp,
    ) -> Result<(), ScenarioError> {
        for (i, a) in assignments.iter().enumerate() {
            let field = format!("spec.assignments[{i}]");
            let state = match a.state.as_deref() {
                None => AssignmentState::Delivered,
                Some(text) => text.parse().map_err(|_| {
                    ScenarioError::invalid(
                        format!("{field}.state"),
                        format!(
                            "{text:?} is not an assignment state ({})",
                            one_of(AssignmentState::VARIANTS)
                        ),
                    )
                })?,
            };
            let aid = self.scenario_assignment(
                &field,
                &a.user,
                &a.package,
                a.policy.as_deref(),
                a.id.as_deref(),
                state,
                &a.missing,
                created,
            )?;
            self.implicit_request(&field, a, aid, state, created)?;
        }
        Ok(())
    }

    /// Every real assignment was created by a request: the `adminAdd` of assignment `aid`,
    /// just loaded from `a`.
    fn implicit_request(
        &mut self,
        field: &str,
        a: &AssignmentSpec,
        aid: String,
        state: AssignmentState,
        created: Timestamp,
    ) -> Result<(), ScenarioError> {
        let req_state = RequestState::creating(state);
        let (pkg, pol, target) = {
            // scenario_assignment just pushed it; a lookup by id would make loading
            // quadratic for large synthetic tenants.
            let asg = self
                .assignments
                .last()
                .filter(|a| a.id == aid)
                .ok_or_else(|| {
                    ScenarioError::invalid(field, "assignment vanished while loading")
                })?;
            (
                asg.package_id.clone(),
                asg.policy_id.clone(),
                asg.target_id.clone(),
            )
        };
        let rid = derive_id(
            self.seed_value,
            "request",
            &format!("{}/{}/implicit", a.user, a.package),
        );
        let completed = (!req_state.is_open()).then_some(created);
        self.requests.push(Request {
            id: rid,
            request_type: RequestType::AdminAdd,
            state: req_state,
            created: Some(created),
            completed,
            package_id: pkg,
            policy_id: pol,
            target_id: target,
            assignment_id: Some(aid),
            justification: None,
            rev: 0,
        });
        Ok(())
    }

    fn scenario_user(&self, field: &str, upn: &str) -> Result<String, ScenarioError> {
        self.user_by_upn(upn).map(|u| u.id.clone()).ok_or_else(|| {
            ScenarioError::invalid(field, format!("no user {upn:?}; add it to spec.users"))
        })
    }

    fn resolve_app_role(
        &self,
        sp_idx: usize,
        role: Option<&str>,
        field: &str,
    ) -> Result<String, ScenarioError> {
        let sp = &self.sps[sp_idx];
        match role {
            None => Ok(DEFAULT_ACCESS_ROLE.into()),
            Some(r) => sp
                .app_roles
                .iter()
                .find(|ar| {
                    ar.value.eq_ignore_ascii_case(r)
                        || ar.display_name.eq_ignore_ascii_case(r)
                        || ar.id.eq_ignore_ascii_case(r)
                })
                .map(|ar| ar.id.clone())
                .ok_or_else(|| {
                    ScenarioError::invalid(
                        field,
                        format!("app {} has no app role {r:?}", sp.display_name),
                    )
                }),
        }
    }

    fn resolve_grant(&self, field: &str, r: &ResourceSpec) -> Result<Grant, ScenarioError> {
        let kinds = [
            r.group.is_some(),
            r.app.is_some(),
            r.share_point_site.is_some(),
            r.entra_role.is_some(),
            r.azure_role.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if kinds != 1 {
            return Err(ScenarioError::invalid(
                field,
                "set exactly one of group, app, sharePointSite, entraRole, azureRole",
            ));
        }
        if let Some(name) = &r.azure_role {
            return self.resolve_azure_grant(field, name, r);
        }
        if let Some(name) = &r.entra_role {
            let role_definition_id = self
                .role_definition_named(name)
                .map(|d| d.id.clone())
                .ok_or_else(|| {
                    ScenarioError::invalid(
                        format!("{field}.entraRole"),
                        format!("no directory role {name:?}; add it to spec.directoryRoles"),
                    )
                })?;
            return match r.role.as_deref().unwrap_or("Eligible") {
                m if m.eq_ignore_ascii_case("eligible") => Ok(Grant::EntraRole {
                    role_definition_id,
                    eligible: true,
                }),
                m if m.eq_ignore_ascii_case("active") => Ok(Grant::EntraRole {
                    role_definition_id,
                    eligible: false,
                }),
                other => Err(ScenarioError::invalid(
                    format!("{field}.role"),
                    format!("{other:?} is not an Entra role mode; use Eligible or Active"),
                )),
            };
        }
        if let Some(g) = &r.group {
            let gid = self.group_named(g).map(|g| g.id.clone()).ok_or_else(|| {
                ScenarioError::invalid(
                    format!("{field}.group"),
                    format!("no group {g:?}; add it to spec.groups"),
                )
            })?;
            return match r.role.as_deref().unwrap_or("Member") {
                r if r.eq_ignore_ascii_case("member") => Ok(Grant::GroupMember(gid)),
                r if r.eq_ignore_ascii_case("owner") => Ok(Grant::GroupOwner(gid)),
                r if r.eq_ignore_ascii_case("eligible member")
                    || r.eq_ignore_ascii_case("eligiblemember") =>
                {
                    Ok(Grant::GroupEligible {
                        group_id: gid,
                        owner: false,
                    })
                }
                r if r.eq_ignore_ascii_case("eligible owner")
                    || r.eq_ignore_ascii_case("eligibleowner") =>
                {
                    Ok(Grant::GroupEligible {
                        group_id: gid,
                        owner: true,
                    })
                }
                other => Err(ScenarioError::invalid(
                    format!("{field}.role"),
                    format!(
                        "{other:?} is not a group role; use Member, Owner, Eligible Member or Eligible Owner"
                    ),
                )),
            };
        }
        if let Some(app) = &r.app {
            let idx = self
                .sps
                .iter()
                .position(|s| s.display_name.eq_ignore_ascii_case(app))
                .ok_or_else(|| {
                    ScenarioError::invalid(
                        format!("{field}.app"),
                        format!("no service principal {app:?}; add it to spec.servicePrincipals"),
                    )
                })?;
            let role_id =
                self.resolve_app_role(idx, r.app_role.as_deref(), &format!("{field}.appRole"))?;
            return Ok(Grant::AppRole {
                sp_id: self.sps[idx].id.clone(),
                role_id,
            });
        }
        Ok(Grant::SharePoint {
            site: r.share_point_site.clone().unwrap_or_default(),
            role: r.role.clone().unwrap_or_else(|| "Visitors".into()),
            role_origin_id: r.role_origin_id.clone().unwrap_or_else(|| "4".into()),
        })
    }

    fn resolve_azure_grant(
        &self,
        field: &str,
        name: &str,
        r: &ResourceSpec,
    ) -> Result<Grant, ScenarioError> {
        let role = self
            .azure_roles
            .iter()
            .find(|d| d.display_name.eq_ignore_ascii_case(name) || d.id.eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                ScenarioError::invalid(
                    format!("{field}.azureRole"),
                    format!("no Azure role {name:?}; add it to spec.azureRoles"),
                )
            })?;
        let sub_name = r.subscription.as_deref().ok_or_else(|| {
            ScenarioError::invalid(
                format!("{field}.subscription"),
                "an azureRole needs the subscription it is granted on",
            )
        })?;
        let sub = self
            .subscriptions
            .iter()
            .find(|s| {
                s.display_name.eq_ignore_ascii_case(sub_name) || s.id.eq_ignore_ascii_case(sub_name)
            })
            .ok_or_else(|| {
                ScenarioError::invalid(
                    format!("{field}.subscription"),
                    format!("no subscription {sub_name:?}; add it to spec.subscriptions"),
                )
            })?;
        let scope = match &r.resource_group {
            None => format!("/subscriptions/{}", sub.id),
            Some(rg) => {
                let Some(rg) = sub
                    .resource_groups
                    .iter()
                    .find(|g| g.eq_ignore_ascii_case(rg))
                else {
                    return Err(ScenarioError::invalid(
                        format!("{field}.resourceGroup"),
                        format!(
                            "no resource group {rg:?} in subscription {}; add it to its resourceGroups",
                            sub.display_name
                        ),
                    ));
                };
                format!("/subscriptions/{}/resourceGroups/{rg}", sub.id)
            }
        };
        let eligible = match r.role.as_deref().unwrap_or("Active") {
            m if m.eq_ignore_ascii_case("eligible") => true,
            m if m.eq_ignore_ascii_case("active") => false,
            other => {
                return Err(ScenarioError::invalid(
                    format!("{field}.role"),
                    format!("{other:?} is not an Azure role mode; use Active or Eligible"),
                ));
            }
        };
        Ok(Grant::AzureRole {
            role_guid: role.id.clone(),
            subscription_id: sub.id.clone(),
            scope,
            eligible,
        })
    }

    fn resolve_scenario_refs(
        &self,
        field: &str,
        user: &str,
        package: &str,
        policy: Option<&str>,
    ) -> Result<(String, String, String), ScenarioError> {
        let uid = self.scenario_user(&format!("{field}.user"), user)?;
        let pkg = self.package_named(package).ok_or_else(|| {
            ScenarioError::invalid(
                format!("{field}.package"),
                format!("no access package {package:?}; add it to spec.accessPackages"),
            )
        })?;
        let pol = self
            .policies
            .iter()
            .filter(|p| p.package_id == pkg.id)
            .find(|p| policy.is_none_or(|n| p.display_name.eq_ignore_ascii_case(n)))
            .ok_or_else(|| {
                ScenarioError::invalid(
                    format!("{field}.policy"),
                    format!("package {package:?} has no policy {policy:?}"),
                )
            })?;
        Ok((uid, pkg.id.clone(), pol.id.clone()))
    }

    #[allow(clippy::too_many_arguments)]
    fn scenario_assignment(
        &mut self,
        field: &str,
        user: &str,
        package: &str,
        policy: Option<&str>,
        id: Option<&str>,
        state: AssignmentState,
        missing: &[String],
        start: Timestamp,
    ) -> Result<String, ScenarioError> {
        let (uid, pkg_id, pol_id) = self.resolve_scenario_refs(field, user, package, policy)?;
        let seed_name = format!("{user}/{package}");
        let aid = match id {
            Some(i) => valid_guid(&format!("{field}.id"), i)?,
            None => {
                // A user may hold the same package more than once over time (an expired
                // and a current assignment): number the repeats.
                let mut aid = derive_id(self.seed(), "assignment", &seed_name);
                let mut n = 1;
                while self.loaded_assignment_ids.contains(&aid) {
                    n += 1;
                    aid = derive_id(self.seed(), "assignment", &format!("{seed_name}#{n}"));
                }
                aid
            }
        };
        if !self.loaded_assignment_ids.insert(aid.clone()) {
            return Err(ScenarioError::invalid(
                format!("{field}.id"),
                format!("assignment id {aid} is used twice"),
            ));
        }
        let pkg_idx = self.package_index(&pkg_id).unwrap_or_default();
        for m in missing {
            let known = self.packages[pkg_idx]
                .role_scopes
                .iter()
                .any(|rs| self.grant_label(&rs.grant).eq_ignore_ascii_case(m));
            if !known {
                return Err(ScenarioError::invalid(
                    format!("{field}.missing"),
                    format!("{m:?} is not a group or app granted by package {package:?}"),
                ));
            }
        }
        if matches!(
            state,
            AssignmentState::Delivered | AssignmentState::PartiallyDelivered
        ) {
            let grants: Vec<Grant> = self.packages[pkg_idx]
                .role_scopes
                .iter()
                .filter(|rs| {
                    let name = self.grant_label(&rs.grant);
                    !missing.iter().any(|m| m.eq_ignore_ascii_case(&name))
                })
                .map(|rs| rs.grant.clone())
                .collect();
            for g in grants {
                self.apply_grant(&g, &uid, start);
            }
        }
        self.assignment_by_id
            .insert(lc(&aid), self.assignments.len());
        self.assignments.push(Assignment {
            id: aid.clone(),
            package_id: pkg_id,
            policy_id: pol_id,
            target_id: uid,
            state,
            start,
            expired: (state == AssignmentState::Expired).then_some(start),
            rev: 0,
        });
        Ok(aid)
    }

    fn scenario_request(
        &mut self,
        field: &str,
        r: &super::scenario::RequestSpec,
        now: Timestamp,
    ) -> Result<(), ScenarioError> {
        let rtype = match r.request_type.as_deref() {
            None => RequestType::AdminAdd,
            Some(text) => text.parse().map_err(|_| {
                ScenarioError::invalid(
                    format!("{field}.type"),
                    format!(
                        "{text:?} is not a request type ({})",
                        one_of(RequestType::VARIANTS)
                    ),
                )
            })?,
        };
        let state: RequestState = r.state.parse().map_err(|_| {
            ScenarioError::invalid(
                format!("{field}.state"),
                format!(
                    "{:?} is not a request state ({})",
                    r.state,
                    one_of(RequestState::VARIANTS)
                ),
            )
        })?;
        let ago = match &r.completed_ago {
            None => SignedDuration::from_hours(1),
            Some(s) => super::scenario::parse_duration(s)
                .map_err(|e| ScenarioError::invalid(format!("{field}.completedAgo"), e))?,
        };
        let completed = now - ago;
        let (uid, pkg_id, pol_id) =
            self.resolve_scenario_refs(field, &r.user, &r.package, r.policy.as_deref())?;
        let rid = match &r.id {
            Some(i) => valid_guid(&format!("{field}.id"), i)?,
            None => derive_id(
                self.seed(),
                "request",
                &format!("{}/{}/{}/{}", r.user, r.package, rtype.as_str(), field),
            ),
        };
        let existing = self
            .assignments
            .iter()
            .find(|a| {
                a.target_id == uid && a.package_id == pkg_id && a.state != AssignmentState::Expired
            })
            .map(|a| a.id.clone());
        let assignment_id = match existing {
            Some(id) => Some(id),
            None if rtype.adds()
                && matches!(
                    state,
                    RequestState::DeliveryFailed
                        | RequestState::PartiallyDelivered
                        | RequestState::Delivered
                        | RequestState::Delivering
                ) =>
            {
                Some(self.scenario_assignment(
                    field,
                    &r.user,
                    &r.package,
                    r.policy.as_deref(),
                    None,
                    match state {
                        RequestState::PartiallyDelivered => AssignmentState::PartiallyDelivered,
                        RequestState::Delivered => AssignmentState::Delivered,
                        RequestState::Delivering => AssignmentState::Delivering,
                        _ => AssignmentState::DeliveryFailed,
                    },
                    &r.missing,
                    completed,
                )?)
            }
            None => None,
        };
        self.requests.push(Request {
            id: rid,
            request_type: rtype,
            state,
            created: Some(completed - SignedDuration::from_mins(5)),
            completed: (!state.is_open()).then_some(completed),
            package_id: pkg_id,
            policy_id: pol_id,
            target_id: uid,
            assignment_id,
            justification: None,
            rev: 0,
        });
        Ok(())
    }

    fn seed(&self) -> u64 {
        self.seed_value
    }
}

/// How a grant shows up in entitlement management (the `originId` conventions in docs/graph.md
/// "What a package promises").
#[derive(Debug, Clone)]
pub(crate) struct GrantInfo {
    pub origin_system: &'static str,
    pub role_name: String,
    pub role_origin: String,
    pub scope_origin: String,
    pub resource_name: String,
    /// The scope's display name: the resource's name, or `Root` for an Entra role's
    /// directory-wide scope.
    pub scope_name: String,
    /// The catalog resource's `originId` (group, service principal, site, role definition,
    /// subscription).
    pub resource_origin: String,
    /// The role's `type` (`active` / `eligible`), for Azure roles only.
    pub role_type: Option<&'static str>,
}

impl GrantInfo {
    /// A role whose one scope is the whole resource (`resource_origin`, named
    /// `resource_name`).
    fn whole_resource(
        origin_system: &'static str,
        role_name: String,
        role_origin: String,
        resource_origin: &str,
        resource_name: String,
    ) -> Self {
        GrantInfo {
            origin_system,
            role_name,
            role_origin,
            scope_origin: resource_origin.to_string(),
            scope_name: resource_name.clone(),
            resource_origin: resource_origin.to_string(),
            role_type: None,
            resource_name,
        }
    }

    /// What makes the catalog role distinct: its origin id, and for an Azure role also
    /// whether it is granted eligible or active (one role definition, two catalog roles).
    pub fn role_key(&self) -> String {
        match self.role_type {
            Some(t) => format!("{}#{t}", self.role_origin),
            None => self.role_origin.clone(),
        }
    }
}

/// Id of a catalog resource role.
pub(crate) fn role_id_for(seed: u64, catalog_id: &str, system: &str, role_origin: &str) -> String {
    derive_id(
        seed,
        "role",
        &format!("{catalog_id}/{system}/{role_origin}"),
    )
}

/// Id of a catalog resource's root scope.
pub(crate) fn scope_id_for(seed: u64, catalog_id: &str, scope_origin: &str) -> String {
    derive_id(seed, "scope", &format!("{catalog_id}/{scope_origin}"))
}

/// Id of a catalog resource.
pub(crate) fn resource_id_for(seed: u64, catalog_id: &str, scope_origin: &str) -> String {
    derive_id(seed, "resource", &format!("{catalog_id}/{scope_origin}"))
}

impl World {
    /// The simulator's clock (real time plus the admin-controlled offset).
    pub fn now(&self) -> Timestamp {
        Timestamp::now() + self.clock_offset
    }

    /// A fresh id from the seeded generator (same seed and same call order ⇒ same ids).
    pub fn next_id(&mut self) -> String {
        let mut bytes = [0u8; 16];
        self.rng.fill_bytes(&mut bytes);
        uuid::Builder::from_random_bytes(bytes)
            .into_uuid()
            .to_string()
    }

    pub fn user(&self, id: &str) -> Option<&User> {
        self.user_by_id.get(&lc(id)).map(|i| &self.users[*i])
    }

    pub fn user_by_upn(&self, upn: &str) -> Option<&User> {
        self.user_by_upn.get(&lc(upn)).map(|i| &self.users[*i])
    }

    /// A user by object id or UPN.
    pub fn user_ref(&self, key: &str) -> Option<&User> {
        self.user(key).or_else(|| self.user_by_upn(key))
    }

    /// Sets `accountEnabled`; returns whether it changed (false for an unknown user).
    pub fn set_account_enabled(&mut self, user_id: &str, enabled: bool) -> bool {
        let Some(i) = self.user_by_id.get(&lc(user_id)).copied() else {
            return false;
        };
        let changed = self.users[i].account_enabled != enabled;
        self.users[i].account_enabled = enabled;
        changed
    }

    /// Deletes a user as Entra does: the object leaves every directory read (users,
    /// group members and owners, app role and role assignments) and cannot be granted
    /// anything again. Entitlement management's assignments keep naming the target (their
    /// subject keeps its object id); a flagged risky user stays listed with `isDeleted`.
    /// Returns false for an unknown user.
    pub fn delete_user(&mut self, user_id: &str) -> bool {
        let Some(i) = self.user_by_id.get(&lc(user_id)).copied() else {
            return false;
        };
        let id = self.users.remove(i).id;
        self.user_by_id.clear();
        self.user_by_upn.clear();
        for (n, u) in self.users.iter().enumerate() {
            self.user_by_id.insert(lc(&u.id), n);
            self.user_by_upn.insert(lc(&u.upn), n);
        }
        let groups: Vec<String> = self
            .groups
            .iter()
            .filter(|g| g.members.contains(&id))
            .map(|g| g.id.clone())
            .collect();
        for g in groups {
            self.remove_member(&g, &id);
        }
        for g in &mut self.groups {
            g.owners.remove(&id);
        }
        for sp in &mut self.sps {
            sp.assigned_to.retain(|a| a.principal_id != id);
        }
        self.role_assignments.retain(|g| g.principal_id != id);
        self.role_eligibilities.retain(|g| g.principal_id != id);
        self.group_eligibilities.retain(|g| g.principal_id != id);
        self.arm_assignments.retain(|g| g.principal_id != id);
        self.arm_eligibilities.retain(|g| g.principal_id != id);
        if let Some(r) = self.risky_users.get_mut(&lc(&id)) {
            r.is_deleted = true;
        }
        true
    }

    /// Whether the app still holds `permission` (see [`World::revoked`]).
    pub fn has_permission(&self, permission: &str) -> bool {
        !self.revoked.contains(&lc(permission))
    }

    pub fn group(&self, id: &str) -> Option<&Group> {
        self.group_by_id.get(&lc(id)).map(|i| &self.groups[*i])
    }

    pub fn group_mut(&mut self, id: &str) -> Option<&mut Group> {
        self.group_by_id
            .get(&lc(id))
            .copied()
            .map(move |i| &mut self.groups[i])
    }

    pub fn group_named(&self, name: &str) -> Option<&Group> {
        self.groups
            .iter()
            .find(|g| g.display_name.eq_ignore_ascii_case(name))
    }

    /// A group by object id or display name.
    pub fn group_ref(&self, key: &str) -> Option<&Group> {
        self.group(key).or_else(|| self.group_named(key))
    }

    pub fn sp(&self, id: &str) -> Option<&ServicePrincipal> {
        self.sps.iter().find(|s| s.id.eq_ignore_ascii_case(id))
    }

    /// A service principal by object id, app id or display name.
    pub fn sp_ref(&self, key: &str) -> Option<&ServicePrincipal> {
        self.sps.iter().find(|s| {
            s.id.eq_ignore_ascii_case(key)
                || s.app_id.eq_ignore_ascii_case(key)
                || s.display_name.eq_ignore_ascii_case(key)
        })
    }

    pub fn package(&self, id: &str) -> Option<&Package> {
        self.packages.iter().find(|p| p.id.eq_ignore_ascii_case(id))
    }

    pub fn package_index(&self, id: &str) -> Option<usize> {
        self.packages
            .iter()
            .position(|p| p.id.eq_ignore_ascii_case(id))
    }

    pub fn package_named(&self, name: &str) -> Option<&Package> {
        self.packages
            .iter()
            .find(|p| p.display_name.eq_ignore_ascii_case(name))
    }

    pub fn catalog(&self, id: &str) -> Option<&Catalog> {
        self.catalogs.iter().find(|c| c.id.eq_ignore_ascii_case(id))
    }

    pub fn policy(&self, id: &str) -> Option<&Policy> {
        self.policies.iter().find(|p| p.id.eq_ignore_ascii_case(id))
    }

    /// Index into `assignments`: the id index first (large synthetic tenants list requests
    /// with their assignment expanded; a scan per item made that quadratic), then a scan.
    fn assignment_position(&self, id: &str) -> Option<usize> {
        self.assignment_by_id
            .get(&lc(id))
            .copied()
            .filter(|i| {
                self.assignments
                    .get(*i)
                    .is_some_and(|a| a.id.eq_ignore_ascii_case(id))
            })
            .or_else(|| {
                self.assignments
                    .iter()
                    .position(|a| a.id.eq_ignore_ascii_case(id))
            })
    }

    pub fn assignment(&self, id: &str) -> Option<&Assignment> {
        self.assignment_position(id).map(|i| &self.assignments[i])
    }

    pub fn assignment_mut(&mut self, id: &str) -> Option<&mut Assignment> {
        let i = self.assignment_position(id)?;
        self.assignments.get_mut(i)
    }

    pub fn request(&self, id: &str) -> Option<&Request> {
        self.requests.iter().find(|r| r.id.eq_ignore_ascii_case(id))
    }

    pub fn request_mut(&mut self, id: &str) -> Option<&mut Request> {
        self.requests
            .iter_mut()
            .find(|r| r.id.eq_ignore_ascii_case(id))
    }

    /// Origin system, role and scope origin ids and display names of a grant.
    pub fn grant_info(&self, g: &Grant) -> GrantInfo {
        let resource_name = self.grant_name(g);
        match g {
            Grant::GroupMember(gid) => GrantInfo::whole_resource(
                "AadGroup",
                "Member".into(),
                format!("Member_{gid}"),
                gid,
                resource_name,
            ),
            Grant::GroupOwner(gid) => GrantInfo::whole_resource(
                "AadGroup",
                "Owner".into(),
                format!("Owner_{gid}"),
                gid,
                resource_name,
            ),
            // As Microsoft's example spells a PIM for Groups role: `EligibleMember_{group}`
            // with the display name `Eligible Member` (docs/graph.md "What a package
            // promises").
            Grant::GroupEligible { group_id, owner } => {
                let access = if *owner { "Owner" } else { "Member" };
                GrantInfo::whole_resource(
                    "AadGroup",
                    format!("Eligible {access}"),
                    format!("Eligible{access}_{group_id}"),
                    group_id,
                    resource_name,
                )
            }
            Grant::AppRole { sp_id, role_id } => GrantInfo::whole_resource(
                "AadApplication",
                self.app_role_name(sp_id, role_id),
                role_id.clone(),
                sp_id,
                resource_name,
            ),
            Grant::SharePoint {
                site,
                role,
                role_origin_id,
            } => GrantInfo::whole_resource(
                "SharePointOnline",
                role.clone(),
                role_origin_id.clone(),
                site,
                site.rsplit('/').next().unwrap_or(site).to_string(),
            ),
            // As entitlement management spells a directory role resource: role originId
            // `Eligible`/`Active`, one root scope, the role definition id as originId.
            Grant::EntraRole {
                role_definition_id,
                eligible,
            } => GrantInfo {
                scope_name: "Root".into(),
                ..GrantInfo::whole_resource(
                    "DirectoryRole",
                    if *eligible {
                        "Eligible Member"
                    } else {
                        "Active Member"
                    }
                    .into(),
                    if *eligible { "Eligible" } else { "Active" }.into(),
                    role_definition_id,
                    resource_name,
                )
            },
            Grant::AzureRole {
                role_guid,
                subscription_id,
                scope,
                eligible,
            } => self.azure_grant_info(role_guid, subscription_id, scope, *eligible, resource_name),
        }
    }

    /// The display name of app role `role_id` of service principal `sp_id` ("Default
    /// Access" for none of its roles).
    fn app_role_name(&self, sp_id: &str, role_id: &str) -> String {
        self.sp(sp_id)
            .and_then(|s| {
                s.app_roles
                    .iter()
                    .find(|r| r.id.eq_ignore_ascii_case(role_id))
            })
            .map(|r| r.display_name.clone())
            .unwrap_or_else(|| "Default Access".into())
    }

    /// As entitlement management spells an Azure role: the role definition's full id as
    /// role originId with its `type`, the subscription as the resource, the subscription
    /// ("Root") or resource group ("/resourceGroups/{name}") as scope.
    fn azure_grant_info(
        &self,
        role_guid: &str,
        subscription_id: &str,
        scope: &str,
        eligible: bool,
        resource_name: String,
    ) -> GrantInfo {
        let sub_root = format!("/subscriptions/{subscription_id}");
        let scope_name = scope
            .strip_prefix(&sub_root)
            .filter(|rest| !rest.is_empty())
            .unwrap_or("Root")
            .to_string();
        GrantInfo {
            origin_system: "AzureResources",
            role_name: self
                .azure_roles
                .iter()
                .find(|d| d.id.eq_ignore_ascii_case(role_guid))
                .map(|d| d.display_name.clone())
                .unwrap_or_default(),
            role_origin: format!(
                "{sub_root}/providers/Microsoft.Authorization/roleDefinitions/{role_guid}"
            ),
            scope_origin: scope.to_string(),
            scope_name,
            resource_origin: sub_root,
            role_type: Some(if eligible { "eligible" } else { "active" }),
            resource_name,
        }
    }

    /// Name of the group/app a grant targets (what `missing:` refers to).
    pub fn grant_name(&self, g: &Grant) -> String {
        match g {
            Grant::GroupMember(id)
            | Grant::GroupOwner(id)
            | Grant::GroupEligible { group_id: id, .. } => self
                .group(id)
                .map(|g| g.display_name.clone())
                .unwrap_or_default(),
            Grant::AppRole { sp_id, .. } => self
                .sp(sp_id)
                .map(|s| s.display_name.clone())
                .unwrap_or_default(),
            Grant::SharePoint { site, .. } => site.clone(),
            Grant::EntraRole {
                role_definition_id, ..
            } => self
                .role_definition(role_definition_id)
                .map(|d| d.display_name.clone())
                .unwrap_or_default(),
            Grant::AzureRole {
                subscription_id, ..
            } => self
                .subscriptions
                .iter()
                .find(|s| s.id.eq_ignore_ascii_case(subscription_id))
                .map(|s| s.display_name.clone())
                .unwrap_or_default(),
        }
    }

    /// What `missing:` calls a grant: a role's name, anything else its resource's name.
    pub fn grant_label(&self, g: &Grant) -> String {
        match g {
            Grant::AzureRole { .. } => self.grant_info(g).role_name,
            _ => self.grant_name(g),
        }
    }

    fn arm_list_mut(&mut self, eligible: bool) -> &mut Vec<ArmRoleGrant> {
        if eligible {
            &mut self.arm_eligibilities
        } else {
            &mut self.arm_assignments
        }
    }

    /// Whether a user holds an Azure role at exactly `scope`.
    pub fn has_azure_role(
        &self,
        role_guid: &str,
        scope: &str,
        user_id: &str,
        eligible: bool,
    ) -> bool {
        let list = if eligible {
            &self.arm_eligibilities
        } else {
            &self.arm_assignments
        };
        list.iter().any(|g| {
            g.principal_id == user_id
                && g.scope.eq_ignore_ascii_case(scope)
                && g.role_guid.eq_ignore_ascii_case(role_guid)
        })
    }

    /// Grants an Azure role at `scope` unless the user already holds it there.
    pub fn add_azure_role(
        &mut self,
        role_guid: &str,
        scope: &str,
        user_id: &str,
        eligible: bool,
        at: Timestamp,
    ) -> bool {
        if self.has_azure_role(role_guid, scope, user_id, eligible) {
            return false;
        }
        let name = self.next_id();
        self.arm_list_mut(eligible).push(ArmRoleGrant {
            name,
            role_guid: role_guid.to_string(),
            principal_id: user_id.to_string(),
            scope: scope.to_string(),
            created: at,
        });
        true
    }

    /// Removes a user's Azure role at exactly `scope`; returns whether it was held.
    pub fn remove_azure_role(
        &mut self,
        role_guid: &str,
        scope: &str,
        user_id: &str,
        eligible: bool,
    ) -> bool {
        let list = self.arm_list_mut(eligible);
        let before = list.len();
        list.retain(|g| {
            !(g.principal_id == user_id
                && g.scope.eq_ignore_ascii_case(scope)
                && g.role_guid.eq_ignore_ascii_case(role_guid))
        });
        list.len() != before
    }

    /// A role definition by id.
    pub fn role_definition(&self, id: &str) -> Option<&RoleDefinition> {
        self.role_definitions
            .iter()
            .find(|d| d.id.eq_ignore_ascii_case(id))
    }

    /// A role definition by display name or id.
    pub fn role_definition_named(&self, key: &str) -> Option<&RoleDefinition> {
        self.role_definitions
            .iter()
            .find(|d| d.display_name.eq_ignore_ascii_case(key) || d.id.eq_ignore_ascii_case(key))
    }

    fn directory_roles_mut(&mut self, eligible: bool) -> &mut Vec<DirectoryRoleGrant> {
        if eligible {
            &mut self.role_eligibilities
        } else {
            &mut self.role_assignments
        }
    }

    /// Whether a user holds a role at the directory root (eligible or active).
    pub fn has_directory_role(
        &self,
        role_definition_id: &str,
        user_id: &str,
        eligible: bool,
    ) -> bool {
        let list = if eligible {
            &self.role_eligibilities
        } else {
            &self.role_assignments
        };
        list.iter().any(|g| {
            g.principal_id == user_id
                && g.directory_scope_id == "/"
                && g.role_definition_id
                    .eq_ignore_ascii_case(role_definition_id)
        })
    }

    /// Grants a role at the directory root unless the user already holds it there.
    /// Whether `user_id` has an eligibility for the group's ownership (`owner`) or
    /// membership, ended or not.
    pub fn has_group_eligibility(&self, group_id: &str, user_id: &str, owner: bool) -> bool {
        self.group_eligibilities.iter().any(|e| {
            e.owner == owner
                && e.group_id.eq_ignore_ascii_case(group_id)
                && e.principal_id.eq_ignore_ascii_case(user_id)
        })
    }

    /// Makes `user_id` eligible for the group's ownership (`owner`) or membership, until
    /// `end` (`None`: no expiration); returns false if already eligible.
    pub fn add_group_eligibility(
        &mut self,
        group_id: &str,
        user_id: &str,
        owner: bool,
        at: Timestamp,
        end: Option<Timestamp>,
    ) -> bool {
        if self.group(group_id).is_none() || self.has_group_eligibility(group_id, user_id, owner) {
            return false;
        }
        let id = self.next_id();
        self.group_eligibilities.push(GroupEligibility {
            id,
            group_id: group_id.to_string(),
            principal_id: user_id.to_string(),
            owner,
            created: at,
            end,
        });
        true
    }

    /// Removes a user's eligibility for the group's ownership (`owner`) or membership, as
    /// an admin would in PIM; returns whether there was one.
    pub fn remove_group_eligibility(&mut self, group_id: &str, user_id: &str, owner: bool) -> bool {
        let before = self.group_eligibilities.len();
        self.group_eligibilities.retain(|e| {
            !(e.owner == owner
                && e.group_id.eq_ignore_ascii_case(group_id)
                && e.principal_id.eq_ignore_ascii_case(user_id))
        });
        before != self.group_eligibilities.len()
    }

    /// Sets when a user's eligibility ends (as PIM's maximum duration would have);
    /// returns whether there was one.
    pub fn end_group_eligibility(
        &mut self,
        group_id: &str,
        user_id: &str,
        owner: bool,
        end: Timestamp,
    ) -> bool {
        let mut found = false;
        for e in self.group_eligibilities.iter_mut().filter(|e| {
            e.owner == owner
                && e.group_id.eq_ignore_ascii_case(group_id)
                && e.principal_id.eq_ignore_ascii_case(user_id)
        }) {
            e.end = Some(end);
            found = true;
        }
        found
    }

    pub fn add_directory_role(
        &mut self,
        role_definition_id: &str,
        user_id: &str,
        eligible: bool,
        at: Timestamp,
    ) -> bool {
        if self.has_directory_role(role_definition_id, user_id, eligible) {
            return false;
        }
        let id = self.next_id();
        self.directory_roles_mut(eligible).push(DirectoryRoleGrant {
            id,
            role_definition_id: role_definition_id.to_string(),
            principal_id: user_id.to_string(),
            directory_scope_id: "/".into(),
            created: at,
        });
        true
    }

    /// Removes a user's role at the directory root; returns whether it was held.
    pub fn remove_directory_role(
        &mut self,
        role_definition_id: &str,
        user_id: &str,
        eligible: bool,
    ) -> bool {
        let list = self.directory_roles_mut(eligible);
        let before = list.len();
        list.retain(|g| {
            !(g.principal_id == user_id
                && g.directory_scope_id == "/"
                && g.role_definition_id
                    .eq_ignore_ascii_case(role_definition_id))
        });
        list.len() != before
    }

    /// Members of a group including those of nested groups (nested groups themselves
    /// are listed too, as Graph's `transitiveMembers` does).
    pub fn transitive_members(&self, group_id: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut todo = vec![group_id.to_ascii_lowercase()];
        let mut seen = HashSet::new();
        while let Some(gid) = todo.pop() {
            if !seen.insert(gid.clone()) {
                continue;
            }
            if let Some(g) = self.group(&gid) {
                for m in &g.members {
                    out.insert(m.clone());
                    if self.group(m).is_some() {
                        todo.push(m.clone());
                    }
                }
            }
        }
        out
    }

    /// Adds a member; returns false if already a member or the group is unknown.
    /// Every change is recorded for group delta.
    pub fn add_member(&mut self, group_id: &str, object_id: &str) -> bool {
        let Some(g) = self.group_mut(group_id) else {
            return false;
        };
        let gid = g.id.clone();
        if !g.members.insert(object_id.to_string()) {
            return false;
        }
        self.record_delta(gid, object_id, true);
        true
    }

    /// Removes a member; returns false if it was not a member or the group is unknown.
    pub fn remove_member(&mut self, group_id: &str, object_id: &str) -> bool {
        let Some(g) = self.group_mut(group_id) else {
            return false;
        };
        let gid = g.id.clone();
        if !g.members.remove(object_id) {
            return false;
        }
        self.record_delta(gid, object_id, false);
        true
    }

    fn record_delta(&mut self, group_id: String, member_id: &str, added: bool) {
        self.delta_version += 1;
        self.delta_log.push(DeltaChange {
            version: self.delta_version,
            group_id,
            member_id: member_id.to_string(),
            added,
        });
    }

    /// Adds an app role assignment unless the same (principal, role) already exists.
    pub fn add_app_role(
        &mut self,
        sp_id: &str,
        principal_id: &str,
        role_id: &str,
        at: Timestamp,
    ) -> bool {
        let Some(idx) = self
            .sps
            .iter()
            .position(|s| s.id.eq_ignore_ascii_case(sp_id))
        else {
            return false;
        };
        let exists = self.sps[idx]
            .assigned_to
            .iter()
            .any(|a| a.principal_id == principal_id && a.app_role_id.eq_ignore_ascii_case(role_id));
        if exists {
            return false;
        }
        let id = self.next_id();
        self.sps[idx].assigned_to.push(AppRoleAssignment {
            id,
            app_role_id: role_id.to_string(),
            principal_id: principal_id.to_string(),
            created: at,
        });
        true
    }

    /// Removes app role assignments of a principal (one role, or all roles when `None`).
    /// Returns how many were removed.
    pub fn remove_app_role(
        &mut self,
        sp_id: &str,
        principal_id: &str,
        role_id: Option<&str>,
    ) -> usize {
        let Some(sp) = self
            .sps
            .iter_mut()
            .find(|s| s.id.eq_ignore_ascii_case(sp_id))
        else {
            return 0;
        };
        let before = sp.assigned_to.len();
        sp.assigned_to.retain(|a| {
            !(a.principal_id == principal_id
                && role_id.is_none_or(|r| a.app_role_id.eq_ignore_ascii_case(r)))
        });
        before - sp.assigned_to.len()
    }

    /// Applies one grant for a user; returns true if something changed.
    pub fn apply_grant(&mut self, g: &Grant, user_id: &str, at: Timestamp) -> bool {
        match g {
            Grant::GroupMember(gid) => self.add_member(gid, user_id),
            Grant::GroupOwner(gid) => self
                .group_mut(gid)
                .is_some_and(|g| g.owners.insert(user_id.to_string())),
            Grant::GroupEligible { group_id, owner } => {
                self.add_group_eligibility(group_id, user_id, *owner, at, None)
            }
            Grant::AppRole { sp_id, role_id } => self.add_app_role(sp_id, user_id, role_id, at),
            Grant::SharePoint { .. } => false,
            Grant::EntraRole {
                role_definition_id,
                eligible,
            } => self.add_directory_role(role_definition_id, user_id, *eligible, at),
            Grant::AzureRole {
                role_guid,
                scope,
                eligible,
                ..
            } => self.add_azure_role(role_guid, scope, user_id, *eligible, at),
        }
    }

    /// Whether a verifiable grant is really in place for the user.
    pub fn grant_present(&self, g: &Grant, user_id: &str) -> bool {
        match g {
            Grant::GroupMember(gid) => self.group(gid).is_some_and(|g| g.members.contains(user_id)),
            Grant::GroupOwner(gid) => self.group(gid).is_some_and(|g| g.owners.contains(user_id)),
            Grant::GroupEligible { group_id, owner } => {
                self.has_group_eligibility(group_id, user_id, *owner)
            }
            Grant::AppRole { sp_id, role_id } => self.sp(sp_id).is_some_and(|s| {
                s.assigned_to.iter().any(|a| {
                    a.principal_id == user_id && a.app_role_id.eq_ignore_ascii_case(role_id)
                })
            }),
            Grant::SharePoint { .. } => true,
            Grant::EntraRole {
                role_definition_id,
                eligible,
            } => self.has_directory_role(role_definition_id, user_id, *eligible),
            Grant::AzureRole {
                role_guid,
                scope,
                eligible,
                ..
            } => self.has_azure_role(role_guid, scope, user_id, *eligible),
        }
    }

    /// Applies every grant of a package for a user; returns how many were added.
    pub fn deliver_package(&mut self, package_id: &str, user_id: &str) -> usize {
        let Some(idx) = self.package_index(package_id) else {
            return 0;
        };
        let now = self.now();
        let grants: Vec<Grant> = self.packages[idx]
            .role_scopes
            .iter()
            .map(|r| r.grant.clone())
            .collect();
        self.apply_governed(&grants, user_id, now)
    }

    /// Like [`World::deliver_package`] but leaves out the package's first verifiable
    /// grant (a partial delivery).
    pub fn deliver_package_except_first(&mut self, package_id: &str, user_id: &str) -> usize {
        let Some(idx) = self.package_index(package_id) else {
            return 0;
        };
        let now = self.now();
        let mut skipped = false;
        let grants: Vec<Grant> = self.packages[idx]
            .role_scopes
            .iter()
            .map(|r| r.grant.clone())
            .filter(|g| {
                if !skipped && !matches!(g, Grant::SharePoint { .. }) {
                    skipped = true;
                    return false;
                }
                true
            })
            .collect();
        self.apply_governed(&grants, user_id, now)
    }

    /// Applies grants on entitlement management's behalf, logging each change it makes.
    fn apply_governed(&mut self, grants: &[Grant], user_id: &str, now: Timestamp) -> usize {
        // A deleted user cannot be added to anything; a disabled one can (Entra delivers
        // to disabled accounts).
        if self.user(user_id).is_none() {
            return 0;
        }
        let mut changed = 0;
        for g in grants {
            if self.apply_grant(g, user_id, now) {
                changed += 1;
                let change = match g {
                    Grant::GroupMember(_) => super::audit::Change::MemberAdded,
                    Grant::GroupOwner(_) => super::audit::Change::OwnerAdded,
                    // Role changes are not modelled in the simulator's audit log.
                    Grant::EntraRole { .. }
                    | Grant::AzureRole { .. }
                    | Grant::GroupEligible { .. }
                    | Grant::SharePoint { .. } => {
                        continue;
                    }
                    Grant::AppRole { .. } => super::audit::Change::AppRoleAdded,
                };
                self.audit_grant(g, change, super::audit::Actor::governance(), user_id);
            }
        }
        changed
    }

    /// Logs a change of `g` for `user_id` in the audit log.
    pub(crate) fn audit_grant(
        &mut self,
        g: &Grant,
        change: super::audit::Change,
        actor: super::audit::Actor,
        user_id: &str,
    ) {
        let target = match g {
            Grant::GroupMember(gid) | Grant::GroupOwner(gid) => super::audit::Target {
                id: gid.clone(),
                display_name: self
                    .group(gid)
                    .map(|g| g.display_name.clone())
                    .unwrap_or_default(),
                app_role_id: None,
            },
            Grant::AppRole { sp_id, role_id } => super::audit::Target {
                id: sp_id.clone(),
                display_name: self
                    .sp(sp_id)
                    .map(|s| s.display_name.clone())
                    .unwrap_or_default(),
                app_role_id: Some(role_id.clone()),
            },
            Grant::SharePoint { .. }
            | Grant::EntraRole { .. }
            | Grant::AzureRole { .. }
            | Grant::GroupEligible { .. } => return,
        };
        let upn = self
            .user(user_id)
            .map(|u| u.upn.clone())
            .unwrap_or_default();
        let (seed, now) = (self.seed_value, self.now());
        self.audit
            .record(seed, now, change, actor, target, user_id, &upn);
    }

    /// Removes every grant of a package from a user, except grants that another active
    /// assignment of the same user still promises.
    pub fn revoke_package(&mut self, package_id: &str, user_id: &str, except_assignment: &str) {
        let Some(idx) = self.package_index(package_id) else {
            return;
        };
        let still_promised: HashSet<usize> = self
            .assignments
            .iter()
            .filter(|a| {
                a.target_id == user_id
                    && !a.id.eq_ignore_ascii_case(except_assignment)
                    && a.state.promises_resources()
            })
            .filter_map(|a| self.package_index(&a.package_id))
            .collect();
        let keep: Vec<Grant> = still_promised
            .iter()
            .flat_map(|i| {
                self.packages[*i]
                    .role_scopes
                    .iter()
                    .map(|r| r.grant.clone())
            })
            .collect();
        let grants: Vec<Grant> = self.packages[idx]
            .role_scopes
            .iter()
            .map(|r| r.grant.clone())
            .filter(|g| !keep.contains(g))
            .collect();
        for g in grants {
            let change = match &g {
                Grant::GroupMember(gid) => self
                    .remove_member(gid, user_id)
                    .then_some(super::audit::Change::MemberRemoved),
                Grant::GroupOwner(gid) => self
                    .group_mut(gid)
                    .is_some_and(|g| g.owners.remove(user_id))
                    .then_some(super::audit::Change::OwnerRemoved),
                Grant::AppRole { sp_id, role_id } => {
                    (self.remove_app_role(sp_id, user_id, Some(role_id)) > 0)
                        .then_some(super::audit::Change::AppRoleRemoved)
                }
                Grant::SharePoint { .. } => None,
                Grant::GroupEligible { group_id, owner } => {
                    // PIM's own log, not the directory audit log: nothing to record.
                    self.remove_group_eligibility(group_id, user_id, *owner);
                    None
                }
                Grant::EntraRole {
                    role_definition_id,
                    eligible,
                } => {
                    // Not in the simulated audit log: nothing to record.
                    self.remove_directory_role(role_definition_id, user_id, *eligible);
                    None
                }
                Grant::AzureRole {
                    role_guid,
                    scope,
                    eligible,
                    ..
                } => {
                    self.remove_azure_role(role_guid, scope, user_id, *eligible);
                    None
                }
            };
            if let Some(change) = change {
                self.audit_grant(&g, change, super::audit::Actor::governance(), user_id);
            }
        }
    }

    /// Names of the verifiable grants of an assignment that are not in place.
    pub fn missing_grants(&self, assignment_id: &str) -> Vec<String> {
        let Some(a) = self.assignment(assignment_id) else {
            return Vec::new();
        };
        let Some(p) = self.package(&a.package_id) else {
            return Vec::new();
        };
        p.role_scopes
            .iter()
            .filter(|rs| !self.grant_present(&rs.grant, &a.target_id))
            .map(|rs| self.grant_label(&rs.grant))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml_spec: &str) -> Result<World, ScenarioError> {
        let doc = format!(
            "apiVersion: sim.redeliver.dev/v1\nkind: SimulatorScenario\nspec:\n{yaml_spec}"
        );
        World::from_scenario(&Scenario::from_yaml_str(&doc)?)
    }

    const BASE: &str = "  tenant: {name: t}
  users: [{upn: a@t.com}]
  groups: [{name: g1}, {name: g2}]
  catalogs: [{name: C}]
  accessPackages:
  - {name: P, catalog: C, resources: [{group: g1}, {group: g2, role: Owner}]}
";

    #[test]
    fn demo_drift_is_applied_at_load() {
        let w = World::from_scenario(&Scenario::demo()).unwrap();
        let alice = w.user_by_upn("alice@contoso.com").unwrap().id.clone();
        let a = w.assignments.iter().find(|a| a.target_id == alice).unwrap();
        assert_eq!(w.missing_grants(&a.id), vec!["fin-writers"]);
        let dave = w.user_by_upn("dave@contoso.com").unwrap().id.clone();
        let failed = w.requests.iter().find(|r| r.target_id == dave).unwrap();
        assert_eq!(failed.state, RequestState::DeliveryFailed);
        assert!(failed.assignment_id.is_some());
        assert!(
            w.requests
                .iter()
                .all(|r| r.target_id != w.user_by_upn("carol@contoso.com").unwrap().id)
        );
    }

    #[test]
    fn repeated_assignments_get_distinct_ids_and_owner_grants_apply() {
        let w = load(&format!(
            "{BASE}  assignments:\n  - {{user: a@t.com, package: P, state: expired}}\n  - {{user: a@t.com, package: P}}\n"
        ))
        .unwrap();
        assert_eq!(w.assignments.len(), 2);
        assert_ne!(w.assignments[0].id, w.assignments[1].id);
        let uid = &w.users[0].id;
        assert!(w.group_named("g1").unwrap().members.contains(uid));
        assert!(w.group_named("g2").unwrap().owners.contains(uid));
        assert!(!w.group_named("g2").unwrap().members.contains(uid));
    }

    #[test]
    fn dangling_references_name_the_field() {
        let err = load(&format!(
            "{BASE}  assignments: [{{user: a@t.com, package: Nope}}]\n"
        ))
        .unwrap_err();
        assert!(
            err.to_string().contains("spec.assignments[0].package"),
            "{err}"
        );
        let err = load(&format!(
            "{BASE}  assignments: [{{user: b@t.com, package: P}}]\n"
        ))
        .unwrap_err();
        assert!(
            err.to_string().contains("spec.assignments[0].user"),
            "{err}"
        );
        let err = load(&format!(
            "{BASE}  assignments: [{{user: a@t.com, package: P, missing: [zz]}}]\n"
        ))
        .unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        let err =
            load("  tenant: {name: t}\n  users: [{upn: a@t.com, id: not-a-guid}]\n").unwrap_err();
        assert!(err.to_string().contains("spec.users[0].id"), "{err}");
    }
}
