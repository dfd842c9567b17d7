//! Retry timing: `Retry-After` parsing and the retry policy (capped exponential backoff with
//! jitter, the server's `Retry-After` first).

use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Longest `Retry-After` we represent; anything beyond is clamped (a day is already "give up
/// for now").
const MAX_RETRY_AFTER: Duration = Duration::from_secs(86_400);

/// Parses a `Retry-After` header value: delay-seconds, possibly fractional (Graph sends
/// e.g. `2.128`), or an HTTP-date. Fractions are parsed exactly and rounded *up* to the
/// nanosecond so the wait is never shorter than the server asked. A date in the past gives
/// zero. Unparseable values give `None` (the caller falls back to backoff).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if v.is_empty() {
        return None;
    }
    if v.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return parse_decimal_seconds(v).map(|d| d.min(MAX_RETRY_AFTER));
    }
    parse_http_date(v, now)
}

fn parse_decimal_seconds(v: &str) -> Option<Duration> {
    let (int, frac) = match v.split_once('.') {
        Some((i, f)) => (i, f),
        None => (v, ""),
    };
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
        return None;
    }
    let secs: u64 = if int.is_empty() {
        0
    } else {
        // Absurdly long values clamp rather than fail: the server clearly wants us gone.
        int.parse().unwrap_or(MAX_RETRY_AFTER.as_secs())
    };
    let mut nanos: u64 = 0;
    for (i, b) in frac.bytes().enumerate() {
        let digit = u64::from(b - b'0');
        if i < 9 {
            nanos = nanos * 10 + digit;
        } else if digit > 0 {
            // Digits beyond nanosecond precision: round up, never down.
            nanos += 1;
            break;
        }
    }
    let places = frac.len().min(9) as u32;
    nanos *= 10u64.pow(9 - places);
    let extra_secs = nanos / 1_000_000_000;
    Some(Duration::new(
        secs.saturating_add(extra_secs),
        (nanos % 1_000_000_000) as u32,
    ))
}

fn parse_http_date(v: &str, now: SystemTime) -> Option<Duration> {
    // All three forms RFC 9110 §5.6.7 requires a recipient to accept: IMF-fixdate, the
    // obsolete RFC 850 form and asctime.
    let target = httpdate::parse_http_date(v).ok()?;
    Some(
        target
            .duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

/// How a Graph client retries: how many times, how long it waits in between, and which
/// server-given waits it still sleeps through. One policy serves direct calls and the
/// resending of throttled `$batch` items.
///
/// Without a `Retry-After`, retry number `n` (0-based) waits `d = min(cap, base * 2^n)`
/// jittered uniformly into `[d/2, d)` ("equal jitter"), so concurrent clients spread out
/// but never retry immediately. A `Retry-After` is waited exactly, never less.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    max_retries: u32,
    max_retry_after: Duration,
    cap: Duration,
    steps: ExponentialBuilder,
}

impl RetryPolicy {
    /// At most `max_retries` retries, backing off from `base` up to `cap`; a `Retry-After`
    /// longer than `max_retry_after` is handed back to the caller rather than slept through.
    pub fn new(max_retries: u32, base: Duration, cap: Duration, max_retry_after: Duration) -> Self {
        // backon's jitter adds up to one step on top of the step, so stepping through half
        // the delays gives [d/2, d). Its first step is not capped, hence min(base, cap).
        let steps = ExponentialBuilder::new()
            .with_min_delay(base.min(cap) / 2)
            .with_max_delay(cap / 2)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        Self {
            max_retries,
            max_retry_after,
            cap,
            steps,
        }
    }

    /// The same policy with a fixed jitter seed, for reproducible tests.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.steps = self.steps.with_jitter_seed(seed);
        self
    }

    /// The retries of one call, from the first.
    pub fn start(&self) -> Retries {
        Retries {
            left: self.max_retries,
            max_retry_after: self.max_retry_after,
            cap: self.cap,
            steps: self.steps.build(),
        }
    }

    /// Most retries of one call.
    pub fn max_retries(&self) -> u32 {
        self.max_retries
    }

    /// Longest `Retry-After` the client sleeps through.
    pub fn max_retry_after(&self) -> Duration {
        self.max_retry_after
    }
}

/// The retries left to one call (see [`RetryPolicy::start`]).
#[derive(Debug)]
pub struct Retries {
    left: u32,
    max_retry_after: Duration,
    cap: Duration,
    steps: ExponentialBackoff,
}

