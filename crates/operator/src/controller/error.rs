//! The controller's single error type. Every variant maps to a short metric label, so each
//! failure is counted by kind.

use std::time::Duration;

use crate::graph::GraphError;

/// A reconcile failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kubernetes API refused or failed a call (status patch, finalizer, event).
    #[error("Kubernetes API: {0}")]
    Kube(#[source] kube::Error),

    /// A Graph call failed and the reconcile did not turn it into a condition.
    ///
    /// Mostly transient failures (throttling, 5xx, network), but also token, credential and
    /// decode failures, and failures the reconcile does not map to a reason (for example
    /// during a `deletionPolicy: Remove` cleanup). The error policy retries it at the
    /// `Retry-After` when Graph gave one, else with the object's backoff. A refused
    /// `adminAdd` or reprocess (403, other 4xx) is not one of these: it is reported as
    /// `Stalled`.
    #[error("Microsoft Graph: {0}")]
    Graph(#[source] GraphError),

    /// The finalizer helper failed (adding or removing the finalizer, or the cleanup).
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),

    /// An object from the watch lacks a field every stored object has.
    #[error("object has no metadata.{0}; it cannot be reconciled")]
    MissingMetadata(&'static str),

    /// An `adminRemove` was submitted (or is in flight) and Graph has not removed the
    /// assignment yet; the finalizer stays until it has.
    #[error("removal of assignment {assignment_id} is in progress{request}; the finalizer stays until Entra ID has removed it", request = request_id.as_deref().map(|r| format!(" (request {r})")).unwrap_or_default())]
    RemovalPending {
        /// The assignment being removed.
        assignment_id: String,
        /// The `adminRemove` request, when known.
        request_id: Option<String>,
    },

    /// The object's Graph connection is not usable (a deletion cleanup waits for it).
    #[error("{0}")]
    ConnectionNotReady(String),

    /// A status could not be turned into JSON (a bug, never user data).
    #[error("cannot serialize status: {0}")]
    Serialize(#[source] serde_json::Error),
}

impl Error {
    /// Short stable label for the `result` of the reconciles metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube_error",
            Self::Graph(e) if e.retry_after().is_some() => "graph_throttled",
            Self::Graph(e) => graph_label(e),
            Self::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.metric_label(),
                _ => "finalizer_error",
            },
            Self::MissingMetadata(_) => "invalid_object",
            Self::RemovalPending { .. } => "removal_pending",
            Self::Serialize(_) => "serialize_error",
            Self::ConnectionNotReady(_) => "connection_not_ready",
        }
    }

    /// When Graph said exactly when to come back (throttling), that time.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Graph(e) => e.retry_after(),
            Self::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.retry_after(),
                _ => None,
            },
            _ => None,
        }
    }

    /// True for a wait that is expected (not a failure): it requeues at a fixed pace instead
    /// of growing the object's backoff.
    pub fn is_waiting(&self) -> bool {
        match self {
            Self::RemovalPending { .. } => true,
            Self::Finalizer(inner) => matches!(
                inner.as_ref(),
                kube::runtime::finalizer::Error::CleanupFailed(Error::RemovalPending { .. })
            ),
            _ => false,
        }
    }
}

/// One label per [`GraphError::kind`], so a 403 is told from a 5xx or a decode failure
/// (bounded: one per kind).
fn graph_label(e: &GraphError) -> &'static str {
    match e.kind() {
        "config" => "graph_config",
        "credential" => "graph_credential",
        "auth" => "graph_auth",
        "unauthorized" => "graph_unauthorized",
        "not_found" => "graph_not_found",
        "forbidden" => "graph_forbidden",
        "bad_request" => "graph_bad_request",
        "throttled" => "graph_throttled",
        "server" => "graph_server",
        "transport" => "graph_transport",
        "decode" => "graph_decode",
        _ => "graph_error",
    }
}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        Self::Kube(e)
    }
}

impl From<GraphError> for Error {
    fn from(e: GraphError) -> Self {
        Self::Graph(e)
    }
}

impl From<kube::runtime::finalizer::Error<Error>> for Error {
    fn from(e: kube::runtime::finalizer::Error<Error>) -> Self {
        Self::Finalizer(Box::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graph_failures_are_labelled_by_kind() {
        let forbidden = Error::Graph(GraphError::Forbidden {
            operation: "reprocess_assignment",
            code: "Authorization_RequestDenied".into(),
            message: "no".into(),
            request_id: None,
            hint: "EntitlementManagement.ReadWrite.All",
        });
        assert_eq!(forbidden.metric_label(), "graph_forbidden");
        let decode = Error::Graph(GraphError::Decode {
            operation: "list_group_members",
            message: "not JSON".into(),
            request_id: None,
        });
        assert_eq!(decode.metric_label(), "graph_decode");
        let throttled = Error::Graph(GraphError::Throttled {
            operation: "list_group_members",
            retry_after: Some(Duration::from_secs(3)),
            request_id: None,
        });
        assert_eq!(throttled.metric_label(), "graph_throttled");
    }
}
