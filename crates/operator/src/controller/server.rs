//! The health and metrics endpoint: `/metrics` (OpenMetrics text), `/livez`, `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// Readiness and liveness shared between the controllers and the endpoint.
#[derive(Clone, Debug, Default)]
pub struct Readiness {
    ready: Arc<AtomicBool>,
    /// Why this process can no longer do its job (a background task ended), if so.
    failed: Arc<std::sync::Mutex<Option<String>>>,
}

impl Readiness {
    /// Marks the process ready (or not).
    pub fn set(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// True once ready, and not failed.
    pub fn get(&self) -> bool {
        self.ready.load(Ordering::Acquire) && self.failure().is_none()
    }

    /// The process can no longer do its job: `/livez` and `/readyz` answer 503 with `why`
    /// until it is restarted.
    pub fn fail(&self, why: String) {
        *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    }

    /// Why it failed, if it did.
    pub fn failure(&self) -> Option<String> {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[derive(Clone)]
struct AppState {
    registry: Arc<Registry>,
    ready: Readiness,
}

/// The router, separate from binding so tests can serve it on a random port.
pub fn router(registry: Arc<Registry>, ready: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .with_state(AppState { registry, ready })
}

async fn metrics(State(state): State<AppState>) -> Response {
    match super::metrics::render(&state.registry) {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n").into_response(),
    }
}

async fn livez(State(state): State<AppState>) -> Response {
    match state.ready.failure() {
        None => (StatusCode::OK, "ok\n").into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not live: {why}\n"),
        )
            .into_response(),
    }
}

async fn readyz(State(state): State<AppState>) -> Response {
    if let Some(why) = state.ready.failure() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response();
    }
    if state.ready.get() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: caches not synced yet\n",
        )
            .into_response()
    }
}

/// Binds `addr`: done before anything else starts, so a port in use or a bad address is a
/// start-up error naming the flag, not something noticed at shutdown.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot serve metrics and health on {addr}: {e}; choose another --metrics-addr (REDELIVER_METRICS_ADDR)"
        )
    })
}

/// Serves on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    ready: Readiness,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "serving /metrics, /livez and /readyz");
    axum::serve(listener, router(registry, ready))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failed_process_is_neither_live_nor_ready() {
        let ready = Readiness::default();
        let state = || AppState {
            registry: Arc::new(Registry::default()),
            ready: ready.clone(),
        };
        assert_eq!(livez(State(state())).await.status(), StatusCode::OK);
        assert_eq!(
            readyz(State(state())).await.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        ready.set(true);
        assert_eq!(readyz(State(state())).await.status(), StatusCode::OK);
        ready.fail("background task group-delta ended".into());
        assert!(!ready.get());
        for answer in [livez(State(state())).await, readyz(State(state())).await] {
            assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
        }
    }
}
