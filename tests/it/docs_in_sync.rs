//! The documentation matches the repository: every repository path a Markdown file names
//! exists, and the README's quick start and test command are what users and CI run.
//!
//! Paths: `examples/tenant/README.md` once pointed at `src/sim/…` files that had moved, and
//! a reader following a stale path is lost in the first hour.
//!
//! A path is a token that starts with one of the repository's top-level directories
//! (`crates/`, `docs/`, `tests/`, …) or a root file name, in backticks or a Markdown link;
//! globs and placeholders (`*`, `<…>`, `{…}`, `…`) are not paths. Each is looked up from the
//! repository root, then from the Markdown file's own directory.

use std::path::{Path, PathBuf};

/// The top-level entries a path may start with.
const ROOTS: [&str; 12] = [
    "crates/",
    "docs/",
    "tests/",
    "examples/",
    "charts/",
    "crds/",
    "benches/",
    "fuzz/",
    "plugins/",
    "src/",
    ".ci/",
    "Dockerfile",
];

fn markdown_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            if !matches!(
                name.as_str(),
                "target" | "node_modules" | ".git" | "corpus" | "artifacts"
            ) {
                markdown_files(&path, out);
            }
        } else if name.ends_with(".md") {
            out.push(path);
        }
    }
}

/// The path-like tokens of `text`: inside backticks, or a link target `(…)`.
fn named_paths(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let spans = text
        .split('`')
        .skip(1)
        .step_by(2)
        .chain(text.split("](").skip(1).filter_map(|s| s.split(')').next()));
    for span in spans {
        for token in span.split_whitespace() {
            let token = token
                .trim_start_matches(['(', '[', '"', '\''])
                .trim_end_matches([')', ']', ',', ';', ':', '.', '"', '\'']);
            let token = token.split(['#', '?']).next().unwrap_or_default();
            // `path:line` and `path::item` name a place in a file.
            let token = token.split("::").next().unwrap_or_default();
            let token = match token.rsplit_once(':') {
                Some((path, line)) if line.bytes().all(|b| b.is_ascii_digit()) => path,
                _ => token,
            };
            let placeholder =
                token.contains(['*', '<', '>', '{', '}', '$', '…', '|']) || token.contains("...");
            if !placeholder && ROOTS.iter().any(|r| token.starts_with(r)) {
                out.push(token.to_string());
            }
        }
    }
    out
}

#[test]
fn every_repository_path_named_in_markdown_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    markdown_files(root, &mut files);
    files.sort();
    assert!(files.len() > 5, "found the Markdown files: {files:?}");
    let mut missing = Vec::new();
    let mut checked = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read Markdown");
        let dir = file.parent().unwrap_or(root);
        for path in named_paths(&text) {
            checked += 1;
            if !root.join(&path).exists() && !dir.join(&path).exists() {
                missing.push(format!(
                    "{}: {path}",
                    file.strip_prefix(root).unwrap_or(file).display()
                ));
            }
        }
    }
    assert!(checked > 50, "checked {checked} paths");
    assert!(
        missing.is_empty(),
        "paths named in Markdown that do not exist (fix the text or the path):\n{}",
        missing.join("\n")
    );
}

#[test]
fn path_tokens_are_read_as_a_reader_would() {
    let text = "see `crates/sim/src/graph.rs:34`, [the docs](docs/simulator.md#graph) and \
                `tests/it/fault_*` or `docs/<name>.md`; `redeliver::audit::load` is no path";
    assert_eq!(
        named_paths(text),
        vec!["crates/sim/src/graph.rs", "docs/simulator.md"]
    );
}
/// The commands of a fenced `sh` block that follows `marker` in `text`.
fn sh_block_after<'a>(text: &'a str, marker: &str) -> Vec<&'a str> {
    text.split(marker)
        .nth(1)
        .and_then(|rest| rest.split("```sh\n").nth(1))
        .and_then(|block| block.split("```").next())
        .map(|block| {
            block
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .collect()
        })
        .unwrap_or_default()
}

/// The README's quick start builds both programs with the tests' profile, and its audit
/// command, run as written (the binary it names is this build's), exits 0; the README's
/// test command is the one `.ci/run` runs.
#[test]
fn the_readme_quick_start_and_test_command_are_what_ci_and_users_run() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let quick = sh_block_after(&readme, "## Quick start");
    assert_eq!(quick.first(), Some(&"cargo build --locked"), "{quick:?}");
    // `cargo build` (no --release, no -p) builds the root package's binaries in the debug
    // profile: the plugin is one of them.
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_redeliver")).parent().unwrap();
    assert!(bin_dir.ends_with("debug"), "{}", bin_dir.display());
    assert!(
        Path::new(env!("CARGO_BIN_EXE_kubectl-redeliver")).exists(),
        "the plugin is built with the same command"
    );
    let audit = quick
        .get(1)
        .and_then(|c| c.strip_prefix("target/debug/redeliver "))
        .expect("the quick start runs target/debug/redeliver");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_redeliver"))
        .args(audit.split_whitespace())
        .current_dir(root)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .output()
        .expect("run the quick start's audit");
    // Everything repaired but frank's access, held on purpose (his account is disabled), as
    // the README says: not delivered, nothing broken.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("0 drifted, 0 not assigned, 1 held, 0 other, 0 errors"),
        "{stdout}"
    );

    let tests = sh_block_after(&readme, "Run the tests:");
    assert_eq!(tests, vec!["cargo test --locked"]);
    let ci = std::fs::read_to_string(root.join(".ci/run")).expect(".ci/run");
    assert!(
        ci.lines().any(|l| l.trim() == tests[0]),
        ".ci/run runs the README's test command"
    );
}
