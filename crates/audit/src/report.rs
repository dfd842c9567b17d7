//! The audit report: one row per declared assignment (and per drifted assignment a guard
//! found), rendered as a table, JSON, YAML, Markdown (a pull request comment or job
//! summary) or JUnit XML (a CI test report).

use std::fmt;

use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use serde::{Serialize, Serializer};

use redeliver::engine::conditions::Reason;

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
    /// Report-only: another object covering the same assignment would send the reprocess.
    WouldBy(String),
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
    /// A safety rail holds the repair on purpose; the reason starts the row's message.
    Held(Reason),
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
            Self::InFlightBy(by) => write!(f, "none (reprocess in flight by {})", short(by)),
            Self::WouldBy(by) => write!(f, "none ({} would reprocess it)", short(by)),
            Self::Requested { request_id } => write!(f, "requested (request {request_id})"),
            Self::Reprocessed => f.write_str("reprocessed"),
            Self::ReprocessedRequest { request_id } => {
                write!(f, "reprocessed request {request_id}")
            }
            Self::Failed => f.write_str("failed"),
            Self::GuardSweep => f.write_str("guard sweep"),
            // The reason leads the message: a reason such as TargetDisabled is a long word, and
            // the table must fit the terminal without splitting one.
            Self::Held(_) => f.write_str("held"),
        }
    }
}

/// `AccessPackageAssignment ns/name` as `apa/ns/name` (`apg/` for a guard), the short names
/// `kubectl get` and `kubectl redeliver` take.
fn short(by: &str) -> String {
    by.strip_prefix("AccessPackageAssignment ")
        .map(|rest| format!("apa/{rest}"))
        .or_else(|| {
            by.strip_prefix("AccessPackageGuard ")
                .map(|rest| format!("apg/{rest}"))
        })
        .unwrap_or_else(|| by.to_string())
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
    /// A safety rail holds the repair on purpose (a disabled, deleted or at-risk account, a
    /// removal by a respected actor, a tripped mass-drift breaker): not delivered, and
    /// nothing is wrong with the run; the message says what a person can do.
    Held,
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
    /// Resources present; on a guard's summary row (`action` "guard sweep"), its delivered
    /// assignments.
    pub present: usize,
    /// Verifiable resources the package promises; on a guard's summary row, all its
    /// assignments.
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
    /// A failure that kept every row from being checked (credentials refused, Graph
    /// unreachable, a permission every read needs), said once instead of on each row.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
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
    /// Rows a safety rail holds (see [`Verdict::Held`]).
    pub held: usize,
    pub errors: usize,
    /// Writes Graph accepted in this run, each distinct write once (two declarations of
    /// the same user and package share one request).
    pub actions_taken: usize,
}

impl Summary {
    /// Counts `rows`; `actions_taken` is the number of writes Graph accepted.
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
                // The rows the exit code counts as errors (1), and only those.
                Verdict::Error | Verdict::Stalled | Verdict::Unknown => s.errors += 1,
                // Held on purpose by a safety rail: not delivered (2), nothing broken.
                Verdict::Held => s.held += 1,
                Verdict::Pending | Verdict::Failed | Verdict::Expired => s.other += 1,
            }
        }
        s
    }

    /// The counts of a run that failed before any row existed (invalid declarations, none
    /// found): one error, the run's, as the JUnit report's one `<error>` test case.
    pub fn of_failed_run() -> Self {
        Summary {
            errors: 1,
            ..Default::default()
        }
    }
}

impl Verdict {
    /// Whether the row counts as an error (exit code 1, a JUnit `<error>`): it could not be
    /// checked, or it cannot be satisfied as written. Other undelivered rows are drift.
    pub fn is_error(self) -> bool {
        matches!(self, Verdict::Error | Verdict::Stalled | Verdict::Unknown)
    }
}

impl Report {
    /// The report as printed on stdout: Graph's request and correlation ids (which differ on
    /// every run) left out of every message, so the same tenant state and the same failure
    /// render the same text. They are kept on stderr for a support case.
    pub fn without_run_ids(&self) -> Report {
        let mut out = self.clone();
        out.error = out.error.map(|e| without_run_ids(&e));
        for row in out.rows.iter_mut().chain(out.before.iter_mut().flatten()) {
            row.message = without_run_ids(&row.message);
        }
        out
    }
}

