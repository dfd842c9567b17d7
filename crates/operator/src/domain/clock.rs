//! Wall-clock time as a value: the controller's and the observer's only source of it, so
//! tests can put them at any moment. Monotonic waits run on tokio's clock instead.

use std::sync::Mutex;

use jiff::Timestamp;

/// The source of wall-clock time: every time the controller or the observer hands the
/// engine, writes in a status or compares with one comes from here (monotonic waits run on
/// tokio's clock, which tests can pause). Tests put the controller at any moment with
/// [`FixedClock`] or [`OffsetClock`].
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now.
    fn now(&self) -> Timestamp;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that stands still at a given time until moved (tests).
#[derive(Debug)]
pub struct FixedClock(Mutex<Timestamp>);

impl FixedClock {
    /// A clock at `at`.
    pub fn at(at: Timestamp) -> Self {
        Self(Mutex::new(at))
    }

    /// Moves it by `by`.
    pub fn advance(&self, by: jiff::SignedDuration) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *t = t.checked_add(by).unwrap_or(*t);
    }
}

impl Clock for FixedClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The system clock shifted by an offset (tests: "an hour from now", as the controller
/// sees it, while everything else runs at its pace).
#[derive(Debug)]
pub struct OffsetClock(pub jiff::SignedDuration);

impl Clock for OffsetClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
            .checked_add(self.0)
            .unwrap_or_else(|_| Timestamp::now())
    }
}
