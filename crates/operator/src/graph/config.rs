//! Graph client configuration: the settings as given ([`GraphSettings`], filled from the
//! command line by `redeliver_cli::GraphArgs` or built by a test) and the validated form the
//! client runs on ([`GraphConfig`]).
//!
//! The client secret is read only from the environment (`AZURE_CLIENT_SECRET`) or from a
//! file, never from a flag: a flag value shows up in `ps` and in shell history.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use url::Url;

use super::error::GraphError;

/// Default Entra authority host (global cloud).
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";
/// Default Graph root (global cloud). The client appends `/v1.0`.
pub const DEFAULT_GRAPH_URL: &str = "https://graph.microsoft.com";
/// Default Azure Resource Manager root (global cloud).
pub const DEFAULT_ARM_URL: &str = "https://management.azure.com";
/// Environment variable holding the client secret value.
pub const CLIENT_SECRET_ENV: &str = "AZURE_CLIENT_SECRET";

/// Microsoft Graph connection and credential settings, before validation: what the Graph
/// flags of `redeliver audit` and `redeliver controller` say (the command line's
/// `redeliver_cli::GraphArgs` converts into this), or what a test or benchmark builds.
/// [`GraphSettings::into_config`] validates them into a [`GraphConfig`].
#[derive(Clone, Debug)]
pub struct GraphSettings {
    /// Entra tenant id (GUID) or verified domain of the tenant that owns the access packages.
    pub tenant_id: Option<String>,

    /// Application (client) id of the app registration Redeliver authenticates as.
    pub client_id: Option<String>,

    /// File holding the client secret value (surrounding whitespace is trimmed; re-read on
    /// every token request so a rotated secret is picked up). Alternatively put the secret in
    /// the AZURE_CLIENT_SECRET environment variable; it is deliberately not accepted as a flag.
    pub client_secret_file: Option<PathBuf>,

    /// The client secret, taken from AZURE_CLIENT_SECRET only (see `--client-secret-file`).
    pub client_secret: Option<Secret>,

    /// Projected service-account token file for Azure Workload Identity (federated
    /// credential). Normally injected by the workload-identity webhook; re-read on every token
    /// request because the kubelet rotates it.
    pub federated_token_file: Option<PathBuf>,

    /// Entra authority host (token endpoint root), e.g. `https://login.microsoftonline.us` for
    /// US Government, or the simulator's URL.
    pub authority_host: String,

    /// Microsoft Graph root URL, without the version (e.g. `https://graph.microsoft.us` or the
    /// simulator's URL). `/v1.0` is appended; the token scope is `<URL>/.default`.
    pub graph_url: String,

    /// Azure Resource Manager root URL, for verifying Azure roles access packages grant
    /// (e.g. `https://management.usgovcloudapi.net`). Derived from --graph-url for the known
    /// clouds (global: https://management.azure.com, US Government,
    /// China); for any other Graph URL Azure roles stay Unverifiable until this is set.
    /// The token scope is `<URL>/.default`, with the same credential as Graph.
    pub arm_url: Option<String>,

    /// Allow plain http:// Graph and authority URLs on non-loopback hosts. Plain http to
    /// 127.0.0.1/::1/localhost (e.g. the simulator) is always allowed.
    pub allow_insecure_http: bool,

    /// Extra trusted CA certificate(s) in PEM form, added to the system roots (e.g. the
    /// simulator's self-signed CA).
    pub ca_file: Option<PathBuf>,

    /// Timeout for one HTTP exchange with Graph or the token endpoint (e.g. 30s, 500ms, 2m).
    pub graph_timeout: Duration,

    /// Retries for throttled (429), unavailable (503/504) and failed-to-connect Graph calls.
    pub max_retries: u32,

    /// Maximum number of Graph HTTP calls in flight at once.
    pub graph_concurrency: usize,
}

/// A secret string (client secret, access token, assertion) whose `Debug`/`Display` never
/// print the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(Arc::from(value.into()))
    }

    /// The secret value; only for putting it on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// How the client proves its identity to the token endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// A client secret value held in memory (from `AZURE_CLIENT_SECRET`).
    ClientSecret(Secret),
    /// A file holding the client secret, re-read (and trimmed) on every token request.
    ClientSecretFile(PathBuf),
    /// A projected service-account JWT (workload identity), re-read on every token request.
    FederatedTokenFile(PathBuf),
}

