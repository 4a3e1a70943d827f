//! The single-flight shutdown coordinator (its order and deadline: `docs/host.md`).
//!
//! SIGINT, SIGTERM and [`ShutdownHandle::trigger`] all go to one latch: the first starts
//! the sequence, every later one is logged at debug and changes nothing. The sequence runs
//! each step once, in order, under one deadline (`APPKIT_SHUTDOWN_TIMEOUT_MS`):
//!
//! 1. readiness off (`/ready` and new task submissions answer 503);
//! 2. drain SSE bridges and plugin-owned SSE streams
//!    ([`PluginContext::sse_stream`](crate::PluginContext::sse_stream)): final
//!    `server_shutting_down` frame, stream closed, before the HTTP server waits for
//!    connections, so open streams cannot pin it;
//! 3. abort active operations (each plugin's hook, then the task engine's drain);
//! 4. HTTP server graceful close;
//! 5. core services in reverse start order (plugins' `shutdown`, the task store, then the
//!    services the app registered with [`AppBuilder::on_close`](crate::AppBuilder::on_close)),
//!    and last telemetry: one bounded OTLP flush (`shutdown: telemetry flushed`); a failed
//!    or cut-short flush is logged, never fatal;
//! 6. done. If the deadline passes, the step that hung is logged and
//!    [`RunError::ShutdownTimedOut`] returned (the binary exits 1).

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use futures_util::future::BoxFuture;
use taskflow::TaskFlow;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::TelemetryGuard;
use crate::plugin::Plugin;
use crate::run_error::RunError;
use crate::stream::BridgeRegistry;
use crate::telemetry;

/// Longest the bridge drain waits for streams to close before moving on.
pub const DEFAULT_BRIDGE_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The handle to the shutdown latch. Cheap to clone.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let handle = appkit::ShutdownHandle::new();
/// assert!(handle.trigger("test"));
/// assert!(!handle.trigger("again")); // already in progress: changes nothing
/// handle.requested().await;
/// assert!(handle.is_started());
/// # }
/// ```
#[derive(Clone, Default)]
pub struct ShutdownHandle {
    inner: Arc<HandleInner>,
}

#[derive(Default)]
struct HandleInner {
    started: AtomicBool,
    requested: CancellationToken,
    cause: OnceLock<String>,
}

impl fmt::Debug for ShutdownHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShutdownHandle")
            .field("started", &self.is_started())
            .field("cause", &self.inner.cause.get())
            .finish()
    }
}

impl ShutdownHandle {
    /// A latch that has not been triggered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the shutdown, once. Returns `true` for the call that started it; later calls
    /// are logged at debug and change nothing.
    pub fn trigger(&self, cause: &str) -> bool {
        if self.inner.started.swap(true, Ordering::AcqRel) {
            debug!(cause, "shutdown already in progress; ignored");
            return false;
        }
        let _ = self.inner.cause.set(cause.to_owned());
        info!("shutdown: started by {cause}");
        self.inner.requested.cancel();
        true
    }

    /// `true` from the first moment of shutdown.
    pub fn is_started(&self) -> bool {
        self.inner.started.load(Ordering::Acquire)
    }

    /// Resolves once shutdown has been triggered.
    ///
    /// # Cancellation safety
    ///
    /// Cancellation safe.
    pub async fn requested(&self) {
        self.inner.requested.cancelled().await;
    }
}

/// Sends SIGINT and SIGTERM (Ctrl-C elsewhere) to the latch for the life of the process.
///
/// # Errors
///
/// If a signal handler cannot be installed.
pub(crate) fn listen_for_signals(
    handle: ShutdownHandle,
    tracker: &TaskTracker,
) -> Result<(), RunError> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let start = |e: std::io::Error| RunError::start("signal handlers", e);
        let mut int = signal(SignalKind::interrupt()).map_err(start)?;
        let mut term = signal(SignalKind::terminate()).map_err(start)?;
        tracker.spawn(async move {
            loop {
                let name = tokio::select! {
                    Some(()) = int.recv() => "SIGINT",
                    Some(()) = term.recv() => "SIGTERM",
                    else => break,
                };
                handle.trigger(name);
            }
        });
    }
    #[cfg(not(unix))]
    tracker.spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            handle.trigger("Ctrl-C");
        }
    });
    Ok(())
}

type CloseFn = Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>;

/// Named async close hooks, run once, in reverse order of registration (start order).
#[derive(Default)]
pub(crate) struct CloseHooks {
    hooks: Vec<(String, CloseFn)>,
}

