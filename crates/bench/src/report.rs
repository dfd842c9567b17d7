//! Writing benchmark results into a Markdown file that several benchmarks share
//! (docs/benchmarks.md): each owns one section between marker comments and rewrites only
//! that, so hand-written text and the other benchmarks' results stay as they are.

use std::path::Path;

/// The command that writes section `name`: `bench-part` belongs to `cargo bench --bench
/// bench` (e.g. `controller-shards`); the role run is a mode of the scale bench.
fn command(name: &str) -> String {
    let bench = name.split_once('-').map_or(name, |(bench, _)| bench);
    match name {
        "roles" => "cargo bench --bench scale -- --roles --markdown".to_string(),
        _ => format!("cargo bench --bench {bench} -- --markdown"),
    }
}

fn markers(name: &str) -> (String, String) {
    (
        format!(
            "<!-- BEGIN {name}: written by `{}`; edits inside are lost -->",
            command(name)
        ),
        format!("<!-- END {name} -->"),
    )
}

/// `text` with the section `name` set to `body`: replaced between its markers if present,
/// otherwise appended at the end.
pub fn with_section(text: &str, name: &str, body: &str) -> String {
    let (begin, end) = markers(name);
    let body = body.trim_end();
    let block = format!("{begin}\n\n{body}\n\n{end}");
    // Match the begin marker by its stable prefix, so rewording it does not duplicate
    // the section.
    let begin_prefix = format!("<!-- BEGIN {name}:");
    if let Some(start) = text.find(&begin_prefix)
        && let Some(stop) = text[start..].find(&end).map(|i| start + i + end.len())
    {
        return format!("{}{block}{}", &text[..start], &text[stop..]);
    }
    let mut out = text.trim_end().to_string();
    if out.is_empty() {
        out.push_str("# Benchmarks");
    }
    out.push_str("\n\n");
    out.push_str(&block);
    out.push('\n');
    out
}

/// Rewrites section `name` of the Markdown file at `path` (creating the file if needed).
pub fn write_section(path: &Path, name: &str, body: &str) -> std::io::Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    std::fs::write(path, with_section(&text, name, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_only_its_own_section() {
        let first = with_section("# Benchmarks\n\nIntro.\n", "scale", "old scale");
        let both = with_section(&first, "controller", "controller figures");
        let text = format!("{both}\n## Targets\n\nhand-written\n");
        let updated = with_section(&text, "scale", "new scale\n");
        assert!(updated.starts_with("# Benchmarks\n\nIntro.\n\n<!-- BEGIN scale:"));
        assert!(updated.contains("\n\nnew scale\n\n<!-- END scale -->"));
        assert!(!updated.contains("old scale"));
        assert!(updated.contains("controller figures"));
        assert!(updated.ends_with("## Targets\n\nhand-written\n"));
        assert_eq!(updated.matches("<!-- BEGIN scale:").count(), 1);
        // Idempotent.
        assert_eq!(with_section(&updated, "scale", "new scale"), updated);
    }

    #[test]
    fn starts_a_new_file_with_a_title() {
        let text = with_section("", "scale", "figures");
        assert!(text.starts_with("# Benchmarks\n\n<!-- BEGIN scale:"));
        assert!(text.ends_with("<!-- END scale -->\n"));
    }
}
