//! Simulator scenarios: the tenant a simulator starts from.
//!
//! A scenario is a YAML document (`apiVersion: sim.redeliver.dev/v1`, `kind:
//! SimulatorScenario`) or is built in code with [`ScenarioBuilder`] (for tests and
//! benchmarks that need large synthetic tenants). Every object id that the scenario does
//! not give is derived from the scenario `seed` and the object's name with [`derive_id`],
//! so the same scenario and seed always yield the same ids.
//!
//! ```yaml
//! apiVersion: sim.redeliver.dev/v1
//! kind: SimulatorScenario
//! metadata: {name: demo}
//! spec:
//!   seed: 42
//!   tenant: {name: contoso, id: <guid, optional>, domain: contoso.onmicrosoft.com}
//!   client: {id: <guid, optional>, secret: s3cret, assertion: <optional expected JWT>}
//!   users: [{upn: alice@contoso.com, displayName: Alice}]
//!   groups: [{name: fin-readers, members: [alice@contoso.com], owners: []}]
//!   servicePrincipals:
//!   - {name: Payroll, appRoles: [{value: Payroll.Read, displayName: Payroll reader}]}
//!   catalogs: [{name: Finance}]
//!   accessPackages:
//!   - name: Finance Analysts
//!     catalog: Finance
//!     id: <guid, optional>
//!     resources:
//!     - {group: fin-readers, role: Member}            # or Owner
//!     - {app: Payroll, appRole: Payroll.Read}         # value, displayName or id; omit for Default Access
//!     - {sharePointSite: https://contoso.sharepoint.com/sites/finance, role: Visitors, roleOriginId: "4"}
//!     policies: [{name: Direct assignment}]
//!   assignments:
//!   - {user: alice@contoso.com, package: Finance Analysts, state: delivered, missing: [fin-writers]}
//!   requests:
//!   - {user: dave@contoso.com, package: Engineering Tools, type: adminAdd, state: deliveryFailed, completedAgo: 2h}
//! ```

use std::path::Path;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// The `apiVersion` every scenario document must carry.
pub const SCENARIO_API_VERSION: &str = "sim.redeliver.dev/v1";
/// The `kind` every scenario document must carry.
pub const SCENARIO_KIND: &str = "SimulatorScenario";

const DEMO_YAML: &str = include_str!("../../../examples/tenant/demo-tenant.yaml");