impl fmt::Debug for CloseHooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.hooks.iter().map(|(name, _)| name))
            .finish()
    }
}

impl CloseHooks {
    /// Registers `close` for the service `name`, started now.
    pub(crate) fn push<F, Fut>(&mut self, name: impl Into<String>, close: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.hooks
            .push((name.into(), Box::new(move || Box::pin(close()))));
    }

    /// Appends `other`'s hooks after this one's (they started later).
    pub(crate) fn extend(&mut self, other: CloseHooks) {
        self.hooks.extend(other.hooks);
    }

    /// Runs every hook, last registered first, each once (this consumes the list).
    pub(crate) async fn close_all(self) {
        for (name, close) in self.hooks.into_iter().rev() {
            debug!(service = %name, "closing");
            close().await;
        }
    }
}

/// Everything the sequence acts on.
pub(crate) struct Sequence {
    pub(crate) bridges: BridgeRegistry,
    pub(crate) plugins: Vec<Arc<dyn Plugin>>,
    pub(crate) taskflow: TaskFlow,
    pub(crate) http_close: CancellationToken,
    pub(crate) server: JoinHandle<std::io::Result<()>>,
    pub(crate) hooks: CloseHooks,
    /// Flushed last, after everything that emits telemetry has stopped.
    pub(crate) telemetry: TelemetryGuard,
    pub(crate) timeout: Duration,
}

impl Sequence {
    /// Runs steps 1–6 under the deadline.
    ///
    /// # Errors
    ///
    /// [`RunError::ShutdownTimedOut`] naming the step that hung.
    pub(crate) async fn run(self) -> Result<(), RunError> {
        let timeout = self.timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let guard = self.telemetry.clone();
        let step = Mutex::new("readiness off");
        let steps = self.steps(&step);
        if tokio::time::timeout_at(deadline, steps).await.is_ok() {
            // The end of step 5: telemetry, under the same deadline but never fatal.
            telemetry::flush(&guard, deadline).await;
            info!("shutdown: complete");
            return Ok(());
        }
        let step = *step.lock().unwrap_or_else(PoisonError::into_inner);
        error!(
            "shutdown: deadline of {} ms passed during step `{step}`",
            timeout.as_millis()
        );
        Err(RunError::ShutdownTimedOut { step })
    }

    async fn steps(self, step: &Mutex<&'static str>) {
        let enter =
            |name: &'static str| *step.lock().unwrap_or_else(PoisonError::into_inner) = name;
        // 1. The latch is already set: /ready and submissions answer 503 from here on.
        info!("shutdown: readiness off");

        enter("drain sse bridges");
        info!("shutdown: draining {} sse bridges", self.bridges.open());
        let left = self.bridges.drain(DEFAULT_BRIDGE_DRAIN_TIMEOUT).await;
        if left > 0 {
            warn!(bridges = left, "sse bridges still open after the drain");
        }

        enter("abort active operations");
        info!("shutdown: aborting active operations");
        for plugin in &self.plugins {
            plugin.abort_active_operations().await;
        }
        // The engine's drain: stop claiming, let tasks finish, release the rest. Its store
        // closes with the core services below.
        self.taskflow.drain().await;

        enter("http server close");
        self.http_close.cancel();
        match self.server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "http server ended with an error"),
            Err(e) => warn!(error = %e, "http server task failed"),
        }
        info!("shutdown: http server closed");

        enter("close core services");
        self.hooks.close_all().await;
        info!("shutdown: core services closed");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use super::*;

    #[tokio::test]
    async fn close_hooks_run_once_in_reverse_order() {
        let log = Arc::new(StdMutex::new(Vec::new()));
        let mut hooks = CloseHooks::default();
        for name in ["telemetry", "lakebase", "taskflow"] {
            let log = log.clone();
            hooks.push(name, move || async move { log.lock().unwrap().push(name) });
        }
        hooks.close_all().await;
        assert_eq!(*log.lock().unwrap(), ["taskflow", "lakebase", "telemetry"]);
    }

    #[tokio::test]
    async fn only_the_first_trigger_starts_shutdown() {
        let handle = ShutdownHandle::new();
        assert!(!handle.is_started());
        assert!(handle.trigger("SIGINT"));
        assert!(!handle.trigger("SIGTERM"));
        assert!(handle.is_started());
        assert_eq!(handle.inner.cause.get().map(String::as_str), Some("SIGINT"));
    }
}
