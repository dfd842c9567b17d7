//! A `GraphConnection`'s (or `ClusterGraphConnection`'s) Graph client configuration: what
//! the connection sets, the operator's (or the audit's) flags for the rest. The controller
//! and `redeliver audit` both build every connection's client through
//! [`connection_graph_config`].

use std::path::PathBuf;

use super::config::{GraphConfig, GraphSettings, Secret};
use super::error::GraphError;
use crate::api::ConnectionSettings;

/// The connection's Secret value, never logged.
#[derive(Debug, Clone)]
pub enum ResolvedCredential {
    /// The client secret read from the connection's Secret.
    ClientSecret(Secret),
    /// A federated token file (workload identity).
    FederatedTokenFile(PathBuf),
}

/// The one mapping from a connection's spec and its resolved credential to a Graph client
/// configuration: what the connection sets, the operator's flags for the rest.
pub fn connection_graph_config(
    defaults: &GraphSettings,
    settings: &ConnectionSettings,
    credential: ResolvedCredential,
) -> Result<GraphConfig, GraphError> {
    let (client_secret, federated_token_file) = match credential {
        ResolvedCredential::ClientSecret(s) => (Some(s), None),
        ResolvedCredential::FederatedTokenFile(p) => (None, Some(p)),
    };
    let args = GraphSettings {
        tenant_id: Some(settings.tenant_id.clone()),
        client_id: Some(settings.client_id.clone()),
        client_secret,
        client_secret_file: None,
        federated_token_file,
        authority_host: settings
            .authority_host
            .clone()
            .unwrap_or_else(|| defaults.authority_host.clone()),
        graph_url: settings
            .graph_url
            .clone()
            .unwrap_or_else(|| defaults.graph_url.clone()),
        // The operator's ARM root belongs to the operator's Graph cloud: a connection to
        // another cloud derives its own unless it names one.
        arm_url: match (&settings.arm_url, &settings.graph_url) {
            (Some(arm), _) => Some(arm.clone()),
            (None, Some(_)) => None,
            (None, None) => defaults.arm_url.clone(),
        },
        graph_concurrency: settings
            .concurrency
            .map_or(defaults.graph_concurrency, |c| c as usize),
        ..defaults.clone()
    };
    args.validate()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ConnectionCredential, SecretKeySelector};

    fn settings(graph_url: Option<&str>, arm_url: Option<&str>) -> ConnectionSettings {
        ConnectionSettings {
            tenant_id: "contoso.onmicrosoft.com".into(),
            client_id: "11111111-2222-4333-8444-555555555555".into(),
            credential: ConnectionCredential {
                client_secret: Some(SecretKeySelector {
                    name: "graph".into(),
                    key: "clientSecret".into(),
                }),
                workload_identity: None,
            },
            authority_host: None,
            graph_url: graph_url.map(str::to_string),
            arm_url: arm_url.map(str::to_string),
            concurrency: None,
            reprocess_rate: None,
            safety: None,
        }
    }

    fn arm_root(defaults: &GraphSettings, s: &ConnectionSettings) -> Option<String> {
        let secret = ResolvedCredential::ClientSecret(Secret::new("s"));
        connection_graph_config(defaults, s, secret)
            .unwrap()
            .arm_root
    }

    #[test]
    fn a_connection_to_another_cloud_never_inherits_the_operators_arm_root() {
        let defaults = GraphSettings {
            arm_url: Some("https://management.azure.com".into()),
            ..GraphSettings::default()
        };
        // Same cloud as the operator: its --arm-url.
        assert_eq!(
            arm_root(&defaults, &settings(None, None)).as_deref(),
            Some("https://management.azure.com")
        );
        // Its own Graph cloud: derived from it, not the operator's public ARM root.
        assert_eq!(
            arm_root(
                &defaults,
                &settings(Some("https://graph.microsoft.us"), None)
            )
            .as_deref(),
            Some("https://management.usgovcloudapi.net")
        );
        // Named explicitly: that one.
        assert_eq!(
            arm_root(
                &defaults,
                &settings(
                    Some("https://graph.microsoft.us"),
                    Some("https://management.usgovcloudapi.net")
                )
            )
            .as_deref(),
            Some("https://management.usgovcloudapi.net")
        );
    }
}
