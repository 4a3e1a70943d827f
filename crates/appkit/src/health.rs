//! Liveness and readiness: `GET /health` and `GET /ready`.

use std::time::Duration;

use appkit_lakebase::LakebasePool;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use taskflow::TaskFlow;

use crate::shutdown::ShutdownHandle;

/// Bound on the task store's readiness check: a database that accepts connections but
/// does not answer (paused, partitioned) makes `/ready` answer 503 after this, instead of
/// holding the probe until the pool's acquire timeout or forever.
const STORE_HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
struct Health {
    taskflow: TaskFlow,
    lakebase: Option<LakebasePool>,
    shutdown: ShutdownHandle,
}

/// `/health` (always 200 while the process serves, whatever the database does) and
/// `/ready` (200 once setup is done and the store and the Lakebase pool, if configured,
/// answer; 503 from the first moment of shutdown).
pub(crate) fn routes(
    taskflow: TaskFlow,
    lakebase: Option<LakebasePool>,
    shutdown: ShutdownHandle,
) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .with_state(Health {
            taskflow,
            lakebase,
            shutdown,
        })
}

async fn health() -> Response {
    axum::Json(json!({ "status": "ok" })).into_response()
}

async fn ready(State(h): State<Health>) -> Response {
    let unavailable = |status: &str| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "status": status })),
        )
            .into_response()
    };
    if h.shutdown.is_started() {
        return unavailable("shutting_down");
    }
    match tokio::time::timeout(STORE_HEALTH_TIMEOUT, h.taskflow.health()).await {
        Ok(Ok(())) => {}
        Ok(Err(taskflow::Error::ShuttingDown)) => return unavailable("shutting_down"),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness check: task store does not answer");
            return unavailable("store_unavailable");
        }
        Err(_) => {
            tracing::warn!(
                timeout_ms = STORE_HEALTH_TIMEOUT.as_millis(),
                "readiness check: task store does not answer in time"
            );
            return unavailable("store_unavailable");
        }
    }
    if let Some(pool) = &h.lakebase {
        match pool.health().await {
            Ok(()) => {}
            Err(appkit_lakebase::Error::Closed) => return unavailable("shutting_down"),
            Err(e) => {
                tracing::warn!(error = %e, "readiness check: lakebase does not answer");
                return unavailable("database_unavailable");
            }
        }
    }
    axum::Json(json!({ "status": "ready" })).into_response()
}