/// Why a scenario could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("cannot read scenario file {path}: {source}")]
    Io {
        /// The file that was read.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The YAML did not match the scenario schema.
    #[error("scenario is not valid YAML for {SCENARIO_KIND}: {0}")]
    Yaml(#[from] serde_norway::Error),
    /// The document parsed but refers to something that does not exist or is inconsistent.
    #[error("scenario field {field}: {message}")]
    Invalid {
        /// Where in the scenario the problem is, e.g. `spec.assignments[2].package`.
        field: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

impl ScenarioError {
    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A whole scenario document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Scenario {
    /// Must be [`SCENARIO_API_VERSION`].
    pub api_version: String,
    /// Must be [`SCENARIO_KIND`].
    pub kind: String,
    /// Free-form name.
    #[serde(default)]
    pub metadata: ScenarioMetadata,
    /// The tenant.
    pub spec: ScenarioSpec,
}

/// `metadata` of a scenario.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScenarioMetadata {
    /// Scenario name, informative only.
    #[serde(default)]
    pub name: Option<String>,
}

/// The tenant a scenario describes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScenarioSpec {
    /// Seed for every derived id and for ids created while the simulator runs.
    #[serde(default)]
    pub seed: u64,
    /// Tenant identity.
    pub tenant: TenantSpec,
    /// The one application (client) allowed to get tokens.
    #[serde(default)]
    pub client: ClientSpec,
    /// Directory users.
    #[serde(default)]
    pub users: Vec<UserSpec>,
    /// Security groups.
    #[serde(default)]
    pub groups: Vec<GroupSpec>,
    /// Service principals (resource apps) with app roles.
    #[serde(default)]
    pub service_principals: Vec<ServicePrincipalSpec>,
    /// Microsoft Entra role definitions (directory roles) packages can grant.
    #[serde(default)]
    pub directory_roles: Vec<DirectoryRoleSpec>,
    /// Azure subscriptions (with resource groups) served by the simulator's Azure
    /// Resource Manager endpoint (`{base}/arm`).
    #[serde(default)]
    pub subscriptions: Vec<SubscriptionSpec>,
    /// Azure role definitions (built-in or custom) packages can grant.
    #[serde(default)]
    pub azure_roles: Vec<AzureRoleSpec>,
    /// Entitlement-management catalogs.
    #[serde(default)]
    pub catalogs: Vec<CatalogSpec>,
    /// Access packages, with their resources and policies.
    #[serde(default)]
    pub access_packages: Vec<AccessPackageSpec>,
    /// Existing assignments (memberships they promise are applied, minus `missing`).
    #[serde(default)]
    pub assignments: Vec<AssignmentSpec>,
    /// Existing assignment requests beyond the implicit `adminAdd` of every assignment.
    #[serde(default)]
    pub requests: Vec<RequestSpec>,
}

/// Tenant identity.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TenantSpec {
    /// Short name, e.g. `contoso`; also accepted in token URLs.
    pub name: String,
    /// Tenant GUID; derived from the seed and name when absent.
    #[serde(default)]
    pub id: Option<String>,
    /// Verified domain accepted in token URLs; default `{name}.onmicrosoft.com`.
    #[serde(default)]
    pub domain: Option<String>,
}

/// The application registration tokens are issued to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientSpec {
    /// Application (client) id; derived when absent.
    #[serde(default)]
    pub id: Option<String>,
    /// Client secret; default `sim-secret-{tenant name}`.
    #[serde(default)]
    pub secret: Option<String>,
    /// If set, a federated `client_assertion` must equal this value; otherwise any
    /// non-empty assertion is accepted.
    #[serde(default)]
    pub assertion: Option<String>,
    /// Display name of the app's service principal (the requestor of admin requests).
    #[serde(default)]
    pub display_name: Option<String>,
}

/// A directory user.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserSpec {
    /// userPrincipalName, e.g. `alice@contoso.com`.
    pub upn: String,
    /// Display name; default: the UPN's local part.
    #[serde(default)]
    pub display_name: Option<String>,
    /// Object id; derived when absent.
    #[serde(default)]
    pub id: Option<String>,
    /// `accountEnabled`; absent means enabled. A disabled account keeps its memberships
    /// and assignments, and entitlement management keeps delivering to it, as in Entra.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_enabled: Option<bool>,
}

/// A security group.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GroupSpec {
    /// Display name (unique in the scenario).
    pub name: String,
    /// Object id; derived when absent.
    #[serde(default)]
    pub id: Option<String>,
    /// Optional description.
    #[serde(default)]
    pub description: Option<String>,
    /// Direct members by UPN, beyond those granted by delivered assignments.
    #[serde(default)]
    pub members: Vec<String>,
    /// Owners by UPN.
    #[serde(default)]
    pub owners: Vec<String>,
}

/// A service principal of a resource application.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePrincipalSpec {
    /// Display name (unique in the scenario).
    pub name: String,
    /// Service principal object id; derived when absent.
    #[serde(default)]
    pub id: Option<String>,
    /// Application id; derived when absent.
    #[serde(default)]
    pub app_id: Option<String>,
    /// App roles the app exposes.
    #[serde(default)]
    pub app_roles: Vec<AppRoleSpec>,
    /// App role assignments that exist regardless of entitlement management.
    #[serde(default)]
    pub assignments: Vec<AppRoleGrantSpec>,
}

/// An app role of a resource application.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppRoleSpec {
    /// Role value, e.g. `Payroll.Read`.
    pub value: String,
    /// Display name; default: the value.
    #[serde(default)]
    pub display_name: Option<String>,
    /// App role id; derived when absent.
    #[serde(default)]
    pub id: Option<String>,
}

