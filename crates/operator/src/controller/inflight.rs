//! Reconciles in flight in this replica, by object: what a shard checks before it hands an
//! object over to another (`controller::sharding`), kept by every reconcile
//! (`context::reconcile_frame`).

use std::collections::HashMap;
use std::sync::Mutex;

/// Reconciles in flight in this replica, by object key: a replica hands an object over to
/// another shard only when none is.
#[derive(Debug, Default)]
pub struct InFlight(Mutex<HashMap<String, Count>>);

/// Reconciles of one object in flight: all of them, and those past the ownership check.
#[derive(Debug, Default, Clone, Copy)]
struct Count {
    entered: usize,
    acting: usize,
}

/// Removes its reconcile from [`InFlight`] when dropped.
#[derive(Debug)]
pub struct InFlightGuard<'a> {
    set: &'a InFlight,
    key: String,
    acting: bool,
}

impl InFlight {
    /// Registers a reconcile of `key` until the guard is dropped.
    pub fn enter(&self, key: &str) -> InFlightGuard<'_> {
        self.lock().entry(key.to_string()).or_default().entered += 1;
        InFlightGuard {
            set: self,
            key: key.to_string(),
            acting: false,
        }
    }

    /// Whether no reconcile of `key` is in flight.
    pub fn is_idle(&self, key: &str) -> bool {
        !self.lock().contains_key(key)
    }

    /// The objects this replica is acting on now (reconciles past the ownership check).
    pub fn acting(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, c)| c.acting > 0)
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Count>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl InFlightGuard<'_> {
    /// Marks the reconcile as acting: it passed the ownership check.
    pub fn act(&mut self) {
        if !self.acting {
            self.acting = true;
            if let Some(c) = self.set.lock().get_mut(&self.key) {
                c.acting += 1;
            }
        }
    }
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        let mut set = self.set.lock();
        if let Some(c) = set.get_mut(&self.key) {
            c.entered -= 1;
            if self.acting {
                c.acting -= 1;
            }
            if c.entered == 0 {
                set.remove(&self.key);
            }
        }
    }
}
