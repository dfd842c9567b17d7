//! Loading declarations from YAML files and directories, the way `kubectl apply -f` would
//! see them: recursive, multi-document, other kinds skipped with a note.
//!
//! Loading is all-or-nothing: any malformed document is an error naming the file and line,
//! and the caller must not act on a partial set (a missing declaration is not a reason to
//! touch anything in the tenant).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use k8s_openapi::api::core::v1::Secret;

use redeliver::api::{
    AccessPackageAssignment, AccessPackageGuard, ClusterGraphConnection, GraphConnection,
    SpecError, assignment_spec_problems, guard_spec_problems, validate_connection_settings,
};

/// The API group and version Redeliver's kinds are served at.
pub const API_VERSION: &str = "redeliver.dev/v1alpha1";

/// Where a declaration came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Origin {
    pub file: PathBuf,
    /// 1-based line where the document starts.
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// One problem found while loading. Loading collects all of them before failing, so a
/// user fixes every file in one round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file.display(), line, self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// Everything read from the given paths.
#[derive(Debug, Default)]
pub struct Declarations {
    pub assignments: Vec<(Origin, AccessPackageAssignment)>,
    pub guards: Vec<(Origin, AccessPackageGuard)>,
    /// `GraphConnection`s: the tenants of the declarations that name them (or of their
    /// namespace, for one named `default`).
    pub connections: Vec<(Origin, GraphConnection)>,
    /// `ClusterGraphConnection`s.
    pub cluster_connections: Vec<(Origin, ClusterGraphConnection)>,
    /// `Secret`s (`v1`), where connections' client secrets are looked up. Never printed.
    pub secrets: Vec<(Origin, Secret)>,
    /// Documents of other kinds, reported as notes (`file:line: skipped Kind/name`).
    pub skipped: Vec<String>,
}

impl Declarations {
    pub fn is_empty(&self) -> bool {
        self.assignments.is_empty() && self.guards.is_empty()
    }
}

/// Reads every `.yaml`/`.yml` file under `paths` (files are read whatever their extension).
pub fn load_paths(paths: &[PathBuf]) -> Result<Declarations, Vec<LoadError>> {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = walkdir::WalkDir::new(path)
                .follow_links(true)
                .into_iter()
                .filter_map(|entry| match entry {
                    Ok(entry) => Some(entry),
                    Err(err) => {
                        errors.push(LoadError {
                            file: err.path().unwrap_or(path).to_path_buf(),
                            line: None,
                            message: format!("cannot read: {err}"),
                        });
                        None
                    }
                })
                .filter(|e| e.file_type().is_file() && is_yaml(e.path()))
                .map(|e| e.into_path())
                .collect();
            found.sort();
            files.extend(found);
        } else if path.exists() {
            files.push(path.clone());
        } else {
            errors.push(LoadError {
                file: path.clone(),
                line: None,
                message: "no such file or directory".into(),
            });
        }
    }
    let mut decls = Declarations::default();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => load_text(&file, &text, &mut decls, &mut errors),
            Err(err) => errors.push(LoadError {
                file: file.clone(),
                line: None,
                message: format!("cannot read: {err}"),
            }),
        }
    }
    check_duplicates(&decls, &mut errors);
    if errors.is_empty() {
        Ok(decls)
    } else {
        Err(errors)
    }
}

/// Loads declarations from `text` as if read from `file`, with the same all-or-nothing
/// rule as [`load_paths`]. For callers that already hold the text (and for fuzzing).
pub fn load_str(file: &Path, text: &str) -> Result<Declarations, Vec<LoadError>> {
    let mut decls = Declarations::default();
    let mut errors = Vec::new();
    load_text(file, text, &mut decls, &mut errors);
    check_duplicates(&decls, &mut errors);
    if errors.is_empty() {
        Ok(decls)
    } else {
        Err(errors)
    }
}

fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

/// Splits a YAML stream into documents, keeping the 1-based line each starts on, so that
/// errors from a document's parser can be reported against the whole file.
fn split_documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut start = 1;
    let mut current = String::new();
    for (idx, line) in text.lines().enumerate() {
        let trimmed = line.trim_end();
        if trimmed == "---" || trimmed.starts_with("--- ") || trimmed == "..." {
            docs.push((start, std::mem::take(&mut current)));
            start = idx + 2;
            // Keep line numbers aligned: the separator line itself is not part of a document.
            continue;
        }
        current.push_str(line);
        current.push('\n');
    }
    docs.push((start, current));
    docs.into_iter()
        .filter(|(_, d)| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .collect()
}

