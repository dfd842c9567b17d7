//! Everything the plugin prints, as plain functions of the objects (and of "now", so the
//! output is testable): no I/O here.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;
use redeliver::api::{
    AccessPackageAssignment, AccessPackageAssignmentSpec, AccessPackageAssignmentStatus,
    AccessPackageGuard, ReprocessMode, ResourceState, ResourceStatus, format_duration,
};
use redeliver::engine::conditions::{ConditionType, Status, TYPE_ORDER, find, is_true};

use crate::target::Kind;

/// One line of a tree and the lines under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    label: String,
    children: Vec<Node>,
}

impl Node {
    fn new(label: impl Into<String>) -> Self {
        Self {
            label: label.into(),
            children: Vec::new(),
        }
    }

    fn with(mut self, children: Vec<Node>) -> Self {
        self.children = children;
        self
    }
}

/// `root` and its descendants, drawn with box-drawing branches (as `tree` does).
pub fn tree(root: &Node) -> String {
    fn walk(node: &Node, prefix: &str, out: &mut String) {
        let n = node.children.len();
        for (i, child) in node.children.iter().enumerate() {
            let last = i + 1 == n;
            out.push_str(prefix);
            out.push_str(if last { "└─ " } else { "├─ " });
            out.push_str(&child.label);
            out.push('\n');
            let deeper = format!("{prefix}{}", if last { "   " } else { "│  " });
            walk(child, &deeper, out);
        }
    }
    let mut out = format!("{}\n", root.label);
    walk(root, "", &mut out);
    out
}

/// `2026-01-01T00:00:00Z (5m ago)`.
pub fn when(t: &Time, now: Timestamp) -> String {
    let secs = now.as_second().saturating_sub(t.0.as_second());
    let stamp = Timestamp::from_second(t.0.as_second()).unwrap_or(t.0);
    if secs >= 0 {
        format!(
            "{stamp} ({} ago)",
            format_duration(Duration::from_secs(secs.unsigned_abs()))
        )
    } else {
        format!(
            "{stamp} (in {})",
            format_duration(Duration::from_secs(secs.unsigned_abs()))
        )
    }
}

/// `namespace/name`.
fn qualified(namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

/// Conditions in their conventional order (Ready, Delivered, Reconciling, Stalled, then any
/// other), one line each: type, status, reason, message.
fn conditions(list: &[Condition], generation: Option<i64>, observed: Option<i64>) -> Node {
    let mut sorted: Vec<&Condition> = list.iter().collect();
    sorted.sort_by_key(|c| {
        TYPE_ORDER
            .iter()
            .position(|t| t.as_str() == c.type_)
            .unwrap_or(TYPE_ORDER.len())
    });
    let width = sorted.iter().map(|c| c.type_.len()).max().unwrap_or(0);
    let mut children: Vec<Node> = sorted
        .iter()
        .map(|c| {
            let mut line = format!("{:width$}  {:7}  {}", c.type_, c.status, c.reason);
            if !c.message.is_empty() {
                line.push_str(": ");
                line.push_str(&c.message);
            }
            Node::new(line)
        })
        .collect();
    if children.is_empty() {
        children.push(Node::new(
            "none yet: the controller has not reported on this object",
        ));
    }
    let label = match (generation, observed) {
        (Some(g), Some(o)) if o < g => format!(
            "Conditions (of generation {o}; the object is at {g}: its latest change is not reconciled yet)"
        ),
        _ => String::from("Conditions"),
    };
    Node::new(label).with(children)
}

/// `fin-writers (Member)`, `EntraRole Global Reader (Eligible, /)`, `GroupEligible
/// fin-admins (Member)`, or the origin id when Graph gave no display name.
pub fn resource_label(r: &ResourceStatus) -> String {
    if r.kind.is_some() {
        return r.short_name();
    }
    let name = r.display_name.as_deref().unwrap_or(&r.origin_id);
    match &r.role {
        Some(role) => format!("{name} ({role})"),
        None => name.to_string(),
    }
}

fn state_label(s: ResourceState) -> &'static str {
    match s {
        ResourceState::Present => "Present",
        ResourceState::Missing => "Missing",
        ResourceState::Unverifiable => "Unverifiable",
        ResourceState::Unknown => "Unknown",
    }
}

