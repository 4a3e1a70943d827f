//! The engine handle: register handlers, submit, observe and control tasks, shut down.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, OnceCell};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span};

use crate::config::Config;
use crate::delivery::{EventStream, Hub, open_stream};
use crate::error::{Error, Result};
use crate::execution::slots::Slots;
use crate::execution::{executor, maintenance, runner};
use crate::guard::{SlidingWindow, check_key, check_payload, check_task_name, check_user};
use crate::handler::{BoxHandler, TaskContext, TaskError, erase, lock};
use crate::key::idempotency_key;
use crate::metrics::Metrics;
use crate::store::writer::Writer;
use crate::store::{ClaimNow, Control, OpResult, Store, SubmitParams, WriteOp, now_ms};
use crate::task::{SubmitOptions, Submitted, TaskHandle, TaskInfo, TaskOptions, TaskStatus};

/// A registered handler with its options.
pub(crate) struct Registered {
    pub(crate) handler: BoxHandler,
    pub(crate) options: TaskOptions,
}

/// Why a runner was asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopReason {
    Stop,
    Cancel,
    Shutdown,
    LeaseLost,
}

/// Control of one live runner.
#[derive(Debug, Clone)]
pub(crate) struct RunnerCtl {
    pub(crate) attempt: u32,
    pub(crate) token: CancellationToken,
    pub(crate) reason: Arc<Mutex<Option<StopReason>>>,
    pub(crate) done: CancellationToken,
}

impl RunnerCtl {
    pub(crate) fn new(attempt: u32) -> Self {
        Self {
            attempt,
            token: CancellationToken::new(),
            reason: Arc::new(Mutex::new(None)),
            done: CancellationToken::new(),
        }
    }

    /// Asks the runner to stop; the first reason wins.
    pub(crate) fn request(&self, reason: StopReason) {
        lock(&self.reason).get_or_insert(reason);
        self.token.cancel();
    }

    pub(crate) fn reason(&self) -> Option<StopReason> {
        *lock(&self.reason)
    }
}

pub(crate) struct Admission {
    global: Option<SlidingWindow>,
    per_user: Option<SlidingWindow>,
}

/// State shared by the handle, the executor, runners and maintenance loops.
pub(crate) struct Shared {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) writer: Writer,
    pub(crate) hub: Hub,
    pub(crate) config: Config,
    pub(crate) node: String,
    pub(crate) registry: RwLock<HashMap<String, Arc<Registered>>>,
    pub(crate) slots: Mutex<Slots>,
    pub(crate) running: Mutex<HashMap<String, RunnerCtl>>,
    pub(crate) user_contexts: Mutex<HashMap<String, Arc<dyn Any + Send + Sync>>>,
    /// Trace context of the submission, so this process's runs join the request's trace.
    pub(crate) trace_parents: Mutex<HashMap<String, opentelemetry::Context>>,
    admission: Mutex<Admission>,
    pub(crate) pending_estimate: AtomicU64,
    /// The store may hold claimable work this node has not looked at yet.
    pub(crate) backlog: AtomicBool,
    pub(crate) wake: Notify,
    pub(crate) closing: AtomicBool,
    /// Cancelled to stop claiming and the maintenance loops.
    pub(crate) stop_claiming: CancellationToken,
    pub(crate) background: TaskTracker,
    pub(crate) runners: TaskTracker,
    writer_tracker: TaskTracker,
    writer_close: CancellationToken,
    pub(crate) metrics: Metrics,
    drained: OnceCell<()>,
    closed: OnceCell<()>,
}