/// A pre-existing app role assignment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppRoleGrantSpec {
    /// User UPN.
    pub user: String,
    /// App role value, display name or id; absent = Default Access.
    #[serde(default)]
    pub role: Option<String>,
}

/// An entitlement-management catalog.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CatalogSpec {
    /// Display name (unique in the scenario).
    pub name: String,
    /// Catalog id; derived when absent.
    #[serde(default)]
    pub id: Option<String>,
    /// Optional description.
    #[serde(default)]
    pub description: Option<String>,
}

/// An access package.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessPackageSpec {
    /// Display name (unique in the scenario).
    pub name: String,
    /// Catalog name.
    pub catalog: String,
    /// Package id; derived when absent.
    #[serde(default)]
    pub id: Option<String>,
    /// Optional description.
    #[serde(default)]
    pub description: Option<String>,
    /// What the package grants.
    #[serde(default)]
    pub resources: Vec<ResourceSpec>,
    /// Assignment policies; a package without policies gets one named `Direct assignment`.
    #[serde(default)]
    pub policies: Vec<PolicySpec>,
}

/// A Microsoft Entra role definition (`unifiedRoleDefinition`), e.g. Global Reader.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DirectoryRoleSpec {
    /// Display name, e.g. `Global Reader`.
    pub name: String,
    /// Role definition id (for built-in roles, the role template id); derived when absent.
    #[serde(default)]
    pub id: Option<String>,
    /// Existing active role assignments at the directory root (UPNs).
    #[serde(default)]
    pub active: Vec<String>,
    /// Existing role eligibilities at the directory root (UPNs).
    #[serde(default)]
    pub eligible: Vec<String>,
}

/// An Azure subscription.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubscriptionSpec {
    /// Display name, e.g. `Finance`.
    pub name: String,
    /// Subscription id (GUID); derived when absent.
    #[serde(default)]
    pub id: Option<String>,
    /// Resource group names.
    #[serde(default)]
    pub resource_groups: Vec<String>,
    /// Scopes (`/subscriptions/{id}...` or `resourceGroups/{name}` relative to this
    /// subscription) where the simulated app lacks Reader: role reads there get 403.
    #[serde(default)]
    pub deny_reads: Vec<String>,
}

/// An Azure role definition, e.g. Contributor.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AzureRoleSpec {
    /// Display name, e.g. `Contributor`.
    pub name: String,
    /// Role definition GUID; derived when absent.
    #[serde(default)]
    pub id: Option<String>,
}

/// One resource role a package grants. Exactly one of `group`, `app`, `sharePointSite`,
/// `entraRole`, `azureRole`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceSpec {
    /// Group name: grants `Member` (default) or `Owner` (see `role`).
    #[serde(default)]
    pub group: Option<String>,
    /// Service principal name: grants the app role `appRole` (default: Default Access).
    #[serde(default)]
    pub app: Option<String>,
    /// App role value, display name or id (only with `app`).
    #[serde(default)]
    pub app_role: Option<String>,
    /// SharePoint site URL: grants the site role `role` (never verifiable through Graph).
    #[serde(default)]
    pub share_point_site: Option<String>,
    /// Entra role definition name (from `spec.directoryRoles`): grants the role at the
    /// directory root, `Eligible` (default) or `Active` (see `role`).
    #[serde(default)]
    pub entra_role: Option<String>,
    /// Azure role name (from `spec.azureRoles`): grants the role on `subscription` (and
    /// `resourceGroup`, when set), `Active` (default) or `Eligible` (see `role`).
    #[serde(default)]
    pub azure_role: Option<String>,
    /// Subscription name for `azureRole`.
    #[serde(default)]
    pub subscription: Option<String>,
    /// Resource group name for `azureRole` (the subscription itself when absent).
    #[serde(default)]
    pub resource_group: Option<String>,
    /// `Member`/`Owner` for groups; `Eligible`/`Active` for Entra and Azure roles; the site role
    /// name for SharePoint (default `Visitors`).
    #[serde(default)]
    pub role: Option<String>,
    /// SharePoint role origin id (its sequence number); default `"4"`.
    #[serde(default)]
    pub role_origin_id: Option<String>,
}