/// The operator's `--verify-interval` as read from its Deployment(s), for an object that sets
/// no `spec.verifyInterval`: e.g. `10m (Deployment redeliver-system/redeliver)`; `None` when
/// no Deployment could be read.
pub type OperatorInterval<'a> = Option<&'a str>;

/// `kubectl redeliver status apa/NAME`.
pub fn assignment_status(
    obj: &AccessPackageAssignment,
    now: Timestamp,
    operator: OperatorInterval<'_>,
) -> String {
    let status = obj.status.clone().unwrap_or_default();
    let spec = &obj.spec;
    let mut top = assignment_identity(spec, &status);
    top.push(conditions(
        &status.conditions,
        obj.metadata.generation,
        status.observed_generation,
    ));
    top.push(resources(&status, now));
    top.push(reprocess(spec, &status, now));
    top.push(next_verification(spec, operator));
    status_tree(Kind::Assignment, obj, top)
}

/// `Package: NAME (ID)`, `Target: ...`: a label and the id it resolved to, when known.
fn named(what: &str, name: &str, id: Option<&str>) -> Node {
    Node::new(match id {
        Some(id) => format!("{what}: {name} ({id})"),
        None => format!("{what}: {name}"),
    })
}

/// The object's name over `top`, its sections.
fn status_tree(kind: Kind, obj: &impl ResourceExt, top: Vec<Node>) -> String {
    let header = format!(
        "{} {}",
        kind.kind(),
        qualified(obj.meta().namespace.as_deref(), &obj.name_any())
    );
    tree(&Node::new(header).with(top))
}

/// What the assignment is: its package, its target, what Graph says of it, and whether it
/// is suspended.
fn assignment_identity(
    spec: &AccessPackageAssignmentSpec,
    status: &AccessPackageAssignmentStatus,
) -> Vec<Node> {
    let package = status
        .access_package_name
        .as_deref()
        .map_or_else(|| spec.access_package.label(), String::from);
    let target = status
        .target_name
        .clone()
        .unwrap_or_else(|| spec.target.label());
    let graph = match (&status.graph_state, &status.graph_status) {
        (Some(state), Some(text)) => format!("{state} ({text})"),
        (Some(one), None) | (None, Some(one)) => one.to_string(),
        (None, None) => String::from("not read yet"),
    };
    let mut graph = format!("Graph: {graph}");
    if let Some(id) = &status.assignment_id {
        graph.push_str(&format!(", assignment {id}"));
    }
    if let Some(id) = &status.last_request_id {
        graph.push_str(&format!(", request {id}"));
    }
    let mut top = vec![
        named("Package", &package, status.access_package_id.as_deref()),
        named("Target", &target, status.target_object_id.as_deref()),
        Node::new(graph),
    ];
    if spec.suspend {
        top.push(Node::new(
            "Suspended: verifies and reports, makes no change in Entra ID",
        ));
    }
    top
}

/// Each promised resource's state, in aligned columns, and when the result last changed.
fn resources(status: &AccessPackageAssignmentStatus, now: Timestamp) -> Node {
    let mut resources = Node::new(match &status.resources_summary {
        Some(summary) => format!("Resources ({summary} verified present)"),
        None => String::from("Resources"),
    });
    let width = status
        .resources
        .iter()
        .map(|r| state_label(r.state).len())
        .max()
        .unwrap_or(0);
    let system_width = status
        .resources
        .iter()
        .map(|r| r.origin_system.as_str().len())
        .max()
        .unwrap_or(0);
    resources.children = status
        .resources
        .iter()
        .map(|r| {
            let mut line = format!(
                "{:width$}  {:system_width$}  {}",
                state_label(r.state),
                r.origin_system,
                resource_label(r)
            );
            if let Some(note) = &r.note {
                line.push_str(&format!(" ({note})"));
            }
            Node::new(line)
        })
        .collect();
    if resources.children.is_empty() {
        resources.children.push(Node::new("none reported yet"));
    }
    if let Some(t) = &status.last_verified_time {
        resources
            .children
            .push(Node::new(format!("last change: {}", when(t, now))));
    }
    resources
}