pub use redeliver::graph::error::without_run_ids;

/// Width of the table when stdout is not a terminal and `COLUMNS` is not set: what a CI log
/// or a pager shows without wrapping.
pub const DEFAULT_WIDTH: u16 = 100;

/// The width to fit the table into: the terminal's, else `COLUMNS`, else
/// [`DEFAULT_WIDTH`].
pub fn output_width() -> u16 {
    use std::io::IsTerminal as _;
    let terminal = std::io::stdout()
        .is_terminal()
        .then(|| comfy_table::Table::new().width())
        .flatten();
    terminal
        .or_else(|| {
            std::env::var("COLUMNS")
                .ok()
                .and_then(|c| c.trim().parse::<u16>().ok())
                .filter(|&c| c >= 40)
        })
        .unwrap_or(DEFAULT_WIDTH)
}

/// The RESOURCES cell: resources present of promised; for a guard's summary row, delivered
/// assignments of all its assignments, said as such.
fn resources_cell(r: &Row) -> String {
    match r.action {
        RowAction::GuardSweep => format!("{}/{} assignments", r.present, r.promised),
        _ => format!("{}/{}", r.present, r.promised),
    }
}

/// Renders rows as a terminal table at most `width` columns wide. Cells wrap between
/// words, or after a `/`, `-` or `@` inside a long name, never inside a word
/// (`DeliveryFailed` stays whole); the widest columns give way first. When even that does
/// not fit, the outer borders go; a table narrower than its longest words allow is as
/// narrow as they allow.
pub fn table(rows: &[Row], width: u16) -> String {
    // UTF8_NO_BORDERS without lines between rows.
    const NO_BORDERS_CONDENSED: &str = "     ═╪ ┆          ";
    let header = [
        "DECLARATION",
        "TARGET",
        "PACKAGE",
        "GRAPH",
        "RESOURCES",
        "VERDICT",
        "ACTION",
    ];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.declaration.clone(),
                r.target.clone(),
                r.package.clone(),
                r.graph_status.clone(),
                resources_cell(r),
                format!("{:?}", r.verdict),
                r.action.to_string(),
            ]
        })
        .collect();
    let column =
        |i: usize| std::iter::once(header[i]).chain(cells.iter().map(move |c| c[i].as_str()));
    let widest: Vec<usize> = (0..header.len())
        .map(|i| column(i).map(|c| c.chars().count()).max().unwrap_or(1))
        .collect();
    let narrowest: Vec<usize> = (0..header.len())
        .map(|i| {
            column(i)
                .flat_map(pieces)
                .map(|p| p.trim_end().chars().count())
                .max()
                .unwrap_or(1)
        })
        .collect();
    // Each column is padded by one space on both sides; the full preset draws a border
    // around every column, the borderless one only between columns.
    let n = header.len();
    let full_frame = 3 * n + 1;
    let (preset, frame) = if narrowest.iter().sum::<usize>() + full_frame <= usize::from(width) {
        (UTF8_FULL_CONDENSED, full_frame)
    } else {
        (NO_BORDERS_CONDENSED, 3 * n - 1)
    };
    let mut widths = widest.clone();
    let room = usize::from(width).saturating_sub(frame);
    // The last column (ACTION) wraps first, down to a readable width; then the column with
    // the most to give narrows, one character at a time.
    let last = n - 1;
    let floor = narrowest[last].max(24).min(widest[last]);
    let excess = widths.iter().sum::<usize>().saturating_sub(room);
    widths[last] -= excess.min(widths[last] - floor);
    while widths.iter().sum::<usize>() > room {
        let Some((i, _)) = widths
            .iter()
            .zip(&narrowest)
            .map(|(w, min)| w - min)
            .enumerate()
            .filter(|(_, slack)| *slack > 0)
            .max_by_key(|(i, slack)| (*slack, std::cmp::Reverse(*i)))
        else {
            break;
        };
        widths[i] -= 1;
    }
    let mut t = Table::new();
    t.load_preset(preset)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header);
    for row in &cells {
        t.add_row(
            row.iter()
                .zip(&widths)
                .map(|(cell, w)| wrap_cell(cell, *w))
                .collect::<Vec<_>>(),
        );
    }
    t.to_string()
}