/// An assignment policy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySpec {
    /// Display name (unique within its package).
    pub name: String,
    /// Policy id; derived when absent.
    #[serde(default)]
    pub id: Option<String>,
    /// Optional description.
    #[serde(default)]
    pub description: Option<String>,
}

/// An existing assignment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AssignmentSpec {
    /// Target UPN.
    pub user: String,
    /// Package name.
    pub package: String,
    /// Policy name; default: the package's first policy.
    #[serde(default)]
    pub policy: Option<String>,
    /// Wire state literal (`delivered`, `partiallyDelivered`, `deliveryFailed`, `delivering`,
    /// `expired`); default `delivered`.
    #[serde(default)]
    pub state: Option<String>,
    /// Assignment id; derived when absent.
    #[serde(default)]
    pub id: Option<String>,
    /// Names of groups/apps removed "by hand" after delivery (the drift).
    #[serde(default)]
    pub missing: Vec<String>,
}

/// An existing assignment request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestSpec {
    /// Target UPN.
    pub user: String,
    /// Package name.
    pub package: String,
    /// Policy name; default: the package's first policy.
    #[serde(default)]
    pub policy: Option<String>,
    /// Request type literal; default `adminAdd`.
    #[serde(default, rename = "type")]
    pub request_type: Option<String>,
    /// Request state literal, e.g. `deliveryFailed`.
    pub state: String,
    /// Request id; derived when absent.
    #[serde(default)]
    pub id: Option<String>,
    /// How long ago the request completed (`2h`, `3d`, `20d`); default `1h`.
    #[serde(default)]
    pub completed_ago: Option<String>,
    /// For `partiallyDelivered`: resources (group/app names) that were not delivered.
    #[serde(default)]
    pub missing: Vec<String>,
}

impl Scenario {
    /// Parses a scenario document.
    pub fn from_yaml_str(s: &str) -> Result<Scenario, ScenarioError> {
        let scenario: Scenario = serde_norway::from_str(s)?;
        scenario.check_header()?;
        Ok(scenario)
    }

    /// Reads and parses a scenario file.
    pub fn from_file(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_yaml_str(&text)
    }

    /// The bundled demo tenant (`examples/tenant/demo-tenant.yaml`).
    pub fn demo() -> Scenario {
        // The demo is compiled in and covered by a test, so failing here is a build bug.
        Self::from_yaml_str(DEMO_YAML).unwrap_or_else(|e| panic!("embedded demo tenant: {e}"))
    }

