//! `GraphConnection` (namespaced) and `ClusterGraphConnection` (cluster-scoped): which Entra
//! tenant, application and credential the objects that use them are reconciled with, and
//! `ConnectionRef`, how an `AccessPackageAssignment` or `AccessPackageGuard` names one.
//!
//! The namespace is the security boundary: a `GraphConnection` is usable only by objects in
//! its own namespace and its Secret is read from that namespace; a `ClusterGraphConnection`
//! is usable from every namespace and its Secret is read from the operator's own namespace.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use std::fmt;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{GUID_PATTERN, SpecError, is_guid};

/// The name of a namespace's default `GraphConnection`: used by every object of the namespace
/// that names no `connectionRef`.
pub const DEFAULT_CONNECTION_NAME: &str = "default";

/// The Secret key read when `clientSecret.key` is omitted.
pub const DEFAULT_SECRET_KEY: &str = "clientSecret";

/// Which kind of connection a `connectionRef` names.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ConnectionKind {
    /// A `GraphConnection` in the object's own namespace.
    #[default]
    GraphConnection,
    /// A cluster-scoped `ClusterGraphConnection`.
    ClusterGraphConnection,
}

/// Names the Graph connection an object is reconciled with.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionRef {
    /// GraphConnection (default; always in this object's own namespace) or
    /// ClusterGraphConnection.
    #[serde(default)]
    pub kind: ConnectionKind,
    /// Name of the connection (an object name, never `namespace/name`): a GraphConnection
    /// of another namespace cannot be named.
    #[schemars(length(min = 1, max = 253), regex(pattern = super::common::OBJECT_NAME_PATTERN))]
    pub name: String,
}

/// Refuses a `connectionRef` whose name cannot name an object (for declarations the schema
/// did not check, such as `redeliver audit`'s files).
pub(crate) fn check_connection_ref(r: Option<&ConnectionRef>) -> Result<(), SpecError> {
    let Some(r) = r else { return Ok(()) };
    let name = r.name.as_str();
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        });
    if valid {
        return Ok(());
    }
    let hint = match name.split_once('/') {
        Some((ns, n)) => format!(
            "; a connectionRef names a GraphConnection of the object's own namespace (or a ClusterGraphConnection), so write only its name ({n:?}) and put the object in namespace {ns:?}, or use a ClusterGraphConnection"
        ),
        None => String::new(),
    };
    Err(SpecError::new(
        "spec.connectionRef.name",
        format!("{name:?} is not an object name (lower-case letters, digits, '-' and '.'){hint}"),
    ))
}

/// A key of a Secret holding the application's client secret.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeySelector {
    /// Name of the Secret. For a GraphConnection it is read from the connection's namespace;
    /// for a ClusterGraphConnection from the operator's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret whose value is the client secret (default clientSecret).
    #[serde(default = "default_secret_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_secret_key() -> String {
    DEFAULT_SECRET_KEY.to_string()
}

/// Azure Workload Identity: a federated service-account token exchanged for a Graph token.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadIdentity {
    /// Path of the projected token file in the operator pod. When unset, the operator's
    /// AZURE_FEDERATED_TOKEN_FILE (injected by the workload-identity webhook) is used. The
    /// application named by clientId must have a federated credential for the operator's
    /// service account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub token_file: Option<String>,
}

/// How the application proves its identity. Set exactly one.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.clientSecret) != has(self.workloadIdentity)").message("set exactly one of credential.clientSecret or credential.workloadIdentity"))]
pub struct ConnectionCredential {
    /// A client secret held in a Secret key. Its value never appears in status, events or
    /// logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<SecretKeySelector>,
    /// A federated token (Azure Workload Identity) instead of a secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_identity: Option<WorkloadIdentity>,
}

