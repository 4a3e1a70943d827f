//! The engine handle plugins hold: register handlers, submit, observe and control tasks,
//! shut down. Every call goes to the [`Node`] it points at.

use std::future::Future;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::config::Config;
use crate::delivery::{EventStream, open_stream};
use crate::error::{Error, Result};
use crate::execution::executor::{self, duration_ms, unexpected};
use crate::execution::runner;
use crate::handler::{TaskContext, TaskError, erase};
use crate::key::idempotency_key;
use crate::limits::{check_key, check_payload, check_task_name, check_user};
use crate::node::{Node, Registered, StopReason};
use crate::services;
use crate::store::{
    ClaimNow, ClaimedTask, Control, OpResult, Storage, Store, SubmitParams, WriteOp, now_ms,
};
use crate::task::{SubmitOptions, Submitted, TaskHandle, TaskInfo, TaskOptions, TaskStatus};
use crate::typed::{TaskDef, TaskName};

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
    node: Arc<Node>,
}

impl std::fmt::Debug for TaskFlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskFlow")
            .field("node", &self.node.id)
            .field("store", &self.node.store)
            .finish_non_exhaustive()
    }
}

/// A snapshot of one node's in-memory state, for diagnostics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeStats {
    /// Tasks running on this node now.
    pub running: usize,
    /// Tasks this node keeps local state for (a live run, or the user context and trace
    /// parent of a task submitted here that has not left this node yet).
    pub local_tasks: usize,
}

impl TaskFlow {
    /// Starts the engine on `store`: recovers work left `running` by a dead process (on an
    /// exclusive store), then starts the writer, the executor and the maintenance services.
    ///
    /// # Errors
    ///
    /// Store errors from start-up recovery (the engine is closed again before returning).
    ///
    /// # Cancellation safety
    ///
    /// Not cancellation safe: background tasks may already run when it is dropped.
    pub async fn start(store: impl Store, config: Config) -> Result<Self> {
        Self::start_on(crate::store::into_storage(store), config).await
    }

    /// Starts the engine on the storage interface (the `testing` feature's entry point).
    pub(crate) async fn start_on(store: Arc<dyn Storage>, config: Config) -> Result<Self> {
        let node = Arc::new(Node::new(store, config));
        if node.store.is_exclusive()
            && let Err(e) = services::rescuer::recover_at_startup(&node).await
        {
            node.close().await;
            return Err(e);
        }
        if let Ok(n) = node.store.tasks_pending_count().await {
            node.admission.set_pending(n);
        }
        if node.config.run_tasks {
            node.lifecycle.background.spawn(executor::run(node.clone()));
        }
        services::spawn_all(&node);
        info!(node = %node.id, backend = ?node.store.backend(), "task engine started");
        Ok(Self { node })
    }

    /// In-memory state of this node (running tasks, tasks with local state).
    pub fn stats(&self) -> NodeStats {
        NodeStats {
            running: self.node.slots.running(),
            local_tasks: self.node.local.len(),
        }
    }

    /// This node's id (the lease owner name).
    pub fn node_id(&self) -> &str {
        &self.node.id
    }

