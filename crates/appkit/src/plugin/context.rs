//! The context plugin routes run with, and `execute_task`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use appkit_lakebase::LakebasePool;
use axum::response::Response;
use serde::Serialize;
use taskflow::{IdempotencyMode, SubmitOptions, Submitted, TaskDef, TaskFlow};
use tracing::debug;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::extract::{TaskRequest, UserContext};
use crate::shutdown::ShutdownHandle;
use crate::stream::{
    BridgeParams, BridgeRegistry, DisconnectPolicy, channel_events, plugin_sse_response,
    sse_response,
};

/// How [`PluginContext::execute_with`] submits and streams.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use appkit::ExecuteSettings;
/// let settings = ExecuteSettings::new()
///     .stop_on_disconnect(false)
///     .disconnect_grace(Duration::from_secs(10))
///     .max_attempts(5);
/// # let _ = settings;
/// ```
#[derive(Debug, Clone, Default)]
pub struct ExecuteSettings {
    stop_on_disconnect: Option<bool>,
    disconnect_grace: Option<Duration>,
    idempotency_key: Option<String>,
    mode: IdempotencyMode,
    max_attempts: Option<u32>,
}

impl ExecuteSettings {
    /// Defaults: stop (suspend) the task when its client is gone for the configured
    /// grace, derived idempotency key, [`IdempotencyMode::AtLeastOnce`], the attempts the
    /// task was registered with.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the task is stopped once its last client has been gone for the grace
    /// (default `true`). A stopped task is `suspended`, not cancelled: its checkpoints
    /// stay, and a resume (or a re-submission that attaches) carries on from them.
    pub fn stop_on_disconnect(mut self, on: bool) -> Self {
        self.stop_on_disconnect = Some(on);
        self
    }

    /// How long a client may take to re-attach (default `APPKIT_SSE_DISCONNECT_GRACE_MS`).
    pub fn disconnect_grace(mut self, grace: Duration) -> Self {
        self.disconnect_grace = Some(grace);
        self
    }

    /// Uses `key` instead of the key derived from name, input and user.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// How duplicate submissions are treated.
    pub fn mode(mut self, mode: IdempotencyMode) -> Self {
        self.mode = mode;
        self
    }

    /// Attempts the task gets before it fails for good, counting the first (at least 1),
    /// in place of the count it was registered with
    /// ([`TaskOptions::max_attempts`](taskflow::TaskOptions::max_attempts)). Applies
    /// when this request creates the task; a duplicate attaches to the task as it is.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(n.max(1));
        self
    }
}

/// What every plugin route can reach: the task engine, the Lakebase pool (if configured),
/// the configuration, and the SSE bridge. Cheap to clone.
#[derive(Clone)]
pub struct PluginContext {
    inner: Arc<Shared>,
}

struct Shared {
    taskflow: TaskFlow,
    lakebase: Option<LakebasePool>,
    config: Arc<Config>,
    bridges: BridgeRegistry,
    shutdown: ShutdownHandle,
}

impl fmt::Debug for PluginContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginContext")
            .field("taskflow", &self.inner.taskflow)
            .field("lakebase", &self.inner.lakebase)
            .finish_non_exhaustive()
    }
}

impl PluginContext {
    pub(crate) fn new(
        taskflow: TaskFlow,
        lakebase: Option<LakebasePool>,
        config: Arc<Config>,
        bridges: BridgeRegistry,
        shutdown: ShutdownHandle,
    ) -> Self {
        Self {
            inner: Arc::new(Shared {
                taskflow,
                lakebase,
                config,
                bridges,
                shutdown,
            }),
        }
    }

    /// The task engine: register, submit, subscribe, status, stop, resume, cancel.
    pub fn taskflow(&self) -> &TaskFlow {
        &self.inner.taskflow
    }

    /// The Lakebase pool, when one is configured (`PGHOST`, or `APPKIT_TASKS_STORE=lakebase`).
    /// The host opened it before the task engine and closes it once at shutdown, after the
    /// task store; plugins use it and never close it. Map its errors with `?` into
    /// [`Error`] (503 while the database is out of reach).
    pub fn lakebase(&self) -> Option<&LakebasePool> {
        self.inner.lakebase.as_ref()
    }

