//! Redeliver keeps Microsoft Entra ID access package assignments truly delivered.
//!
//! Module map (one concern each, see `docs/design.md` in the shared docs):
//! - [`api`]: the custom resource types (`AccessPackageAssignment`, `AccessPackageGuard`).
//! - [`engine`]: pure drift/plan/status logic; no I/O.
//! - [`graph`]: the only code that speaks HTTP to Microsoft Graph.
//! - [`observe`]: reads Graph once per resource and hands the engine its observations.
//! - [`audit`]: the engine driven from YAML files (`redeliver audit`).
//! - [`sim`]: a Graph + Entra token endpoint simulator (`redeliver sim`).

pub mod api;
pub mod audit;
pub mod bench;
pub mod controller;
pub mod engine;
pub mod graph;
pub mod observe;
pub mod sim;
