//! `redeliver`: the operator, the audit command, the Graph simulator and the CRD generator.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// mimalloc instead of glibc malloc. The controller holds every watched object for its whole
/// life while the tokio workers allocate and free Graph pages and status patches around
/// them; glibc's per-thread arenas keep much of what is freed resident, and its small
/// allocations cost more CPU. At 20,000 objects (controller benchmark) mimalloc gave 172
/// instead of 179 MiB and 15.0 instead of 19.4 s of CPU; the 100,000-object figures are in
/// docs/benchmarks.md. jemalloc measured the same (168 MiB, 14.5 s) but builds its page
/// size into the binary, which breaks on arm64 kernels with 64 KiB pages (the image is
/// built for linux/arm64 too).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process, before the runtime starts a thread.
///
/// With huge pages the kernel backs each 2 MiB of the heap that is touched at all with a
/// whole 2 MiB page, and keeps it whole while a few small allocations live in it. mimalloc
/// used to ask for them (its `no_thp` feature now stops that, Cargo.toml), and a node whose
/// THP setting is `always` gives them unasked, so the process refuses them itself. A
/// sharded replica holding 400 objects measured 41–46 MiB resident with huge pages (26 MiB
/// of them huge pages) and 25–27 MiB without: a fixed cost every replica pays, which is
/// what kept per-replica memory from falling with shards. One replica of 100,000 objects
/// held 568–585 instead of 597–629 MiB and used less CPU, not more (docs/benchmarks.md,
/// section Controller at 100,000 objects). A kernel or seccomp profile that refuses the
/// call leaves huge pages as the node has them.
fn refuse_transparent_huge_pages() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    rustix::thread::disable_transparent_huge_pages(true)?;
    Ok(())
}

/// Keeps Microsoft Entra ID access package assignments truly delivered.
///
/// Entitlement management shows an assignment as Delivered even after someone removed
/// the user from one of the package's groups by hand. Redeliver verifies real membership
/// through Microsoft Graph, reprocesses assignments that diverge, and reports the truth.
#[derive(Parser, Debug)]
#[command(name = "redeliver", version, propagate_version = true)]
struct Cli {
    /// Log level or tracing filter (e.g. `info`, `debug`, `redeliver=debug`).
    #[arg(long, global = true, env = "REDELIVER_LOG", default_value = "warn")]
    log_level: String,

    /// Log format on stderr.
    #[arg(long, global = true, env = "REDELIVER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the operator: reconcile AccessPackageAssignment and AccessPackageGuard objects.
    Controller(redeliver_cli::ControllerArgs),
    /// Verify declarations from YAML files against Graph and report drift (no cluster needed).
    Audit(redeliver_audit::AuditArgs),
    /// Run the bundled Microsoft Graph simulator (for demos, tests and local development).
    Sim(redeliver_sim::SimArgs),
    /// Print the CustomResourceDefinitions as YAML (or write them to a directory).
    Crd {
        /// Write one file per CRD into this directory instead of printing.
        #[arg(long, value_name = "DIR")]
        write: Option<PathBuf>,
    },
}

fn init_tracing(level: &str, format: LogFormat) {
    // rustls logs each refused handshake, and kube's client builder each refused
    // connection, as errors naming neither the kind nor what to do; Redeliver reports the
    // same failure once, with both. They are silenced unless the filter names them.
    let mut level = level.to_string();
    for (target, quiet) in [
        ("rustls", "rustls=off"),
        ("kube_client", "kube_client::client::builder=off"),
    ] {
        if !level.contains(target) {
            level.push(',');
            level.push_str(quiet);
        }
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&level).unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("warn,rustls=off,kube_client::client::builder=off")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(redeliver_cli::stderr_colour())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// `redeliver audit`; with `--simulate`, against an embedded simulator started here (the
/// operator library does not carry the simulator).
async fn audit(args: redeliver_audit::AuditArgs) -> anyhow::Result<u8> {
    use anyhow::Context as _;
    if !args.simulate {
        return redeliver_audit::run(args, None).await;
    }
    let scenario = match &args.scenario {
        Some(path) => redeliver_sim::Scenario::from_file(path)
            .with_context(|| format!("cannot load scenario {}", path.display()))?,
        None => redeliver_sim::Scenario::demo(),
    };
    let options = redeliver_sim::SimOptions {
        request_delay: std::time::Duration::from_millis(500),
        reprocess_delay: std::time::Duration::from_millis(500),
        ..Default::default()
    };
    let sim = redeliver_sim::Simulator::start(scenario, options)
        .await
        .context("cannot start the embedded Graph simulator")?;
    // The simulator's own credentials, whatever the environment says.
    let endpoint = redeliver::graph::Endpoint {
        tenant_id: sim.tenant_id.clone(),
        client_id: sim.client_id.clone(),
        client_secret: sim.client_secret.clone(),
        authority_host: sim.authority_host.clone(),
        graph_url: sim.graph_url.clone(),
        arm_url: Some(sim.arm_url.clone()),
        ca_file: sim.ca_file.clone(),
    };
    let code = redeliver_audit::run(args, Some(endpoint)).await;
    sim.shutdown().await;
    code
}

fn main() -> ExitCode {
    let thp = refuse_transparent_huge_pages();
    let cli: Cli = redeliver_cli::parse();
    init_tracing(&cli.log_level, cli.log_format);
    if let Err(err) = thp {
        tracing::debug!(error = %err, "transparent huge pages stay as the node has them");
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Controller(args) => redeliver::controller::run(args.into()).await.map(|()| 0),
            Command::Audit(args) => audit(args).await,
            Command::Sim(args) => redeliver_sim::run(args).await.map(|()| 0),
            Command::Crd { write: None } => {
                print!("{}", redeliver::api::crds_yaml());
                Ok(0)
            }
            Command::Crd { write: Some(dir) } => redeliver::api::write_crds(&dir)
                .map(|()| 0)
                .map_err(|e| anyhow::anyhow!("cannot write CRDs to {}: {e}", dir.display())),
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => ExitCode::from(redeliver_cli::report_error(&err)),
    }
}
