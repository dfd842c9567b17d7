//! Deletion with `deletionPolicy: Remove`: what to do with the user's assignment once its
//! declaration is deleted. The driver reads (the live assignment, then the package's
//! requests only if there is one) and does what [`plan_removal`] says; the finalizer stays
//! until Entra ID no longer lists the assignment.

use crate::api::{AccessPackageAssignmentSpec, AccessPackageAssignmentStatus, DeletionPolicy};
use crate::domain::models::{Assignment, AssignmentRequest, AssignmentState, RequestType};

use super::{EngineEvent, EventKind};

/// What is known when deciding.
#[derive(Debug, Clone, Copy)]
pub enum RemovalSeen<'a> {
    /// Nothing read yet.
    Nothing,
    /// The user's assignments of the package (any state).
    Assignments(&'a [Assignment]),
    /// Those, and the package's requests.
    Requests(&'a [Assignment], &'a [AssignmentRequest]),
}

/// The next step of a deletion.
#[derive(Debug, Clone, PartialEq)]
pub enum RemovalStep {
    /// Nothing to remove here (Orphan, or nothing resolves): release the finalizer.
    Release,
    /// Release the finalizer, recording this event first.
    ReleaseWith(EngineEvent),
    /// Read the user's assignments of the package.
    ReadAssignments,
    /// Read the package's requests (a live assignment is there).
    ReadRequests,
    /// Submit an `adminRemove` for this assignment, then wait.
    Submit { assignment_id: String },
    /// An `adminRemove` for it is in flight: wait for it.
    Wait {
        assignment_id: String,
        request_id: String,
    },
}

/// The next step for a deleted declaration, given what has been read.
pub fn plan_removal(
    spec: &AccessPackageAssignmentSpec,
    status: Option<&AccessPackageAssignmentStatus>,
    package_id: &str,
    target_id: &str,
    seen: RemovalSeen<'_>,
) -> RemovalStep {
    if spec.deletion_policy != DeletionPolicy::Remove {
        return RemovalStep::Release;
    }
    if spec.suspend {
        return RemovalStep::ReleaseWith(EngineEvent {
            kind: EventKind::RemovalSkipped,
            message: "spec.suspend is true, so the assignment was not removed from Entra ID; remove it in the Entra admin center if it must go.".into(),
        });
    }
    let (assignments, requests) = match seen {
        RemovalSeen::Nothing => return RemovalStep::ReadAssignments,
        RemovalSeen::Assignments(a) => (a, None),
        RemovalSeen::Requests(a, r) => (a, Some(r)),
    };
    let Some(live) = assignments
        .iter()
        .find(|a| a.state != AssignmentState::Expired)
    else {
        // Gone: said once if the status knew the assignment.
        return match status.and_then(|s| s.assignment_id.as_ref()) {
            Some(_) => RemovalStep::ReleaseWith(EngineEvent {
                kind: EventKind::AssignmentRemoved,
                message: format!(
                    "The assignment of package {package_id} to {target_id} is removed from Entra ID; releasing the finalizer."
                ),
            }),
            None => RemovalStep::Release,
        };
    };
    let Some(requests) = requests else {
        return RemovalStep::ReadRequests;
    };
    // Never a second adminRemove while one is in flight.
    match requests.iter().find(|r| {
        r.request_type == RequestType::AdminRemove
            && r.state.is_in_flight()
            && r.assignment.as_ref().and_then(|a| a.id.as_deref()) == Some(live.id.as_str())
    }) {
        Some(r) => RemovalStep::Wait {
            assignment_id: live.id.clone(),
            request_id: r.id.clone(),
        },
        None => RemovalStep::Submit {
            assignment_id: live.id.clone(),
        },
    }
}

/// The event for an `adminRemove` just submitted.
pub fn removal_requested(request_id: &str, assignment_id: &str) -> EngineEvent {
    EngineEvent {
        kind: EventKind::RemovalRequested,
        message: format!(
            "Submitted adminRemove request {request_id} for assignment {assignment_id} (deletionPolicy: Remove); the finalizer stays until Entra ID has removed it."
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::models::RequestState;

    fn spec(policy: DeletionPolicy, suspend: bool) -> AccessPackageAssignmentSpec {
        let mut s: AccessPackageAssignmentSpec = serde_json::from_value(serde_json::json!({
            "accessPackage": {"id": "p"},
            "target": {"objectId": "u"},
        }))
        .unwrap();
        s.deletion_policy = policy;
        s.suspend = suspend;
        s
    }

    fn assignment(id: &str, state: AssignmentState) -> Assignment {
        serde_json::from_value(serde_json::json!({"id": id, "state": state.as_str()})).unwrap()
    }

    fn remove_request(id: &str, assignment: &str, state: RequestState) -> AssignmentRequest {
        serde_json::from_value(serde_json::json!({
            "id": id, "requestType": "adminRemove", "state": state.as_str(),
            "assignment": {"id": assignment},
        }))
        .unwrap()
    }

    #[test]
    fn removes_once_waits_for_the_request_in_flight_and_releases_when_gone() {
        let remove = spec(DeletionPolicy::Remove, false);
        let plan = |seen| plan_removal(&remove, None, "p", "u", seen);
        assert_eq!(plan(RemovalSeen::Nothing), RemovalStep::ReadAssignments);
        let live = [assignment("a1", AssignmentState::Delivered)];
        assert_eq!(
            plan(RemovalSeen::Assignments(&live)),
            RemovalStep::ReadRequests
        );
        assert_eq!(
            plan(RemovalSeen::Requests(&live, &[])),
            RemovalStep::Submit {
                assignment_id: "a1".into()
            }
        );
        let pending = [remove_request("r1", "a1", RequestState::Delivering)];
        assert_eq!(
            plan(RemovalSeen::Requests(&live, &pending)),
            RemovalStep::Wait {
                assignment_id: "a1".into(),
                request_id: "r1".into()
            },
            "never a second adminRemove"
        );
        let done = [remove_request("r1", "a1", RequestState::Delivered)];
        assert!(matches!(
            plan(RemovalSeen::Requests(&live, &done)),
            RemovalStep::Submit { .. }
        ));
        let expired = [assignment("a1", AssignmentState::Expired)];
        assert_eq!(
            plan(RemovalSeen::Assignments(&expired)),
            RemovalStep::Release
        );
        let known = AccessPackageAssignmentStatus {
            assignment_id: Some("a1".into()),
            ..Default::default()
        };
        assert!(matches!(
            plan_removal(
                &remove,
                Some(&known),
                "p",
                "u",
                RemovalSeen::Assignments(&[])
            ),
            RemovalStep::ReleaseWith(EngineEvent {
                kind: EventKind::AssignmentRemoved,
                ..
            })
        ));
    }

    #[test]
    fn orphan_and_suspended_objects_leave_the_assignment() {
        let live = [assignment("a1", AssignmentState::Delivered)];
        assert_eq!(
            plan_removal(
                &spec(DeletionPolicy::Orphan, false),
                None,
                "p",
                "u",
                RemovalSeen::Assignments(&live)
            ),
            RemovalStep::Release
        );
        assert!(matches!(
            plan_removal(
                &spec(DeletionPolicy::Remove, true),
                None,
                "p",
                "u",
                RemovalSeen::Nothing
            ),
            RemovalStep::ReleaseWith(EngineEvent {
                kind: EventKind::RemovalSkipped,
                ..
            })
        ));
    }
}
