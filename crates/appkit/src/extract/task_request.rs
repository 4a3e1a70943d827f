//! The task request extractor: who asks, and where their stream resumes.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::UserContext;
use crate::error::Error;
use crate::stream::LastEventId;

/// What a route that starts or attaches to a task needs from its request: the
/// [`UserContext`] (401 in production without one) and the resume cursor from
/// `Last-Event-ID`.
///
/// [`PluginContext::execute`](crate::PluginContext::execute) and its siblings take a
/// `&TaskRequest` instead of the user alone, so a handler cannot forget the cursor: when a
/// client (AppKit's, or the browser's `EventSource`) reconnects with `Last-Event-ID`, the
/// stream resumes after that event, whatever the handler does.
///
/// # Examples
///
/// ```
/// use appkit::extract::Json;
/// use appkit::taskflow::TaskDef;
/// use appkit::{PluginContext, TaskRequest};
/// use axum::{extract::State, response::Response};
///
/// const GREET: TaskDef<String, ()> = TaskDef::new("greet");
///
/// async fn greet(
///     State(cx): State<PluginContext>,
///     req: TaskRequest,
///     Json(who): Json<String>,
/// ) -> appkit::Result<Response> {
///     cx.execute(&req, GREET, who).await
/// }
/// # let _: axum::routing::MethodRouter<PluginContext> = axum::routing::post(greet);
/// ```
#[derive(Debug, Clone)]
pub struct TaskRequest {
    user: UserContext,
    last_event_id: LastEventId,
}

impl TaskRequest {
    /// A request by `user` resuming after `last_event_id`; for code that starts tasks
    /// outside a route (tests, background jobs).
    pub fn new(user: UserContext, last_event_id: LastEventId) -> Self {
        Self {
            user,
            last_event_id,
        }
    }

    /// The request's user.
    pub fn user(&self) -> &UserContext {
        &self.user
    }

    /// The request's resume cursor (`Last-Event-ID`).
    pub fn last_event_id(&self) -> LastEventId {
        self.last_event_id
    }
}

impl<S: Send + Sync> FromRequestParts<S> for TaskRequest {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        let user = <UserContext as FromRequestParts<S>>::from_request_parts(parts, state).await?;
        Ok(Self {
            user,
            last_event_id: LastEventId::from_headers(&parts.headers),
        })
    }
}