/// Redeliver's kinds, as a document names them.
pub const KINDS: [&str; 4] = [
    "AccessPackageAssignment",
    "AccessPackageGuard",
    "GraphConnection",
    "ClusterGraphConnection",
];

/// Deeper nesting than this is refused before the YAML parser sees the document. A
/// declaration needs about eight levels; the parser's own refusal of 100,000 levels takes
/// seconds (quadratic), this check milliseconds.
pub const MAX_DEPTH: usize = 64;

fn load_text(file: &Path, text: &str, decls: &mut Declarations, errors: &mut Vec<LoadError>) {
    for (start, doc) in split_documents(text) {
        let err = |line: Option<usize>, message: String| LoadError {
            file: file.to_path_buf(),
            line: line.or(Some(start)),
            message,
        };
        if let Some(line) = too_deep(&doc, MAX_DEPTH) {
            errors.push(err(
                Some(start + line - 1),
                format!(
                    "nested more than {MAX_DEPTH} levels deep; a declaration needs about eight, \
                     so this document is refused without being parsed"
                ),
            ));
            continue;
        }
        let value: serde_norway::Value = match serde_norway::from_str(&doc) {
            Ok(v) => v,
            Err(e) => {
                let line = e.location().map(|l| start + l.line() - 1);
                errors.push(err(line, format!("invalid YAML: {}", strip_location(&e))));
                continue;
            }
        };
        let api_version = value.get("apiVersion").and_then(|v| v.as_str());
        let kind = value.get("kind").and_then(|v| v.as_str());
        let name = value
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(|v| v.as_str())
            .unwrap_or("<unnamed>");
        let origin = Origin {
            file: file.to_path_buf(),
            line: start,
        };
        let (Some(api_version), Some(kind)) = (api_version, kind) else {
            decls.skipped.push(format!(
                "{origin}: skipped a document without apiVersion/kind"
            ));
            continue;
        };
        if kind == "Secret" && api_version == "v1" {
            // A connection's credential; its value is never part of a message.
            match parse_typed::<Secret>(&doc, start) {
                Ok(obj) => decls.secrets.push((origin, obj)),
                Err(problems) => errors.push(err(
                    problems.first().and_then(|p| p.0),
                    format!("Secret/{name}: not a valid Secret (data values must be base64; use stringData for plain text)"),
                )),
            }
            continue;
        }
        if !api_version.starts_with("redeliver.dev/") {
            decls
                .skipped
                .push(format!("{origin}: skipped {kind}/{name} ({api_version})"));
            continue;
        }
        // Redeliver's group: a document here is meant for Redeliver, so one it cannot read
        // is an error, never a skip that would leave a declaration unchecked.
        if !KINDS.contains(&kind) {
            errors.push(err(
                field_line(&doc, start, "kind"),
                format!(
                    "kind {kind} is not one of Redeliver's kinds ({}); did you mean {}?",
                    KINDS.join(", "),
                    closest_kind(kind)
                ),
            ));
            continue;
        }
        if api_version != API_VERSION {
            errors.push(err(
                field_line(&doc, start, "apiVersion"),
                format!(
                    "{kind}/{name}: apiVersion {api_version} is not supported; use {API_VERSION}"
                ),
            ));
            continue;
        }
        let mut report = |problems: Vec<(Option<usize>, String)>| {
            for (line, message) in problems {
                errors.push(err(line, format!("{kind}/{name}: {message}")));
            }
        };
        // Every problem of the document, each at its field's line.
        let valid = |problems: Vec<SpecError>| -> Result<(), Vec<(Option<usize>, String)>> {
            if problems.is_empty() {
                return Ok(());
            }
            Err(problems
                .into_iter()
                .map(|e| (field_line(&doc, start, &e.field), e.to_string()))
                .collect())
        };
        let connection = |s: &redeliver::api::ConnectionSettings| {
            valid(validate_connection_settings(s).err().into_iter().collect())
        };
        let loaded = match kind {
            "GraphConnection" => parse_typed::<GraphConnection>(&doc, start)
                .and_then(|o| connection(&o.spec.settings()).map(|()| o))
                .map(|o| decls.connections.push((origin, o))),
            "ClusterGraphConnection" => parse_typed::<ClusterGraphConnection>(&doc, start)
                .and_then(|o| connection(&o.spec.settings()).map(|()| o))
                .map(|o| decls.cluster_connections.push((origin, o))),
            "AccessPackageAssignment" => parse_typed::<AccessPackageAssignment>(&doc, start)
                .and_then(|o| valid(assignment_spec_problems(&o.spec)).map(|()| o))
                .map(|o| decls.assignments.push((origin, o))),
            _ => parse_typed::<AccessPackageGuard>(&doc, start)
                .and_then(|o| valid(guard_spec_problems(&o.spec)).map(|()| o))
                .map(|o| decls.guards.push((origin, o))),
        };
        if let Err(problems) = loaded {
            report(problems);
        }
    }
}

