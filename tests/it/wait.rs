//! Waiting on a condition in tests: poll it often, bound the wait only to fail.

use std::time::{Duration, Instant};

/// How often a condition is checked again. The checks are cheap (an in-memory read of the
/// fake API server or a simulator's request log), so a short pace costs little and lets a
/// test go on as soon as what it waits for has happened.
pub const PACE: Duration = Duration::from_millis(20);

/// Waits until `done()`, checking every [`PACE`]; fails the test after `timeout`, which
/// only bounds a failure (it is never what a passing test waits for). Prints how long the
/// wait took (shown with `--nocapture`), to find what a slow test waits on.
pub async fn until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    let deadline = started + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(PACE).await;
    }
    eprintln!("[wait] {:>8.3?} until {what}", started.elapsed());
}
