//! `redeliver sim`: run the simulator from the command line.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use super::{LatencyModel, RuBucket, Scenario, SimOptions, Simulator, TlsOptions};

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = super::scenario::parse_duration(s)?;
    Duration::try_from(d).map_err(|_| format!("{s:?} must not be negative"))
}

/// Arguments of `redeliver sim`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Scenario YAML (kind SimulatorScenario); default: the bundled demo tenant.
    #[arg(long, value_name = "FILE")]
    pub scenario: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Override the scenario's seed (derived ids and runtime ids depend on it).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Serve HTTPS with a freshly generated self-signed CA.
    #[arg(long)]
    pub tls: bool,
    /// Write the CA certificate (PEM) here so clients can trust it; implies --tls.
    #[arg(long, value_name = "FILE")]
    pub tls_ca_out: Option<PathBuf>,
    /// Lifetime of issued access tokens.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub token_lifetime: Duration,
    /// Delay before a reprocess takes effect.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    pub reprocess_delay: Duration,
    /// Delay of each adminAdd/adminRemove processing step.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub request_delay: Duration,
    /// Enable RU throttling with this many resource units per window (e.g. 8000).
    #[arg(long, value_name = "RU")]
    pub ru_limit: Option<u32>,
    /// RU throttling window.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub ru_window: Duration,
    /// Latency per route class, e.g. em=250ms±100ms,directory=80ms±40ms,token=150ms
    /// (classes em, directory, token, batch; `+-` works for `±`). Off by default.
    #[arg(long, value_name = "MODEL")]
    pub latency: Option<LatencyModel>,
}

impl SimArgs {
    fn options(&self) -> SimOptions {
        let tls = (self.tls || self.tls_ca_out.is_some()).then(|| TlsOptions {
            ca_out: self.tls_ca_out.clone(),
        });
        SimOptions {
            listen: self.listen,
            tls,
            token_lifetime: self.token_lifetime,
            request_delay: self.request_delay,
            reprocess_delay: self.reprocess_delay,
            ru_bucket: self.ru_limit.map(|capacity| RuBucket {
                capacity,
                window_ms: u64::try_from(self.ru_window.as_millis())
                    .unwrap_or(10_000)
                    .max(1),
            }),
            latency: self.latency.unwrap_or_default(),
        }
    }
}

/// Starts the simulator, prints `export` lines on stdout, serves until Ctrl-C/SIGTERM.
pub async fn run(args: SimArgs) -> anyhow::Result<()> {
    run_until(args, &mut std::io::stdout(), wait_for_signal()).await
}

/// [`run`] with the output and the stop signal supplied by the caller.
async fn run_until(
    args: SimArgs,
    out: &mut (dyn Write + Send),
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut scenario = match &args.scenario {
        Some(p) => Scenario::from_file(p)?,
        None => Scenario::demo(),
    };
    if let Some(seed) = args.seed {
        scenario.spec.seed = seed;
    }
    let handle = Simulator::start(scenario, args.options())
        .await
        .context("starting the Graph simulator")?;
    out.write_all(handle.env_exports().as_bytes())?;
    out.flush()?;
    if !handle.local_addr.ip().is_loopback() {
        eprintln!(
            "redeliver sim: warning: listening on {} — the /_sim admin API has no authentication",
            handle.local_addr
        );
    }
    eprintln!(
        "redeliver sim: Graph at {}/v1.0, tokens at {}, admin API at {} — Ctrl-C to stop",
        handle.graph_url,
        handle.token_url(),
        handle.admin_url
    );
    stop.await;
    eprintln!("redeliver sim: shutting down");
    handle.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sim: SimArgs,
    }

    #[test]
    fn parses_durations_and_implies_tls() {
        let cli = Cli::parse_from([
            "x",
            "--tls-ca-out",
            "/tmp/ca.pem",
            "--reprocess-delay",
            "500ms",
            "--ru-limit",
            "8000",
            "--latency",
            "em=250ms+-100ms,token=150ms",
        ]);
        let o = cli.sim.options();
        assert_eq!(o.latency.to_string(), "em=250ms±100ms,token=150ms");
        assert!(o.tls.is_some());
        assert_eq!(o.reprocess_delay, Duration::from_millis(500));
        assert_eq!(o.ru_bucket.map(|b| b.window_ms), Some(10_000));
        assert_eq!(o.listen.port(), 8080);
    }

    #[test]
    fn a_bad_latency_model_is_refused_naming_the_part() {
        let err = Cli::try_parse_from(["x", "--latency", "em=250ms,graph=1s"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("\"graph=1s\""), "{err}");
    }

    #[tokio::test]
    async fn run_prints_exports_first_and_serves_until_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let cli = Cli::parse_from([
            "x",
            "--listen",
            "127.0.0.1:0",
            "--seed",
            "9",
            "--tls-ca-out",
            ca.to_str().unwrap(),
        ]);
        let mut out = Vec::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let ca_check = ca.clone();
        let stop = async move {
            // The CA file exists while serving; then stop.
            assert!(ca_check.exists());
            let _ = tx.send(());
        };
        run_until(cli.sim, &mut out, stop).await.unwrap();
        rx.await.unwrap();
        let text = String::from_utf8(out).unwrap();
        let first = text.lines().next().unwrap();
        assert!(
            first.starts_with("export AZURE_TENANT_ID='8c3f7a52-"),
            "{text}"
        );
        assert!(text.contains("export REDELIVER_GRAPH_URL='https://127.0.0.1:"));
        assert!(text.contains("export AZURE_CLIENT_SECRET='sim-secret-contoso'"));
    }
}