impl Credential {
    /// A short, secret-free description for logs and errors.
    pub fn describe(&self) -> String {
        match self {
            Self::ClientSecret(_) => format!("client secret from {CLIENT_SECRET_ENV}"),
            Self::ClientSecretFile(p) => format!("client secret file {}", p.display()),
            Self::FederatedTokenFile(p) => format!("federated token file {}", p.display()),
        }
    }

    /// The current secret value (secret or assertion). Files are read anew each call.
    pub(crate) fn load(&self) -> Result<Secret, GraphError> {
        match self {
            Self::ClientSecret(s) => Ok(s.clone()),
            Self::ClientSecretFile(p) | Self::FederatedTokenFile(p) => read_secret_file(p),
        }
    }
}

fn read_secret_file(path: &Path) -> Result<Secret, GraphError> {
    let text = std::fs::read_to_string(path).map_err(|e| GraphError::Credential {
        message: format!("cannot read credential file {}: {e}", path.display()),
    })?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(GraphError::Credential {
            message: format!("credential file {} is empty", path.display()),
        });
    }
    Ok(Secret::new(trimmed))
}

/// Validated Graph client configuration.
#[derive(Clone, Debug)]
pub struct GraphConfig {
    /// Tenant id or domain.
    pub tenant_id: String,
    /// Application (client) id.
    pub client_id: String,
    /// How to authenticate.
    pub credential: Credential,
    /// Full token endpoint URL: `{authority}/{tenant}/oauth2/v2.0/token`.
    pub token_url: Url,
    /// Graph root without version and without trailing slash, e.g. `https://graph.microsoft.com`.
    pub graph_root: String,
    /// Token scope: `{graph_root}/.default`.
    pub scope: String,
    /// Azure Resource Manager root without trailing slash (`https://management.azure.com`),
    /// when known: set with `--arm-url` or derived from a known cloud's Graph URL.
    pub arm_root: Option<String>,
    /// Extra trusted CA PEM file.
    pub ca_file: Option<PathBuf>,
    /// Per-exchange HTTP timeout.
    pub timeout: Duration,
    /// Retries after the first attempt for retryable failures.
    pub max_retries: u32,
    /// Maximum concurrent HTTP calls.
    pub concurrency: usize,
    /// First backoff step when the server gives no `Retry-After`.
    pub backoff_base: Duration,
    /// Upper bound of one backoff step.
    pub backoff_cap: Duration,
    /// A `Retry-After` longer than this is not slept through inside a call: the call fails
    /// with [`GraphError::Throttled`] carrying the delay, so the caller can requeue instead
    /// of holding a worker.
    pub max_retry_after: Duration,
}

impl GraphConfig {
    /// The versioned Graph base URL, e.g. `https://graph.microsoft.com/v1.0`.
    pub fn graph_base(&self) -> String {
        format!("{}/v1.0", self.graph_root)
    }

    /// The token scope for Azure Resource Manager: `{arm_root}/.default`.
    pub fn arm_scope(&self) -> Option<String> {
        self.arm_root
            .as_ref()
            .map(|root| format!("{root}/.default"))
    }
}

/// The Resource Manager root of the cloud whose Graph root is `graph_root`, for the
/// national clouds Microsoft documents; `None` for any other host (a simulator, a proxy),
/// where guessing could send a token to the wrong place.
pub fn arm_root_for_graph(graph_root: &str) -> Option<&'static str> {
    let host = Url::parse(graph_root)
        .ok()?
        .host_str()?
        .to_ascii_lowercase();
    match host.as_str() {
        "graph.microsoft.com" => Some(DEFAULT_ARM_URL),
        "graph.microsoft.us" | "dod-graph.microsoft.us" => {
            Some("https://management.usgovcloudapi.net")
        }
        "microsoftgraph.chinacloudapi.cn" => Some("https://management.chinacloudapi.cn"),
        _ => None,
    }
}

impl GraphSettings {
    /// Validates the arguments into a [`GraphConfig`]. A missing client secret is looked up
    /// in the `AZURE_CLIENT_SECRET` environment variable.
    pub fn into_config(mut self) -> Result<GraphConfig, GraphError> {
        if self.client_secret.is_none() {
            self.client_secret = std::env::var(CLIENT_SECRET_ENV)
                .ok()
                .filter(|s| !s.trim().is_empty())
                .map(|s| Secret::new(s.trim()));
        }
        self.validate()
    }