impl Shared {
    pub(crate) fn registered(&self, name: &str) -> Option<Arc<Registered>> {
        self.registry
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    pub(crate) fn registered_names(&self) -> Vec<String> {
        self.registry
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    /// Signals the executor that the store may hold work.
    pub(crate) fn kick(&self) {
        self.backlog.store(true, Ordering::Release);
        self.wake.notify_one();
    }
}

/// The durable task engine. Cheap to clone; clones share one engine.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use futures_util::StreamExt;
/// use taskflow::{Config, SqliteStore, SubmitOptions, TaskContext, TaskError, TaskFlow};
///
/// let dir = tempfile::tempdir()?;
/// let store = SqliteStore::open(dir.path().join("tasks.db")).await?;
/// let flow = TaskFlow::start(store, Config::default()).await?;
/// flow.register("double", |ctx: TaskContext, n: u64| async move {
///     let doubled = ctx.step("double", async { Ok::<_, TaskError>(n * 2) }).await?;
///     ctx.emit("progress", serde_json::json!({"doubled": doubled})).await?;
///     Ok::<_, TaskError>(doubled)
/// })?;
///
/// let submitted = flow.submit("double", 21, SubmitOptions::new().user("alice")).await?;
/// let key = submitted.handle().idempotency_key.clone();
/// let mut events = flow.subscribe(&key, Some("alice"), 0).await?;
/// let mut names = Vec::new();
/// while let Some(event) = events.next().await {
///     names.push(event?.name);
/// }
/// assert_eq!(names, ["created", "started", "progress", "completed"]);
/// assert_eq!(flow.status(&key, Some("alice")).await?.result, Some(serde_json::json!(42)));
/// flow.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TaskFlow {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for TaskFlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskFlow")
            .field("node", &self.shared.node)
            .field("store", &self.shared.store)
            .finish_non_exhaustive()
    }
}

impl TaskFlow {
    /// Starts the engine on `store`: recovers work left `running` by a dead process (on an
    /// exclusive store), then starts the writer, the executor and the maintenance loops.
    ///
    /// # Errors
    ///
    /// Store errors from start-up recovery.
    ///
    /// # Cancellation safety
    ///
    /// Not cancellation safe: background tasks may already run when it is dropped.
    pub async fn start(store: impl Store, config: Config) -> Result<Self> {
        Self::start_shared(Arc::new(store), config).await
    }

    /// Like [`start`](Self::start), for a store already behind an `Arc`.
    ///
    /// # Errors
    ///
    /// As for [`start`](Self::start).
    ///
    /// # Cancellation safety
    ///
    /// As for [`start`](Self::start).
    pub async fn start_shared(store: Arc<dyn Store>, config: Config) -> Result<Self> {
        let hub = Hub::new();
        let writer_tracker = TaskTracker::new();
        let writer_close = CancellationToken::new();
        let writer = Writer::spawn(
            store.clone(),
            hub.clone(),
            &writer_tracker,
            writer_close.clone(),
        );
        let node = config
            .node_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let admission = Admission {
            global: config.rate_limit.map(SlidingWindow::new),
            per_user: config.user_rate_limit.map(SlidingWindow::new),
        };
        let shared = Arc::new(Shared {
            store,
            writer,
            hub,
            slots: Mutex::new(Slots::new(config.global_slots, config.per_user_slots)),
            config,
            node,
            registry: RwLock::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
            user_contexts: Mutex::new(HashMap::new()),
            trace_parents: Mutex::new(HashMap::new()),
            admission: Mutex::new(admission),
            pending_estimate: AtomicU64::new(0),
            backlog: AtomicBool::new(true),
            wake: Notify::new(),
            closing: AtomicBool::new(false),
            stop_claiming: CancellationToken::new(),
            background: TaskTracker::new(),
            runners: TaskTracker::new(),
            writer_tracker,
            writer_close,
            metrics: Metrics::new(),
            drained: OnceCell::new(),
            closed: OnceCell::new(),
        });
        if shared.store.is_exclusive() {
            maintenance::recover_at_startup(&shared).await?;
        }
        if let Ok(n) = shared.store.tasks_pending_count().await {
            shared.pending_estimate.store(n, Ordering::Relaxed);
        }
        shared.background.spawn(executor::run(shared.clone()));
        shared
            .background
            .spawn(maintenance::heartbeat(shared.clone()));
        shared.background.spawn(maintenance::reaper(shared.clone()));
        if let Some(notices) = shared.store.notices() {
            shared
                .background
                .spawn(maintenance::relay_notices(shared.clone(), notices));
        }
        info!(node = %shared.node, backend = ?shared.store.backend(), "task engine started");
        Ok(Self { shared })
    }

    /// This node's id (the lease owner name).
    pub fn node_id(&self) -> &str {
        &self.shared.node
    }