// Both kinds carry the same spec; kube's derive needs one struct per kind, so the fields are
// written once here.
macro_rules! connection_spec {
    ($(#[$attr:meta])* $name:ident) => {
        $(#[$attr])*
        pub struct $name {
            /// Entra tenant id (GUID) or verified domain of the tenant that owns the access
            /// packages.
            #[schemars(length(min = 1, max = 256))]
            pub tenant_id: String,
            /// Application (client) id of the app registration used for this tenant.
            #[schemars(regex(pattern = GUID_PATTERN))]
            pub client_id: String,
            /// How the application authenticates.
            pub credential: ConnectionCredential,
            /// Entra authority host, e.g. https://login.microsoftonline.us for US
            /// Government. Default: the operator's --authority-host.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(length(min = 1, max = 2048))]
            pub authority_host: Option<String>,
            /// Microsoft Graph root URL without the version, e.g. https://graph.microsoft.us.
            /// Default: the operator's --graph-url.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(length(min = 1, max = 2048))]
            pub graph_url: Option<String>,
            /// Azure Resource Manager root URL, for packages that grant Azure roles, e.g.
            /// https://management.usgovcloudapi.net. Default: the operator's --arm-url when
            /// this connection sets no graphUrl, else derived from graphUrl for the known
            /// clouds (Azure roles are reported Unverifiable where none is known).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(length(min = 1, max = 2048))]
            pub arm_url: Option<String>,
            /// Graph calls in flight at once for this tenant. Default: the operator's
            /// --graph-concurrency.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(range(min = 1, max = 64))]
            pub concurrency: Option<u32>,
            /// Reprocess calls per minute for this tenant (a token bucket). 0 reports drift
            /// only. Default: the operator's --reprocess-rate.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(range(min = 0, max = 6000))]
            pub reprocess_rate: Option<u32>,
            /// What Redeliver asks before it grants access back in this tenant: respected
            /// actors, risky users, the mass-drift breaker (README, "Safety"). An object's own
            /// spec.safety overrides it field by field.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub safety: Option<super::SafetySpec>,
        }

        impl $name {
            /// The settings, the same for both kinds.
            pub fn settings(&self) -> ConnectionSettings {
                ConnectionSettings {
                    tenant_id: self.tenant_id.clone(),
                    client_id: self.client_id.clone(),
                    credential: self.credential.clone(),
                    authority_host: self.authority_host.clone(),
                    graph_url: self.graph_url.clone(),
                    arm_url: self.arm_url.clone(),
                    concurrency: self.concurrency,
                    reprocess_rate: self.reprocess_rate,
                    safety: self.safety.clone(),
                }
            }
        }
    };
}

/// The settings of either connection kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConnectionSettings {
    /// See `spec.tenantId`.
    pub tenant_id: String,
    /// See `spec.clientId`.
    pub client_id: String,
    /// See `spec.credential`.
    pub credential: ConnectionCredential,
    /// See `spec.authorityHost`.
    pub authority_host: Option<String>,
    /// See `spec.graphUrl`.
    pub graph_url: Option<String>,
    /// See `spec.armUrl`.
    pub arm_url: Option<String>,
    /// See `spec.concurrency`.
    pub concurrency: Option<u32>,
    /// See `spec.reprocessRate`.
    pub reprocess_rate: Option<u32>,
    /// See `spec.safety`.
    pub safety: Option<super::SafetySpec>,
}

connection_spec!(
    // Each printcolumn repeats `type_`; clippy reads the derive attributes as duplicates.
    #[allow(clippy::duplicated_attributes)]
    #[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
    #[kube(
        group = "redeliver.dev",
        version = "v1alpha1",
        kind = "GraphConnection",
        namespaced,
        status = "GraphConnectionStatus",
        shortname = "gconn",
        category = "redeliver",
        derive = "PartialEq",
        doc = "A Microsoft Graph connection (Entra tenant, application and credential) for the AccessPackageAssignments and AccessPackageGuards of this namespace: those naming it in connectionRef, and all of them when it is named default. Its client secret is read from this namespace.",
        printcolumn(name = "Tenant", type_ = "string", json_path = ".spec.tenantId"),
        printcolumn(
            name = "Ready",
            type_ = "string",
            json_path = ".status.conditions[?(@.type==\"Ready\")].status"
        ),
        printcolumn(
            name = "Reason",
            type_ = "string",
            json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
        ),
        printcolumn(
            name = "Age",
            type_ = "date",
            json_path = ".metadata.creationTimestamp"
        )
    )]
    #[serde(rename_all = "camelCase")]
    GraphConnectionSpec
);

