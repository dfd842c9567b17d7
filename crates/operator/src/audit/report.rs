//! The audit report: one row per declared assignment (and per drifted assignment a guard
//! found), rendered as a table, JSON or YAML.

use std::fmt;

use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use serde::{Serialize, Serializer};

use crate::engine::conditions::Reason;

/// A write to Entra ID, as a row names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    /// `adminAdd`: ask entitlement management for the assignment.
    RequestAssignment,
    /// Reprocess an assignment.
    Reprocess,
    /// Reprocess a failed assignment request.
    ReprocessRequest,
}

impl WriteKind {
    fn verb(self) -> &'static str {
        match self {
            Self::RequestAssignment => "request assignment",
            Self::Reprocess => "reprocess",
            Self::ReprocessRequest => "reprocess request",
        }
    }
}

/// What Redeliver did, would do, or is waiting for on one row. Reports (JSON and YAML
/// included) carry its text, e.g. `would reprocess` or `none (reprocess in flight by ...)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowAction {
    /// Nothing to do.
    None,
    /// A write is due: `sent` when the run may write (`--reprocess`), else only proposed
    /// (`would ...`).
    Planned { write: WriteKind, sent: bool },
    /// Work is in flight or a cooldown runs.
    Wait(Reason),
    /// A human must act; nothing is written.
    Blocked(Reason),
    /// Drift is reported only (a guard in audit mode, or outside its repair selection).
    ReportOnly,
    /// Another object covering the same assignment already sent its reprocess.
    InFlightBy(String),
    /// `adminAdd` was accepted and created this request.
    Requested { request_id: String },
    /// The reprocess was accepted.
    Reprocessed,
    /// The reprocess of this failed request was accepted.
    ReprocessedRequest { request_id: String },
    /// Graph refused the write, or it failed in transit (the row's message says which).
    Failed,
    /// The summary row of a guard's sweep.
    GuardSweep,
}

impl fmt::Display for RowAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("none"),
            Self::Planned { write, sent: true } => f.write_str(write.verb()),
            Self::Planned { write, sent: false } => write!(f, "would {}", write.verb()),
            Self::Wait(reason) => write!(f, "wait ({reason})"),
            Self::Blocked(reason) => write!(f, "none ({reason})"),
            Self::ReportOnly => f.write_str("none (report only)"),
            Self::InFlightBy(by) => write!(f, "none (reprocess in flight by {by})"),
            Self::Requested { request_id } => write!(f, "requested (request {request_id})"),
            Self::Reprocessed => f.write_str("reprocessed"),
            Self::ReprocessedRequest { request_id } => {
                write!(f, "reprocessed request {request_id}")
            }
            Self::Failed => f.write_str("failed"),
            Self::GuardSweep => f.write_str("guard sweep"),
        }
    }
}

impl Serialize for RowAction {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// What `redeliver audit` concluded for one assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Verdict {
    /// Graph says delivered and every verifiable resource is really there.
    Delivered,
    /// Graph says delivered but resources are missing.
    Drifted,
    /// The user has no assignment of the package.
    NotAssigned,
    /// Delivery or a repair is in progress.
    Pending,
    /// Graph reports a failed or partial delivery.
    Failed,
    /// The assignment has expired.
    Expired,
    /// The declaration cannot be satisfied as written, or a human is needed.
    Stalled,
    /// Membership could not be read, so nothing can be claimed.
    Unknown,
    /// The declaration could not be checked (Graph error).
    Error,
}

impl Verdict {
    /// Whether this row keeps the audit from passing.
    pub fn is_delivered(self) -> bool {
        self == Verdict::Delivered
    }
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    /// `namespace/name` of the declaration (for guard rows, the guard's).
    pub declaration: String,
    pub target: String,
    pub package: String,
    /// Object id of the Entra ID assignment the row is about, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assignment_id: Option<String>,
    /// `assignment.status` as Graph reports it, or `-`.
    pub graph_status: String,
    pub present: usize,
    /// Verifiable resources the package promises.
    pub promised: usize,
    pub verdict: Verdict,
    /// What Redeliver did or would do.
    pub action: RowAction,
    /// Names of the missing resources.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
    /// A sentence for the human (reason, candidates, error).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// The whole report, with the before state when repairs were made.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<Vec<Row>>,
    pub rows: Vec<Row>,
    pub summary: Summary,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// Counts over the final rows.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub total: usize,
    pub delivered: usize,
    pub drifted: usize,
    pub not_assigned: usize,
    pub other: usize,
    pub errors: usize,
    /// Writes Graph accepted in this run, each distinct write once (two declarations of
    /// the same user and package share one request).
    pub actions_taken: usize,
}

impl Summary {
    pub fn of(rows: &[Row], actions_taken: usize) -> Self {
        let mut s = Summary {
            total: rows.len(),
            actions_taken,
            ..Default::default()
        };
        for row in rows {
            match row.verdict {
                Verdict::Delivered => s.delivered += 1,
                Verdict::Drifted => s.drifted += 1,
                Verdict::NotAssigned => s.not_assigned += 1,
                Verdict::Error | Verdict::Stalled => s.errors += 1,
                _ => s.other += 1,
            }
        }
        s
    }
}

/// Renders rows as a terminal table.
pub fn table(rows: &[Row]) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header([
            "DECLARATION",
            "TARGET",
            "PACKAGE",
            "GRAPH",
            "RESOURCES",
            "VERDICT",
            "ACTION",
        ]);
    for r in rows {
        t.add_row([
            r.declaration.clone(),
            r.target.clone(),
            r.package.clone(),
            r.graph_status.clone(),
            format!("{}/{}", r.present, r.promised),
            format!("{:?}", r.verdict),
            r.action.to_string(),
        ]);
    }
    t.to_string()
}

/// Human-readable details under the table: missing resources and messages.
pub fn details(rows: &[Row]) -> String {
    let mut out = String::new();
    for r in rows {
        if r.missing.is_empty() && r.message.is_empty() {
            continue;
        }
        out.push_str(&format!(
            "- {} ({} / {}):",
            r.declaration, r.target, r.package
        ));
        if !r.missing.is_empty() {
            out.push_str(&format!(" missing {};", r.missing.join(", ")));
        }
        if !r.message.is_empty() {
            out.push_str(&format!(" {}", r.message));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_actions_keep_their_report_text() {
        let cases = [
            (RowAction::None, "none"),
            (
                RowAction::Planned {
                    write: WriteKind::Reprocess,
                    sent: false,
                },
                "would reprocess",
            ),
            (
                RowAction::Planned {
                    write: WriteKind::RequestAssignment,
                    sent: true,
                },
                "request assignment",
            ),
            (RowAction::Wait(Reason::Reprocessing), "wait (Reprocessing)"),
            (
                RowAction::Blocked(Reason::ReprocessExhausted),
                "none (ReprocessExhausted)",
            ),
            (RowAction::ReportOnly, "none (report only)"),
            (
                RowAction::InFlightBy("AccessPackageGuard ns/g".into()),
                "none (reprocess in flight by AccessPackageGuard ns/g)",
            ),
            (
                RowAction::Requested {
                    request_id: "r1".into(),
                },
                "requested (request r1)",
            ),
            (
                RowAction::ReprocessedRequest {
                    request_id: "r2".into(),
                },
                "reprocessed request r2",
            ),
            (RowAction::Failed, "failed"),
            (RowAction::GuardSweep, "guard sweep"),
        ];
        for (action, text) in cases {
            assert_eq!(action.to_string(), text);
            assert_eq!(serde_json::to_value(&action).unwrap(), text);
        }
    }
}