    /// The demo tenant's YAML text.
    pub fn demo_yaml() -> &'static str {
        DEMO_YAML
    }

    /// Starts a programmatic scenario for tenant `name`.
    pub fn builder(tenant_name: &str) -> ScenarioBuilder {
        ScenarioBuilder::new(tenant_name)
    }

    /// Serialises the scenario back to YAML.
    pub fn to_yaml(&self) -> Result<String, ScenarioError> {
        Ok(serde_norway::to_string(self)?)
    }

    /// A synthetic tenant for load tests: `users` users `user{i}@{tenant}.com`, one
    /// catalog `Synthetic`, `packages` packages `pkg-{p}` each granting `groups_per_package`
    /// groups `pkg-{p}-g{k}`, and every user assigned (delivered) to package
    /// `i % packages`. Every `drift_every`-th user (if non-zero) misses the package's first
    /// group.
    pub fn synthetic(
        tenant_name: &str,
        users: usize,
        packages: usize,
        groups_per_package: usize,
        drift_every: usize,
    ) -> Scenario {
        let mut b = ScenarioBuilder::new(tenant_name);
        let packages = packages.max(1);
        b = b.catalog("Synthetic");
        for p in 0..packages {
            let mut pkg = AccessPackageSpec {
                name: format!("pkg-{p}"),
                catalog: "Synthetic".into(),
                ..Default::default()
            };
            for k in 0..groups_per_package {
                let g = format!("pkg-{p}-g{k}");
                b = b.group(&g, &[]);
                pkg.resources.push(ResourceSpec {
                    group: Some(g),
                    ..Default::default()
                });
            }
            b = b.access_package(pkg);
        }
        for i in 0..users {
            let upn = format!("user{i}@{tenant_name}.com");
            b = b.user(&upn, &format!("User {i}"));
            let mut a = AssignmentSpec {
                user: upn,
                package: format!("pkg-{}", i % packages),
                ..Default::default()
            };
            if drift_every > 0 && i % drift_every == 0 && groups_per_package > 0 {
                a.missing.push(format!("pkg-{}-g0", i % packages));
            }
            b = b.assignment(a);
        }
        b.build()
    }

    /// A synthetic tenant shaped like a large customer (see [`SyntheticTenant`]): shared
    /// groups and apps, packages promising several of them, one delivered assignment per
    /// user, and a given share drifted by outside removals.
    pub fn synthetic_tenant(t: &SyntheticTenant) -> Scenario {
        let mut b = ScenarioBuilder::new(&t.tenant_name).seed(t.seed);
        b = b.catalog("Synthetic");
        for g in 0..t.groups {
            b = b.group(&SyntheticTenant::group_name(g), &[]);
        }
        for a in 0..t.apps {
            let name = SyntheticTenant::app_name(a);
            b = b.service_principal(ServicePrincipalSpec {
                app_roles: vec![AppRoleSpec {
                    value: format!("{name}.Access"),
                    ..Default::default()
                }],
                name,
                ..Default::default()
            });
        }
        for p in 0..t.packages.max(1) {
            let resources = t
                .package_resources(p)
                .into_iter()
                .map(|r| match r {
                    SyntheticResource::Group(g) => ResourceSpec {
                        group: Some(SyntheticTenant::group_name(g)),
                        ..Default::default()
                    },
                    SyntheticResource::App(a) => ResourceSpec {
                        app: Some(SyntheticTenant::app_name(a)),
                        app_role: Some(format!("{}.Access", SyntheticTenant::app_name(a))),
                        ..Default::default()
                    },
                })
                .collect();
            let policies = if t.policies_per_package > 1 {
                (0..t.policies_per_package)
                    .map(|k| PolicySpec {
                        name: format!("Policy {k}"),
                        ..Default::default()
                    })
                    .collect()
            } else {
                Vec::new()
            };
            b = b.access_package(AccessPackageSpec {
                name: SyntheticTenant::package_name(p),
                catalog: "Synthetic".into(),
                resources,
                policies,
                ..Default::default()
            });
        }
        for i in 0..t.assignments {
            let upn = t.upn(i);
            b = b.user(&upn, &format!("User {i}"));
            let p = t.package_of(i);
            let missing = t
                .drifted_resource(i)
                .map(|r| match r {
                    SyntheticResource::Group(g) => SyntheticTenant::group_name(g),
                    SyntheticResource::App(a) => SyntheticTenant::app_name(a),
                })
                .into_iter()
                .collect();
            b = b.assignment(AssignmentSpec {
                user: upn,
                package: SyntheticTenant::package_name(p),
                policy: t.policy_of(i),
                missing,
                ..Default::default()
            });
        }
        b.build()
    }

    fn check_header(&self) -> Result<(), ScenarioError> {
        if self.api_version != SCENARIO_API_VERSION {
            return Err(ScenarioError::invalid(
                "apiVersion",
                format!(
                    "is {:?}; set it to {SCENARIO_API_VERSION:?}",
                    self.api_version
                ),
            ));
        }
        if self.kind != SCENARIO_KIND {
            return Err(ScenarioError::invalid(
                "kind",
                format!("is {:?}; set it to {SCENARIO_KIND:?}", self.kind),
            ));
        }
        Ok(())
    }
}

