//! Redeliver keeps Microsoft Entra ID access package assignments truly delivered.
//!
//! Module map (one concern each; docs/architecture.md has the data flow and where each
//! decision lives):
//! - [`api`]: the custom resource types (`AccessPackageAssignment`, `AccessPackageGuard`)
//!   and their CRDs (`redeliver crd`).
//! - [`engine`]: pure drift/plan/status logic and the repair ledger; no I/O.
//! - [`graph`]: the only code that speaks HTTP to Microsoft Graph (docs/graph.md).
//! - [`observe`]: reads Graph once per resource and hands the engine its observations;
//!   group delta tracking.
//! - [`controller`]: the Kubernetes operator around the engine (`redeliver controller`).
//! - [`audit`]: the engine driven from YAML files (`redeliver audit`).
//! - [`cli`]: the exit codes, usage errors and error printing both programs share.
//!
//! The Graph simulator (`redeliver sim`, docs/simulator.md) is the `redeliver-sim` crate and
//! the benchmark harness the `redeliver-bench` crate: neither is part of the operator.

#![forbid(unsafe_code)]

pub mod api;
pub mod audit;
pub mod cli;
pub mod controller;
pub mod domain;
pub mod engine;
pub mod graph;
pub mod observe;
pub mod repair;
