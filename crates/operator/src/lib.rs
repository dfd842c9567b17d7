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
//! - [`repair`]: the one driver of the repair transaction, shared by the controller and the
//!   audit.
//!
//! Outside this library, so that what the controller links carries no command-line
//! dependency: the command-line edge (exit codes, clap argument structs converting into
//! [`graph::GraphSettings`] and [`controller::ControllerOptions`]) is the `redeliver-cli`
//! crate, `redeliver audit` (declaration files, reports, progress) the `redeliver-audit`
//! crate. The Graph simulator (`redeliver sim`, docs/simulator.md) is the `redeliver-sim`
//! crate, the fake Kubernetes API server of the tests `redeliver-fake-kube`, and the
//! benchmark harness `redeliver-bench`: none is part of the operator.

#![forbid(unsafe_code)]

pub mod api;
pub mod controller;
pub mod domain;
pub mod engine;
pub mod graph;
pub mod observe;
pub mod repair;