/// The shape of [`Scenario::synthetic_tenant`].
///
/// Resources are numbered groups first (`syn-g{k}`), then apps (`syn-app{k}`, each with
/// one role `syn-app{k}.Access`). Package `p` (`syn-pkg-{p}`) promises
/// `min_resources + p % (max_resources - min_resources + 1)` consecutive resources starting
/// at resource `p * (groups + apps) / packages` (wrapping), so neighbouring packages
/// overlap and, in the [`SyntheticTenant::benchmark`] shape, every resource is promised. User `i` (`user{i}@{tenant}.com`)
/// holds one delivered assignment of package `i % packages`; one user in each block of
/// `drift_every` consecutive users (when non-zero; user `b * n + b % n` of block `b`) lost
/// one of its package's resources by an outside change, cycling through the package's
/// resources so groups and apps both drift.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntheticTenant {
    /// Tenant name (users are `user{i}@{tenant_name}.com`).
    pub tenant_name: String,
    /// Id seed.
    pub seed: u64,
    /// Delivered assignments, one per user.
    pub assignments: usize,
    /// Security groups.
    pub groups: usize,
    /// Resource apps (service principals with one app role each).
    pub apps: usize,
    /// Access packages.
    pub packages: usize,
    /// Fewest resources a package promises.
    pub min_resources: usize,
    /// Most resources a package promises.
    pub max_resources: usize,
    /// Every n-th assignment is drifted (0: none). 100 = 1 %.
    pub drift_every: usize,
    /// Assignment policies per package (0 or 1: the default single policy). With more,
    /// package `p`'s policies are `Policy {k}` and its `j`-th assignment (user
    /// `p + j * packages`) is under policy `j % policies_per_package`, so they split evenly.
    pub policies_per_package: usize,
}

/// One resource of a [`SyntheticTenant`], by index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SyntheticResource {
    /// Group `syn-g{k}` (membership `Member`).
    Group(usize),
    /// App `syn-app{k}` (role `syn-app{k}.Access`).
    App(usize),
}

impl SyntheticTenant {
    /// The issue's benchmark shape: 50 groups, 5 apps, 15 packages promising 3–5 resources
    /// each, 1 % drifted.
    pub fn benchmark(assignments: usize) -> Self {
        Self {
            tenant_name: "scale".into(),
            seed: 7,
            assignments,
            groups: 50,
            apps: 5,
            packages: 15,
            min_resources: 3,
            max_resources: 5,
            drift_every: 100,
            policies_per_package: 1,
        }
    }

    /// The policy name of user `i`'s assignment, when packages have several.
    pub fn policy_of(&self, i: usize) -> Option<String> {
        (self.policies_per_package > 1).then(|| {
            let j = i / self.packages.max(1);
            format!("Policy {}", j % self.policies_per_package)
        })
    }

    /// `syn-g{k}`.
    pub fn group_name(k: usize) -> String {
        format!("syn-g{k}")
    }

    /// `syn-app{k}`.
    pub fn app_name(k: usize) -> String {
        format!("syn-app{k}")
    }

    /// `syn-pkg-{p}`.
    pub fn package_name(p: usize) -> String {
        format!("syn-pkg-{p}")
    }

    /// UPN of user `i`.
    pub fn upn(&self, i: usize) -> String {
        format!("user{i}@{}.com", self.tenant_name)
    }

    /// The package user `i` is assigned.
    pub fn package_of(&self, i: usize) -> usize {
        i % self.packages.max(1)
    }

    /// What package `p` promises.
    pub fn package_resources(&self, p: usize) -> Vec<SyntheticResource> {
        let total = self.groups + self.apps;
        if total == 0 {
            return Vec::new();
        }
        let lo = self.min_resources.max(1).min(total);
        let hi = self.max_resources.max(lo).min(total);
        let count = lo + p % (hi - lo + 1);
        let start = p * total / self.packages.max(1);
        (0..count)
            .map(|j| {
                let r = (start + j) % total;
                if r < self.groups {
                    SyntheticResource::Group(r)
                } else {
                    SyntheticResource::App(r - self.groups)
                }
            })
            .collect()
    }

