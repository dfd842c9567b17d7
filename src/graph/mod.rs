//! The Microsoft Graph client: the only module that speaks HTTP to Graph.
//!
//! - [`config`]: `--tenant-id`, credentials, Graph/authority URLs ([`GraphArgs`] →
//!   [`GraphConfig`]).
//! - [`auth`]: client-credentials tokens (secret or workload-identity assertion), cached and
//!   refreshed single-flight.
//! - [`client`]: [`GraphClient`], typed calls on a retrying, throttling-aware core.
//! - [`error`]: [`GraphError`], one variant per failure kind, each usable as a metric label.
//! - [`models`]: the wire types.

mod auth;
pub mod client;
pub mod config;
pub mod error;
mod http;
pub mod models;
pub mod odata;
pub mod retry;

pub use client::{
    BatchItem, BatchResult, GraphClient, GraphRequest, GraphResponse, GroupMembershipDelta,
    MemberChanges,
};
pub use config::{Credential, GraphArgs, GraphConfig, Secret};
pub use error::{GraphError, TokenFailure};
pub use http::{OperationStats, RetryMode};