impl Retries {
    /// The wait before the next retry, given the server's `Retry-After`; `None` when there
    /// is no next retry: all are used up, or the server asked for longer than the client
    /// sleeps through.
    pub fn next_wait(&mut self, retry_after: Option<Duration>) -> Option<Duration> {
        if self.left == 0 || retry_after.is_some_and(|d| d > self.max_retry_after) {
            return None;
        }
        self.left -= 1;
        // A step is taken even when the server names the wait, so the backoff grows with
        // the retry number however the earlier retries were timed. The cap also absorbs
        // backon's f32 rounding, which can overshoot by a nanosecond.
        let step = self.steps.next().unwrap_or(self.cap).min(self.cap);
        Some(retry_after.unwrap_or(step))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    #[test]
    fn retry_after_seconds_and_fractions() {
        assert_eq!(parse_retry_after("5", now()), Some(Duration::from_secs(5)));
        assert_eq!(
            parse_retry_after("2.128", now()),
            Some(Duration::from_millis(2128))
        );
        assert_eq!(
            parse_retry_after(" 0.5 ", now()),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            parse_retry_after(".25", now()),
            Some(Duration::from_millis(250))
        );
        assert_eq!(parse_retry_after("1.", now()), Some(Duration::from_secs(1)));
        // Beyond nanosecond precision rounds up, never down.
        assert_eq!(
            parse_retry_after("0.0000000001", now()),
            Some(Duration::from_nanos(1))
        );
        assert_eq!(
            parse_retry_after("99999999999999999999999", now()),
            Some(MAX_RETRY_AFTER)
        );
        for bad in ["", "abc", "-1", "1.2.3", ".", "inf", "NaN", "1e3"] {
            assert_eq!(parse_retry_after(bad, now()), None, "{bad:?}");
        }
    }

    #[test]
    fn retry_after_http_date() {
        let now = SystemTime::from(jiff::Timestamp::from_second(784_111_767).unwrap());
        // Sun, 06 Nov 1994 08:49:37 GMT is 784111777.
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(10))
        );
        // The obsolete forms mean the same instant.
        for obsolete in ["Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994"] {
            assert_eq!(
                parse_retry_after(obsolete, now),
                Some(Duration::from_secs(10)),
                "{obsolete}"
            );
        }
        let later = now + Duration::from_secs(60);
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", later),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn backoff_stays_within_bounds() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(2);
        // backon steps in f32: allow a microsecond either side of the exact bounds.
        let slack = Duration::from_micros(1);
        for seed in 0..50 {
            let policy = RetryPolicy::new(40, base, cap, Duration::from_secs(60)).with_seed(seed);
            let mut retries = policy.start();
            for attempt in 0..40u32 {
                let d_full = base
                    .saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
                    .min(cap);
                let d = retries.next_wait(None).expect("retries left");
                assert!(
                    d + slack >= d_full / 2 && d <= d_full + slack,
                    "seed {seed}, attempt {attempt}: {d:?}"
                );
                assert!(d <= cap);
            }
            assert_eq!(retries.next_wait(None), None, "40 retries, no more");
        }
        let mut zero = RetryPolicy::new(3, Duration::ZERO, cap, cap).start();
        assert_eq!(zero.next_wait(None), Some(Duration::ZERO));
        // A base above the cap is held to the cap from the first retry.
        let mut capped = RetryPolicy::new(3, cap * 4, cap, cap).start();
        let d = capped.next_wait(None).unwrap();
        assert!(d >= cap / 2 && d <= cap, "{d:?}");
    }

    #[test]
    fn retry_after_wins_exactly_and_counts_as_a_retry() {
        let policy = RetryPolicy::new(
            3,
            Duration::from_millis(100),
            Duration::from_secs(2),
            Duration::from_secs(5),
        );
        let mut retries = policy.start();
        let exact = Duration::from_nanos(2_128_000_001);
        assert_eq!(retries.next_wait(Some(exact)), Some(exact));
        assert_eq!(
            retries.next_wait(Some(Duration::ZERO)),
            Some(Duration::ZERO)
        );
        // The third retry backs off as a third retry does: from 400 ms, not from the base.
        let d = retries.next_wait(None).unwrap();
        assert!(
            d >= Duration::from_micros(199_999) && d <= Duration::from_micros(400_001),
            "{d:?}"
        );
        assert_eq!(retries.next_wait(Some(exact)), None, "retries used up");

        // A wait longer than the client sleeps through ends the retries at once, and costs
        // none of them.
        let mut retries = policy.start();
        assert_eq!(retries.next_wait(Some(Duration::from_secs(6))), None);
        assert_eq!(
            retries.next_wait(Some(Duration::from_secs(5))),
            Some(Duration::from_secs(5))
        );
        let none = RetryPolicy::new(0, Duration::ZERO, Duration::ZERO, Duration::MAX);
        assert_eq!(none.start().next_wait(Some(Duration::ZERO)), None);
    }
}
