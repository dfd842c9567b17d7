//! Writes to entitlement management: assignment requests and `reprocess` actions, one at a
//! time or coalesced into `$batch` requests (docs/graph.md "Assignment requests",
//! "Reprocess actions", "JSON batching").
//!
//! A batched write follows the same retry rule as a direct one ([`RetryMode`]): an item the
//! service certainly did not act on (throttled, or declined with `Retry-After`) is sent
//! again on its own, and so is any item of a repeatable kind (`reprocess`). An `adminAdd`
//! whose outcome is uncertain (a 504, a batch whose answer was lost) is never sent twice: a
//! duplicate can wedge the assignment (docs/graph.md "Assignment requests"), so the caller
//! re-reads state before trying again.

use serde_json::json;

use super::client::{
    BatchItem, BatchResult, EM, GraphClient, GraphRequest, GraphResponse, MAX_BATCH,
};
use super::error::GraphError;
use super::http::{RetryMode, retryable_status};
use super::odata::segment;
use crate::domain::models::AssignmentRequest;
pub use crate::domain::{Write, Written};

/// A write turned into its operation name, path, body and retry mode.
struct Prepared {
    operation: &'static str,
    path: String,
    body: Option<serde_json::Value>,
    retry: RetryMode,
}

impl Write {
    /// The operation name used in errors, logs and counters.
    pub fn operation(&self) -> &'static str {
        match self {
            Write::ReprocessAssignment { .. } => "reprocess_assignment",
            Write::ReprocessRequest { .. } => "reprocess_request",
            Write::RequestAssignment { .. } => "request_assignment",
        }
    }

    /// Validates the ids and builds the request; an empty or path-breaking id is refused
    /// here, before anything is sent.
    fn prepare(&self) -> Result<Prepared, GraphError> {
        let operation = self.operation();
        let (path, body, retry) = match self {
            Write::ReprocessAssignment { assignment_id } => (
                format!(
                    "{EM}/assignments/{}/reprocess",
                    segment(operation, assignment_id)?
                ),
                None,
                RetryMode::Idempotent,
            ),
            Write::ReprocessRequest { request_id } => (
                format!(
                    "{EM}/assignmentRequests/{}/reprocess",
                    segment(operation, request_id)?
                ),
                None,
                RetryMode::Idempotent,
            ),
            Write::RequestAssignment {
                access_package_id,
                policy_id,
                target_object_id,
            } => {
                for (what, v) in [
                    ("access package id", access_package_id),
                    ("policy id", policy_id),
                    ("target object id", target_object_id),
                ] {
                    if v.trim().is_empty() {
                        return Err(GraphError::InvalidArgument {
                            operation,
                            message: format!("{what} is empty"),
                        });
                    }
                }
                let body = json!({
                    "requestType": "adminAdd",
                    "assignment": {
                        "targetId": target_object_id,
                        "assignmentPolicyId": policy_id,
                        "accessPackageId": access_package_id,
                    }
                });
                (
                    format!("{EM}/assignmentRequests"),
                    Some(body),
                    RetryMode::NonIdempotent,
                )
            }
        };
        Ok(Prepared {
            operation,
            path,
            body,
            retry,
        })
    }
}

impl GraphClient {
    /// Sends one write on its own, with the client's retry policy for its kind.
    pub async fn write(&self, write: &Write) -> Result<Written, GraphError> {
        let prepared = write.prepare()?;
        let resp = self.send_prepared(&prepared).await?;
        match write {
            Write::RequestAssignment { .. } => self
                .decode(prepared.operation, &resp)
                .map(|r| Written::Requested(Box::new(r))),
            _ => Ok(Written::Accepted),
        }
    }

