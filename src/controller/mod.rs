//! `redeliver controller`: the Kubernetes glue around the engine. Watches
//! `AccessPackageAssignment` and `AccessPackageGuard`, observes Graph, lets the engine decide,
//! performs the decided action, writes status with server-side apply and records events.
//! Leader election, metrics and health live here too.

pub mod error;
pub mod limits;
pub mod metrics;
pub mod server;
pub mod watch;

pub use error::Error;