    /// The resource user `i` lost, if its assignment is drifted.
    pub fn drifted_resource(&self, i: usize) -> Option<SyntheticResource> {
        let n = self.drift_every;
        // One per block of `n` users, at a different offset in each block, so drifted users
        // fall on every package (a fixed stride would hit only a few of them).
        if n == 0 || i % n != (i / n) % n {
            return None;
        }
        let resources = self.package_resources(self.package_of(i));
        if resources.is_empty() {
            return None;
        }
        Some(resources[(i / self.drift_every) % resources.len()])
    }

    /// Number of drifted assignments.
    pub fn drifted_count(&self) -> usize {
        (0..self.assignments)
            .filter(|i| self.drifted_resource(*i).is_some())
            .count()
    }

    /// Members each group has and role assignments each app has, after the drift:
    /// `(group member counts, app assignment counts)`.
    pub fn resource_sizes(&self) -> (Vec<usize>, Vec<usize>) {
        let mut groups = vec![0usize; self.groups];
        let mut apps = vec![0usize; self.apps];
        let per_package: Vec<Vec<SyntheticResource>> = (0..self.packages.max(1))
            .map(|p| self.package_resources(p))
            .collect();
        for i in 0..self.assignments {
            let lost = self.drifted_resource(i);
            for r in &per_package[self.package_of(i)] {
                if Some(*r) == lost {
                    continue;
                }
                match r {
                    SyntheticResource::Group(g) => groups[*g] += 1,
                    SyntheticResource::App(a) => apps[*a] += 1,
                }
            }
        }
        (groups, apps)
    }
}

/// Builds a [`Scenario`] in code. Names refer to each other exactly as in YAML.
#[derive(Debug, Clone)]
pub struct ScenarioBuilder {
    scenario: Scenario,
}