/// The pieces a cell may be broken into: words, and inside a word the parts after a `/`,
/// `-` or `@` (each piece keeps its trailing space, if any).
fn pieces(text: &str) -> impl Iterator<Item = &str> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        let end = i + c.len_utf8();
        let next_is_space = text[end..].starts_with(' ');
        if c == ' ' || (matches!(c, '/' | '-' | '@') && !next_is_space && end < text.len()) {
            out.push(&text[start..end]);
            start = end;
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out.into_iter()
}

/// `text` in lines of at most `width` characters, broken only between [`pieces`].
fn wrap_cell(text: &str, width: usize) -> String {
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for piece in pieces(text) {
        let fits = line.chars().count() + piece.trim_end().chars().count() <= width;
        if !fits && !line.trim().is_empty() {
            lines.push(line.trim_end().to_string());
            line = String::new();
        }
        line.push_str(piece);
    }
    lines.push(line.trim_end().to_string());
    lines.join("\n")
}

/// Human-readable details under the table: missing resources and messages.
pub fn details(rows: &[Row], width: u16) -> String {
    let mut out = String::new();
    for r in rows {
        if r.missing.is_empty() && r.message.is_empty() {
            continue;
        }
        let mut line = format!("- {} ({} / {}):", r.declaration, r.target, r.package);
        if !r.missing.is_empty() {
            line.push_str(&format!(" missing {};", r.missing.join(", ")));
        }
        if !r.message.is_empty() {
            line.push_str(&format!(" {}", r.message));
        }
        out.push_str(&wrap(&line, usize::from(width), "  "));
    }
    out
}

/// `text` as lines of at most `width` characters, broken between words (a word longer
/// than the line gets a line of its own, unbroken), continuation lines indented.
fn wrap(text: &str, width: usize, indent: &str) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        let len = line.chars().count();
        if len > 0 && len + 1 + word.chars().count() > width {
            out.push_str(&line);
            out.push('\n');
            line = indent.to_string();
        }
        if !line.trim().is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    out.push_str(&line);
    out.push('\n');
    out
}

/// Renders the report as Markdown for a pull request comment or a CI job summary: a
/// heading, the counts, and a table of the rows that are not delivered (delivered rows
/// are only counted). With `--reprocess` the table shows the final rows and a line gives
/// the counts from before the repairs. No timestamps, so a rerun on the same tenant state
/// renders the same text.
pub fn markdown(report: &Report) -> String {
    let mut out = String::from("## Redeliver audit\n\n");
    let s = &report.summary;
    if let Some(error) = &report.error {
        // Said once, with the counts the JSON summary and the exit code agree with; the
        // rows all failed this same way, so they are not listed.
        out.push_str(&format!(
            "**Error:** {}\n\nNo declaration could be checked ({} error(s), {} action(s) taken).\n",
            markdown_inline(error),
            s.errors,
            s.actions_taken
        ));
        return out;
    }
    if s.total > 0 && s.delivered == s.total {
        out.push_str(&format!(
            "Everything is delivered and verified ({} row(s), {} action(s) taken).\n",
            s.total, s.actions_taken
        ));
        if let Some(before) = &report.before {
            out.push_str(&format!("\nBefore the repairs: {}.\n", counts(before)));
        }
        return out;
    }
    out.push_str(
        "| delivered | drifted | not assigned | held | other | errors | actions taken |\n",
    );
    out.push_str("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    out.push_str(&format!(
        "| {} | {} | {} | {} | {} | {} | {} |\n\n",
        s.delivered, s.drifted, s.not_assigned, s.held, s.other, s.errors, s.actions_taken
    ));
    if let Some(before) = &report.before {
        out.push_str(&format!(
            "Before the repairs: {}. The table shows the state after them.\n\n",
            counts(before)
        ));
    }
    out.push_str("| declaration | target | package | verdict | action | missing | message |\n");
    out.push_str("| --- | --- | --- | --- | --- | --- | --- |\n");
    for r in report.rows.iter().filter(|r| !r.verdict.is_delivered()) {
        let cells = [
            r.declaration.clone(),
            r.target.clone(),
            r.package.clone(),
            format!("{:?}", r.verdict),
            r.action.to_string(),
            r.missing.join(", "),
            r.message.clone(),
        ];
        out.push('|');
        for cell in cells {
            out.push(' ');
            out.push_str(&markdown_cell(&cell));
            out.push_str(" |");
        }
        out.push('\n');
    }
    if s.delivered > 0 {
        out.push_str(&format!("\n{} delivered row(s) not listed.\n", s.delivered));
    }
    out
}