    /// Like [`GraphSettings::into_config`] but without consulting the environment.
    pub fn validate(self) -> Result<GraphConfig, GraphError> {
        let tenant_id = required(
            self.tenant_id,
            "tenant id",
            "--tenant-id",
            "AZURE_TENANT_ID",
        )?;
        let client_id = required(
            self.client_id,
            "client id",
            "--client-id",
            "AZURE_CLIENT_ID",
        )?;
        if tenant_id.contains(['/', '?', '#', '%']) || tenant_id.chars().any(char::is_whitespace) {
            return Err(config_err(format!(
                "tenant id {tenant_id:?} is not a tenant GUID or domain name (check --tenant-id / AZURE_TENANT_ID)"
            )));
        }

        let credential = match (
            self.client_secret,
            self.client_secret_file,
            self.federated_token_file,
        ) {
            (Some(_), Some(file), _) => {
                return Err(config_err(format!(
                    "both {CLIENT_SECRET_ENV} and --client-secret-file ({}) are set; set only one",
                    file.display()
                )));
            }
            // An explicit secret wins over an injected workload-identity token file, matching
            // the Azure SDKs' environment-credential-first order.
            (Some(secret), None, _) => Credential::ClientSecret(secret),
            (None, Some(file), _) => {
                read_secret_file(&file).map_err(|e| config_err(e.to_string()))?;
                Credential::ClientSecretFile(file)
            }
            (None, None, Some(file)) => {
                read_secret_file(&file).map_err(|e| config_err(e.to_string()))?;
                Credential::FederatedTokenFile(file)
            }
            (None, None, None) => {
                return Err(config_err(format!(
                    "no Graph credential: set {CLIENT_SECRET_ENV}, or --client-secret-file / \
                     REDELIVER_CLIENT_SECRET_FILE, or --federated-token-file / \
                     AZURE_FEDERATED_TOKEN_FILE (injected by Azure Workload Identity)"
                )));
            }
        };

        let authority = normalize_root(
            &self.authority_host,
            "--authority-host / AZURE_AUTHORITY_HOST",
            self.allow_insecure_http,
        )?;
        let graph_root = normalize_root(
            &self.graph_url,
            "--graph-url / REDELIVER_GRAPH_URL",
            self.allow_insecure_http,
        )?;
        let graph_root = graph_root
            .strip_suffix("/v1.0")
            .map(|s| s.trim_end_matches('/').to_string())
            .unwrap_or(graph_root);

        let arm_root = match &self.arm_url {
            Some(raw) => Some(normalize_root(
                raw,
                "--arm-url / REDELIVER_ARM_URL",
                self.allow_insecure_http,
            )?),
            None => arm_root_for_graph(&graph_root).map(str::to_string),
        };

        let mut token_url = Url::parse(&authority)
            .map_err(|e| config_err(format!("authority host {authority}: {e}")))?;
        token_url
            .path_segments_mut()
            .map_err(|()| config_err(format!("authority host {authority} cannot carry a path")))?
            .pop_if_empty()
            .extend([tenant_id.as_str(), "oauth2", "v2.0", "token"]);

        if self.graph_concurrency == 0 {
            return Err(config_err(
                "--graph-concurrency must be at least 1".to_string(),
            ));
        }
        if self.graph_timeout.is_zero() {
            return Err(config_err(
                "--graph-timeout must be greater than zero".to_string(),
            ));
        }

        Ok(GraphConfig {
            scope: format!("{graph_root}/.default"),
            arm_root,
            tenant_id,
            client_id,
            credential,
            token_url,
            graph_root,
            ca_file: self.ca_file,
            timeout: self.graph_timeout,
            max_retries: self.max_retries,
            concurrency: self.graph_concurrency,
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(120),
        })
    }
}

impl Default for GraphSettings {
    /// The documented defaults, no identity and no credential.
    fn default() -> Self {
        Self {
            tenant_id: None,
            client_id: None,
            client_secret_file: None,
            client_secret: None,
            federated_token_file: None,
            authority_host: DEFAULT_AUTHORITY_HOST.to_string(),
            graph_url: DEFAULT_GRAPH_URL.to_string(),
            arm_url: None,
            allow_insecure_http: false,
            ca_file: None,
            graph_timeout: Duration::from_secs(30),
            max_retries: 5,
            graph_concurrency: 8,
        }
    }
}

impl GraphSettings {
    /// Arguments with the documented defaults and nothing else set (same as `default()`;
    /// handy for tests and for building a configuration programmatically).
    pub fn with_defaults() -> Self {
        Self::default()
    }