impl ScenarioBuilder {
    /// A tenant with no objects, client secret `sim-secret-{name}`.
    pub fn new(tenant_name: &str) -> Self {
        Self {
            scenario: Scenario {
                api_version: SCENARIO_API_VERSION.into(),
                kind: SCENARIO_KIND.into(),
                metadata: ScenarioMetadata {
                    name: Some(tenant_name.into()),
                },
                spec: ScenarioSpec {
                    tenant: TenantSpec {
                        name: tenant_name.into(),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            },
        }
    }

    /// Sets the seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.scenario.spec.seed = seed;
        self
    }

    /// Sets the client.
    pub fn client(mut self, client: ClientSpec) -> Self {
        self.scenario.spec.client = client;
        self
    }

    /// Adds a user.
    pub fn user(mut self, upn: &str, display_name: &str) -> Self {
        self.scenario.spec.users.push(UserSpec {
            upn: upn.into(),
            display_name: Some(display_name.into()),
            ..Default::default()
        });
        self
    }

    /// Adds a user whose account is disabled (`accountEnabled: false`).
    pub fn disabled_user(mut self, upn: &str, display_name: &str) -> Self {
        self.scenario.spec.users.push(UserSpec {
            upn: upn.into(),
            display_name: Some(display_name.into()),
            account_enabled: Some(false),
            ..Default::default()
        });
        self
    }

    /// Adds a group with direct members (UPNs).
    pub fn group(mut self, name: &str, members: &[&str]) -> Self {
        self.scenario.spec.groups.push(GroupSpec {
            name: name.into(),
            members: members.iter().map(|m| m.to_string()).collect(),
            ..Default::default()
        });
        self
    }

    /// Adds a service principal.
    pub fn service_principal(mut self, sp: ServicePrincipalSpec) -> Self {
        self.scenario.spec.service_principals.push(sp);
        self
    }

    /// Adds an Entra role definition.
    pub fn directory_role(mut self, role: DirectoryRoleSpec) -> Self {
        self.scenario.spec.directory_roles.push(role);
        self
    }

    /// Adds a catalog.
    pub fn catalog(mut self, name: &str) -> Self {
        self.scenario.spec.catalogs.push(CatalogSpec {
            name: name.into(),
            ..Default::default()
        });
        self
    }

    /// Adds an access package.
    pub fn access_package(mut self, pkg: AccessPackageSpec) -> Self {
        self.scenario.spec.access_packages.push(pkg);
        self
    }

    /// Adds an assignment.
    pub fn assignment(mut self, a: AssignmentSpec) -> Self {
        self.scenario.spec.assignments.push(a);
        self
    }

    /// Adds an assignment request.
    pub fn request(mut self, r: RequestSpec) -> Self {
        self.scenario.spec.requests.push(r);
        self
    }

    /// Finishes the scenario.
    pub fn build(self) -> Scenario {
        self.scenario
    }
}

/// Parses a friendly or ISO 8601 duration (`500ms`, `2h`, `15d`, `1w 2d`, `PT2H`);
/// days count as 24 hours.
pub(crate) fn parse_duration(s: &str) -> Result<jiff::SignedDuration, String> {
    let span: jiff::Span = s
        .trim()
        .parse()
        .map_err(|e| format!("{s:?} is not a duration like 500ms, 2h or 15d: {e}"))?;
    span.to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .map_err(|e| {
            format!("{s:?} cannot be used as a fixed duration (use days or smaller units): {e}")
        })
}

/// Derives a stable GUID from the scenario seed, an object kind and its name.
/// Names are compared case-insensitively, so `Alice@Contoso.com` and `alice@contoso.com`
/// get the same id.
pub fn derive_id(seed: u64, kind: &str, name: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for b in kind.bytes().chain([0u8]).chain(name.to_lowercase().bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(h);
    let mut bytes = [0u8; 16];
    rng.fill_bytes(&mut bytes);
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable_and_seed_dependent() {
        let a = derive_id(1, "user", "alice@contoso.com");
        assert_eq!(a, derive_id(1, "user", "Alice@Contoso.com"));
        assert_ne!(a, derive_id(2, "user", "alice@contoso.com"));
        assert_ne!(a, derive_id(1, "group", "alice@contoso.com"));
        assert!(uuid::Uuid::parse_str(&a).is_ok());
    }

    #[test]
    fn demo_parses_and_round_trips() {
        let demo = Scenario::demo();
        assert_eq!(demo.spec.tenant.name, "contoso");
        let again = Scenario::from_yaml_str(&demo.to_yaml().unwrap()).unwrap();
        assert_eq!(demo, again);
    }

    #[test]
    fn synthetic_packages_can_spread_their_assignments_over_several_policies() {
        let mut t = SyntheticTenant::benchmark(120);
        t.packages = 3;
        t.policies_per_package = 4;
        let s = Scenario::synthetic_tenant(&t);
        for p in &s.spec.access_packages {
            let names: Vec<&str> = p.policies.iter().map(|x| x.name.as_str()).collect();
            assert_eq!(names, ["Policy 0", "Policy 1", "Policy 2", "Policy 3"]);
        }
        // 40 assignments per package, 10 under each of its policies.
        let mut per: std::collections::BTreeMap<(String, String), usize> = Default::default();
        for a in &s.spec.assignments {
            *per.entry((a.package.clone(), a.policy.clone().unwrap()))
                .or_default() += 1;
        }
        assert_eq!(per.len(), 12);
        assert!(per.values().all(|n| *n == 10), "{per:?}");
        // The benchmark shape keeps the single default policy.
        let one = Scenario::synthetic_tenant(&SyntheticTenant::benchmark(10));
        assert!(one.spec.assignments.iter().all(|a| a.policy.is_none()));
        assert!(
            one.spec
                .access_packages
                .iter()
                .all(|p| p.policies.is_empty())
        );
    }

    #[test]
    fn durations_accept_days() {
        assert_eq!(parse_duration("15d").unwrap().as_secs(), 15 * 86400);
        assert_eq!(parse_duration("500ms").unwrap().as_millis(), 500);
        assert!(parse_duration("1y").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn wrong_kind_is_rejected_with_the_field_name() {
        let err = Scenario::from_yaml_str(
            "apiVersion: sim.redeliver.dev/v1\nkind: Nope\nspec: {tenant: {name: x}}\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("kind"), "{err}");
    }
}