/// The reprocess policy and what was last asked of Graph under it.
fn reprocess(
    spec: &AccessPackageAssignmentSpec,
    status: &AccessPackageAssignmentStatus,
    now: Timestamp,
) -> Node {
    let policy = &spec.reprocess;
    let mode = match policy.mode {
        ReprocessMode::Auto => "Auto",
        ReprocessMode::Manual => "Manual",
        ReprocessMode::Disabled => "Disabled",
    };
    let r = &status.reprocess;
    let mut reprocess = vec![Node::new(format!(
        "attempts: {} of {} (mode {mode}, cooldown {})",
        r.attempts, policy.max_attempts, policy.cooldown
    ))];
    if let Some(t) = &r.last_requested_time {
        let mut line = format!("last requested: {}", when(t, now));
        if let Some(by) = &r.last_requested_by {
            line.push_str(&format!(" by {by}"));
        }
        reprocess.push(Node::new(line));
    }
    if let Some(outcome) = r.last_outcome {
        reprocess.push(Node::new(format!("last outcome: {outcome:?}")));
    }
    if let Some(v) = &r.last_handled_request {
        reprocess.push(Node::new(format!("last handled request: {v}")));
    }
    Node::new("Reprocess").with(reprocess)
}

/// When the object is verified next: its own interval, or the operator's.
fn next_verification(spec: &AccessPackageAssignmentSpec, operator: OperatorInterval<'_>) -> Node {
    let interval = match (spec.verify_interval.as_deref(), operator) {
        (Some(v), _) => format!("every {v}"),
        (None, Some(found)) => format!("the operator's --verify-interval, {found},"),
        (None, None) => String::from(
            "the operator's --verify-interval (10m unless the operator is run with another; its Deployment could not be read)",
        ),
    };
    Node::new(format!(
        "Next verification: within {interval} of the last one (or at once on a spec or annotation change)"
    ))
}

/// `kubectl redeliver status apg/NAME`.
pub fn guard_status(obj: &AccessPackageGuard, now: Timestamp) -> String {
    let status = obj.status.clone().unwrap_or_default();
    let spec = &obj.spec;
    let mut top = Vec::new();
    let package = status
        .access_package_name
        .as_deref()
        .map_or_else(|| spec.access_package.label(), String::from);
    top.push(named(
        "Package",
        &package,
        status.access_package_id.as_deref(),
    ));
    top.push(Node::new(format!(
        "Mode: {:?}, at most {} reprocesses per sweep",
        spec.mode, spec.max_reprocess_per_sweep
    )));
    top.push(conditions(
        &status.conditions,
        obj.metadata.generation,
        status.observed_generation,
    ));
    let c = &status.assignments;
    top.push(Node::new(format!(
        "Assignments: {} total, {} delivered, {} drifted ({} reprocessing), {} failed, {} pending",
        c.total, c.delivered, c.drifted, c.reprocessing, c.failed, c.pending
    )));
    let mut drifted = Node::new(format!("Drifted ({})", c.drifted));
    for d in &status.drifted {
        let mut line = format!(
            "{} (assignment {}): Missing {}; since {}",
            d.target,
            d.assignment_id,
            if d.missing.is_empty() {
                String::from("(not listed)")
            } else {
                d.missing.join(", ")
            },
            when(&d.since, now)
        );
        line.push_str(&format!("; reprocess attempts {}", d.reprocess_attempts));
        if let Some(t) = &d.last_reprocess_time {
            line.push_str(&format!(", last {}", when(t, now)));
        }
        if let Some(by) = &d.reprocessed_by {
            line.push_str(&format!(" by {by}"));
        }
        drifted.children.push(Node::new(line));
    }
    if status.drifted_not_listed > 0 {
        drifted.children.push(Node::new(format!(
            "and {} more not listed",
            status.drifted_not_listed
        )));
    }
    top.push(drifted);
    if status.unmanaged_members.count > 0 {
        top.push(Node::new(format!(
            "Unmanaged members: {} (in the package's groups without an assignment; reported only)",
            status.unmanaged_members.count
        )));
    }
    let mut sweep = format!("Next sweep: within {} of the last one", spec.interval);
    if let Some(t) = &status.last_sweep_time {
        sweep.push_str(&format!("; result last changed {}", when(t, now)));
    }
    top.push(Node::new(sweep));
    status_tree(Kind::Guard, obj, top)
}