    /// `self` pointed at another endpoint with a client secret (the Graph simulator, with
    /// its own throwaway credentials and, when it serves HTTPS, its CA); the tuning options
    /// (timeouts, retries, concurrency) of `self` are kept.
    pub fn pointed_at(self, endpoint: Endpoint) -> Self {
        Self {
            tenant_id: Some(endpoint.tenant_id),
            client_id: Some(endpoint.client_id),
            client_secret: Some(Secret::new(endpoint.client_secret)),
            client_secret_file: None,
            federated_token_file: None,
            authority_host: endpoint.authority_host,
            graph_url: endpoint.graph_url,
            arm_url: endpoint.arm_url,
            ca_file: endpoint.ca_file,
            ..self
        }
    }
}

/// Where a Graph endpoint is and the client credentials it accepts.
#[derive(Clone)]
pub struct Endpoint {
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: String,
    pub authority_host: String,
    pub graph_url: String,
    /// Azure Resource Manager root, when the endpoint serves one (the simulator does).
    pub arm_url: Option<String>,
    pub ca_file: Option<std::path::PathBuf>,
}

fn config_err(message: String) -> GraphError {
    GraphError::Config { message }
}

fn required(
    value: Option<String>,
    what: &str,
    flag: &str,
    env: &str,
) -> Result<String, GraphError> {
    match value.map(|v| v.trim().to_string()) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(config_err(format!(
            "missing {what}: set {flag} or the {env} environment variable"
        ))),
    }
}

