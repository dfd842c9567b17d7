//! `cargo bench --bench scale [-- --scales 1000,10000 ...]`: the scale benchmark (see
//! `redeliver::bench` and docs/benchmarks.md). Not a timed test: it prints a table and,
//! with `--markdown FILE`, writes the results.

use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "scale")]
struct Cli {
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,

    #[command(flatten)]
    args: redeliver::bench::BenchArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    if cli.args.redeliver_bin.is_none() {
        cli.args.redeliver_bin = Some(env!("CARGO_BIN_EXE_redeliver").into());
    }
    redeliver::bench::run(cli.args).await
}
