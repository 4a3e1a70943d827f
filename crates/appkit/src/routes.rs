//! `task_routes()`: status, events, stop, resume and cancel of one task by key.

use axum::Router;
use axum::extract::{FromRef, Path, State};
use axum::response::Response;
use axum::routing::{get, post};
use serde_json::{Value, json};
use taskflow::TaskInfo;

use crate::error::Result;
use crate::extract::{TaskRequest, UserContext};
use crate::plugin::PluginContext;

/// A router of task routes, to nest where a plugin likes (the dev-playground uses
/// `/api/demo/tasks`):
///
/// - `GET /{key}`: the task's status as JSON (in production, a failed task's
///   `error.message` is generic unless the handler marked the error public);
/// - `GET /{key}/events`: the task's SSE stream, resuming after `Last-Event-ID`;
/// - `POST /{key}/stop`, `POST /{key}/resume`, `POST /{key}/cancel`: `{"status": …}`;
///   resume hands the request's [`UserContext`] (with its fresh token) to the task's
///   next run on this node ([`taskflow::TaskFlow::resume_with`]).
///
/// Every route needs a user and checks ownership: another user's task answers 404 exactly
/// like a missing one. A terminal task answers 409 to stop, resume and cancel.
///
/// # Examples
///
/// ```
/// use appkit::PluginContext;
/// use axum::Router;
/// fn routes() -> Router<PluginContext> {
///     Router::new().nest("/tasks", appkit::task_routes())
/// }
/// # let _ = routes;
/// ```
pub fn task_routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    PluginContext: FromRef<S>,
{
    Router::new()
        .route("/{key}", get(status))
        .route("/{key}/events", get(events))
        .route("/{key}/stop", post(stop))
        .route("/{key}/resume", post(resume))
        .route("/{key}/cancel", post(cancel))
}

async fn status(
    State(cx): State<PluginContext>,
    user: UserContext,
    Path(key): Path<String>,
) -> Result<axum::Json<TaskInfo>> {
    let mut info = cx.taskflow().status(&key, Some(user.id())).await?;
    let redact = cx.config().is_production();
    info.error = info.error.map(|e| crate::stream::client_error(e, redact));
    Ok(axum::Json(info))
}

async fn events(
    State(cx): State<PluginContext>,
    req: TaskRequest,
    Path(key): Path<String>,
) -> Result<Response> {
    cx.attach_task(&req, &key).await
}

async fn stop(
    State(cx): State<PluginContext>,
    user: UserContext,
    Path(key): Path<String>,
) -> Result<axum::Json<Value>> {
    let status = cx.taskflow().stop(&key, Some(user.id())).await?;
    Ok(axum::Json(json!({ "status": status })))
}

async fn resume(
    State(cx): State<PluginContext>,
    user: UserContext,
    Path(key): Path<String>,
) -> Result<axum::Json<Value>> {
    // The request's user context (with its token) for the resumed run: the one given at
    // submit is gone after a stop or a restart.
    let status = cx
        .taskflow()
        .resume_with(&key, Some(user.id()), user.clone())
        .await?;
    Ok(axum::Json(json!({ "status": status })))
}

async fn cancel(
    State(cx): State<PluginContext>,
    user: UserContext,
    Path(key): Path<String>,
) -> Result<axum::Json<Value>> {
    let status = cx.taskflow().cancel(&key, Some(user.id())).await?;
    Ok(axum::Json(json!({ "status": status })))
}