/// One object as `kubectl redeliver drift` lists it.
#[derive(Debug, Clone)]
pub enum Listed {
    /// An assignment.
    Assignment(Box<AccessPackageAssignment>),
    /// A guard.
    Guard(Box<AccessPackageGuard>),
    /// An object that does not decode as its kind (a hand-edited status, a spec that slipped
    /// past the schema): listed, never silently dropped.
    Malformed {
        /// Its kind.
        kind: Kind,
        /// `metadata.namespace`.
        namespace: String,
        /// `metadata.name`.
        name: String,
        /// The decoding error.
        error: String,
    },
}

/// What `drift` prints, and how many objects were not Delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriftReport {
    /// The table (or the all-clear line).
    pub text: String,
    /// Objects listed as not Delivered (malformed ones included).
    pub not_delivered: usize,
}

/// Every object whose `Delivered` condition is not `True`, one line each, with what is
/// missing. `scope` names where was looked (for the all-clear line).
pub fn drift(objects: &[Listed], all_namespaces: bool, scope: &str) -> DriftReport {
    let mut rows: Vec<[String; 5]> = Vec::new();
    for o in objects {
        let row = match o {
            Listed::Assignment(a) => {
                let conds = a
                    .status
                    .as_ref()
                    .map(|s| s.conditions.as_slice())
                    .unwrap_or(&[]);
                let Some((delivered, reason)) = not_delivered(conds) else {
                    continue;
                };
                let missing: Vec<String> = a
                    .status
                    .iter()
                    .flat_map(|s| &s.resources)
                    .filter(|r| r.state == ResourceState::Missing)
                    .map(resource_label)
                    .collect();
                [
                    a.namespace().unwrap_or_default(),
                    format!("{}/{}", Kind::Assignment.short(), a.name_any()),
                    delivered,
                    reason,
                    if missing.is_empty() {
                        String::from("-")
                    } else {
                        missing.join(", ")
                    },
                ]
            }
            Listed::Guard(g) => {
                let conds = g
                    .status
                    .as_ref()
                    .map(|s| s.conditions.as_slice())
                    .unwrap_or(&[]);
                let Some((delivered, reason)) = not_delivered(conds) else {
                    continue;
                };
                let status = g.status.clone().unwrap_or_default();
                let mut missing: Vec<String> = status
                    .drifted
                    .iter()
                    .map(|d| format!("{}: {}", d.target, d.missing.join(", ")))
                    .collect();
                if status.drifted_not_listed > 0 {
                    missing.push(format!("{} more", status.drifted_not_listed));
                }
                [
                    g.namespace().unwrap_or_default(),
                    format!("{}/{}", Kind::Guard.short(), g.name_any()),
                    delivered,
                    reason,
                    if missing.is_empty() {
                        String::from("-")
                    } else {
                        missing.join("; ")
                    },
                ]
            }
            Listed::Malformed {
                kind,
                namespace,
                name,
                error,
            } => [
                namespace.clone(),
                format!("{}/{name}", kind.short()),
                String::from("?"),
                String::from("Malformed"),
                format!("does not decode: {error}"),
            ],
        };
        rows.push(row);
    }
    if rows.is_empty() {
        return DriftReport {
            text: format!(
                "Every AccessPackageAssignment and AccessPackageGuard {scope} is Delivered ({} objects).\n",
                objects.len()
            ),
            not_delivered: 0,
        };
    }
    let header = ["NAMESPACE", "OBJECT", "DELIVERED", "REASON", "MISSING"];
    let skip = usize::from(!all_namespaces);
    let mut widths = [0usize; 5];
    for r in std::iter::once(&header.map(String::from)).chain(rows.iter()) {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    for r in std::iter::once(header.map(String::from)).chain(rows.iter().cloned()) {
        let cells: Vec<String> = r
            .iter()
            .zip(widths)
            .enumerate()
            .skip(skip)
            .map(|(i, (cell, w))| {
                if i == 4 {
                    cell.clone()
                } else {
                    format!("{cell:w$}")
                }
            })
            .collect();
        text.push_str(cells.join("   ").trim_end());
        text.push('\n');
    }
    DriftReport {
        text,
        not_delivered: rows.len(),
    }
}

/// `(status, reason)` of the Delivered condition when it is not True (a missing condition is
/// not Delivered either: nothing is claimed without evidence).
fn not_delivered(conds: &[Condition]) -> Option<(String, String)> {
    match find(conds, ConditionType::Delivered) {
        Some(c) if c.status == Status::True => None,
        Some(c) => Some((c.status.clone(), c.reason.clone())),
        None => Some((Status::Unknown.to_string(), String::from("NotReported"))),
    }
}

/// An object whose status echoes the reprocess request (annotation value) it handled.
pub trait Echoes:
    kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    /// The last request value the controller handled.
    fn last_handled(&self) -> Option<&str>;
    /// What became of the handled request, and whether it went well (not Stalled).
    fn outcome(&self, value: &str) -> (String, bool);
}

