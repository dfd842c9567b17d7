//! Rate and retry limits kept in the controller's context: a per-object exponential backoff
//! and a global token bucket for reprocess calls.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

// Tokio's clock, so tests can watch the bucket refill without waiting for it.
use tokio::time::Instant;

/// Per-object exponential backoff: doubles on each consecutive failure up to a cap, and is
/// forgotten on success, or once it has not failed for twice the cap (a failing object
/// fails again within one cap, so an entry that old belongs to an object deleted while
/// failing: the map does not grow with deleted objects).
#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: Mutex<Failures>,
}

#[derive(Debug, Default)]
struct Failures {
    by_key: HashMap<String, (u32, Instant)>,
    pruned: Option<Instant>,
}

impl Backoff {
    /// A backoff starting at `base` and never exceeding `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap: cap.max(base),
            failures: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Failures> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a failure for `key` and returns how long to wait before the next attempt.
    pub fn failed(&self, key: &str) -> Duration {
        let now = Instant::now();
        let stale = self.cap.saturating_mul(2);
        let mut failures = self.lock();
        // At most once per cap: one pass over the map, amortised over every failure since.
        if failures
            .pruned
            .is_none_or(|p| now.duration_since(p) >= self.cap)
        {
            failures
                .by_key
                .retain(|_, (_, last)| now.duration_since(*last) < stale);
            failures.pruned = Some(now);
        }
        let (n, last) = failures.by_key.entry(key.to_string()).or_insert((0, now));
        let delay = self
            .base
            .checked_mul(1u32 << (*n).min(20))
            .unwrap_or(self.cap)
            .min(self.cap);
        *n = n.saturating_add(1);
        *last = now;
        delay
    }

    /// Forgets the failures of `key`. Called after every successful reconcile (see
    /// `context::reconcile_frame`), so the next failure starts from `base` again.
    pub fn reset(&self, key: &str) {
        self.lock().by_key.remove(key);
    }

    /// Consecutive failures recorded for `key`.
    pub fn failures(&self, key: &str) -> u32 {
        self.lock().by_key.get(key).map_or(0, |(n, _)| *n)
    }

    /// Objects with failures remembered.
    pub fn len(&self) -> usize {
        self.lock().by_key.len()
    }

    /// True when no failure is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A token bucket: at most `per_minute` tokens a minute on average, bursts up to
/// `per_minute`. Shared by every object, so a big outside change cannot turn into a flood of
/// reprocess calls.
#[derive(Debug)]
pub struct TokenBucket {
    capacity: f64,
    per_second: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// A full bucket refilled at `per_minute` tokens a minute. Zero disables every call.
    pub fn per_minute(per_minute: u32) -> Self {
        let capacity = f64::from(per_minute);
        Self {
            capacity,
            per_second: capacity / 60.0,
            state: Mutex::new((capacity, Instant::now())),
        }
    }

    /// True when the rate is zero: no call is ever allowed.
    pub fn is_disabled(&self) -> bool {
        self.capacity < 1.0
    }

    /// The rate it was made with, per minute (for messages).
    pub fn rate_per_minute(&self) -> u32 {
        // The capacity is the per-minute rate it was built from, a whole number.
        self.capacity as u32
    }

    /// Whole tokens available now (nothing is taken).
    pub fn available(&self) -> usize {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = *state;
        let elapsed = Instant::now().saturating_duration_since(last).as_secs_f64();
        // Truncation is the intent: whole tokens only.
        (tokens + elapsed * self.per_second)
            .min(self.capacity)
            .floor() as usize
    }

    /// Takes one token, or says how long until one is available.
    pub fn try_acquire(&self) -> Result<(), Duration> {
        self.try_acquire_at(Instant::now())
    }

    fn try_acquire_at(&self, now: Instant) -> Result<(), Duration> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = *state;
        let elapsed = now.saturating_duration_since(last).as_secs_f64();
        let tokens = (tokens + elapsed * self.per_second).min(self.capacity);
        if tokens >= 1.0 {
            *state = (tokens - 1.0, now);
            Ok(())
        } else {
            *state = (tokens, now);
            if self.per_second <= 0.0 {
                // Disabled: say "a long time" rather than dividing by zero.
                return Err(Duration::from_secs(3600));
            }
            Err(Duration::from_secs_f64((1.0 - tokens) / self.per_second))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_cap_and_resets() {
        let b = Backoff::new(Duration::from_secs(5), Duration::from_secs(60));
        let delays: Vec<u64> = (0..6).map(|_| b.failed("ns/a").as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 60, 60]);
        assert_eq!(
            b.failed("ns/b").as_secs(),
            5,
            "objects back off independently"
        );
        assert_eq!(b.failures("ns/a"), 6);
        b.reset("ns/a");
        assert_eq!(b.failures("ns/a"), 0);
        assert_eq!(b.failed("ns/a").as_secs(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_deleted_objects_backoff_is_forgotten_after_twice_the_cap() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
        b.failed("gone");
        b.failed("failing");
        for _ in 0..4 {
            tokio::time::advance(Duration::from_secs(9)).await;
            b.failed("failing");
        }
        assert_eq!(b.failures("gone"), 0, "36 s without a failure: forgotten");
        assert_eq!(b.failures("failing"), 5, "still failing: kept");
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn backoff_survives_many_failures() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
        for _ in 0..100 {
            assert!(b.failed("x") <= Duration::from_secs(300));
        }
    }

    #[test]
    fn bucket_allows_burst_then_refills() {
        let bucket = TokenBucket::per_minute(3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(bucket.try_acquire_at(t0), Ok(()));
        }
        let wait = bucket.try_acquire_at(t0).unwrap_err();
        assert!(
            wait > Duration::from_secs(19) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert_eq!(bucket.try_acquire_at(t0 + Duration::from_secs(20)), Ok(()));
        assert!(bucket.try_acquire_at(t0 + Duration::from_secs(21)).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn bucket_refills_on_the_tokio_clock() {
        let bucket = TokenBucket::per_minute(6);
        for _ in 0..6 {
            assert_eq!(bucket.try_acquire(), Ok(()));
        }
        assert_eq!(bucket.available(), 0);
        let wait = bucket.try_acquire().unwrap_err();
        assert!(
            wait > Duration::from_millis(9_999) && wait <= Duration::from_secs(10),
            "{wait:?}"
        );
        tokio::time::advance(Duration::from_millis(9_900)).await;
        assert_eq!(bucket.available(), 0, "not a whole token yet");
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(bucket.available(), 1);
        assert_eq!(bucket.try_acquire(), Ok(()));
        // A long quiet spell refills to the burst size, no further.
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(bucket.available(), 6);
    }

    #[test]
    fn zero_rate_disables() {
        let bucket = TokenBucket::per_minute(0);
        assert!(bucket.is_disabled());
        assert!(bucket.try_acquire().is_err());
        assert!(!TokenBucket::per_minute(1).is_disabled());
    }
}