    /// The host configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The shutdown coordinator's handle.
    pub fn shutdown_handle(&self) -> &ShutdownHandle {
        &self.inner.shutdown
    }

    /// `true` from the first moment of shutdown.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutdown.is_started()
    }

    /// Submits the task `task` for the request's user with `input` (or attaches to the
    /// task it duplicates) and answers with its events as SSE, with default
    /// [`ExecuteSettings`]: header `X-AppKit-Task-Idempotency-Key`, a `ready` frame, then
    /// each event with `id: <seq>` until the task ends. When the submission attaches to an
    /// existing task, the stream resumes after the request's `Last-Event-ID`.
    ///
    /// The compiler checks `input` against the task's [`TaskDef`]; for a name known only
    /// at run time use [`execute_task`](Self::execute_task).
    ///
    /// # Errors
    ///
    /// Before the stream starts, as normal HTTP errors: [`Error::ShuttingDown`] (503),
    /// [`Error::RateLimited`] (429), [`Error::InvalidInput`] (400, e.g. a `Last-Event-ID`
    /// past the task's last event), [`Error::UnknownTask`] (404, the task was never
    /// registered), [`Error::StoreUnavailable`] (503), engine failures (500). After it
    /// started, errors are an in-band `event: error` frame.
    ///
    /// # Examples
    ///
    /// A handler that does nothing special still resumes from `Last-Event-ID`:
    ///
    /// ```
    /// use appkit::extract::Json;
    /// use appkit::taskflow::TaskDef;
    /// use appkit::{PluginContext, TaskRequest};
    /// use axum::{extract::State, response::Response};
    ///
    /// const BUILD: TaskDef<u32, ()> = TaskDef::new("build");
    ///
    /// async fn build(
    ///     State(cx): State<PluginContext>,
    ///     req: TaskRequest,
    ///     Json(pages): Json<u32>,
    /// ) -> appkit::Result<Response> {
    ///     cx.execute(&req, BUILD, pages).await
    /// }
    /// # let _: axum::routing::MethodRouter<PluginContext> = axum::routing::post(build);
    /// ```
    ///
    /// An input of the wrong type does not compile:
    ///
    /// ```compile_fail,E0308
    /// # use appkit::{PluginContext, TaskRequest};
    /// # use appkit::taskflow::TaskDef;
    /// const BUILD: TaskDef<u32, ()> = TaskDef::new("build");
    /// async fn build(cx: PluginContext, req: TaskRequest) -> appkit::Result<axum::response::Response> {
    ///     cx.execute(&req, BUILD, "twelve pages").await
    /// }
    /// ```
    pub async fn execute<In: Serialize, Out>(
        &self,
        req: &TaskRequest,
        task: TaskDef<In, Out>,
        input: In,
    ) -> Result<Response> {
        self.execute_task(req, task.name(), input, ExecuteSettings::new())
            .await
    }

    /// [`execute`](Self::execute) with `settings`.
    ///
    /// # Errors
    ///
    /// As for [`execute`](Self::execute).
    pub async fn execute_with<In: Serialize, Out>(
        &self,
        req: &TaskRequest,
        task: TaskDef<In, Out>,
        input: In,
        settings: ExecuteSettings,
    ) -> Result<Response> {
        self.execute_task(req, task.name(), input, settings).await
    }

    /// [`execute_with`](Self::execute_with) of a task named at run time (its input is
    /// checked when the handler deserializes it: a mismatch is a failed task, not a
    /// compile error).
    ///
    /// # Errors
    ///
    /// As for [`execute`](Self::execute).
    pub async fn execute_task(
        &self,
        req: &TaskRequest,
        name: &str,
        input: impl Serialize,
        settings: ExecuteSettings,
    ) -> Result<Response> {
        if self.is_shutting_down() {
            return Err(Error::ShuttingDown);
        }
        let user = req.user();
        let mut options = SubmitOptions::new()
            .user(user.id())
            .user_context(user.clone())
            .mode(settings.mode);
        if let Some(key) = settings.idempotency_key.clone() {
            options = options.idempotency_key(key);
        }
        if let Some(n) = settings.max_attempts {
            options = options.max_attempts(n);
        }
        let submitted = self.inner.taskflow.submit(name, input, options).await?;
        let after = match &submitted {
            Submitted::Created(_) => 0,
            Submitted::Existing(..) => req.last_event_id().after_seq(),
        };
        let key = submitted.handle().idempotency_key.clone();
        debug!(task.key = %key, created = matches!(submitted, Submitted::Created(_)), "task submitted");
        let default = self.default_policy();
        self.inner.bridges.set_policy(
            &key,
            DisconnectPolicy {
                stop_on_disconnect: settings
                    .stop_on_disconnect
                    .unwrap_or(default.stop_on_disconnect),
                grace: settings.disconnect_grace.unwrap_or(default.grace),
            },
        );
        self.open_bridge(key, user, after).await
    }

    /// Attaches to the existing task `key` of the request's user and answers with its
    /// events as SSE, resuming after the request's `Last-Event-ID`, as
    /// [`execute`](Self::execute) does.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] if no task with that key is visible to the user;
    /// [`Error::InvalidInput`] for a cursor past the last event;
    /// [`Error::ShuttingDown`].
    pub async fn attach_task(&self, req: &TaskRequest, key: &str) -> Result<Response> {
        if self.is_shutting_down() {
            return Err(Error::ShuttingDown);
        }
        self.open_bridge(key.to_owned(), req.user(), req.last_event_id().after_seq())
            .await
    }

    async fn open_bridge(&self, key: String, user: &UserContext, after: u64) -> Result<Response> {
        let taskflow = &self.inner.taskflow;
        // A cursor at a finished task's last event gives an already-ended stream, so the
        // bridge answers just `ready` and closes.
        let events = taskflow.subscribe(&key, Some(user.id()), after).await?;
        let guard = self
            .inner
            .bridges
            .attach(taskflow.clone(), &key, Some(user.id().to_owned()));
        sse_response(BridgeParams {
            key,
            events,
            guard,
            redact: self.inner.config.is_production(),
            keepalive: self.inner.config.sse_keepalive,
        })
    }

    /// Serves `events` as an SSE stream the plugin owns (a feed, a clock, progress of
    /// work that is not a task), with the host's stream behaviour: a `: hb` comment after
    /// `APPKIT_SSE_KEEPALIVE_MS` idle, and at shutdown a final `event: error` /
    /// `{"message":"server_shutting_down"}` frame and the end of the stream. The stream
    /// joins the shutdown coordinator's drain like a task bridge, so one left open cannot
    /// hold the HTTP server's close until the deadline. It ends when `events` does.
    ///
    /// # Errors
    ///
    /// [`Error::ShuttingDown`] (503) once shutdown has started.
    ///
    /// # Examples
    ///
    /// ```
    /// use appkit::PluginContext;
    /// use axum::{extract::State, response::Response, response::sse::Event};
    ///
    /// async fn feed(State(cx): State<PluginContext>) -> appkit::Result<Response> {
    ///     let events = futures_util::stream::iter(
    ///         (1..=3).map(|i| Event::default().event("item").data(i.to_string())),
    ///     );
    ///     cx.sse_stream(events)
    /// }
    /// # let _: axum::routing::MethodRouter<PluginContext> = axum::routing::get(feed);
    /// ```
    pub fn sse_stream(
        &self,
        events: impl futures_util::Stream<Item = axum::response::sse::Event> + Send + 'static,
    ) -> Result<Response> {
        if self.is_shutting_down() {
            return Err(Error::ShuttingDown);
        }
        let guard = self.inner.bridges.attach_plain();
        Ok(plugin_sse_response(
            events,
            guard,
            self.inner.config.sse_keepalive,
        ))
    }

    /// [`sse_stream`](Self::sse_stream) of the events sent on a channel: the plugin keeps
    /// the sender (e.g. in a task it spawns) and sends frames; the stream ends when every
    /// sender is dropped, and a send fails once the client is gone or the stream was
    /// drained at shutdown, which tells the producer to stop.
    ///
    /// # Errors
    ///
    /// As for [`sse_stream`](Self::sse_stream).
    pub fn sse_channel(
        &self,
        receiver: tokio::sync::mpsc::Receiver<axum::response::sse::Event>,
    ) -> Result<Response> {
        self.sse_stream(channel_events(receiver))
    }

    fn default_policy(&self) -> DisconnectPolicy {
        DisconnectPolicy {
            stop_on_disconnect: true,
            grace: self.inner.config.sse_disconnect_grace,
        }
    }
}
