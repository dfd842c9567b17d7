//! Several tenants in one audit run: which connection each declaration uses (the
//! controller's rule, over the `GraphConnection`s and `ClusterGraphConnection`s in the files)
//! and the Graph client of each connection, with its client secret from a `Secret` in the
//! files or from the environment.

use std::collections::BTreeMap;
use std::path::PathBuf;

use redeliver::api::{ConnectionKey, ConnectionSettings, DEFAULT_CONNECTION_NAME, GraphConnection};
use redeliver::graph::config::Secret;
use redeliver::graph::connection::{ResolvedCredential, connection_graph_config};
use redeliver::graph::{GraphClient, GraphSettings};

use super::load::Declarations;

/// The namespace of a declaration without `metadata.namespace` (as `kubectl apply` would use
/// in a context without one).
pub const DEFAULT_NAMESPACE: &str = "default";

/// The environment variable holding a Secret key's value when the Secret is not in the files:
/// `REDELIVER_SECRET_<NAMESPACE>_<NAME>_<KEY>`, upper-cased, every character that is not a
/// letter or digit replaced by `_` (Secret `finance/graph`, key `clientSecret`:
/// `REDELIVER_SECRET_FINANCE_GRAPH_CLIENTSECRET`).
pub fn secret_env_name(namespace: &str, name: &str, key: &str) -> String {
    let norm = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect()
    };
    format!(
        "REDELIVER_SECRET_{}_{}_{}",
        norm(namespace),
        norm(name),
        norm(key)
    )
}

fn has_default(decls: &Declarations, namespace: &str) -> bool {
    decls.connections.iter().any(|(_, c)| {
        c.metadata.name.as_deref() == Some(DEFAULT_CONNECTION_NAME) && ns_of(c) == namespace
    })
}

fn ns_of(c: &GraphConnection) -> &str {
    c.metadata.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
}

/// The declarations by the connection each uses, the operator's (the flags) first.
pub fn group(decls: &Declarations) -> BTreeMap<ConnectionKey, Declarations> {
    let mut out: BTreeMap<ConnectionKey, Declarations> = BTreeMap::new();
    for (origin, a) in &decls.assignments {
        let ns = a.metadata.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
        let key = ConnectionKey::resolve(ns, a.spec.connection_ref.as_ref(), |n| {
            has_default(decls, n)
        });
        out.entry(key)
            .or_default()
            .assignments
            .push((origin.clone(), a.clone()));
    }
    for (origin, g) in &decls.guards {
        let ns = g.metadata.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
        let key = ConnectionKey::resolve(ns, g.spec.connection_ref.as_ref(), |n| {
            has_default(decls, n)
        });
        out.entry(key)
            .or_default()
            .guards
            .push((origin.clone(), g.clone()));
    }
    out
}

/// The `spec.safety` of the connection `key` as the files declare it (none for the flags'
/// connection, or a connection not in the files).
pub fn safety_of(key: &ConnectionKey, decls: &Declarations) -> Option<redeliver::api::SafetySpec> {
    match key {
        ConnectionKey::Operator => None,
        ConnectionKey::Namespaced { namespace, name } => decls
            .connections
            .iter()
            .find(|(_, c)| {
                c.metadata.name.as_deref() == Some(name.as_str()) && ns_of(c) == namespace
            })
            .and_then(|(_, c)| c.spec.safety.clone()),
        ConnectionKey::Cluster { name } => decls
            .cluster_connections
            .iter()
            .find(|(_, c)| c.metadata.name.as_deref() == Some(name.as_str()))
            .and_then(|(_, c)| c.spec.safety.clone()),
    }
}

/// The Graph client of a connection named in the files, with `flags` for what it does not
/// set. The error says what is missing and how to provide it (never a secret).
pub fn client_for(
    key: &ConnectionKey,
    decls: &Declarations,
    flags: &GraphSettings,
    cluster_secret_namespace: &str,
) -> Result<GraphClient, String> {
    let (settings, secret_namespace) = match key {
        ConnectionKey::Operator => {
            return Err("the operator's own connection is configured by the flags".into());
        }
        ConnectionKey::Namespaced { namespace, name } => {
            let found = decls.connections.iter().find(|(_, c)| {
                c.metadata.name.as_deref() == Some(name.as_str()) && ns_of(c) == namespace
            });
            match found {
                Some((_, c)) => (c.spec.settings(), namespace.clone()),
                None => {
                    return Err(format!(
                        "{key} is not in the files; add it (a GraphConnection of another namespace cannot be used)"
                    ));
                }
            }
        }
        ConnectionKey::Cluster { name } => {
            let found = decls
                .cluster_connections
                .iter()
                .find(|(_, c)| c.metadata.name.as_deref() == Some(name.as_str()));
            match found {
                Some((_, c)) => (c.spec.settings(), cluster_secret_namespace.to_string()),
                None => return Err(format!("{key} is not in the files; add it")),
            }
        }
    };
    let credential = credential(key, &settings, decls, flags, &secret_namespace)?;
    let config =
        connection_graph_config(flags, &settings, credential).map_err(|e| format!("{key}: {e}"))?;
    GraphClient::new(config).map_err(|e| format!("{key}: {e}"))
}

fn credential(
    key: &ConnectionKey,
    settings: &ConnectionSettings,
    decls: &Declarations,
    flags: &GraphSettings,
    namespace: &str,
) -> Result<ResolvedCredential, String> {
    if let Some(sel) = &settings.credential.client_secret {
        let from_files = decls
            .secrets
            .iter()
            .find(|(_, s)| {
                s.metadata.name.as_deref() == Some(sel.name.as_str())
                    && s.metadata.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE) == namespace
            })
            .and_then(|(_, s)| {
                s.data
                    .as_ref()
                    .and_then(|d| d.get(&sel.key))
                    .map(|b| String::from_utf8_lossy(&b.0).trim().to_string())
                    .or_else(|| {
                        s.string_data
                            .as_ref()
                            .and_then(|d| d.get(&sel.key))
                            .map(|v| v.trim().to_string())
                    })
            });
        let env = secret_env_name(namespace, &sel.name, &sel.key);
        let value = from_files
            .or_else(|| std::env::var(&env).ok().map(|v| v.trim().to_string()))
            .filter(|v| !v.is_empty());
        return match value {
            Some(v) => Ok(ResolvedCredential::ClientSecret(Secret::new(v))),
            None => Err(format!(
                "{key}: no client secret: add Secret {namespace}/{} with key {} to the files, or set the environment variable {env}",
                sel.name, sel.key
            )),
        };
    }
    if let Some(wi) = &settings.credential.workload_identity {
        let path = wi
            .token_file
            .clone()
            .map(PathBuf::from)
            .or_else(|| flags.federated_token_file.clone());
        return match path {
            Some(p) => Ok(ResolvedCredential::FederatedTokenFile(p)),
            None => Err(format!(
                "{key}: workload identity needs a token file: set spec.credential.workloadIdentity.tokenFile or AZURE_FEDERATED_TOKEN_FILE"
            )),
        };
    }
    Err(format!(
        "{key}: spec.credential: set clientSecret or workloadIdentity"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_environment_names_are_predictable() {
        assert_eq!(
            secret_env_name("finance", "graph", "clientSecret"),
            "REDELIVER_SECRET_FINANCE_GRAPH_CLIENTSECRET"
        );
        assert_eq!(
            secret_env_name("team-a", "my.secret", "client-secret"),
            "REDELIVER_SECRET_TEAM_A_MY_SECRET_CLIENT_SECRET"
        );
    }
}
