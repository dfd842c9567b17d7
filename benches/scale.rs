//! `cargo bench --bench scale [-- --scales 1000,10000 ...]`: the scale benchmark (see
//! `redeliver_bench` and docs/benchmarks.md). Not a timed test: it prints a table and,
//! with `--markdown FILE`, writes the results. `--roles` runs the role tenant instead
//! (Entra and Azure roles; `redeliver_bench::roles`).

use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "scale")]
struct Cli {
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,

    #[command(flatten)]
    args: redeliver_bench::BenchArgs,
}

fn main() -> anyhow::Result<()> {
    // Before anything else: this executable also launches the measured processes, so
    // that their peak RSS is their own (see `redeliver_bench::measure`).
    redeliver_bench::measure::serve_as_launcher_if_asked();
    let mut cli = Cli::parse();
    if cli.args.redeliver_bin.is_none() {
        cli.args.redeliver_bin = Some(env!("CARGO_BIN_EXE_redeliver").into());
    }
    tokio::runtime::Runtime::new()?.block_on(redeliver_bench::run(cli.args))
}
