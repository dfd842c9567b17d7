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

use crate::api::{
    AccessPackageAssignment, AccessPackageGuard, ClusterGraphConnection, GraphConnection,
    validate_assignment_spec, validate_connection_settings, validate_guard_spec,
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

fn load_text(file: &Path, text: &str, decls: &mut Declarations, errors: &mut Vec<LoadError>) {
    for (start, doc) in split_documents(text) {
        let err = |line: Option<usize>, message: String| LoadError {
            file: file.to_path_buf(),
            line: line.or(Some(start)),
            message,
        };
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
                Err((line, _)) => errors.push(err(
                    line,
                    format!("Secret/{name}: not a valid Secret (data values must be base64; use stringData for plain text)"),
                )),
            }
            continue;
        }
        let ours = matches!(
            kind,
            "AccessPackageAssignment"
                | "AccessPackageGuard"
                | "GraphConnection"
                | "ClusterGraphConnection"
        );
        if !ours || !api_version.starts_with("redeliver.dev/") {
            decls
                .skipped
                .push(format!("{origin}: skipped {kind}/{name} ({api_version})"));
            continue;
        }
        if api_version != API_VERSION {
            errors.push(err(
                None,
                format!(
                    "{kind}/{name}: apiVersion {api_version} is not supported; use {API_VERSION}"
                ),
            ));
            continue;
        }
        if kind == "GraphConnection" {
            match parse_typed::<GraphConnection>(&doc, start) {
                Ok(obj) => match validate_connection_settings(&obj.spec.settings()) {
                    Ok(()) => decls.connections.push((origin, obj)),
                    Err(e) => errors.push(err(None, format!("{kind}/{name}: {e}"))),
                },
                Err((line, message)) => errors.push(err(line, format!("{kind}/{name}: {message}"))),
            }
            continue;
        }
        if kind == "ClusterGraphConnection" {
            match parse_typed::<ClusterGraphConnection>(&doc, start) {
                Ok(obj) => match validate_connection_settings(&obj.spec.settings()) {
                    Ok(()) => decls.cluster_connections.push((origin, obj)),
                    Err(e) => errors.push(err(None, format!("{kind}/{name}: {e}"))),
                },
                Err((line, message)) => errors.push(err(line, format!("{kind}/{name}: {message}"))),
            }
            continue;
        }
        if kind == "AccessPackageAssignment" {
            match parse_typed::<AccessPackageAssignment>(&doc, start) {
                Ok(obj) => match validate_assignment_spec(&obj.spec) {
                    Ok(()) => decls.assignments.push((origin, obj)),
                    Err(e) => errors.push(err(None, format!("{kind}/{name}: {e}"))),
                },
                Err((line, message)) => errors.push(err(line, format!("{kind}/{name}: {message}"))),
            }
        } else {
            match parse_typed::<AccessPackageGuard>(&doc, start) {
                Ok(obj) => match validate_guard_spec(&obj.spec) {
                    Ok(()) => decls.guards.push((origin, obj)),
                    Err(e) => errors.push(err(None, format!("{kind}/{name}: {e}"))),
                },
                Err((line, message)) => errors.push(err(line, format!("{kind}/{name}: {message}"))),
            }
        }
    }
}

/// Parses one document into `T`, refusing unknown fields: a misspelt field would otherwise be
/// silently dropped (as the API server's pruning would) and the declaration would mean
/// something other than what its author wrote.
fn parse_typed<T: DeserializeOwned>(doc: &str, start: usize) -> Result<T, (Option<usize>, String)> {
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
    match parsed {
        Ok(obj) if unknown.is_empty() => Ok(obj),
        Ok(_) => Err((
            None,
            format!(
                "unknown field {}; check its spelling against `kubectl explain`",
                unknown
                    .iter()
                    .map(|p| format!("`{p}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
        Err(e) => Err((
            e.location().map(|l| start + l.line() - 1),
            strip_location(&e),
        )),
    }
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
}