/// The Redeliver kind most like `kind` (one always is: the hint names the nearest).
fn closest_kind(kind: &str) -> &'static str {
    let lower = kind.to_lowercase();
    let score = |k: &str| strsim::normalized_damerau_levenshtein(&lower, &k.to_lowercase());
    KINDS
        .into_iter()
        .max_by(|a, b| score(a).total_cmp(&score(b)))
        .unwrap_or(KINDS[0])
}

/// Parses one document into `T`, refusing unknown fields: a misspelt field would otherwise be
/// silently dropped (as the API server's pruning would) and the declaration would mean
/// something other than what its author wrote. Every problem found is returned, each at
/// its own line: every unknown field, and the parser's error when there is one.
fn parse_typed<T: DeserializeOwned>(
    doc: &str,
    start: usize,
) -> Result<T, Vec<(Option<usize>, String)>> {
    let mut unknown = Vec::new();
    let de = serde_norway::Deserializer::from_str(doc);
    let parsed: Result<T, _> = serde_ignored::deserialize(de, |path| {
        let path = path.to_string();
        // kubectl-style metadata we do not model (labels, annotations…) is fine.
        let top = path.split('.').next().unwrap_or_default();
        if !matches!(top, "apiVersion" | "kind" | "metadata" | "status") {
            unknown.push(path);
        }
    });
    let mut problems: Vec<(Option<usize>, String)> = unknown
        .iter()
        .map(|path| {
            let shown = path.replace(".?", "");
            (
                field_line(doc, start, &shown),
                format!("unknown field `{shown}`; check its spelling against `kubectl explain`"),
            )
        })
        .collect();
    match parsed {
        Ok(obj) if problems.is_empty() => Ok(obj),
        Ok(_) => Err(problems),
        Err(e) => {
            problems.push((
                e.location().map(|l| start + l.line() - 1),
                strip_location(&e),
            ));
            problems.sort_by_key(|p| p.0);
            Err(problems)
        }
    }
}

/// The file line (1-based) where the field at `path` (dotted, e.g. `spec.target.upn`,
/// sequence indices as numbers) is written in `doc`, which starts at file line `start`:
/// each key is looked for at or after the line of its parent. `None` when the first key
/// is not found; the deepest key found otherwise.
fn field_line(doc: &str, start: usize, path: &str) -> Option<usize> {
    let lines: Vec<&str> = doc.lines().collect();
    let mut at = 0;
    let mut found = None;
    for key in path.split('.') {
        if key.is_empty() || key == "?" || key.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let hit = (at..lines.len()).find(|&i| declares_key(lines[i], key))?;
        at = hit;
        found = Some(start + hit);
    }
    found
}

/// Whether `line` writes the mapping key `key` (block `key:` or inside a flow mapping
/// `{a: 1, key: 2}`, plain or quoted), outside a comment.
fn declares_key(line: &str, key: &str) -> bool {
    let code = match line.find(" #") {
        Some(i) => &line[..i],
        None if line.trim_start().starts_with('#') => "",
        None => line,
    };
    [
        format!("{key}:"),
        format!("\"{key}\":"),
        format!("'{key}':"),
    ]
    .iter()
    .any(|pattern| {
        code.match_indices(pattern.as_str()).any(|(i, _)| {
            let before = code[..i].trim_end();
            let follows = &code[i + pattern.len()..];
            (before.is_empty() || before.ends_with(['{', ',', '-', '?']) || before.ends_with(": -"))
                && (follows.is_empty() || follows.starts_with([' ', '\t']))
        })
    })
}

