//! A `GraphConnection`'s (or `ClusterGraphConnection`'s) Graph client configuration: what
//! the connection sets, the operator's (or the audit's) flags for the rest. The controller
//! and `redeliver audit` both build every connection's client through
//! [`connection_graph_config`].

use std::path::PathBuf;

use super::config::{GraphArgs, GraphConfig, Secret};
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
    defaults: &GraphArgs,
    settings: &ConnectionSettings,
    credential: ResolvedCredential,
) -> Result<GraphConfig, GraphError> {
    let (client_secret, federated_token_file) = match credential {
        ResolvedCredential::ClientSecret(s) => (Some(s), None),
        ResolvedCredential::FederatedTokenFile(p) => (None, Some(p)),
    };
    let args = GraphArgs {
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
        graph_concurrency: settings
            .concurrency
            .map_or(defaults.graph_concurrency, |c| c as usize),
        ..defaults.clone()
    };
    args.validate()
}
