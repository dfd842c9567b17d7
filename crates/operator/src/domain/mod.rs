//! What the engine decides over, in the words of entitlement management and the directory:
//! assignments, requests, packages and their resources, directory objects and audit
//! entries ([`models`]), and the writes Redeliver makes ([`Write`]). Plain data that
//! depends on no HTTP client: the Graph client (`crate::graph`) reads and sends it, the
//! engine decides with it, the simulator speaks the same wire shapes.

pub mod clock;
pub mod models;

use models::AssignmentRequest;

/// One write Redeliver makes to entitlement management.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Write {
    /// Re-apply a delivered assignment (`POST …/assignments/{id}/reprocess`; 202).
    ReprocessAssignment {
        /// The assignment's id.
        assignment_id: String,
    },
    /// Re-run a failed or partially delivered request
    /// (`POST …/assignmentRequests/{id}/reprocess`; 202).
    ReprocessRequest {
        /// The request's id.
        request_id: String,
    },
    /// Create an `adminAdd` request (`POST …/assignmentRequests`; 201).
    RequestAssignment {
        /// The access package.
        access_package_id: String,
        /// The assignment policy the request is made under.
        policy_id: String,
        /// The user (object id) to assign.
        target_object_id: String,
    },
}

/// What Graph answered to an accepted [`Write`].
#[derive(Clone, Debug, PartialEq)]
pub enum Written {
    /// A `reprocess` was accepted (202).
    Accepted,
    /// The assignment request Graph created (201).
    Requested(Box<AssignmentRequest>),
}