connection_spec!(
    #[allow(clippy::duplicated_attributes)]
    #[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
    #[kube(
        group = "redeliver.dev",
        version = "v1alpha1",
        kind = "ClusterGraphConnection",
        status = "GraphConnectionStatus",
        shortname = "cgconn",
        category = "redeliver",
        derive = "PartialEq",
        doc = "A cluster-wide Microsoft Graph connection (Entra tenant, application and credential) that objects in any namespace may name in connectionRef. Its client secret is read from the operator's own namespace.",
        printcolumn(name = "Tenant", type_ = "string", json_path = ".spec.tenantId"),
        printcolumn(
            name = "Ready",
            type_ = "string",
            json_path = ".status.conditions[?(@.type==\"Ready\")].status"
        ),
        printcolumn(
            name = "Reason",
            type_ = "string",
            json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
        ),
        printcolumn(
            name = "Age",
            type_ = "date",
            json_path = ".metadata.creationTimestamp"
        )
    )]
    #[serde(rename_all = "camelCase")]
    ClusterGraphConnectionSpec
);

/// Observed state of a connection.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GraphConnectionStatus {
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The Entra or Graph error code of the last failed check (e.g. invalid_client,
    /// Authorization_RequestDenied), absent while Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// Ready (a token was obtained and a read of access packages succeeded) and Stalled (what
    /// failed and what to fix).
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// Which connection an object uses.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConnectionKey {
    /// The operator's own connection, configured by its flags.
    Operator,
    /// A `GraphConnection` (always the object's own namespace).
    Namespaced {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// A `ClusterGraphConnection`.
    Cluster {
        /// Its name.
        name: String,
    },
}

impl ConnectionKey {
    /// The connection an object of `namespace` with `connection_ref` uses: the reference
    /// (a `GraphConnection` always in the object's own namespace), else the namespace's
    /// `GraphConnection` named `default` when `has_default(namespace)`, else the operator's.
    pub fn resolve(
        namespace: &str,
        connection_ref: Option<&ConnectionRef>,
        has_default: impl Fn(&str) -> bool,
    ) -> ConnectionKey {
        match connection_ref {
            Some(r) if r.kind == ConnectionKind::ClusterGraphConnection => ConnectionKey::Cluster {
                name: r.name.clone(),
            },
            // The object's own namespace, whatever else the reference says: the namespace is
            // the security boundary.
            Some(r) => ConnectionKey::Namespaced {
                namespace: namespace.to_string(),
                name: r.name.clone(),
            },
            None if has_default(namespace) => ConnectionKey::Namespaced {
                namespace: namespace.to_string(),
                name: DEFAULT_CONNECTION_NAME.to_string(),
            },
            None => ConnectionKey::Operator,
        }
    }

    /// What an object's `status.connection` says (none for the operator's connection).
    pub fn status_label(&self) -> Option<String> {
        match self {
            Self::Operator => None,
            Self::Namespaced { name, .. } => Some(format!("GraphConnection/{name}")),
            Self::Cluster { name } => Some(format!("ClusterGraphConnection/{name}")),
        }
    }

    /// The `connection` metrics label: bounded by the number of connections.
    pub fn metric_label(&self) -> String {
        match self {
            Self::Operator => "operator".into(),
            Self::Namespaced { namespace, name } => format!("{namespace}/{name}"),
            Self::Cluster { name } => format!("cluster/{name}"),
        }
    }
}

impl fmt::Display for ConnectionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Operator => f.write_str("the operator's own connection"),
            Self::Namespaced { namespace, name } => write!(f, "GraphConnection {namespace}/{name}"),
            Self::Cluster { name } => write!(f, "ClusterGraphConnection {name}"),
        }
    }
}

