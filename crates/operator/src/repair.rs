//! The one driver of the repair transaction ([`crate::engine::transaction`]): it performs
//! what the transaction decides — the budget gate, the status written ahead, the Graph
//! writes, the final status — through an [`Effects`] implementation. The controller's
//! assignment reconciler and guard sweep run every plan through [`run`]; `redeliver audit`,
//! which sends the writes of a whole pass in shared `$batch` requests, takes the same
//! transaction through its steps itself ([`outcome_of`] turns Graph's answers into the
//! transaction's outcomes for both).

use std::time::Duration;

use jiff::Timestamp;

use crate::engine::transaction::{LedgerCell, Repair, Transaction, WriteOutcome};
use crate::graph::error::GraphError;
use crate::graph::{Write, Written};

/// The I/O a transaction needs, for one object.
pub trait Effects<S> {
    /// What a failed status write or a write that failed in transit becomes.
    type Error;
    /// Whether `write` may be sent now (the connection's reprocess budget), or how long
    /// until it may.
    fn admit(&mut self, write: &Write) -> Result<(), Duration>;
    /// Stores `status` (ahead of the writes, or at the end).
    fn store(&mut self, status: &S) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// Sends `writes`, each with its client-request-id; one result per write, in order.
    fn send(
        &mut self,
        writes: &[(Write, String)],
    ) -> impl Future<Output = Vec<Result<Written, GraphError>>> + Send;
    /// The error to return for a write that failed in transit (the object is tried again
    /// with backoff, or at Graph's `Retry-After`).
    fn failed(&self, err: GraphError) -> Self::Error;
}

/// What a run left to the caller.
#[derive(Debug)]
pub struct Ran<P> {
    /// The plan as it turned out (statuses and events say what really happened).
    pub plan: P,
    /// The budget held some writes back: when it has a slot.
    pub postponed: Option<Duration>,
    /// Graph asked to come back (`Retry-After`) for writes it did not take.
    pub retry_after: Option<Duration>,
}

/// The transaction's outcome of one Graph answer: accepted, refused for good (403, another
/// 4xx: the attempt stays counted), or not sent (throttled, 5xx, transport).
pub fn outcome_of(result: &Result<Written, GraphError>) -> WriteOutcome {
    match result {
        Ok(Written::Requested(request)) => WriteOutcome::Accepted {
            request_id: Some(request.id.clone()),
        },
        Ok(Written::Accepted) => WriteOutcome::Accepted { request_id: None },
        Err(err) => match crate::observe::action_failure(err) {
            Some(failure) => WriteOutcome::Refused(failure),
            None => WriteOutcome::NotSent {
                retry_after: err.retry_after(),
            },
        },
    }
}

/// Runs `tx` to its end: admit, write ahead, send, record, write the final status. A plan
/// that puts its status back on a failure in transit (a declared assignment) returns that
/// failure as an error once the status is back; a sweep reports what was not sent in its
/// status and returns normally. An error storing a status ends the run: claims not yet
/// resolved roll back, nothing further is sent.
pub async fn run<P, L, E>(
    effects: &mut E,
    mut tx: Transaction<P, L>,
    per_minute: u32,
    retry: Duration,
    now: Timestamp,
) -> Result<Ran<P>, E::Error>
where
    P: Repair,
    L: LedgerCell,
    E: Effects<P::Status>,
{
    tx.admit(|w| effects.admit(w), per_minute, now);
    if let Some(ahead) = tx.write_ahead() {
        // Written before it is sent, so a restart never sends it twice.
        effects.store(ahead).await?;
        tx.written_ahead();
    }
    let results = if tx.writes().is_empty() {
        Vec::new()
    } else {
        effects.send(tx.writes()).await
    };
    let outcomes: Vec<WriteOutcome> = results.iter().map(outcome_of).collect();
    let retry_after = outcomes
        .iter()
        .filter_map(|o| match o {
            WriteOutcome::NotSent { retry_after } => *retry_after,
            _ => None,
        })
        .max();
    let first_failure = results
        .into_iter()
        .zip(&outcomes)
        .find_map(|(r, o)| matches!(o, WriteOutcome::NotSent { .. }).then(|| r.err()))
        .flatten();
    tx.complete(outcomes, retry, now);
    if let Some(end) = tx.final_status() {
        let stored = effects.store(end).await;
        if tx.failed() && tx.plan().puts_back() {
            if stored.is_err() {
                tracing::warn!(
                    "could not put the status back after a failed write; the next one waits one cooldown"
                );
            }
        } else {
            stored?;
            tx.written();
        }
    }
    if tx.failed()
        && tx.plan().puts_back()
        && let Some(err) = first_failure
    {
        return Err(effects.failed(err));
    }
    Ok(Ran {
        postponed: tx.postponed(),
        retry_after,
        plan: tx.into_plan(),
    })
}
