//! Account-state reads made before a grant (docs/graph.md "Account state"): whether each
//! target still exists and is enabled, and what Identity Protection says about it. Both go
//! out as `$batch` envelopes of [`MAX_BATCH`] GETs, sent together (one user's account is a
//! plain GET); the client's concurrency limit bounds how many are in flight.

use futures::future::join_all;

use super::client::{BatchItem, GraphClient, MAX_BATCH};
use super::error::GraphError;
use super::models::{Page, RiskyUser, UserAccount};
use super::odata::{segment, string_literal};

/// What is asked of each user: `accountEnabled` is not among Graph's default properties.
const ACCOUNT_SELECT: &str = "id,accountEnabled,userPrincipalName,displayName";

/// One id's answer in [`GraphClient::user_accounts`]: the account, `None` when Graph
/// answers 404 (the user was deleted), or why it could not be read.
pub type AccountRead = Result<Option<UserAccount>, GraphError>;

impl GraphClient {
    /// The account state of each user id, in the order given: `Ok(None)` for a deleted
    /// user (404), a typed error per id for anything else (a 403 means the app lacks
    /// `User.Read.All`). When a whole envelope fails (transport, throttled beyond the retry
    /// limit), each of its ids carries that error. `Err` only for an id that cannot be a
    /// path segment, which is a caller bug, not a Graph answer.
    pub async fn user_accounts(
        &self,
        ids: &[String],
    ) -> Result<Vec<(String, AccountRead)>, GraphError> {
        const OP: &str = "get_user_account";
        // One user (the usual repair of one object): a plain GET, no envelope around it.
        if let [id] = ids {
            let path = format!("/users/{}", segment(OP, id)?);
            let url = self.url(OP, &path, &[("$select", ACCOUNT_SELECT)])?;
            return Ok(vec![(id.clone(), self.get_optional(OP, url).await)]);
        }
        let mut urls = Vec::with_capacity(ids.len());
        for id in ids {
            let path = format!("/users/{}", segment(OP, id)?);
            urls.push(self.relative(OP, &path, &[("$select", ACCOUNT_SELECT)])?);
        }
        let answers = self.batched_gets(&urls).await;
        Ok(ids
            .iter()
            .cloned()
            .zip(answers)
            .map(|(id, answer)| {
                let read = answer.and_then(|r| match r.status {
                    404 => Ok(None),
                    _ => r.into_result::<UserAccount>(OP).map(Some),
                });
                (id, read)
            })
            .collect())
    }

    /// The users among `ids` that Identity Protection lists, whatever their risk (the
    /// caller decides what holds a grant). One `riskyUsers?$filter=id eq '...'` per id,
    /// the form Microsoft documents for one user's risk, batched; a user never assessed
    /// is simply absent. Any failed item fails the call (a 403: the app lacks
    /// `IdentityRiskyUser.Read.All` or the tenant lacks Entra ID P2), since a partial answer
    /// would read as "no risk" for the ids it missed.
    pub async fn risky_users(&self, ids: &[String]) -> Result<Vec<RiskyUser>, GraphError> {
        const OP: &str = "list_risky_users";
        let mut urls = Vec::with_capacity(ids.len());
        for id in ids {
            let filter = format!("id eq {}", string_literal(id));
            urls.push(self.relative(
                OP,
                "/identityProtection/riskyUsers",
                &[("$filter", &filter)],
            )?);
        }
        let mut found = Vec::new();
        for answer in self.batched_gets(&urls).await {
            let page: Page<RiskyUser> = answer?.into_result(OP)?;
            found.extend(page.value);
        }
        Ok(found)
    }

    /// A URL relative to the version root with its query encoded, for a [`BatchItem`].
    fn relative(
        &self,
        operation: &'static str,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<String, GraphError> {
        let url = self.url(operation, path, query)?;
        self.relative_url(url.as_str())
            .ok_or_else(|| GraphError::InvalidArgument {
                operation,
                message: format!("{url} is not under the Graph base URL"),
            })
    }

    /// GETs every URL through `$batch` envelopes of [`MAX_BATCH`], all sent at once (the
    /// client's concurrency limit bounds them); one answer per URL, in order. An envelope
    /// that fails as a whole gives its error to each of its URLs.
    async fn batched_gets(
        &self,
        urls: &[String],
    ) -> Vec<Result<super::client::BatchResult, GraphError>> {
        let envelopes = urls.chunks(MAX_BATCH).map(|chunk| async move {
            let items: Vec<BatchItem> = chunk
                .iter()
                .enumerate()
                .map(|(i, url)| BatchItem::get(i.to_string(), url.clone()))
                .collect();
            match self.batch(&items).await {
                Ok(results) => results.into_iter().map(Ok).collect::<Vec<_>>(),
                Err(e) => chunk.iter().map(|_| Err(e.clone())).collect(),
            }
        });
        join_all(envelopes).await.into_iter().flatten().collect()
    }
}