    /// [`GraphClient::write`] with the `client-request-id` the caller chose (a UUID), sent on
    /// every attempt, so the object's status and event name the id an Entra administrator
    /// can find the write by.
    pub async fn write_traced(
        &self,
        write: &Write,
        client_request_id: &str,
    ) -> Result<Written, GraphError> {
        let prepared = write.prepare()?;
        let url = self.url(prepared.operation, &prepared.path, &[])?;
        let mut request = GraphRequest::post(
            prepared.operation,
            url,
            prepared.body.clone(),
            prepared.retry,
        );
        request
            .headers
            .push(("client-request-id", client_request_id.to_string()));
        let resp = self.send(request).await?;
        match write {
            Write::RequestAssignment { .. } => self
                .decode(prepared.operation, &resp)
                .map(|r| Written::Requested(Box::new(r))),
            _ => Ok(Written::Accepted),
        }
    }

    async fn send_prepared(&self, p: &Prepared) -> Result<GraphResponse, GraphError> {
        let url = self.url(p.operation, &p.path, &[])?;
        self.send(GraphRequest::post(
            p.operation,
            url,
            p.body.clone(),
            p.retry,
        ))
        .await
    }

    /// Sends many writes coalesced into `$batch` requests of [`MAX_BATCH`], `concurrency`
    /// batches at a time; one result per write, in the order given.
    ///
    /// Throttled items are resent by [`GraphClient::batch`]. Afterwards an item is sent on
    /// its own, with the client's retry policy, when its kind allows a retry of how it
    /// failed (see the module doc): every `reprocess` the batch could not place or whose
    /// batch failed as a whole, and an `adminAdd` only when the service certainly did not
    /// act on it. Any other failure is that item's result, typed as a direct call's.
    pub async fn write_many(
        &self,
        writes: &[Write],
        concurrency: usize,
    ) -> Vec<Result<Written, GraphError>> {
        let traced: Vec<(Write, String)> = writes
            .iter()
            .map(|w| (w.clone(), uuid::Uuid::new_v4().to_string()))
            .collect();
        self.write_many_traced(&traced, concurrency).await
    }

    /// [`GraphClient::write_many`] with the `client-request-id` of each write chosen by the
    /// caller (sent as the item's own header inside the `$batch`, and on the write itself
    /// when it is resent alone), so the object's status can name it before it is sent.
    pub async fn write_many_traced(
        &self,
        writes: &[(Write, String)],
        concurrency: usize,
    ) -> Vec<Result<Written, GraphError>> {
        use futures::StreamExt;
        // Owned chunks: the futures must not borrow `writes` (the controller's reconcile
        // futures have to be `Send` for any lifetime).
        let chunks: Vec<Vec<(Write, String)>> = writes
            .chunks(MAX_BATCH)
            .map(<[(Write, String)]>::to_vec)
            .collect();
        let results: Vec<Vec<Result<Written, GraphError>>> = futures::stream::iter(chunks)
            .map(|chunk| self.write_chunk(chunk))
            .buffered(concurrency.max(1))
            .collect()
            .await;
        results.into_iter().flatten().collect()
    }

    /// One `$batch` of writes (see [`GraphClient::write_many`]).
    async fn write_chunk(&self, chunk: Vec<(Write, String)>) -> Vec<Result<Written, GraphError>> {
        let prepared: Vec<Result<Prepared, GraphError>> =
            chunk.iter().map(|(w, _)| w.prepare()).collect();
        let items: Vec<BatchItem> = prepared
            .iter()
            .zip(&chunk)
            .enumerate()
            .filter_map(|(i, (p, (_, trace)))| {
                let p = p.as_ref().ok()?;
                Some(BatchItem {
                    body: p.body.clone(),
                    headers: vec![("client-request-id".to_string(), trace.clone())],
                    ..BatchItem::post(i.to_string(), p.path.clone())
                })
            })
            .collect();
        let batch = if items.is_empty() {
            Ok(Vec::new())
        } else {
            self.batch(&items).await
        };
        let mut answers = match batch {
            Ok(answers) => answers.into_iter(),
            Err(e) => {
                tracing::warn!(error = %e, "a batch of writes failed; sending the items that may be resent one by one");
                let mut out = Vec::with_capacity(chunk.len());
                for ((write, trace), p) in chunk.iter().zip(prepared) {
                    out.push(match p {
                        Err(invalid) => Err(invalid),
                        Ok(p) if p.retry == RetryMode::Idempotent || not_acted_on(&e) => {
                            self.write_traced(write, trace).await
                        }
                        Ok(_) => Err(e.clone()),
                    });
                }
                return out;
            }
        };
        let mut out = Vec::with_capacity(chunk.len());
        for ((write, trace), p) in chunk.iter().zip(prepared) {
            let p = match p {
                Ok(p) => p,
                Err(invalid) => {
                    out.push(Err(invalid));
                    continue;
                }
            };
            out.push(match answers.next() {
                Some(r) if resend_alone(&r, p.retry) => self.write_traced(write, trace).await,
                Some(r) => written(write, r, p.operation),
                None => Err(GraphError::Decode {
                    operation: p.operation,
                    message: "batch response lacks an item".into(),
                    request_id: None,
                }),
            });
        }
        out
    }