/// The 1-based line of `doc` at which its nesting (block indentation levels, compact
/// `- - -` sequences and flow `[`/`{` collections together) first exceeds `max`, or `None`.
/// A linear scan that over-counts rather than under-counts, so the parser never sees a
/// document deeper than `max`.
fn too_deep(doc: &str, max: usize) -> Option<usize> {
    let mut indents: Vec<usize> = Vec::new();
    let mut flow = 0usize;
    // Inside a quoted scalar that spans lines: its quote character.
    let mut quote: Option<u8> = None;
    // Inside a block scalar (`|`, `>`): lines indented deeper than this are its text.
    let mut block_scalar: Option<usize> = None;
    for (idx, line) in doc.lines().enumerate() {
        let bytes = line.as_bytes();
        let indent = bytes.iter().take_while(|&&b| b == b' ').count();
        let blank = line.trim().is_empty();
        if let Some(parent) = block_scalar {
            if blank || indent > parent {
                continue;
            }
            block_scalar = None;
        }
        let mut i = 0;
        if quote.is_none() && flow == 0 && !blank && bytes.get(indent) != Some(&b'#') {
            while indents.last().is_some_and(|&top| top >= indent) {
                indents.pop();
            }
            indents.push(indent);
            i = indent;
            // `- - - x`: each compact sequence entry is one more level.
            while bytes.get(i) == Some(&b'-') && matches!(bytes.get(i + 1), Some(b' ') | None) {
                i += 2;
                indents.push(i);
            }
        }
        // Start of a value: where a flow collection or a quoted scalar may begin.
        let mut value_start = true;
        while i < bytes.len() {
            let b = bytes[i];
            if let Some(q) = quote {
                if b == b'\\' && q == b'"' {
                    i += 2;
                    continue;
                }
                if b == q {
                    if q == b'\'' && bytes.get(i + 1) == Some(&b'\'') {
                        i += 2;
                        continue;
                    }
                    quote = None;
                }
                i += 1;
                continue;
            }
            match b {
                b'#' if i == 0 || bytes[i - 1] == b' ' => break,
                b'"' | b'\'' if value_start => quote = Some(b),
                b'[' | b'{' if value_start || flow > 0 => {
                    flow += 1;
                    if indents.len() + flow > max {
                        return Some(idx + 1);
                    }
                }
                b']' | b'}' if flow > 0 => flow -= 1,
                b'|' | b'>' if value_start && flow == 0 => {
                    block_scalar = Some(indent);
                    break;
                }
                _ => {}
            }
            value_start = match b {
                b' ' | b'\t' => value_start,
                b',' | b'[' | b'{' => true,
                // Indicators only when a space follows (`a-b`, `http://x` are plain text).
                b':' | b'-' | b'?' => matches!(bytes.get(i + 1), Some(b' ' | b'\t') | None),
                _ => false,
            };
            i += 1;
        }
        if indents.len() + flow > max {
            return Some(idx + 1);
        }
    }
    None
}

/// serde_norway appends "at line L column C" to messages; we report the file-level line
/// ourselves, so drop it to avoid a confusing document-relative number.
fn strip_location(e: &serde_norway::Error) -> String {
    let text = e.to_string();
    match text.find(" at line ") {
        Some(idx) => text[..idx].to_string(),
        None => text,
    }
}

