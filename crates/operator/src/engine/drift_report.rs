//! Microsoft's access drift report as a cross-check of Redeliver's own reads.
//!
//! The report (Graph beta) says, per catalog resource, which users entitlement management
//! thinks are missing what a package delivers. It is detection only: where it and
//! Redeliver's read disagree, the object gets a warning in its Delivered message and a
//! metric counts it. It never changes a condition's status and never causes a write:
//! Redeliver's own read of the resource is what it acts on.

use std::collections::{BTreeMap, BTreeSet};

use super::{PromisedResource, ResourceKind, Snapshot};
use crate::api::ResourceState;

/// What the report says for one catalog: per resource (group or service principal object
/// id, lower-cased) it covers, the users (object ids, lower-cased) it reports `missing`.
/// A resource absent from the map is one the report has no opinion on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriftReport {
    /// Missing users per covered resource.
    pub missing: BTreeMap<String, BTreeSet<String>>,
}

impl DriftReport {
    /// Records that the report covers `resource` (a summary exists for it).
    pub fn cover(&mut self, resource: &str) {
        self.missing
            .entry(resource.to_ascii_lowercase())
            .or_default();
    }

    /// Records that the report says `user` is missing `resource`.
    pub fn record_missing(&mut self, resource: &str, user: &str) {
        self.missing
            .entry(resource.to_ascii_lowercase())
            .or_default()
            .insert(user.to_ascii_lowercase());
    }
}

/// The resource the report would name for `kind`: groups (membership) and apps only. Group
/// ownership is left out: the report names the group, not whether the role was member
/// or owner, so an owner would be compared against the members' verdict.
fn reported_resource(kind: &ResourceKind) -> Option<&str> {
    match kind {
        ResourceKind::GroupMember { group_id } => Some(group_id),
        ResourceKind::AppRole {
            service_principal_id,
            ..
        } => Some(service_principal_id),
        _ => None,
    }
}

/// Where Microsoft's report and Redeliver's read of `resources` disagree for the user
/// `target` (object id; `who` names them in messages): one message per disagreeing
/// resource, in `resources` order. A resource the report does not cover, or that Redeliver
/// could not read this time, is no disagreement.
pub fn drift_report_disagreements(
    report: &DriftReport,
    resources: &[PromisedResource],
    snapshot: &Snapshot,
    target: &str,
    who: &str,
) -> Vec<String> {
    let user = target.to_ascii_lowercase();
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for r in resources {
        let Some(id) = reported_resource(&r.kind) else {
            continue;
        };
        let Some(missing) = report.missing.get(&id.to_ascii_lowercase()) else {
            continue;
        };
        let reported_missing = missing.contains(&user);
        let ours = snapshot.check(&r.kind, target);
        let (theirs, found) = match (reported_missing, ours) {
            (true, ResourceState::Present) => ("missing", "present"),
            (false, ResourceState::Missing) => ("in sync", "missing"),
            _ => continue,
        };
        // An app promising two roles is one resource to the report: say it once.
        if !seen.insert((id.to_ascii_lowercase(), theirs)) {
            continue;
        }
        out.push(format!(
            "Microsoft's access drift report disagrees: it reports {} {theirs} for {who}, Redeliver's read found it {found}",
            r.display_name
        ));
    }
    out
}

/// How many disagreements a guard's message spells out; the rest are counted.
pub const GUARD_NOTES_SHOWN: usize = 3;

/// [`drift_report_disagreements`] for every delivered assignment of a guard's package:
/// the first [`GUARD_NOTES_SHOWN`] messages, then `and N more`, and the total count.
pub fn guard_drift_report_disagreements(
    report: &DriftReport,
    resources: &[PromisedResource],
    snapshot: &Snapshot,
    assignments: &[crate::domain::models::Assignment],
) -> (Vec<String>, usize) {
    let mut all = Vec::new();
    for a in assignments
        .iter()
        .filter(|a| a.state == crate::domain::models::AssignmentState::Delivered)
    {
        let Some(target) = a.target.as_ref() else {
            continue;
        };
        let Some(id) = target.object_id.as_deref() else {
            continue;
        };
        let who = target.principal_name.as_deref().unwrap_or(id);
        all.extend(drift_report_disagreements(
            report, resources, snapshot, id, who,
        ));
    }
    let total = all.len();
    if total > GUARD_NOTES_SHOWN {
        all.truncate(GUARD_NOTES_SHOWN);
        all.push(format!(
            "and {} more disagreement(s) with Microsoft's access drift report",
            total - GUARD_NOTES_SHOWN
        ));
    }
    (all, total)
}

