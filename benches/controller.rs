//! `cargo bench --bench controller [-- --objects 10000 ...]`: the controller benchmark (see
//! `redeliver_bench::controller` and docs/benchmarks.md). Not a timed test: it runs the
//! `redeliver controller` binary against the Graph simulator and an in-process Kubernetes API
//! server, prints a table and, with `--markdown FILE`, replaces its section of that file.

use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "controller")]
struct Cli {
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,

    #[command(flatten)]
    args: redeliver_bench::controller::ControllerBenchArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    if cli.args.redeliver_bin.is_none() {
        cli.args.redeliver_bin = Some(env!("CARGO_BIN_EXE_redeliver").into());
    }
    redeliver_bench::controller::run(cli.args).await
}