/// Whether the controller has handled the reprocess request `value` on this object.
pub fn handled<K: Echoes>(obj: &K, value: &str) -> bool {
    obj.last_handled() == Some(value)
}

/// What became of a handled reprocess request, and whether it went well (not Stalled).
pub fn reprocess_outcome<K: Echoes>(obj: &K, value: &str) -> (String, bool) {
    obj.outcome(value)
}

impl Echoes for AccessPackageAssignment {
    fn last_handled(&self) -> Option<&str> {
        self.status
            .as_ref()
            .and_then(|s| s.reprocess.last_handled_request.as_deref())
    }

    fn outcome(&self, value: &str) -> (String, bool) {
        let status = self.status.clone().unwrap_or_default();
        let name = qualified(self.metadata.namespace.as_deref(), &self.name_any());
        let mut text = format!(
            "{} {name}: reprocess request {value:?} handled",
            Kind::Assignment.singular()
        );
        let r = &status.reprocess;
        if let Some(outcome) = r.last_outcome {
            text.push_str(&format!(
                "; outcome {outcome:?} (attempt {} of {})",
                r.attempts, self.spec.reprocess.max_attempts
            ));
        }
        outcome_conditions(text, &status.conditions)
    }
}

impl Echoes for AccessPackageGuard {
    fn last_handled(&self) -> Option<&str> {
        self.status
            .as_ref()
            .and_then(|s| s.last_handled_request.as_deref())
    }

    fn outcome(&self, value: &str) -> (String, bool) {
        let status = self.status.clone().unwrap_or_default();
        let name = qualified(self.metadata.namespace.as_deref(), &self.name_any());
        let c = &status.assignments;
        let text = format!(
            "{} {name}: reprocess request {value:?} handled by a sweep; {} of {} delivered, {} \
             drifted, {} reprocessing",
            Kind::Guard.singular(),
            c.delivered,
            c.total,
            c.drifted,
            c.reprocessing
        );
        outcome_conditions(text, &status.conditions)
    }
}

/// Appends Ready, Delivered and Stalled to an outcome line; not ok when Stalled.
fn outcome_conditions(mut text: String, conditions: &[Condition]) -> (String, bool) {
    for type_ in [
        ConditionType::Ready,
        ConditionType::Delivered,
        ConditionType::Stalled,
    ] {
        if let Some(c) = find(conditions, type_) {
            text.push_str(&format!("\n  {} {} {}", c.type_, c.status, c.reason));
            if !c.message.is_empty() {
                text.push_str(&format!(": {}", c.message));
            }
        }
    }
    text.push('\n');
    (text, !is_true(conditions, ConditionType::Stalled))
}