    /// Reprocesses many delivered assignments coalesced into `$batch` requests (see
    /// [`GraphClient::write_many`]); one result per id, in order.
    /// Each id comes with the `client-request-id` its write carries.
    pub async fn reprocess_assignments(
        &self,
        ids: &[(String, String)],
        concurrency: usize,
    ) -> Vec<Result<(), GraphError>> {
        let writes: Vec<(Write, String)> = ids
            .iter()
            .map(|(id, trace)| {
                (
                    Write::ReprocessAssignment {
                        assignment_id: id.clone(),
                    },
                    trace.clone(),
                )
            })
            .collect();
        self.write_many_traced(&writes, concurrency)
            .await
            .into_iter()
            .map(|r| r.map(|_| ()))
            .collect()
    }

    /// Creates an `adminAdd` request for `target_object_id` under `policy_id` (201).
    /// Retried only when the server certainly did not act (see [`RetryMode::NonIdempotent`]).
    pub async fn request_assignment(
        &self,
        access_package_id: &str,
        policy_id: &str,
        target_object_id: &str,
    ) -> Result<AssignmentRequest, GraphError> {
        let write = Write::RequestAssignment {
            access_package_id: access_package_id.to_string(),
            policy_id: policy_id.to_string(),
            target_object_id: target_object_id.to_string(),
        };
        let prepared = write.prepare()?;
        let resp = self.send_prepared(&prepared).await?;
        self.decode(prepared.operation, &resp)
    }

    /// Creates an `adminRemove` request for an assignment (201). Note: Graph emails
    /// the user.
    pub async fn request_removal(
        &self,
        assignment_id: &str,
    ) -> Result<AssignmentRequest, GraphError> {
        const OP: &str = "request_removal";
        if assignment_id.trim().is_empty() {
            return Err(GraphError::InvalidArgument {
                operation: OP,
                message: "assignment id is empty".to_string(),
            });
        }
        let prepared = Prepared {
            operation: OP,
            path: format!("{EM}/assignmentRequests"),
            body: Some(json!({"requestType": "adminRemove", "assignment": {"id": assignment_id}})),
            retry: RetryMode::NonIdempotent,
        };
        let resp = self.send_prepared(&prepared).await?;
        self.decode(OP, &resp)
    }

    /// Asks entitlement management to re-apply a delivered assignment (202).
    /// Retried like a read: a repeated reprocess converges on the same state.
    pub async fn reprocess_assignment(&self, id: &str) -> Result<(), GraphError> {
        self.write(&Write::ReprocessAssignment {
            assignment_id: id.to_string(),
        })
        .await
        .map(|_| ())
    }

    /// Reprocesses a failed or partially delivered request (202).
    pub async fn reprocess_request(&self, id: &str) -> Result<(), GraphError> {
        self.write(&Write::ReprocessRequest {
            request_id: id.to_string(),
        })
        .await
        .map(|_| ())
    }
}

/// Whether a batch item's answer calls for sending it again on its own: the same rule a
/// direct call's retry follows for its kind.
fn resend_alone(answer: &BatchResult, retry: RetryMode) -> bool {
    retryable_status(
        answer.status,
        answer.headers.contains_key("retry-after"),
        retry,
    )
}

