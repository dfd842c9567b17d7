//! What the suites that run the controllers share.

use std::time::Duration;

use redeliver::controller::Settings;
use redeliver::controller::metrics::{Metrics, ReconcileLabels};

/// The controllers' debounce in tests. In production a reconcile request waits a second
/// for more of the same object ([`redeliver::controller::context::DEBOUNCE`]), which would
/// put a second of wall clock in front of every step a test waits for; a few tens of
/// milliseconds still coalesce the bursts one change causes (an object's write and the
/// watch events it triggers arrive within a few milliseconds on loopback).
pub const DEBOUNCE: Duration = Duration::from_millis(50);

/// The operator's default settings, with the tests' [`DEBOUNCE`].
pub fn settings() -> Settings {
    Settings {
        debounce: DEBOUNCE,
        ..Settings::default()
    }
}

/// Reconciles of `kind` (`AccessPackageAssignment`, `AccessPackageGuard`) that ended well,
/// by the controller's own count (`redeliver_reconciles_total{result="ok"}`): what a test
/// waits on for "the controller has looked at it again" instead of sleeping.
pub fn reconciled(metrics: &Metrics, kind: &'static str) -> u64 {
    metrics
        .reconciles
        .get_or_create(&ReconcileLabels { kind, result: "ok" })
        .get()
}