/// Checks what the schema cannot: the tenant is a GUID or a domain name, the client id a GUID.
pub fn validate_connection_settings(s: &ConnectionSettings) -> Result<(), SpecError> {
    let tenant = s.tenant_id.trim();
    if tenant.is_empty()
        || tenant.contains(['/', '?', '#', '%', '@'])
        || tenant.chars().any(char::is_whitespace)
    {
        return Err(SpecError::new(
            "spec.tenantId",
            format!(
                "{tenant:?} is not a tenant GUID or domain name; use the Directory (tenant) ID from the Entra admin center"
            ),
        ));
    }
    if !is_guid(&s.client_id) {
        return Err(SpecError::new(
            "spec.clientId",
            format!(
                "{:?} is not a GUID; use the Application (client) ID of the app registration",
                s.client_id
            ),
        ));
    }
    match (&s.credential.client_secret, &s.credential.workload_identity) {
        (Some(_), Some(_)) | (None, None) => Err(SpecError::new(
            "spec.credential",
            "set exactly one of credential.clientSecret or credential.workloadIdentity",
        )),
        (Some(secret), None) if secret.name.trim().is_empty() || secret.key.trim().is_empty() => {
            Err(SpecError::new(
                "spec.credential.clientSecret",
                "name the Secret and the key holding the client secret",
            ))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ConnectionSettings {
        ConnectionSettings {
            tenant_id: "contoso.onmicrosoft.com".into(),
            client_id: "11111111-2222-4333-8444-555555555555".into(),
            credential: ConnectionCredential {
                client_secret: Some(SecretKeySelector {
                    name: "graph".into(),
                    key: DEFAULT_SECRET_KEY.into(),
                }),
                workload_identity: None,
            },
            authority_host: None,
            graph_url: None,
            arm_url: None,
            concurrency: None,
            reprocess_rate: None,
            safety: None,
        }
    }

    #[test]
    fn validation_names_the_field() {
        assert!(validate_connection_settings(&settings()).is_ok());
        let mut s = settings();
        s.tenant_id = "contoso/evil".into();
        assert_eq!(
            validate_connection_settings(&s).unwrap_err().field,
            "spec.tenantId"
        );
        let mut s = settings();
        s.client_id = "app".into();
        assert_eq!(
            validate_connection_settings(&s).unwrap_err().field,
            "spec.clientId"
        );
        let mut s = settings();
        s.credential.workload_identity = Some(WorkloadIdentity::default());
        assert_eq!(
            validate_connection_settings(&s).unwrap_err().field,
            "spec.credential"
        );
    }

    #[test]
    fn a_connection_ref_name_must_be_an_object_name() {
        let r = |name: &str| ConnectionRef {
            kind: ConnectionKind::GraphConnection,
            name: name.into(),
        };
        assert!(check_connection_ref(Some(&r("default"))).is_ok());
        assert!(check_connection_ref(Some(&r("team-a.graph"))).is_ok());
        let e = check_connection_ref(Some(&r("team-a/default"))).unwrap_err();
        assert_eq!(e.field, "spec.connectionRef.name");
        assert!(
            e.message.contains("write only its name (\"default\")"),
            "{e}"
        );
        for bad in ["", "Default", "-a", "a_b", "a..b"] {
            assert!(check_connection_ref(Some(&r(bad))).is_err(), "{bad:?}");
        }
        // The schema refuses the same names at the API server.
        let schema = serde_json::to_value(schemars::schema_for!(ConnectionRef)).unwrap();
        assert_eq!(
            schema["properties"]["name"]["pattern"],
            super::super::common::OBJECT_NAME_PATTERN
        );
    }

    #[test]
    fn connection_ref_defaults_to_the_namespaced_kind_and_key_to_client_secret() {
        let r: ConnectionRef = serde_json::from_str(r#"{"name":"prod"}"#).unwrap();
        assert_eq!(r.kind, ConnectionKind::GraphConnection);
        let k: SecretKeySelector = serde_json::from_str(r#"{"name":"graph"}"#).unwrap();
        assert_eq!(k.key, DEFAULT_SECRET_KEY);
    }

    #[test]
    fn both_kinds_have_the_same_schema_and_the_right_scope() {
        use kube::CustomResourceExt;
        let ns = GraphConnection::crd();
        let cl = ClusterGraphConnection::crd();
        assert_eq!(ns.spec.scope, "Namespaced");
        assert_eq!(cl.spec.scope, "Cluster");
        let schema = |c: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition| {
            serde_json::to_value(&c.spec.versions[0].schema).unwrap()["openAPIV3Schema"]["properties"]["spec"].clone()
        };
        assert_eq!(schema(&ns), schema(&cl));
        assert!(
            schema(&ns)
                .to_string()
                .contains("has(self.clientSecret) != has(self.workloadIdentity)")
        );
    }
}