/// Whether a `$batch` that failed as a whole certainly left its items unprocessed, so even
/// an `adminAdd` among them may be sent again: the service refused the batch itself
/// (4xx, a throttle, a 503 that said when to come back) or nothing was sent at all (no
/// token, bad configuration). A timeout, a 5xx or a garbled answer may hide work done.
fn not_acted_on(e: &GraphError) -> bool {
    match e {
        GraphError::Config { .. }
        | GraphError::Credential { .. }
        | GraphError::Auth(_)
        | GraphError::Unauthorized { .. }
        | GraphError::Forbidden { .. }
        | GraphError::NotFound { .. }
        | GraphError::BadRequest { .. }
        | GraphError::Throttled { .. }
        | GraphError::InvalidArgument { .. } => true,
        GraphError::Server {
            status: 503,
            retry_after: Some(_),
            ..
        } => true,
        GraphError::Server { .. } | GraphError::Transport { .. } | GraphError::Decode { .. } => {
            false
        }
    }
}

/// A batch item's answer as the typed result a direct call gives.
fn written(
    write: &Write,
    answer: BatchResult,
    operation: &'static str,
) -> Result<Written, GraphError> {
    match write {
        Write::RequestAssignment { .. } => answer
            .into_result::<AssignmentRequest>(operation)
            .map(|r| Written::Requested(Box::new(r))),
        // A 202 has no body; the answer's `null` decodes as a unit value.
        _ => answer
            .into_result::<serde_json::Value>(operation)
            .map(|_| Written::Accepted),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, retry_after: bool) -> BatchResult {
        let mut headers = std::collections::BTreeMap::new();
        if retry_after {
            headers.insert("retry-after".to_string(), "1".to_string());
        }
        BatchResult {
            id: "0".into(),
            status,
            headers,
            body: serde_json::Value::Null,
        }
    }

    #[test]
    fn an_uncertain_create_is_never_resent_but_a_reprocess_is() {
        for (status, ra, create, reprocess) in [
            (429, false, true, true),
            (503, true, true, true),
            (503, false, false, true),
            (504, false, false, true),
            (500, false, false, false),
            (400, false, false, false),
            (202, false, false, false),
        ] {
            assert_eq!(
                resend_alone(&answer(status, ra), RetryMode::NonIdempotent),
                create,
                "create, {status} retry-after={ra}"
            );
            assert_eq!(
                resend_alone(&answer(status, ra), RetryMode::Idempotent),
                reprocess,
                "reprocess, {status} retry-after={ra}"
            );
        }
    }

    #[test]
    fn a_batch_lost_in_transit_may_have_created_its_requests() {
        let timeout = GraphError::Transport {
            operation: "batch",
            target: "graph".into(),
            message: "timed out".into(),
            timeout: true,
        };
        assert!(!not_acted_on(&timeout));
        let refused = GraphError::BadRequest {
            operation: "batch",
            status: 400,
            code: "BadRequest".into(),
            message: "no".into(),
            request_id: None,
        };
        assert!(not_acted_on(&refused));
        let declined = GraphError::Server {
            operation: "batch",
            status: 503,
            code: String::new(),
            message: String::new(),
            retry_after: Some(std::time::Duration::from_secs(1)),
            request_id: None,
        };
        assert!(not_acted_on(&declined));
    }

    #[test]
    fn bad_ids_are_refused_before_sending() {
        let empty = Write::RequestAssignment {
            access_package_id: "p".into(),
            policy_id: " ".into(),
            target_object_id: "u".into(),
        };
        let Err(GraphError::InvalidArgument { message, .. }) = empty.prepare() else {
            panic!("an empty policy id is refused");
        };
        assert_eq!(message, "policy id is empty");
        let dotdot = Write::ReprocessAssignment {
            assignment_id: "..".into(),
        };
        assert!(matches!(
            dotdot.prepare(),
            Err(GraphError::InvalidArgument { .. })
        ));
    }
}