fn check_duplicates(decls: &Declarations, errors: &mut Vec<LoadError>) {
    let mut seen: BTreeMap<(String, String, String), &Origin> = BTreeMap::new();
    let keys = decls
        .assignments
        .iter()
        .map(|(o, a)| (o, "AccessPackageAssignment", &a.metadata))
        .chain(
            decls
                .guards
                .iter()
                .map(|(o, g)| (o, "AccessPackageGuard", &g.metadata)),
        );
    for (origin, kind, meta) in keys {
        let key = (
            kind.to_string(),
            meta.namespace.clone().unwrap_or_else(|| "default".into()),
            meta.name.clone().unwrap_or_default(),
        );
        if key.2.is_empty() {
            errors.push(LoadError {
                file: origin.file.clone(),
                line: Some(origin.line),
                message: format!("{kind} has no metadata.name; every declaration needs a name"),
            });
            continue;
        }
        if let Some(first) = seen.get(&key) {
            errors.push(LoadError {
                file: origin.file.clone(),
                line: Some(origin.line),
                message: format!(
                    "{kind} {}/{} is declared twice (first at {first}); remove one",
                    key.1, key.2
                ),
            });
        } else {
            seen.insert(key, origin);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_documents_and_keeps_line_numbers() {
        let text = "a: 1\n---\n# only a comment\n---\nb: 2\nc: 3\n";
        let docs = split_documents(text);
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].0, 1);
        assert_eq!(docs[1].0, 5);
        assert!(docs[1].1.starts_with("b: 2"));
    }

    fn errors_of(text: &str) -> Vec<LoadError> {
        load_str(Path::new("d.yaml"), text).expect_err("refused")
    }

    const HEAD: &str = "apiVersion: redeliver.dev/v1alpha1\nkind: AccessPackageAssignment\nmetadata: {name: x, namespace: access}\n";

    #[test]
    fn a_misspelt_kind_of_ours_is_an_error_at_its_line_naming_the_closest() {
        let errors = errors_of(
            "# header\napiVersion: redeliver.dev/v1alpha1\nkind: AccessPackageAsignment\nmetadata: {name: x}\n",
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].line, Some(3));
        assert!(
            errors[0]
                .message
                .contains("did you mean AccessPackageAssignment?"),
            "{}",
            errors[0]
        );
        // Another group's kinds are still only skipped.
        let decls = load_str(
            Path::new("d.yaml"),
            "apiVersion: example.com/v1\nkind: AccessPackageAsignment\nmetadata: {name: x}\n",
        )
        .expect("skipped, not refused");
        assert_eq!(decls.skipped.len(), 1);
    }

    #[test]
    fn an_unknown_version_of_ours_is_an_error_at_its_line() {
        let errors = errors_of(
            "kind: AccessPackageGuard\napiVersion: redeliver.dev/v1\nmetadata: {name: x}\n",
        );
        assert_eq!(errors[0].line, Some(2), "{errors:?}");
        assert!(errors[0].message.contains("use redeliver.dev/v1alpha1"));
    }

    #[test]
    fn every_unknown_field_is_reported_at_its_own_line() {
        let text = format!(
            "{HEAD}spec:\n  accessPackage: {{displayName: Finance Analysts}}\n  target:\n    userPrincipalNme: alice@contoso.com\n  verifyIntervall: 5m\n"
        );
        let errors = errors_of(&text);
        let lines: Vec<_> = errors.iter().map(|e| (e.line, e.message.clone())).collect();
        assert!(
            lines
                .iter()
                .any(|(l, m)| *l == Some(7) && m.contains("`spec.target.userPrincipalNme`")),
            "{lines:#?}"
        );
        assert!(
            lines
                .iter()
                .any(|(l, m)| *l == Some(8) && m.contains("`spec.verifyIntervall`")),
            "{lines:#?}"
        );
    }

    #[test]
    fn a_flow_mapping_field_is_found_on_its_line() {
        let text = format!(
            "{HEAD}spec:\n  accessPackage: {{displayName: Finance Analysts}}\n  target: {{userPrincipalName: a@b.c, objectIdd: x}}\n"
        );
        let errors = errors_of(&text);
        assert!(
            errors
                .iter()
                .any(|e| e.line == Some(6) && e.message.contains("objectIdd")),
            "{errors:#?}"
        );
    }

    #[test]
    fn a_validation_error_points_at_its_field() {
        let text = format!(
            "{HEAD}spec:\n  accessPackage: {{displayName: Finance Analysts}}\n  target: {{userPrincipalName: alice@contoso.com}}\n  verifyInterval: banana\n"
        );
        let errors = errors_of(&text);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert_eq!(errors[0].line, Some(7), "{errors:#?}");
    }

    #[test]
    fn every_invalid_value_of_a_document_is_listed_at_its_line() {
        let text = format!(
            "{HEAD}spec:\n  accessPackage: {{displayName: Finance Analysts}}\n  target: {{userPrincipalName: alice}}\n  verifyInterval: 1s\n  connectionRef: {{name: team-a/default}}\n"
        );
        let errors = errors_of(&text);
        let found: Vec<(Option<usize>, bool)> = errors
            .iter()
            .map(|e| (e.line, e.message.contains("spec.")))
            .collect();
        assert_eq!(
            found,
            [(Some(6), true), (Some(7), true), (Some(8), true)],
            "{errors:#?}"
        );
    }

    #[test]
    fn depth_is_bounded_before_parsing_in_milliseconds() {
        for text in [
            format!("a: {}{}\n", "[".repeat(100_000), "]".repeat(100_000)),
            format!("a: {}\n", "{x: ".repeat(100_000)),
            format!("{}x\n", "- ".repeat(100_000)),
        ] {
            let started = std::time::Instant::now();
            let errors = errors_of(&text);
            let took = started.elapsed();
            assert!(
                errors[0].message.contains("nested more than 64 levels"),
                "{errors:?}"
            );
            assert!(took < std::time::Duration::from_millis(500), "{took:?}");
        }
        // Real declarations and their block scalars are far from the bound.
        assert_eq!(
            too_deep(
                &format!("{HEAD}spec:\n  a: |\n{}", "      deep\n".repeat(5)),
                8
            ),
            None
        );
        assert_eq!(too_deep("a: [b, {c: [d]}]\n", 4), None);
        assert_eq!(too_deep("a: [b, {c: [d]}]\n", 3), Some(1));
        assert_eq!(too_deep("a: \"[[[[[\"\nb: x-[y\n", 2), None);
    }
}