    /// Registers a typed handler under `name` with default [`TaskOptions`].
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] for a bad name, [`Error::DuplicateTask`] if already registered.
    pub fn register<In, Out, F, Fut>(&self, name: &str, handler: F) -> Result<()>
    where
        In: DeserializeOwned + Send + 'static,
        Out: Serialize + Send + 'static,
        F: Fn(TaskContext, In) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Out, TaskError>> + Send + 'static,
    {
        self.register_with(name, TaskOptions::default(), handler)
    }

    /// Registers a typed handler under `name` with `options`.
    ///
    /// # Errors
    ///
    /// As for [`register`](Self::register).
    pub fn register_with<In, Out, F, Fut>(
        &self,
        name: &str,
        options: TaskOptions,
        handler: F,
    ) -> Result<()>
    where
        In: DeserializeOwned + Send + 'static,
        Out: Serialize + Send + 'static,
        F: Fn(TaskContext, In) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Out, TaskError>> + Send + 'static,
    {
        check_task_name(name)?;
        let mut registry = self
            .shared
            .registry
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if registry.contains_key(name) {
            return Err(Error::DuplicateTask(name.to_owned()));
        }
        if let Some(limit) = options.max_concurrency {
            lock(&self.shared.slots).set_name_limit(name, limit);
        }
        registry.insert(
            name.to_owned(),
            Arc::new(Registered {
                handler: erase(handler),
                options,
            }),
        );
        drop(registry);
        self.shared.kick();
        Ok(())
    }

    /// Submits a task, or attaches to the one it duplicates (see
    /// [`IdempotencyMode`](crate::IdempotencyMode)). Returns once the task row and its
    /// `created` event are committed.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownTask`], [`Error::Invalid`] (input over 1 MiB, bad key or user),
    /// [`Error::Rejected`] (rate limit, pending bound), [`Error::ShuttingDown`], store errors.
    ///
    /// # Cancellation safety
    ///
    /// Not cancellation safe: if dropped, the task may or may not have been committed; a
    /// retry with the same key attaches to it.
    pub async fn submit(
        &self,
        name: &str,
        input: impl Serialize,
        options: SubmitOptions,
    ) -> Result<Submitted> {
        let span =
            info_span!("taskflow.submit", task.name = %name, task.id = tracing::field::Empty);
        self.submit_inner(name, input, options)
            .instrument(span)
            .await
    }

    async fn submit_inner(
        &self,
        name: &str,
        input: impl Serialize,
        options: SubmitOptions,
    ) -> Result<Submitted> {
        let shared = &self.shared;
        if shared.closing.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        let registered = shared
            .registered(name)
            .ok_or_else(|| Error::UnknownTask(name.to_owned()))?;
        let input = serde_json::to_value(input)?;
        check_payload("input", &input)?;
        let user = options.user.as_deref();
        if let Some(user) = user {
            check_user(user)?;
        }
        let key = match &options.key {
            Some(key) => {
                check_key(key)?;
                key.clone()
            }
            None => idempotency_key(name, &input, user),
        };
        self.admit(user)?;
        let claim = self.try_claim_now(user, name);
        let task_id = uuid::Uuid::now_v7().to_string();
        // Registered before the commit so that a runner that claims the task at once sees it.
        if let Some(ctx) = options.user_context.clone() {
            lock(&shared.user_contexts).insert(task_id.clone(), ctx);
        }
        let params = SubmitParams {
            id: task_id.clone(),
            name: name.to_owned(),
            key,
            user_id: options.user.clone(),
            input,
            max_attempts: registered.options.max_attempts,
            auto_recover: registered.options.auto_recover,
            mode: options.mode,
            now: now_ms(),
            claim: claim.clone(),
        };
        // Counted before the commit: the executor may claim the task before we return.
        if claim.is_none() {
            shared.pending_estimate.fetch_add(1, Ordering::Relaxed);
        }
        let result = shared.writer.write(WriteOp::Submit(params)).await;
        if claim.is_none()
            && !matches!(&result, Ok(o) if matches!(o.result, OpResult::Submitted { created: true, .. }))
        {
            let _ =
                shared
                    .pending_estimate
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
                        Some(p.saturating_sub(1))
                    });
        }
        let (task, created, claimed) = match result {
            Ok(o) => match o.result {
                OpResult::Submitted {
                    task,
                    created,
                    claimed,
                } => (task, created, claimed),
                other => unreachable_outcome(&other)?,
            },
            Err(e) => {
                if claim.is_some() {
                    lock(&shared.slots).release(user, name);
                }
                lock(&shared.user_contexts).remove(&task_id);
                return Err(e);
            }
        };
        if !created {
            lock(&shared.user_contexts).remove(&task_id);
        }
        tracing::Span::current().record("task.id", tracing::field::display(&task.id));
        if claim.is_some() && !claimed {
            lock(&shared.slots).release(user, name);
        }
        let handle = TaskHandle {
            id: task.id.clone(),
            idempotency_key: task.idempotency_key.clone(),
        };
        if !created {
            debug!(task.id = %task.id, status = %task.status, "submit attached to existing task");
            return Ok(Submitted::Existing(handle, task.status));
        }
        shared.metrics.submitted.add(
            1,
            &[opentelemetry::KeyValue::new("task.name", name.to_owned())],
        );
        {
            use tracing_opentelemetry::OpenTelemetrySpanExt;
            let cx = tracing::Span::current().context();
            lock(&shared.trace_parents).insert(task.id.clone(), cx);
        }
        if claimed {
            runner::spawn(shared.clone(), *task, false, registered);
        } else {
            shared.kick();
        }
        Ok(Submitted::Created(handle))
    }

    fn admit(&self, user: Option<&str>) -> Result<()> {
        let shared = &self.shared;
        let reject = |reason: &'static str, retry_after| {
            shared
                .metrics
                .rejected
                .add(1, &[opentelemetry::KeyValue::new("reason", reason)]);
            Err(Error::Rejected {
                reason,
                retry_after,
            })
        };
        if shared.pending_estimate.load(Ordering::Relaxed) >= shared.config.max_pending {
            return reject("too many pending tasks", shared.config.poll_interval);
        }
        let now = Instant::now();
        let mut admission = lock(&shared.admission);
        if let Some(window) = admission.global.as_mut()
            && let Err(wait) = window.try_acquire("", now)
        {
            return reject("rate limit exceeded", wait);
        }
        if let (Some(window), Some(user)) = (admission.per_user.as_mut(), user)
            && let Err(wait) = window.try_acquire(user, now)
        {
            return reject("user rate limit exceeded", wait);
        }
        Ok(())
    }

    /// Reserves a slot for claiming at submit, when nothing older is waiting.
    fn try_claim_now(&self, user: Option<&str>, name: &str) -> Option<ClaimNow> {
        let shared = &self.shared;
        if shared.backlog.load(Ordering::Acquire) || !lock(&shared.slots).try_take(user, name) {
            return None;
        }
        Some(ClaimNow {
            node: shared.node.clone(),
            lease_until: now_ms() + duration_ms(shared.config.lease),
        })
    }

    /// The task with this key, as `user` may see it.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] if there is none visible to `user` (another user's task answers
    /// the same way); store errors.
    ///
    /// # Cancellation safety
    ///
    /// Cancellation safe (read only).
    pub async fn status(&self, key: &str, user: Option<&str>) -> Result<TaskInfo> {
        self.shared
            .store
            .task_by_key(key, user)
            .await?
            .ok_or(Error::NotFound)
    }

    /// The task's events after `after_seq` (0 = from the start), then live ones until a
    /// terminal event. Registers for live events before reading the store, so nothing
    /// falls between replay and tail.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] as for [`status`](Self::status);
    /// [`Error::CursorOutOfRange`] if `after_seq` is past the last event;
    /// [`Error::ShuttingDown`].
    ///
    /// # Cancellation safety
    ///
    /// Cancellation safe.
    pub async fn subscribe(
        &self,
        key: &str,
        user: Option<&str>,
        after_seq: u64,
    ) -> Result<EventStream> {
        let shared = &self.shared;
        let task = self.status(key, user).await?;
        let sub = shared.hub.subscribe(&task.id).ok_or(Error::ShuttingDown)?;
        if after_seq > task.last_seq {
            return Err(Error::CursorOutOfRange {
                after_seq,
                last_seq: task.last_seq,
            });
        }
        let poll = (!shared.store.is_exclusive()).then_some(shared.config.poll_interval);
        // A finished task's log is final: a cursor at its end has nothing left to wait for.
        let ended = task.status.is_terminal() && after_seq == task.last_seq;
        Ok(open_stream(
            ended,
            shared.store.clone(),
            task.id,
            after_seq,
            sub,
            poll,
            shared.metrics.clone(),
        ))
    }

    /// Stops a task: a pending one is suspended at once; a running one is asked to stop
    /// (its `cancelled()` fires) and is suspended when its handler returns or after the
    /// stop grace. Stopping a suspended task changes nothing.
    ///
    /// Returns the state afterwards (`completed` if the handler finished its work anyway).
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`]; [`Error::InvalidTransition`] for a terminal task.
    ///
    /// # Cancellation safety
    ///
    /// Cancellation safe: the stop proceeds even if the future is dropped.
    pub async fn stop(&self, key: &str, user: Option<&str>) -> Result<TaskStatus> {
        let task = self.status(key, user).await?;
        match task.status {
            TaskStatus::Suspended => Ok(TaskStatus::Suspended),
            s if s.is_terminal() => Err(Error::InvalidTransition {
                from: s,
                action: "stop",
            }),
            TaskStatus::Pending => match self.control(&task.id, Control::Stop).await? {
                (TaskStatus::Running, _) => self.stop_running(&task.id).await,
                (from, to) if from.is_terminal() => Err(Error::InvalidTransition {
                    from: to,
                    action: "stop",
                }),
                (_, to) => Ok(to),
            },
            _ => self.stop_running(&task.id).await,
        }
    }

    async fn stop_running(&self, task_id: &str) -> Result<TaskStatus> {
        let shared = &self.shared;
        let local = lock(&shared.running).get(task_id).cloned();
        match local {
            Some(ctl) => {
                ctl.request(StopReason::Stop);
                let bound = shared.config.stop_grace + shared.config.lease;
                let _ = tokio::time::timeout(bound, ctl.done.cancelled()).await;
            }
            None => {
                self.control(task_id, Control::RequestStop).await?;
            }
        }
        let task = shared
            .store
            .task_by_id(task_id)
            .await?
            .ok_or(Error::NotFound)?;
        Ok(task.status)
    }

    /// Resumes a suspended task: it goes back to `pending` and its steps replay from their
    /// checkpoints. Resuming a pending or running task changes nothing.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`]; [`Error::InvalidTransition`] for a terminal task.
    ///
    /// # Cancellation safety
    ///
    /// Not cancellation safe: the resume may or may not be committed if dropped.
    pub async fn resume(&self, key: &str, user: Option<&str>) -> Result<TaskStatus> {
        let task = self.status(key, user).await?;
        let (from, to) = self.control(&task.id, Control::Resume).await?;
        if from.is_terminal() {
            return Err(Error::InvalidTransition {
                from,
                action: "resume",
            });
        }
        if to == TaskStatus::Pending && from == TaskStatus::Suspended {
            self.shared.kick();
        }
        Ok(to)
    }

    /// Cancels a pending, running or suspended task (terminal). A running handler's
    /// `cancelled()` fires and its writes are refused from now on. Cancelling a cancelled
    /// task changes nothing.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`]; [`Error::InvalidTransition`] for a completed or failed task.
    ///
    /// # Cancellation safety
    ///
    /// Not cancellation safe: the cancel may or may not be committed if dropped.
    pub async fn cancel(&self, key: &str, user: Option<&str>) -> Result<TaskStatus> {
        let task = self.status(key, user).await?;
        let (from, to) = self.control(&task.id, Control::Cancel).await?;
        match (from, to) {
            (TaskStatus::Cancelled, _) => Ok(TaskStatus::Cancelled),
            (from, _) if from.is_terminal() => Err(Error::InvalidTransition {
                from,
                action: "cancel",
            }),
            (from, to) => {
                if from == TaskStatus::Running
                    && let Some(ctl) = lock(&self.shared.running).get(&task.id)
                {
                    ctl.request(StopReason::Cancel);
                }
                lock(&self.shared.user_contexts).remove(&task.id);
                lock(&self.shared.trace_parents).remove(&task.id);
                Ok(to)
            }
        }
    }

    /// Failed (dead-lettered) tasks, newest first.
    ///
    /// # Errors
    ///
    /// Store errors.
    ///
    /// # Cancellation safety
    ///
    /// Cancellation safe (read only).
    pub async fn dead_letters(&self, limit: u32) -> Result<Vec<TaskInfo>> {
        self.shared.store.tasks_failed(limit).await
    }

    /// Puts a failed task back to `pending` with a fresh set of attempts.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`]; [`Error::InvalidTransition`] unless the task failed.
    ///
    /// # Cancellation safety
    ///
    /// Not cancellation safe: the redrive may or may not be committed if dropped.
    pub async fn redrive(&self, task_id: &str) -> Result<TaskStatus> {
        let (from, to) = self.control(task_id, Control::Redrive).await?;
        if from != TaskStatus::Failed {
            return Err(Error::InvalidTransition {
                from,
                action: "redrive",
            });
        }
        self.shared.kick();
        Ok(to)
    }

    async fn control(&self, task_id: &str, action: Control) -> Result<(TaskStatus, TaskStatus)> {
        let op = WriteOp::Control {
            task_id: task_id.to_owned(),
            action,
            now: now_ms(),
        };
        match self.shared.writer.write(op).await?.result {
            OpResult::Controlled { from, to } => Ok((from, to)),
            OpResult::NotFound => Err(Error::NotFound),
            other => unreachable_outcome(&other),
        }
    }

    /// Whether [`shutdown`](Self::shutdown) has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shared.closing.load(Ordering::Acquire)
    }

    /// Stops claiming and drains, once: running tasks get the drain timeout to finish;
    /// the rest are asked to stop with reason `shutdown` and, when their handler returns
    /// or after the stop grace, released to `pending` (attempt not spent, lease released)
    /// so the next process resumes them at once. New submissions fail with
    /// [`Error::ShuttingDown`] from the first moment. The store stays open (subscribers
    /// and status reads still work) until [`close`](Self::close).
    ///
    /// # Cancellation safety
    ///
    /// Cancellation safe: the drain runs to completion in the first caller's future or,
    /// if that is dropped, in the next caller's.
    pub async fn drain(&self) {
        let shared = self.shared.clone();
        self.shared.drained.get_or_init(|| drain(shared)).await;
    }

    /// Drains (if not done yet), then commits the last writes, ends every subscription
    /// with [`Error::ShuttingDown`] and closes the store, once.
    ///
    /// # Cancellation safety
    ///
    /// As for [`drain`](Self::drain).
    pub async fn close(&self) {
        self.drain().await;
        let shared = self.shared.clone();
        self.shared.closed.get_or_init(|| close(shared)).await;
    }

    /// [`drain`](Self::drain) then [`close`](Self::close): the whole engine shutdown of
    /// DESIGN §2, once. Later and concurrent calls wait for the same shutdown.
    ///
    /// # Cancellation safety
    ///
    /// As for [`drain`](Self::drain).
    pub async fn shutdown(&self) {
        self.close().await;
    }

    /// Checks that the store answers (for readiness probes).
    ///
    /// # Errors
    ///
    /// [`Error::ShuttingDown`] once closed; the store's error if it does not answer.
    ///
    /// # Cancellation safety
    ///
    /// Cancellation safe (read only).
    pub async fn health(&self) -> Result<()> {
        if self.shared.closed.initialized() {
            return Err(Error::ShuttingDown);
        }
        self.shared.store.health().await
    }
}