/// The error kubectl prints for a missing object.
pub fn not_found(kind: Kind, name: &str, namespace: &str) -> String {
    format!("{kind} {name:?} not found in namespace {namespace:?}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> Timestamp {
        "2026-01-01T01:00:00Z".parse().unwrap()
    }

    fn cond(t: &str, s: &str, r: &str, m: &str) -> serde_json::Value {
        json!({"type": t, "status": s, "reason": r, "message": m,
               "lastTransitionTime": "2026-01-01T00:00:00Z"})
    }

    fn alice(status: serde_json::Value) -> AccessPackageAssignment {
        serde_json::from_value(json!({
            "apiVersion": "redeliver.dev/v1alpha1", "kind": "AccessPackageAssignment",
            "metadata": {"name": "alice-finance", "namespace": "access", "generation": 1},
            "spec": {"accessPackage": {"displayName": "Finance Analysts", "catalog": "Finance"},
                     "target": {"userPrincipalName": "alice@contoso.com"},
                     "reprocess": {"mode": "Manual", "maxAttempts": 3, "cooldown": "5m"}},
            "status": status,
        }))
        .unwrap()
    }

    fn drifted_alice() -> AccessPackageAssignment {
        alice(json!({
            "observedGeneration": 1,
            "accessPackageName": "Finance Analysts",
            "accessPackageId": "9f1c0c7e-0000-4000-8000-000000000001",
            "targetName": "alice@contoso.com",
            "graphState": "delivered", "graphStatus": "Delivered",
            "assignmentId": "a-1",
            "resourcesSummary": "1/2",
            "resources": [
                {"originSystem": "AadGroup", "originId": "g1", "displayName": "fin-readers",
                 "role": "Member", "state": "Present"},
                {"originSystem": "AadGroup", "originId": "g2", "displayName": "fin-writers",
                 "role": "Member", "state": "Missing"},
                {"originSystem": "SharePointOnline", "originId": "https://x/sites/fin",
                 "role": "Visitor", "state": "Unverifiable", "note": "sites are not verified"},
            ],
            "reprocess": {"attempts": 1, "lastRequestedTime": "2026-01-01T00:55:00Z",
                          "lastOutcome": "Requested", "lastHandledRequest": "r1"},
            "lastVerifiedTime": "2026-01-01T00:50:00Z",
            "conditions": [
                cond("Delivered", "False", "ResourcesMissing", "fin-writers (Member) is missing"),
                cond("Ready", "False", "Reprocessing", "reprocess requested"),
                cond("Reconciling", "True", "Reprocessing", "reprocess requested"),
            ],
        }))
    }

    #[test]
    fn roles_show_kind_mode_and_scope() {
        let status = alice(json!({
            "resourcesSummary": "1/2",
            "resources": [
                {"originSystem": "DirectoryRole", "originId": "f2ef992c-3afb-46b9-b7cf-a126ee74c451",
                 "kind": "EntraRole", "mode": "Eligible", "scope": "/",
                 "displayName": "Global Reader", "role": "Eligible Member", "state": "Missing"},
                {"originSystem": "AzureResources", "originId": "/subscriptions/s1/resourceGroups/rg-fin",
                 "kind": "AzureRole", "mode": "Active", "scope": "/subscriptions/s1/resourceGroups/rg-fin",
                 "displayName": "Contributor", "role": "Contributor", "state": "Present"},
            ],
        }));
        let text = assignment_status(&status, now(), None);
        assert!(
            text.contains("Missing  DirectoryRole   EntraRole Global Reader (Eligible, /)"),
            "{text}"
        );
        assert!(
            text.contains(
                "Present  AzureResources  AzureRole Contributor (Active, /subscriptions/s1/resourceGroups/rg-fin)"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_group_eligibility_shows_its_kind_and_relationship() {
        let status = alice(json!({
            "resourcesSummary": "1/2",
            "resources": [
                {"originSystem": "AadGroup", "originId": "g-admins", "kind": "GroupEligible",
                 "mode": "Eligible", "displayName": "fin-admins", "role": "Member", "state": "Missing"},
                {"originSystem": "AadGroup", "originId": "g-readers",
                 "displayName": "fin-readers", "role": "Member", "state": "Present"},
            ],
        }));
        let text = assignment_status(&status, now(), None);
        assert!(
            text.contains("Missing  AadGroup  GroupEligible fin-admins (Member)"),
            "{text}"
        );
        assert!(
            text.contains("Present  AadGroup  fin-readers (Member)"),
            "{text}"
        );
    }

    #[test]
    fn draws_a_tree() {
        let root = Node::new("r").with(vec![
            Node::new("a").with(vec![Node::new("a1"), Node::new("a2")]),
            Node::new("b").with(vec![Node::new("b1")]),
        ]);
        assert_eq!(tree(&root), "r\n├─ a\n│  ├─ a1\n│  └─ a2\n└─ b\n   └─ b1\n");
    }

    #[test]
    fn assignment_status_shows_conditions_resources_reprocess_and_next_verification() {
        let text = assignment_status(&drifted_alice(), now(), None);
        let expected = "\
AccessPackageAssignment access/alice-finance
├─ Package: Finance Analysts (9f1c0c7e-0000-4000-8000-000000000001)
├─ Target: alice@contoso.com
├─ Graph: delivered (Delivered), assignment a-1
├─ Conditions
│  ├─ Ready        False    Reprocessing: reprocess requested
│  ├─ Delivered    False    ResourcesMissing: fin-writers (Member) is missing
│  └─ Reconciling  True     Reprocessing: reprocess requested
├─ Resources (1/2 verified present)
│  ├─ Present       AadGroup          fin-readers (Member)
│  ├─ Missing       AadGroup          fin-writers (Member)
│  ├─ Unverifiable  SharePointOnline  https://x/sites/fin (Visitor) (sites are not verified)
│  └─ last change: 2026-01-01T00:50:00Z (10m ago)
├─ Reprocess
│  ├─ attempts: 1 of 3 (mode Manual, cooldown 5m)
│  ├─ last requested: 2026-01-01T00:55:00Z (5m ago)
│  ├─ last outcome: Requested
│  └─ last handled request: r1
└─ Next verification: within the operator's --verify-interval (10m unless the operator is run with another; its Deployment could not be read) of the last one (or at once on a spec or annotation change)
";
        assert_eq!(text, expected);
    }

    #[test]
    fn the_next_verification_names_the_operators_interval_when_it_was_read() {
        let text = assignment_status(
            &drifted_alice(),
            now(),
            Some("1h (Deployment redeliver-system/redeliver)"),
        );
        assert!(
            text.contains("Next verification: within the operator's --verify-interval, 1h (Deployment redeliver-system/redeliver), of the last one"),
            "{text}"
        );
    }

    #[test]
    fn a_new_object_says_nothing_is_reported_and_a_stale_generation_is_named() {
        let mut obj = alice(json!({"observedGeneration": 1}));
        obj.metadata.generation = Some(2);
        let text = assignment_status(&obj, now(), None);
        assert!(
            text.contains("none yet: the controller has not reported"),
            "{text}"
        );
        assert!(
            text.contains("Conditions (of generation 1; the object is at 2"),
            "{text}"
        );
        assert!(text.contains("Graph: not read yet"), "{text}");
        assert!(
            text.contains("Package: Finance Analysts (catalog Finance)"),
            "{text}"
        );
    }

    fn guard() -> AccessPackageGuard {
        serde_json::from_value(json!({
            "apiVersion": "redeliver.dev/v1alpha1", "kind": "AccessPackageGuard",
            "metadata": {"name": "finance", "namespace": "access"},
            "spec": {"accessPackage": {"id": "9f1c0c7e-0000-4000-8000-000000000001"}},
            "status": {
                "accessPackageName": "Finance Analysts",
                "assignments": {"total": 4, "delivered": 3, "drifted": 1, "reprocessing": 1},
                "drifted": [{"target": "alice@contoso.com", "assignmentId": "a-1",
                             "missing": ["fin-writers (Member)"], "since": "2026-01-01T00:30:00Z",
                             "reprocessAttempts": 1, "lastReprocessTime": "2026-01-01T00:40:00Z",
                             "reprocessedBy": "AccessPackageAssignment access/alice-finance"}],
                "unmanagedMembers": {"count": 2},
                "lastSweepTime": "2026-01-01T00:45:00Z",
                "conditions": [cond("Delivered", "False", "ResourcesMissing", "1 drifted"),
                               cond("Ready", "False", "Reprocessing", "")],
            }
        }))
        .unwrap()
    }

    #[test]
    fn guard_status_lists_counts_drift_and_next_sweep() {
        let text = guard_status(&guard(), now());
        for want in [
            "AccessPackageGuard access/finance\n",
            "├─ Package: Finance Analysts\n",
            "├─ Mode: Enforce, at most 50 reprocesses per sweep\n",
            "│  ├─ Ready      False    Reprocessing\n",
            "│  └─ Delivered  False    ResourcesMissing: 1 drifted\n",
            "├─ Assignments: 4 total, 3 delivered, 1 drifted (1 reprocessing), 0 failed, 0 pending\n",
            "│  └─ alice@contoso.com (assignment a-1): Missing fin-writers (Member); since 2026-01-01T00:30:00Z (30m ago); reprocess attempts 1, last 2026-01-01T00:40:00Z (20m ago) by AccessPackageAssignment access/alice-finance\n",
            "├─ Unmanaged members: 2",
            "└─ Next sweep: within 15m of the last one; result last changed 2026-01-01T00:45:00Z (15m ago)\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }

    #[test]
    fn drift_lists_only_what_is_not_delivered() {
        let delivered = alice(json!({"conditions": [cond("Delivered", "True", "Delivered", "")]}));
        let objects = vec![
            Listed::Assignment(Box::new(delivered.clone())),
            Listed::Assignment(Box::new(drifted_alice())),
            Listed::Guard(Box::new(guard())),
            Listed::Malformed {
                kind: Kind::Assignment,
                namespace: "other".into(),
                name: "broken".into(),
                error: "spec.target: missing field".into(),
            },
        ];
        let report = drift(&objects, true, "in all namespaces");
        assert_eq!(report.not_delivered, 3);
        assert_eq!(
            report.text,
            "\
NAMESPACE   OBJECT              DELIVERED   REASON             MISSING
access      apa/alice-finance   False       ResourcesMissing   fin-writers (Member)
access      apg/finance         False       ResourcesMissing   alice@contoso.com: fin-writers (Member)
other       apa/broken          ?           Malformed          does not decode: spec.target: missing field
"
        );
        let one_namespace = drift(&objects[..2], false, "in namespace \"access\"");
        assert!(
            one_namespace.text.starts_with("OBJECT "),
            "{}",
            one_namespace.text
        );
        let clear = drift(&objects[..1], false, "in namespace \"access\"");
        assert_eq!(clear.not_delivered, 0);
        assert_eq!(
            clear.text,
            "Every AccessPackageAssignment and AccessPackageGuard in namespace \"access\" is Delivered (1 objects).\n"
        );
        let unreported = alice(serde_json::Value::Null);
        let r = drift(&[Listed::Assignment(Box::new(unreported))], false, "");
        assert!(r.text.contains("Unknown     NotReported"), "{}", r.text);
    }

    #[test]
    fn reprocess_outcome_reads_the_echo_and_the_conditions() {
        let obj = drifted_alice();
        assert!(handled(&obj, "r1"));
        assert!(!handled(&obj, "r2"));
        let (text, ok) = reprocess_outcome(&obj, "r1");
        assert!(ok);
        assert!(
            text.starts_with("accesspackageassignment access/alice-finance: reprocess request \"r1\" handled; outcome Requested (attempt 1 of 3)\n  Ready False Reprocessing: reprocess requested\n"),
            "{text}"
        );
        let mut stalled = drifted_alice();
        if let Some(s) = stalled.status.as_mut() {
            s.conditions = vec![
                serde_json::from_value(cond("Stalled", "True", "ReprocessExhausted", "gave up"))
                    .unwrap(),
            ];
        }
        let (text, ok) = reprocess_outcome(&stalled, "r1");
        assert!(!ok);
        assert!(
            text.contains("Stalled True ReprocessExhausted: gave up"),
            "{text}"
        );
    }

    #[test]
    fn not_found_names_kind_object_and_namespace() {
        assert_eq!(
            not_found(Kind::Assignment, "x", "y"),
            "accesspackageassignment \"x\" not found in namespace \"y\""
        );
    }
}
