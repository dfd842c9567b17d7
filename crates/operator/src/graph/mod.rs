//! The Microsoft Graph client: the only module that speaks HTTP to Graph.
//!
//! - [`config`]: `--tenant-id`, credentials, Graph/authority URLs ([`GraphSettings`] →
//!   [`GraphConfig`]). The client secret comes only from `AZURE_CLIENT_SECRET` or a file.
//! - `auth`: client-credentials tokens (secret or workload-identity assertion, both files
//!   re-read per token request), cached until 10 % of the lifetime (at most 5 min) before
//!   expiry, refreshed single-flight; a 401 drops the cached token and retries once.
//! - [`client`]: [`GraphClient`], typed calls (each described in docs/graph.md) on a generic core
//!   (`send`, `get_json`, `get_optional`, `get_page`, `get_paged`, `batch`).
//! - `http`: bounded concurrency, `client-request-id`, retries. 429/503/504 and transport
//!   failures are retried up to `--max-retries`, honouring `Retry-After` (fractional seconds
//!   or HTTP-date) exactly and for every call in the same throttling scope; otherwise
//!   capped exponential backoff with jitter. Creating assignment requests is retried only
//!   when the server certainly did not act (see [`RetryMode`]).
//! - [`accounts`]: account-state reads before a grant (`accountEnabled`, Identity
//!   Protection's risky users), batched.
//! - `writes`: assignment requests and `reprocess` actions, alone or coalesced into
//!   `$batch` requests ([`GraphClient::write_many`]) with the same retry rules as direct calls.
//! - [`error`]: [`GraphError`], one variant per failure kind; [`GraphError::kind`] is a
//!   metric label.
//! - [`odata`]: path segment and `$filter` literal escaping.
//! - [`retry`]: `Retry-After` parsing and the retry policy shared by direct calls and `$batch`.
//! - [`models`]: the wire types.

pub mod accounts;
mod auth;
pub mod client;
pub mod config;
pub mod connection;
pub mod drift_report;
pub mod error;
mod http;
/// The wire shapes of what Graph returns, defined with the domain (`crate::domain`).
pub use crate::domain::models;
pub mod odata;
pub mod retry;
mod writes;

pub use client::{
    BatchItem, BatchResult, GraphClient, GraphRequest, GraphResponse, GroupMembershipDelta,
    MemberChanges,
};
pub use config::{Credential, Endpoint, GraphConfig, GraphSettings, Secret};
pub use error::{GraphError, TokenFailure};
pub use http::{OperationStats, RetryMode};
pub use writes::{Write, Written};