async fn drain(shared: Arc<Shared>) {
    shared.closing.store(true, Ordering::Release);
    shared.stop_claiming.cancel();
    shared.runners.close();
    let running = lock(&shared.slots).running();
    info!(running, "taskflow: draining running tasks");
    let drained = tokio::time::timeout(shared.config.drain_timeout, shared.runners.wait())
        .await
        .is_ok();
    if !drained {
        let ctls: Vec<_> = lock(&shared.running).values().cloned().collect();
        info!(
            tasks = ctls.len(),
            "taskflow: releasing tasks still running after drain timeout"
        );
        for ctl in ctls {
            ctl.request(StopReason::Shutdown);
        }
        shared.runners.wait().await;
    }
    shared.background.close();
    shared.background.wait().await;
}

async fn close(shared: Arc<Shared>) {
    shared.hub.close();
    shared.writer_close.cancel();
    shared.writer_tracker.close();
    shared.writer_tracker.wait().await;
    shared.store.close().await;
    info!("taskflow: stopped");
}

pub(crate) fn unreachable_outcome<T>(other: &OpResult) -> Result<T> {
    Err(Error::StoreUnavailable(Arc::new(sqlx::Error::Protocol(
        format!("store returned an unexpected outcome: {other:?}"),
    ))))
}

pub(crate) fn duration_ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
