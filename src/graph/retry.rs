//! Retry timing: `Retry-After` parsing and capped exponential backoff with jitter.

use std::time::{Duration, SystemTime};

use rand::Rng;

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

/// Backoff before retry number `attempt` (0-based) when the server gave no `Retry-After`:
/// `d = min(cap, base * 2^attempt)`, then a uniformly random wait in `[d/2, d]` ("equal
/// jitter"), so concurrent clients spread out but never retry immediately.
pub fn backoff(attempt: u32, base: Duration, cap: Duration, rng: &mut impl Rng) -> Duration {
    let exp = base.saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX));
    let d = exp.min(cap);
    let half = d / 2;
    let jitter_ns = u64::try_from((d - half).as_nanos()).unwrap_or(u64::MAX);
    let extra = if jitter_ns == 0 {
        0
    } else {
        rng.random_range(0..=jitter_ns)
    };
    half + Duration::from_nanos(extra)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

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
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(2);
        for attempt in 0..40 {
            let d_full = base
                .saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
                .min(cap);
            for _ in 0..50 {
                let d = backoff(attempt, base, cap, &mut rng);
                assert!(d >= d_full / 2 && d <= d_full, "attempt {attempt}: {d:?}");
                assert!(d <= cap);
            }
        }
        assert_eq!(backoff(0, Duration::ZERO, cap, &mut rng), Duration::ZERO);
    }
}