    /// Registers `handler` under `name` with default [`TaskOptions`].
    ///
    /// `name` is a [`TaskDef`] (the compiler then checks that the handler takes its input
    /// type and returns its output type) or a `&str` (types taken from the handler).
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] for a bad name, [`Error::DuplicateTask`] if already registered.
    pub fn register<In, Out, F, Fut>(&self, name: impl TaskName<In, Out>, handler: F) -> Result<()>
    where
        In: DeserializeOwned + Send + 'static,
        Out: Serialize + Send + 'static,
        F: Fn(TaskContext, In) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Out, TaskError>> + Send + 'static,
    {
        self.register_with(name, TaskOptions::default(), handler)
    }

    /// Registers `handler` under `name` with `options`.
    ///
    /// # Errors
    ///
    /// As for [`register`](Self::register).
    pub fn register_with<In, Out, F, Fut>(
        &self,
        name: impl TaskName<In, Out>,
        options: TaskOptions,
        handler: F,
    ) -> Result<()>
    where
        In: DeserializeOwned + Send + 'static,
        Out: Serialize + Send + 'static,
        F: Fn(TaskContext, In) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Out, TaskError>> + Send + 'static,
    {
        let name = name.task_name();
        check_task_name(name)?;
        if options.on_behalf_of && options.auto_recover {
            warn!(
                task.name = %name,
                "task `{name}` acts on behalf of its user but is registered with auto_recover \
                 on: after a crash or a lost lease it runs again without the user's token \
                 (never persisted). Register it with TaskOptions::auto_recover(false) and \
                 resume it with a fresh user context (TaskFlow::resume_with)"
            );
        }
        let limit = options.max_concurrency;
        self.node.registry.insert(
            name,
            Registered {
                handler: erase(handler),
                options,
            },
        )?;
        if let Some(limit) = limit {
            self.node.slots.set_name_limit(name, limit);
        }
        self.node.work.kick();
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

    /// [`submit`](Self::submit) of a task by its [`TaskDef`]: the compiler checks the
    /// input's type.
    ///
    /// # Errors
    ///
    /// As for [`submit`](Self::submit).
    ///
    /// # Cancellation safety
    ///
    /// As for [`submit`](Self::submit).
    pub async fn submit_task<In: Serialize, Out>(
        &self,
        task: TaskDef<In, Out>,
        input: In,
        options: SubmitOptions,
    ) -> Result<Submitted> {
        self.submit(task.name(), input, options).await
    }

    async fn submit_inner(
        &self,
        name: &str,
        input: impl Serialize,
        options: SubmitOptions,
    ) -> Result<Submitted> {
        let node = &self.node;
        if node.lifecycle.is_closing() {
            return Err(Error::ShuttingDown);
        }
        let registered = node
            .registry
            .get(name)
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
        node.admission.admit(user, &node.metrics)?;
        let claim = self.try_claim_now(user, name);
        let task_id = uuid::Uuid::now_v7().to_string();
        // Remembered before the commit: the executor may claim the task at once.
        let trace = {
            use tracing_opentelemetry::OpenTelemetrySpanExt;
            tracing::Span::current().context()
        };
        node.local
            .remember(&task_id, options.user_context.clone(), Some(trace));
        let params = SubmitParams {
            id: task_id.clone(),
            name: name.to_owned(),
            key,
            user_id: options.user.clone(),
            input,
            max_attempts: options
                .max_attempts
                .unwrap_or(registered.options.max_attempts),
            max_recoveries: registered
                .options
                .max_recoveries
                .unwrap_or(node.config.max_recoveries),
            auto_recover: registered.options.auto_recover,
            mode: options.mode,
            now: now_ms(),
            claim: claim.clone(),
        };
        // Counted before the commit: the executor may claim the task before we return.
        if claim.is_none() {
            node.admission.add_pending(1);
        }
        let result = node.writer.write(WriteOp::Submit(params)).await;
        let (task, created, claimed) = match result.map(|o| o.result) {
            Ok(OpResult::Submitted {
                task,
                created,
                claimed,
            }) => (task, created, claimed),
            other => {
                if claim.is_some() {
                    node.slots.release(user, name);
                } else {
                    node.admission.remove_pending(1);
                }
                node.local.forget(&task_id);
                return Err(match other {
                    Ok(other) => unexpected(&other),
                    Err(e) => e,
                });
            }
        };
        if !created {
            node.local.forget(&task_id);
            if claim.is_none() {
                node.admission.remove_pending(1);
            }
        }
        tracing::Span::current().record("task.id", tracing::field::display(&task.id));
        if claim.is_some() && !claimed {
            node.slots.release(user, name);
        }
        let handle = TaskHandle {
            id: task.id.clone(),
            idempotency_key: task.idempotency_key.clone(),
        };
        if !created {
            debug!(task.id = %task.id, status = %task.status, "submit attached to existing task");
            return Ok(Submitted::Existing(handle, task.status));
        }
        node.metrics.submitted.add(
            1,
            &[opentelemetry::KeyValue::new("task.name", name.to_owned())],
        );
        if claimed {
            let claimed = ClaimedTask {
                task: *task,
                epoch: 1,
                recovery: false,
                auto_recover: registered.options.auto_recover,
            };
            runner::spawn(node.clone(), claimed, registered);
        } else {
            node.work.kick();
        }
        Ok(Submitted::Created(handle))
    }

    /// Reserves a slot for claiming at submit, when this node runs tasks and nothing older
    /// is waiting.
    fn try_claim_now(&self, user: Option<&str>, name: &str) -> Option<ClaimNow> {
        let node = &self.node;
        if !node.config.run_tasks || node.work.is_set() || !node.slots.try_take(user, name) {
            return None;
        }
        Some(ClaimNow {
            node: node.id.clone(),
            lease_until: now_ms() + duration_ms(node.config.lease),
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
        self.node
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
        let node = &self.node;
        let task = self.status(key, user).await?;
        let sub = node.hub.subscribe(&task.id).ok_or(Error::ShuttingDown)?;
        if after_seq > task.last_seq {
            return Err(Error::CursorOutOfRange {
                after_seq,
                last_seq: task.last_seq,
            });
        }
        let poll = (!node.store.is_exclusive()).then_some(node.config.poll_interval);
        // A finished task's log is final: a cursor at its end has nothing left to wait for.
        let ended = task.status.is_terminal() && after_seq == task.last_seq;
        Ok(open_stream(
            ended,
            node.store.clone(),
            task.id,
            after_seq,
            sub,
            poll,
            node.metrics.clone(),
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
        let node = &self.node;
        match node.local.run(task_id) {
            Some(run) => {
                run.request(StopReason::Stop);
                let bound = node.config.stop_grace + node.config.lease;
                let _ = tokio::time::timeout(bound, run.done.cancelled()).await;
            }
            None => {
                self.control(task_id, Control::RequestStop).await?;
            }
        }
        let task = node
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
        self.resume_inner(key, user, None).await
    }

    /// [`resume`](Self::resume) with a fresh live user context (typically the resuming
    /// request's user, with a new token): the task's next run on this node gets it from
    /// [`TaskContext::user`] in place of the one given at submit, which a stop or a
    /// restart dropped. Like every user context it is never persisted: a run on another
    /// node, or after a restart, has none. A run that is live already keeps its own.
    ///
    /// The pattern for tasks that act with a user's token
    /// ([`TaskOptions::on_behalf_of`]): register with `auto_recover(false)`, so a
    /// recovered task waits suspended, and resume it with `resume_with`.
    ///
    /// # Errors
    ///
    /// As for [`resume`](Self::resume).
    ///
    /// # Cancellation safety
    ///
    /// As for [`resume`](Self::resume).
    pub async fn resume_with<T: std::any::Any + Send + Sync>(
        &self,
        key: &str,
        user: Option<&str>,
        user_context: T,
    ) -> Result<TaskStatus> {
        self.resume_inner(key, user, Some(Arc::new(user_context)))
            .await
    }

    async fn resume_inner(
        &self,
        key: &str,
        user: Option<&str>,
        user_context: Option<crate::handler::UserContext>,
    ) -> Result<TaskStatus> {
        let task = self.status(key, user).await?;
        // Before the commit: the executor may claim the resumed task at once.
        if let Some(context) = user_context {
            if task.status.is_terminal() {
                return Err(Error::InvalidTransition {
                    from: task.status,
                    action: "resume",
                });
            }
            self.node.local.set_user(&task.id, context);
        }
        let (from, to) = self.control(&task.id, Control::Resume).await?;
        if from.is_terminal() {
            self.node
                .local
                .forget_waiting(std::slice::from_ref(&task.id));
            return Err(Error::InvalidTransition {
                from,
                action: "resume",
            });
        }
        if to == TaskStatus::Pending && from == TaskStatus::Suspended {
            self.node.work.kick();
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
                    && let Some(run) = self.node.local.run(&task.id)
                {
                    run.request(StopReason::Cancel);
                }
                self.node.local.forget(&task.id);
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
        self.node.store.tasks_failed(limit).await
    }

    /// Puts the failed task with this key back to `pending` with a fresh set of attempts
    /// (and recoveries). `user` as for [`status`](Self::status): an operator passes
    /// `None`.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`]; [`Error::InvalidTransition`] unless the task failed, or when a
    /// newer run of its key became live meanwhile (one live run per key and owner).
    ///
    /// # Cancellation safety
    ///
    /// Not cancellation safe: the redrive may or may not be committed if dropped.
    pub async fn redrive(&self, key: &str, user: Option<&str>) -> Result<TaskStatus> {
        let task = self.status(key, user).await?;
        if task.status != TaskStatus::Failed {
            return Err(Error::InvalidTransition {
                from: task.status,
                action: "redrive",
            });
        }
        let (from, to) = self.control(&task.id, Control::Redrive).await?;
        // Still failed: a newer run of the key went live between the read and the write.
        if from != TaskStatus::Failed || to != TaskStatus::Pending {
            return Err(Error::InvalidTransition {
                from,
                action: "redrive",
            });
        }
        self.node.work.kick();
        Ok(to)
    }

    async fn control(&self, task_id: &str, action: Control) -> Result<(TaskStatus, TaskStatus)> {
        let op = WriteOp::Control {
            task_id: task_id.to_owned(),
            action,
            now: now_ms(),
        };
        match self.node.writer.write(op).await?.result {
            OpResult::Controlled { from, to } => Ok((from, to)),
            OpResult::NotFound => Err(Error::NotFound),
            other => Err(unexpected(&other)),
        }
    }

    /// Whether [`shutdown`](Self::shutdown) has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.node.lifecycle.is_closing()
    }

    /// Stops claiming and drains, once: running tasks get the drain timeout to finish;
    /// the rest are asked to stop with reason `shutdown` and, when their handler returns
    /// or after the stop grace, released to `pending` (attempt not spent, lease released)
    /// so the next process resumes them at once. New submissions fail with
    /// [`Error::ShuttingDown`] from the first moment. The store stays open (subscribers
    /// and status reads still work) until [`shutdown`](Self::shutdown).
    ///
    /// # Cancellation safety
    ///
    /// Cancellation safe: the drain runs to completion in the first caller's future or,
    /// if that is dropped, in the next caller's.
    pub async fn drain(&self) {
        self.node.drain().await;
    }

    /// Drains (if not done yet), then commits the last writes, ends every subscription
    /// with [`Error::ShuttingDown`] and closes the store: the whole engine shutdown of
    /// `docs/taskflow.md`, once. Later and concurrent calls wait for the same shutdown.
    ///
    /// # Cancellation safety
    ///
    /// As for [`drain`](Self::drain).
    pub async fn shutdown(&self) {
        self.node.close().await;
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
        if self.node.lifecycle.is_closed() {
            return Err(Error::ShuttingDown);
        }
        self.node.store.health().await
    }
}
