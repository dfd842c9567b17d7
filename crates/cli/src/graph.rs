//! The Graph flags both `redeliver audit` and `redeliver controller` flatten in
//! ([`GraphArgs`]), converted into the library's [`GraphSettings`].

use std::path::PathBuf;
use std::time::Duration;

use redeliver::graph::GraphSettings;
use redeliver::graph::config::{DEFAULT_AUTHORITY_HOST, DEFAULT_GRAPH_URL};

/// Microsoft Graph connection and credential options, shared by `redeliver audit` and
/// `redeliver controller` (flattened into both).
#[derive(clap::Args, Clone, Debug)]
pub struct GraphArgs {
    /// Entra tenant id (GUID) or verified domain of the tenant that owns the access packages.
    #[arg(long, env = "AZURE_TENANT_ID", value_name = "TENANT")]
    pub tenant_id: Option<String>,

    /// Application (client) id of the app registration Redeliver authenticates as.
    #[arg(long, env = "AZURE_CLIENT_ID", value_name = "GUID")]
    pub client_id: Option<String>,

    /// File holding the client secret value (surrounding whitespace is trimmed; re-read on
    /// every token request so a rotated secret is picked up). Alternatively put the secret in
    /// the AZURE_CLIENT_SECRET environment variable; it is deliberately not accepted as a flag.
    #[arg(long, env = "REDELIVER_CLIENT_SECRET_FILE", value_name = "PATH")]
    pub client_secret_file: Option<PathBuf>,

    /// Projected service-account token file for Azure Workload Identity (federated
    /// credential). Normally injected by the workload-identity webhook; re-read on every token
    /// request because the kubelet rotates it.
    #[arg(long, env = "AZURE_FEDERATED_TOKEN_FILE", value_name = "PATH")]
    pub federated_token_file: Option<PathBuf>,

    /// Entra authority host (token endpoint root), e.g. `https://login.microsoftonline.us` for
    /// US Government, or the simulator's URL.
    #[arg(long, env = "AZURE_AUTHORITY_HOST", value_name = "URL", default_value = DEFAULT_AUTHORITY_HOST)]
    pub authority_host: String,

    /// Microsoft Graph root URL, without the version (e.g. `https://graph.microsoft.us` or the
    /// simulator's URL). `/v1.0` is appended; the token scope is `<URL>/.default`.
    #[arg(long, env = "REDELIVER_GRAPH_URL", value_name = "URL", default_value = DEFAULT_GRAPH_URL)]
    pub graph_url: String,

    /// Azure Resource Manager root URL, for verifying Azure roles access packages grant
    /// (e.g. `https://management.usgovcloudapi.net`). Derived from --graph-url for the known
    /// clouds (global: https://management.azure.com, US Government,
    /// China); for any other Graph URL Azure roles stay Unverifiable until this is set.
    /// The token scope is `<URL>/.default`, with the same credential as Graph.
    #[arg(long, env = "REDELIVER_ARM_URL", value_name = "URL")]
    pub arm_url: Option<String>,

    /// Allow plain http:// Graph and authority URLs on non-loopback hosts. Plain http to
    /// 127.0.0.1/::1/localhost (e.g. the simulator) is always allowed.
    #[arg(long, env = "REDELIVER_ALLOW_INSECURE_HTTP")]
    pub allow_insecure_http: bool,

    /// Extra trusted CA certificate(s) in PEM form, added to the system roots (e.g. the
    /// simulator's self-signed CA).
    #[arg(long, env = "REDELIVER_CA_FILE", value_name = "PATH")]
    pub ca_file: Option<PathBuf>,

    /// Timeout for one HTTP exchange with Graph or the token endpoint (e.g. 30s, 500ms, 2m).
    #[arg(long, env = "REDELIVER_GRAPH_TIMEOUT", value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub graph_timeout: Duration,

    /// Retries for throttled (429), unavailable (503/504) and failed-to-connect Graph calls.
    #[arg(
        long,
        env = "REDELIVER_GRAPH_MAX_RETRIES",
        value_name = "N",
        default_value_t = 5
    )]
    pub max_retries: u32,

    /// Maximum number of Graph HTTP calls in flight at once.
    #[arg(
        long,
        env = "REDELIVER_GRAPH_CONCURRENCY",
        value_name = "N",
        default_value_t = 8
    )]
    pub graph_concurrency: usize,
}

impl From<GraphArgs> for GraphSettings {
    fn from(args: GraphArgs) -> Self {
        Self {
            tenant_id: args.tenant_id,
            client_id: args.client_id,
            client_secret_file: args.client_secret_file,
            // Never from the command line: AZURE_CLIENT_SECRET only, read by `into_config`.
            client_secret: None,
            federated_token_file: args.federated_token_file,
            authority_host: args.authority_host,
            graph_url: args.graph_url,
            arm_url: args.arm_url,
            allow_insecure_http: args.allow_insecure_http,
            ca_file: args.ca_file,
            graph_timeout: args.graph_timeout,
            max_retries: args.max_retries,
            graph_concurrency: args.graph_concurrency,
        }
    }
}

/// Parses `30s`, `500ms`, `2m`, `1h` or a bare number of seconds (fractions allowed).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 30s, 500ms, 2m"))?;
    let factor = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "invalid duration unit {other:?} in {s:?}: use ms, s, m or h"
            ));
        }
    };
    Duration::try_from_secs_f64(value * factor).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn clap_parses_flags_and_hides_no_secret_flag() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            graph: GraphArgs,
        }
        let cli = Cli::try_parse_from([
            "x",
            "--tenant-id",
            "t",
            "--client-id",
            "c",
            "--graph-timeout",
            "5s",
            "--graph-url",
            "http://127.0.0.1:1/",
        ])
        .unwrap();
        assert_eq!(cli.graph.graph_timeout, Duration::from_secs(5));
        assert_eq!(cli.graph.tenant_id.as_deref(), Some("t"));
        assert!(Cli::try_parse_from(["x", "--client-secret", "oops"]).is_err());

        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        for flag in [
            "--tenant-id",
            "--client-id",
            "--client-secret-file",
            "--federated-token-file",
            "--authority-host",
            "--graph-url",
            "--allow-insecure-http",
            "--ca-file",
            "--graph-timeout",
            "--max-retries",
            "--graph-concurrency",
            "AZURE_CLIENT_SECRET",
        ] {
            assert!(help.contains(flag), "help lacks {flag}:\n{help}");
        }
        assert!(!help.contains("--client-secret "), "{help}");
    }
}