/// Adds `notes` to the Delivered condition's message (and nothing else: its status,
/// reason and transition time stay as planned), so the warning shows in `kubectl describe`
/// next to the verdict it questions.
pub fn note_on_delivered(
    conditions: &mut [k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    notes: &[String],
) {
    if notes.is_empty() {
        return;
    }
    let Some(c) = conditions
        .iter_mut()
        .find(|c| c.type_ == super::conditions::ConditionType::Delivered.as_str())
    else {
        return;
    };
    let extra = notes.join("; ");
    c.message = if c.message.is_empty() {
        extra
    } else {
        format!("{}; {extra}", c.message.trim_end_matches('.'))
    };
}

/// The note an object gets when the report could not be read.
pub fn drift_report_unavailable(why: &str) -> String {
    format!("access drift report unavailable: {why}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{OriginSystem, ReadData, ResourceRead};
    use std::sync::Arc;

    const ALICE: &str = "a1";
    const GROUP: &str = "g1";

    fn group(name: &str, id: &str) -> PromisedResource {
        PromisedResource {
            origin_system: OriginSystem::AadGroup,
            origin_id: id.into(),
            display_name: name.into(),
            role: "Member".into(),
            kind: ResourceKind::GroupMember {
                group_id: id.into(),
            },
            note: None,
        }
    }

    fn members(ids: &[&str]) -> Snapshot {
        let mut s = Snapshot::new();
        s.record(
            ResourceRead::GroupMembers(GROUP.into()),
            ReadData::Ids(Arc::new(ids.iter().map(|s| s.to_string()).collect())),
        );
        s
    }

    #[test]
    fn reported_missing_but_present_is_a_disagreement() {
        let mut report = DriftReport::default();
        report.record_missing(GROUP, ALICE);
        let got = drift_report_disagreements(
            &report,
            &[group("fin-writers", GROUP)],
            &members(&[ALICE]),
            ALICE,
            "alice@contoso.com",
        );
        assert_eq!(
            got,
            [
                "Microsoft's access drift report disagrees: it reports fin-writers missing for alice@contoso.com, Redeliver's read found it present"
            ]
        );
    }

    #[test]
    fn reported_in_sync_but_missing_is_a_disagreement() {
        let mut report = DriftReport::default();
        report.cover(GROUP);
        let got = drift_report_disagreements(
            &report,
            &[group("fin-writers", GROUP)],
            &members(&[]),
            ALICE,
            "alice",
        );
        assert_eq!(got.len(), 1);
        assert!(
            got[0].contains("reports fin-writers in sync for alice"),
            "{got:?}"
        );
        assert!(got[0].ends_with("found it missing"), "{got:?}");
    }

    #[test]
    fn agreement_and_resources_the_report_does_not_cover_say_nothing() {
        let mut report = DriftReport::default();
        report.record_missing(GROUP, ALICE);
        // Both say missing.
        assert!(
            drift_report_disagreements(&report, &[group("w", GROUP)], &members(&[]), ALICE, "a")
                .is_empty()
        );
        // Not covered by the report.
        assert!(
            drift_report_disagreements(
                &DriftReport::default(),
                &[group("w", GROUP)],
                &members(&[]),
                ALICE,
                "a"
            )
            .is_empty()
        );
    }

    #[test]
    fn an_unread_resource_is_no_disagreement() {
        let mut report = DriftReport::default();
        report.record_missing(GROUP, ALICE);
        let mut failed = Snapshot::new();
        failed.record_failure(ResourceRead::GroupMembers(GROUP.into()), "throttled");
        assert!(
            drift_report_disagreements(&report, &[group("w", GROUP)], &failed, ALICE, "a")
                .is_empty()
        );
    }

    #[test]
    fn a_note_changes_only_the_delivered_message() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
        let c = |t: &str, m: &str| Condition {
            type_: t.into(),
            status: "True".into(),
            reason: "AllPresent".into(),
            message: m.into(),
            last_transition_time: Time(jiff::Timestamp::UNIX_EPOCH),
            observed_generation: Some(1),
        };
        let mut conditions = vec![c("Ready", "ok"), c("Delivered", "All 2 resources present.")];
        let before = conditions.clone();
        note_on_delivered(&mut conditions, &["x disagrees".into()]);
        assert_eq!(conditions[0], before[0]);
        assert_eq!(
            conditions[1].message,
            "All 2 resources present; x disagrees"
        );
        assert_eq!(conditions[1].status, before[1].status);
        assert_eq!(conditions[1].reason, before[1].reason);
        note_on_delivered(&mut conditions, &[]);
        assert_eq!(
            conditions[1].message,
            "All 2 resources present; x disagrees"
        );
    }

    #[test]
    fn a_guard_lists_a_few_disagreements_and_counts_them_all() {
        use crate::domain::models::{Assignment, AssignmentState, Subject};
        let users: Vec<String> = (0..5).map(|i| format!("u{i}")).collect();
        let mut report = DriftReport::default();
        for u in &users {
            report.record_missing(GROUP, u);
        }
        let refs: Vec<&str> = users.iter().map(String::as_str).collect();
        let assignment = |u: &str, state| Assignment {
            id: format!("a-{u}"),
            state,
            status: None,
            expired_date_time: None,
            target: Some(Subject {
                object_id: Some(u.to_string()),
                principal_name: Some(format!("{u}@contoso.com")),
            }),
            access_package: None,
            assignment_policy: None,
        };
        let mut assignments: Vec<Assignment> = users
            .iter()
            .map(|u| assignment(u, AssignmentState::Delivered))
            .collect();
        // Not delivered: the report's verdict on it is not compared.
        assignments.push(assignment("u9", AssignmentState::Delivering));
        report.record_missing(GROUP, "u9");
        let (notes, total) = guard_drift_report_disagreements(
            &report,
            &[group("fin-writers", GROUP)],
            &members(&refs),
            &assignments,
        );
        assert_eq!(total, 5);
        assert_eq!(notes.len(), GUARD_NOTES_SHOWN + 1);
        assert!(notes[0].contains("for u0@contoso.com"), "{notes:?}");
        assert_eq!(
            notes[GUARD_NOTES_SHOWN],
            "and 2 more disagreement(s) with Microsoft's access drift report"
        );
    }

    #[test]
    fn ids_compare_without_case() {
        let mut report = DriftReport::default();
        report.record_missing("G1", "A1");
        let got = drift_report_disagreements(
            &report,
            &[group("w", GROUP)],
            &members(&[ALICE]),
            ALICE,
            "a",
        );
        assert_eq!(got.len(), 1);
    }
}
