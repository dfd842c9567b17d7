//! Moving tokio's clock forward in tests that also talk over real sockets.

use std::time::Duration;

/// Moves tokio's clock `by` forward in one jump, so the Graph client's token cache and
/// throttling gates see that much time pass without the test waiting for it, then lets the
/// clock run on in real time.
///
/// Time stays paused only for the jump: paused while sockets are in use, tokio would
/// auto-advance to the next timer whenever the runtime idles on I/O and so fire the HTTP
/// client's timeouts. Needs the current-thread runtime `#[tokio::test]` gives by default.
pub async fn skip(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}
