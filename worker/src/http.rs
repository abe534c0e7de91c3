//! The worker's own HTTP endpoints: `/metrics`, `/healthz` (the process serves) and `/readyz`
//! (consuming and the sink reachable). The gateway mounts the same routes next to its API.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::metrics::Metrics;

/// What `/readyz` reports.
#[derive(Debug, Default)]
pub struct Health {
    started: AtomicBool,
    /// Partitions currently waiting for an unreachable sink.
    blocked: AtomicUsize,
    /// Why the process can no longer do its work (a Kafka client's fatal error): `/healthz`
    /// fails from then on, so that the kubelet restarts the container.
    broken: std::sync::OnceLock<String>,
}

impl Health {
    pub fn set_started(&self, started: bool) {
        self.started.store(started, Ordering::Relaxed);
    }

    pub fn sink_blocked(&self) {
        self.blocked.fetch_add(1, Ordering::Relaxed);
    }

    pub fn sink_unblocked(&self) {
        self.blocked.fetch_sub(1, Ordering::Relaxed);
    }

    /// The process can no longer do its work, for `reason`; the first reason is kept.
    pub fn set_broken(&self, reason: String) {
        let _ = self.broken.set(reason);
    }

    pub fn is_ready(&self) -> bool {
        self.started.load(Ordering::Relaxed) && self.blocked.load(Ordering::Relaxed) == 0
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    health: Arc<Health>,
}

/// The observability routes, to serve alone or merge into another router.
pub fn routes(metrics: Metrics, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(liveness))
        .route("/readyz", get(readiness))
        .with_state(AppState { metrics, health })
}

async fn metrics_text(
    State(state): State<AppState>,
) -> ([(&'static str, &'static str); 1], String) {
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.encode(),
    )
}

async fn liveness(State(state): State<AppState>) -> (StatusCode, String) {
    match state.health.broken.get() {
        Some(reason) => (StatusCode::INTERNAL_SERVER_ERROR, reason.clone()),
        None => (StatusCode::OK, "ok".into()),
    }
}

async fn readiness(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state.health.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}