/// Parses and checks a root URL (scheme, host, no query) and returns it without trailing
/// slashes.
fn normalize_root(raw: &str, what: &str, allow_insecure_http: bool) -> Result<String, GraphError> {
    let url = Url::parse(raw.trim())
        .map_err(|e| config_err(format!("{what}: {raw:?} is not a URL: {e}")))?;
    let host = url
        .host_str()
        .ok_or_else(|| config_err(format!("{what}: {raw:?} has no host")))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_insecure_http || is_loopback_host(host) => {}
        "http" => {
            return Err(config_err(format!(
                "{what}: refusing plain http to non-loopback host {host} (tokens would travel \
                 unencrypted); use https or pass --allow-insecure-http"
            )));
        }
        other => {
            return Err(config_err(format!(
                "{what}: unsupported scheme {other:?} in {raw:?}"
            )));
        }
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(config_err(format!(
            "{what}: {raw:?} must not carry a query or fragment"
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(config_err(format!(
            "{what}: {raw:?} must not embed credentials"
        )));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

/// True for `localhost`, 127.0.0.0/8 and `::1`.
pub fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> GraphSettings {
        GraphSettings {
            tenant_id: Some("contoso.onmicrosoft.com".into()),
            client_id: Some("00000000-0000-0000-0000-0000000000c1".into()),
            client_secret: Some(Secret::new("s3cr3t")),
            ..GraphSettings::with_defaults()
        }
    }

    #[test]
    fn arm_root_is_derived_for_known_clouds_and_never_guessed_otherwise() {
        let arm = |graph: &str, arm_url: Option<&str>| {
            GraphSettings {
                graph_url: graph.into(),
                arm_url: arm_url.map(str::to_string),
                ..args()
            }
            .validate()
            .map(|c| (c.arm_root.clone(), c.arm_scope()))
        };
        assert_eq!(
            arm("https://graph.microsoft.com", None).unwrap(),
            (
                Some("https://management.azure.com".into()),
                Some("https://management.azure.com/.default".into())
            )
        );
        for gov in [
            "https://graph.microsoft.us",
            "https://dod-graph.microsoft.us/v1.0",
        ] {
            assert_eq!(
                arm(gov, None).unwrap().0.as_deref(),
                Some("https://management.usgovcloudapi.net")
            );
        }
        assert_eq!(
            arm("https://microsoftgraph.chinacloudapi.cn", None)
                .unwrap()
                .0
                .as_deref(),
            Some("https://management.chinacloudapi.cn")
        );
        // A simulator or proxy: no ARM unless told, so no token goes to a guessed host.
        assert_eq!(arm("http://127.0.0.1:8080", None).unwrap(), (None, None));
        assert_eq!(
            arm("http://127.0.0.1:8080", Some("http://127.0.0.1:8080/arm/"))
                .unwrap()
                .1
                .as_deref(),
            Some("http://127.0.0.1:8080/arm/.default")
        );
        let err = arm(
            "https://graph.microsoft.com",
            Some("http://arm.example.com"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("--arm-url"), "{err}");
    }

    #[test]
    fn defaults_build_global_cloud_config() {
        let c = args().validate().unwrap();
        assert_eq!(c.graph_root, "https://graph.microsoft.com");
        assert_eq!(c.graph_base(), "https://graph.microsoft.com/v1.0");
        assert_eq!(c.scope, "https://graph.microsoft.com/.default");
        assert_eq!(
            c.token_url.as_str(),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        assert_eq!(
            c.credential,
            Credential::ClientSecret(Secret::new("s3cr3t"))
        );
    }

    #[test]
    fn trailing_slash_and_version_are_tolerated() {
        let mut a = args();
        a.graph_url = "https://graph.microsoft.us/v1.0/".into();
        a.authority_host = "https://login.microsoftonline.us/".into();
        let c = a.validate().unwrap();
        assert_eq!(c.graph_root, "https://graph.microsoft.us");
        assert_eq!(c.scope, "https://graph.microsoft.us/.default");
        assert_eq!(
            c.token_url.as_str(),
            "https://login.microsoftonline.us/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
    }

    #[test]
    fn authority_with_path_prefix_keeps_it() {
        let mut a = args();
        a.authority_host = "http://127.0.0.1:8080/login/".into();
        let c = a.validate().unwrap();
        assert_eq!(
            c.token_url.as_str(),
            "http://127.0.0.1:8080/login/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
    }

    #[test]
    fn missing_fields_name_flag_and_env() {
        let mut a = args();
        a.tenant_id = None;
        let e = a.validate().unwrap_err().to_string();
        assert!(
            e.contains("--tenant-id") && e.contains("AZURE_TENANT_ID"),
            "{e}"
        );

        let mut a = args();
        a.client_id = Some("  ".into());
        let e = a.validate().unwrap_err().to_string();
        assert!(e.contains("AZURE_CLIENT_ID"), "{e}");

        let mut a = args();
        a.client_secret = None;
        let e = a.validate().unwrap_err().to_string();
        assert!(
            e.contains("AZURE_CLIENT_SECRET") && e.contains("AZURE_FEDERATED_TOKEN_FILE"),
            "{e}"
        );
    }

    #[test]
    fn plain_http_only_to_loopback_unless_allowed() {
        let mut a = args();
        a.graph_url = "http://graph.example.com".into();
        let e = a.clone().validate().unwrap_err();
        assert_eq!(e.kind(), "config");
        assert!(e.to_string().contains("--allow-insecure-http"), "{e}");
        a.allow_insecure_http = true;
        assert!(a.validate().is_ok());

        for host in [
            "http://127.0.0.1:1234",
            "http://localhost:9",
            "http://[::1]:80",
        ] {
            let mut a = args();
            a.graph_url = host.into();
            a.authority_host = host.into();
            assert!(a.validate().is_ok(), "{host}");
        }
        let mut a = args();
        a.graph_url = "ftp://graph.microsoft.com".into();
        assert!(a.validate().is_err());
        let mut a = args();
        a.graph_url = "https://graph.microsoft.com?x=1".into();
        assert!(a.validate().is_err());
    }

    #[test]
    fn secret_file_is_trimmed_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "  file-secret\n").unwrap();
        let mut a = args();
        a.client_secret = None;
        a.client_secret_file = Some(path.clone());
        let c = a.clone().validate().unwrap();
        assert_eq!(c.credential.load().unwrap().expose(), "file-secret");

        std::fs::write(&path, "\n").unwrap();
        assert!(
            a.clone()
                .validate()
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
        a.client_secret_file = Some(dir.path().join("absent"));
        assert!(
            a.validate()
                .unwrap_err()
                .to_string()
                .contains("cannot read")
        );
    }

    #[test]
    fn secret_env_and_file_together_are_refused() {
        let mut a = args();
        a.client_secret_file = Some("/tmp/x".into());
        assert!(
            a.validate()
                .unwrap_err()
                .to_string()
                .contains("set only one")
        );
    }

    #[test]
    fn federated_token_file_is_used_without_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "eyJhbGciOi.jwt.sig").unwrap();
        let mut a = args();
        a.client_secret = None;
        a.federated_token_file = Some(path.clone());
        let c = a.validate().unwrap();
        assert_eq!(c.credential, Credential::FederatedTokenFile(path));
    }

    #[test]
    fn secret_debug_is_redacted() {
        let a = args();
        let dbg = format!("{a:?}");
        assert!(!dbg.contains("s3cr3t"), "{dbg}");
        let c = a.validate().unwrap();
        assert!(!format!("{c:?}").contains("s3cr3t"));
    }
}
