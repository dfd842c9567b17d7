//! What both command-line programs (`redeliver` and `kubectl-redeliver`) share at their
//! edge: one table of exit codes, usage errors that are told apart from drift, whether to
//! colour, and how an error and its causes are printed.
//!
//! | code | meaning |
//! | ---: | --- |
//! | 0 | success: everything checked is delivered (or the command did what was asked) |
//! | 1 | an error: invalid declarations, Graph or Kubernetes unreachable or refusing, a declaration that needs a human, a timeout |
//! | 2 | drift: something is not delivered (`audit`, `kubectl redeliver drift`) |
//! | 64 | a usage error (BSD `EX_USAGE`): an unknown flag, a bad value, a flag that has no effect with the others given; nothing was run |
//!
//! 2 stays "drift" because CI jobs already branch on it; clap's own usage exit code (2) is
//! moved to 64 so that "the tenant drifted" and "the job is broken" never share a code.
//!
//! The argument structs live here too, not in the operator library: [`GraphArgs`] (the Graph
//! flags both subcommands flatten in) and [`ControllerArgs`] (`redeliver controller`), each
//! converting into the library's plain settings (`redeliver::graph::GraphSettings`,
//! `redeliver::controller::ControllerOptions`), so the library the controller links carries
//! no argument parser. `redeliver audit`'s own flags are in `redeliver-audit`, which builds on
//! this crate.

#![forbid(unsafe_code)]

mod controller;
mod graph;

pub use controller::ControllerArgs;
pub use graph::{GraphArgs, parse_duration};

use std::io::IsTerminal as _;

/// Success.
pub const EXIT_OK: u8 = 0;
/// Errors (bad input, Graph or Kubernetes errors, declarations that need a human).
pub const EXIT_ERROR: u8 = 1;
/// Drift or missing assignments remain.
pub const EXIT_DRIFT: u8 = 2;
/// The command line is wrong (BSD `sysexits.h` `EX_USAGE`); nothing was run.
pub const EXIT_USAGE: u8 = 64;

/// A command line that parses but asks for something that cannot be done as written (for
/// example a flag with no effect next to the others). Exits [`EXIT_USAGE`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Parses the command line; a usage error is printed with clap's own text and the process
/// exits [`EXIT_USAGE`] (help and version exit 0).
pub fn parse<P: clap::Parser>() -> P {
    match P::try_parse() {
        Ok(parsed) => parsed,
        Err(err) => {
            // Printing to a closed pipe is not worth a panic; the exit code still tells.
            let _ = err.print();
            let code = if err.use_stderr() {
                EXIT_USAGE
            } else {
                EXIT_OK
            };
            std::process::exit(i32::from(code))
        }
    }
}

/// Whether output to stderr may carry ANSI colour: only on a terminal, and never when
/// `NO_COLOR` is set to anything non-empty (<https://no-color.org>).
pub fn stderr_colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Prints `error: …` and then each cause whose text no earlier line already contains
/// (libraries often embed their source's message in their own), and returns the exit code
/// for it: [`EXIT_USAGE`] for a [`UsageError`], else [`EXIT_ERROR`].
pub fn report_error(err: &anyhow::Error) -> u8 {
    eprintln!("error: {err}");
    let mut shown: Vec<String> = vec![err.to_string()];
    for cause in err.chain().skip(1) {
        let text = cause.to_string();
        if !shown.iter().any(|s| s.contains(&text)) {
            eprintln!("  cause: {text}");
            shown.push(text);
        }
    }
    if err.downcast_ref::<UsageError>().is_some() {
        eprintln!("\nFor more information, try '--help'.");
        EXIT_USAGE
    } else {
        EXIT_ERROR
    }
}