/// The counts of `rows`, as one phrase.
fn counts(rows: &[Row]) -> String {
    let s = Summary::of(rows, 0);
    format!(
        "{} delivered, {} drifted, {} not assigned, {} held, {} other, {} errors",
        s.delivered, s.drifted, s.not_assigned, s.held, s.other, s.errors
    )
}

/// Text for a Markdown table cell: the cell ends at an unescaped `|` and the row at a
/// newline, and raw HTML would be rendered, so those are escaped. Backslashes go first so
/// a `\` already in the text cannot unescape the `\|` added here.
fn markdown_cell(text: &str) -> String {
    markdown_inline(text).replace('|', "\\|")
}

/// Text for inline Markdown outside a table: HTML is escaped and line breaks become
/// `<br>` so a multi-line message stays in its paragraph or cell.
fn markdown_inline(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut lines = text.trim().lines().peekable();
    while let Some(line) = lines.next() {
        for c in line.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '<' => out.push_str("&lt;"),
                '>' => out.push_str("&gt;"),
                '&' => out.push_str("&amp;"),
                c if c.is_control() => out.push(' '),
                c => out.push(c),
            }
        }
        if lines.peek().is_some() {
            out.push_str("<br>");
        }
    }
    out
}

/// Why the JUnit report could not be written (only an I/O failure of the in-memory
/// writer, which does not happen in practice, but is typed rather than unwrapped).
#[derive(Debug, thiserror::Error)]
#[error("cannot write the JUnit report: {0}")]
pub struct JunitError(#[from] std::io::Error);

/// Renders the report as JUnit XML, for CI systems that show test reports: one
/// `<testcase>` per row (classname: the declaration, name: target and package), a
/// `<failure>` for each row that drifted or is not delivered yet and an `<error>` for each
/// row that could not be checked or cannot be satisfied as written (the rows the summary
/// counts as errors and that make the exit code 1). A failure that kept every row from being checked is one `<error>`
/// test case. No timestamps or durations, so the output is stable.
pub fn junit(report: &Report) -> Result<String, JunitError> {
    use quick_xml::Writer;
    use quick_xml::events::{BytesDecl, BytesText, Event};

    // (classname, name, outcome): outcome is (element, type, message, text).
    type Case = (
        String,
        String,
        Option<(&'static str, String, String, String)>,
    );
    let cases: Vec<Case> = match &report.error {
        Some(error) => vec![(
            "redeliver".into(),
            "graph".into(),
            Some((
                "error",
                "Unavailable".into(),
                "no declaration could be checked".into(),
                error.clone(),
            )),
        )],
        None => report
            .rows
            .iter()
            .map(|r| {
                let outcome = (!r.verdict.is_delivered()).then(|| {
                    let element = if r.verdict.is_error() {
                        "error"
                    } else {
                        "failure"
                    };
                    let mut text = String::new();
                    if !r.missing.is_empty() {
                        text.push_str(&format!("missing: {}\n", r.missing.join(", ")));
                    }
                    if !r.message.is_empty() {
                        text.push_str(&r.message);
                        text.push('\n');
                    }
                    (
                        element,
                        format!("{:?}", r.verdict),
                        format!("{:?}: {}", r.verdict, r.action),
                        text,
                    )
                });
                (
                    r.declaration.clone(),
                    format!("{} / {}", r.target, r.package),
                    outcome,
                )
            })
            .collect(),
    };
    let tests = cases.len().to_string();
    let count = |element: &str| {
        cases
            .iter()
            .filter(|(_, _, o)| o.as_ref().is_some_and(|(e, ..)| *e == element))
            .count()
            .to_string()
    };
    let (failures, errors) = (count("failure"), count("error"));
    let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
    w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    let totals = [
        ("tests", tests.as_str()),
        ("failures", failures.as_str()),
        ("errors", errors.as_str()),
    ];
    w.create_element("testsuites")
        .with_attribute(("name", "redeliver audit"))
        .with_attributes(totals)
        .write_inner_content(|w| {
            w.create_element("testsuite")
                .with_attribute(("name", "redeliver audit"))
                .with_attributes(totals)
                .with_attribute(("skipped", "0"))
                .write_inner_content(|w| {
                    for (classname, name, outcome) in &cases {
                        let case = w
                            .create_element("testcase")
                            .with_attribute(("classname", xml_text(classname).as_str()))
                            .with_attribute(("name", xml_text(name).as_str()));
                        match outcome {
                            None => {
                                case.write_empty()?;
                            }
                            Some((element, kind, message, text)) => {
                                case.write_inner_content(|w| {
                                    w.create_element(*element)
                                        .with_attribute(("message", xml_text(message).as_str()))
                                        .with_attribute(("type", kind.as_str()))
                                        .write_text_content(BytesText::new(&xml_text(text)))?;
                                    Ok(())
                                })?;
                            }
                        }
                    }
                    Ok(())
                })?;
            Ok(())
        })?;
    let mut xml = String::from_utf8_lossy(&w.into_inner()).into_owned();
    xml.push('\n');
    Ok(xml)
}

/// XML 1.0 cannot carry most control characters even escaped; messages from Graph or a
/// declaration could hold one, and a single one makes the whole report unreadable to a CI
/// server. Tabs and newlines are kept.
fn xml_text(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\t' | '\n' | '\r' => c,
            c if c.is_control() => ' ',
            c => c,
        })
        .collect()
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
                "none (reprocess in flight by apg/ns/g)",
            ),
            (
                RowAction::WouldBy("AccessPackageAssignment ns/a".into()),
                "none (apa/ns/a would reprocess it)",
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

    /// Compares `actual` with `tests/golden/<name>`; `UPDATE_GOLDEN=1 cargo test -p
    /// redeliver-audit golden` rewrites the files instead (review the diff before
    /// committing).
    fn golden(name: &str, actual: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(name);
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, actual).unwrap();
            return;
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run with UPDATE_GOLDEN=1 to create it",
                path.display()
            )
        });
        assert_eq!(
            actual,
            expected,
            "{} differs; run with UPDATE_GOLDEN=1 to accept",
            path.display()
        );
    }

    fn row(declaration: &str, target: &str, verdict: Verdict, action: RowAction) -> Row {
        Row {
            declaration: declaration.into(),
            target: target.into(),
            package: "Finance Analysts".into(),
            assignment_id: None,
            graph_status: "Delivered".into(),
            present: 2,
            promised: 2,
            verdict,
            action,
            missing: Vec::new(),
            message: String::new(),
        }
    }

    /// One row of each kind, with text that needs escaping in Markdown and XML.
    fn mixed_rows() -> Vec<Row> {
        let mut drifted = row(
            "access/alice-finance",
            "alice@contoso.com",
            Verdict::Drifted,
            RowAction::Planned {
                write: WriteKind::Reprocess,
                sent: false,
            },
        );
        drifted.present = 1;
        drifted.missing = vec!["fin-writers".into()];
        drifted.message = "resources missing: fin-writers | 1 of 2\nsee `kubectl get apa`".into();
        let mut not_assigned = row(
            "access/carol-finance",
            "carol@contoso.com",
            Verdict::NotAssigned,
            RowAction::Planned {
                write: WriteKind::RequestAssignment,
                sent: false,
            },
        );
        not_assigned.graph_status = "-".into();
        not_assigned.present = 0;
        let mut stalled = row(
            "access/ghost",
            "alice@contoso.com",
            Verdict::Stalled,
            RowAction::Blocked(Reason::PackageNotFound),
        );
        stalled.package = "Finance Analyst".into();
        stalled.message = "spec.accessPackage.displayName: no access package named 'Finance Analyst'; did you mean 'Finance Analysts'?".into();
        let mut error = row(
            "ops/<dave> & co",
            "dave@contoso.com",
            Verdict::Error,
            RowAction::Failed,
        );
        error.message = "Graph call failed (bad_request: \"quoted\" <tag> \u{1}control)".into();
        vec![
            row(
                "access/bob-finance",
                "bob@contoso.com",
                Verdict::Delivered,
                RowAction::None,
            ),
            drifted,
            not_assigned,
            stalled,
            error,
        ]
    }

    fn report(rows: Vec<Row>, before: Option<Vec<Row>>, actions_taken: usize) -> Report {
        Report {
            error: None,
            before,
            summary: Summary::of(&rows, actions_taken),
            rows,
            notes: Vec::new(),
        }
    }

    #[test]
    fn markdown_lists_what_is_not_delivered_golden() {
        let md = markdown(&report(mixed_rows(), None, 0));
        // Bob is delivered: counted, never listed.
        assert!(!md.contains("bob@contoso.com"), "{md}");
        golden("markdown-mixed.md", &md);
    }

    #[test]
    fn markdown_after_repairs_shows_final_rows_and_before_counts_golden() {
        let before = mixed_rows();
        let mut after = mixed_rows();
        after[1].verdict = Verdict::Delivered;
        after[1].action = RowAction::Reprocessed;
        after[2].verdict = Verdict::Pending;
        after[2].action = RowAction::Requested {
            request_id: "r-1".into(),
        };
        let md = markdown(&report(after, Some(before), 2));
        assert!(
            md.contains("Before the repairs: 1 delivered, 1 drifted"),
            "{md}"
        );
        golden("markdown-reprocess.md", &md);
    }

    #[test]
    fn markdown_all_delivered_is_one_line() {
        let rows = vec![
            row(
                "a/b",
                "bob@contoso.com",
                Verdict::Delivered,
                RowAction::None,
            ),
            row(
                "a/c",
                "carol@contoso.com",
                Verdict::Delivered,
                RowAction::None,
            ),
        ];
        assert_eq!(
            markdown(&report(rows, None, 0)),
            "## Redeliver audit\n\nEverything is delivered and verified (2 row(s), 0 action(s) taken).\n"
        );
    }

    #[test]
    fn markdown_cells_cannot_break_the_table() {
        assert_eq!(markdown_cell("a|b"), "a\\|b");
        assert_eq!(markdown_cell("a\\|b"), "a\\\\\\|b");
        assert_eq!(markdown_cell("one\ntwo\r\nthree"), "one<br>two<br>three");
        assert_eq!(markdown_cell("<script>&"), "&lt;script&gt;&amp;");
        let md = markdown(&report(mixed_rows(), None, 0));
        // Every table line has the same number of unescaped pipes as the header.
        let pipes = |line: &str| {
            line.replace("\\\\", "")
                .replace("\\|", "")
                .matches('|')
                .count()
        };
        let table: Vec<&str> = md
            .lines()
            .skip_while(|l| !l.starts_with("| declaration"))
            .take_while(|l| l.starts_with('|'))
            .collect();
        assert_eq!(table.len(), 2 + 4, "{md}");
        assert!(table.iter().all(|l| pipes(l) == 8), "{table:#?}");
    }

    #[test]
    fn markdown_says_a_failure_of_every_row_once() {
        let mut r = report(mixed_rows(), None, 0);
        r.error = Some("cannot obtain a token | AADSTS7000215".into());
        let md = markdown(&r);
        assert_eq!(
            md,
            "## Redeliver audit\n\n**Error:** cannot obtain a token | AADSTS7000215\n\nNo declaration could be checked (2 error(s), 0 action(s) taken).\n"
        );
    }

    /// An XML element as read back: name, attributes (unescaped), text.
    type Element = (String, Vec<(String, String)>, String);

    /// What a JUnit consumer sees, read back with an XML parser: (element, attributes,
    /// text) in document order. Panics on XML that does not parse or whose tags do not
    /// nest.
    fn parse_xml(xml: &str) -> Vec<Element> {
        use quick_xml::events::Event;
        let mut reader = quick_xml::Reader::from_str(xml);
        let mut out: Vec<Element> = Vec::new();
        // Text belongs to the innermost element still open (not to indentation after it).
        let mut open: Vec<usize> = Vec::new();
        loop {
            let event = reader.read_event().expect("well-formed XML");
            match &event {
                Event::Start(_) => open.push(out.len()),
                Event::End(_) => {
                    open.pop();
                }
                _ => {}
            }
            match event {
                Event::Start(e) | Event::Empty(e) => {
                    let attrs = e
                        .attributes()
                        .map(|a| {
                            let a = a.expect("valid attribute");
                            (
                                a.key.as_ref().to_string(),
                                a.normalized_value(quick_xml::XmlVersion::Explicit1_0)
                                    .expect("escaped value")
                                    .into_owned(),
                            )
                        })
                        .collect();
                    out.push((e.name().as_ref().to_string(), attrs, String::new()));
                }
                Event::Text(t) => {
                    if let Some(last) = open.last().and_then(|&i| out.get_mut(i)) {
                        last.2
                            .push_str(&t.xml_content(quick_xml::XmlVersion::Explicit1_0));
                    }
                }
                Event::GeneralRef(r) => {
                    let c = match &*r {
                        "lt" => "<",
                        "gt" => ">",
                        "amp" => "&",
                        "quot" => "\"",
                        "apos" => "'",
                        other => panic!("unexpected entity {other}"),
                    };
                    if let Some(last) = open.last().and_then(|&i| out.get_mut(i)) {
                        last.2.push_str(c);
                    }
                }
                Event::Eof => break,
                _ => {}
            }
        }
        out
    }

    fn attr<'a>(el: &'a Element, name: &str) -> &'a str {
        el.1.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {name} on {el:?}"))
    }

    #[test]
    fn junit_has_one_case_per_row_and_parses_golden() {
        let xml = junit(&report(mixed_rows(), None, 0)).unwrap();
        let elements = parse_xml(&xml);
        let suite = elements.iter().find(|e| e.0 == "testsuite").unwrap();
        assert_eq!(attr(suite, "tests"), "5");
        assert_eq!(attr(suite, "failures"), "2", "drifted, not assigned");
        assert_eq!(
            attr(suite, "errors"),
            "2",
            "stalled (unresolvable) and error"
        );
        let cases: Vec<_> = elements.iter().filter(|e| e.0 == "testcase").collect();
        assert_eq!(cases.len(), 5);
        assert_eq!(attr(cases[1], "classname"), "access/alice-finance");
        assert_eq!(
            attr(cases[1], "name"),
            "alice@contoso.com / Finance Analysts"
        );
        // Escaped on the way out, the same text on the way back in.
        assert_eq!(attr(cases[4], "classname"), "ops/<dave> & co");
        let failure = elements.iter().find(|e| e.0 == "failure").unwrap();
        assert_eq!(attr(failure, "message"), "Drifted: would reprocess");
        assert!(
            failure.2.starts_with("missing: fin-writers\n"),
            "{failure:?}"
        );
        let errors: Vec<_> = elements.iter().filter(|e| e.0 == "error").collect();
        assert_eq!(
            attr(errors[0], "message"),
            "Stalled: none (PackageNotFound)"
        );
        assert_eq!(attr(errors[0], "type"), "Stalled");
        let error = errors[1];
        assert_eq!(attr(error, "message"), "Error: failed");
        assert!(error.2.contains("\"quoted\" <tag>  control"), "{error:?}");
        golden("junit-mixed.xml", &xml);
    }

    #[test]
    fn the_table_fits_its_width_and_never_splits_a_word() {
        let mut rows = mixed_rows();
        let mut failed = row(
            "access/dave-engineering",
            "dave@contoso.com",
            Verdict::Failed,
            RowAction::InFlightBy("AccessPackageGuard access/finance-analysts".into()),
        );
        failed.graph_status = "DeliveryFailed".into();
        failed.package = "Engineering Tools".into();
        rows.push(failed);
        let mut sweep = row(
            "access/finance-analysts",
            "(all 12 assignments)",
            Verdict::Drifted,
            RowAction::GuardSweep,
        );
        sweep.present = 11;
        sweep.promised = 12;
        rows.push(sweep);
        let words = [
            "DeliveryFailed",
            "NotAssigned",
            "(PackageNotFound)",
            "Engineering",
            "assignments",
        ];
        for width in [60u16, 80, 100, 120] {
            let text = table(&rows, width);
            let widest = text.lines().map(|l| l.chars().count()).max().unwrap_or(0);
            // These rows' longest unbreakable pieces and the frame take 107 columns: at
            // least that, never a split word; at most the width when it is wider.
            assert!(widest <= usize::from(width).max(107), "{width}:\n{text}");
            for word in words {
                assert!(text.contains(word), "{word} split at {width}:\n{text}");
            }
            for line in details(&rows, width).lines() {
                assert!(line.chars().count() <= usize::from(width), "{line}");
            }
        }
        // Wide enough, nothing wraps: a guard's counts say what they count, an
        // assignment row's are resources.
        let text = table(&rows, 200);
        assert!(text.contains("11/12 assignments"), "{text}");
        assert!(text.contains(" 2/2 "), "{text}");
        assert!(text.contains("access/dave-engineering"), "{text}");
        assert!(
            text.contains("none (reprocess in flight by apg/access/finance-analysts)"),
            "{text}"
        );
    }

    #[test]
    fn summary_errors_are_the_rows_the_exit_code_counts_as_errors() {
        let mut rows = mixed_rows();
        rows.push(row(
            "a/u",
            "u@contoso.com",
            Verdict::Unknown,
            RowAction::None,
        ));
        let s = Summary::of(&rows, 0);
        let errors = rows.iter().filter(|r| r.verdict.is_error()).count();
        assert_eq!((s.errors, errors), (3, 3), "stalled, error, unknown");
        assert_eq!(
            s.delivered + s.drifted + s.not_assigned + s.other + s.errors,
            s.total
        );
        let xml = junit(&report(rows, None, 0)).unwrap();
        let elements = parse_xml(&xml);
        let suite = elements.iter().find(|e| e.0 == "testsuite").unwrap();
        assert_eq!(attr(suite, "errors"), "3", "{xml}");
    }

    #[test]
    fn run_ids_are_left_out_of_report_text() {
        for (text, expected) in [
            (
                "token request refused: invalid_client [AADSTS7000215] (HTTP 401, correlation-id 1b2c-3d): check the secret",
                "token request refused: invalid_client [AADSTS7000215] (HTTP 401): check the secret",
            ),
            (
                "list_group_members: forbidden (Authorization_RequestDenied: no) (request-id 9f-00); the app likely lacks X",
                "list_group_members: forbidden (Authorization_RequestDenied: no); the app likely lacks X",
            ),
            ("client-request-id abc, then", "then"),
            ("no ids here", "no ids here"),
        ] {
            assert_eq!(without_run_ids(text), expected);
        }
    }

    #[test]
    fn junit_says_a_failure_of_every_row_once() {
        let mut r = report(mixed_rows(), None, 0);
        r.error = Some("cannot obtain a token: invalid_client".into());
        let elements = parse_xml(&junit(&r).unwrap());
        let suite = elements.iter().find(|e| e.0 == "testsuite").unwrap();
        assert_eq!(
            (
                attr(suite, "tests"),
                attr(suite, "failures"),
                attr(suite, "errors")
            ),
            ("1", "0", "1")
        );
        let error = elements.iter().find(|e| e.0 == "error").unwrap();
        assert_eq!(error.2, "cannot obtain a token: invalid_client");
    }
}
