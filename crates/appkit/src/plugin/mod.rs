//! Plugins: the [`Plugin`] trait, what setup gets, and the context routes get.

mod context;

use std::collections::BTreeMap;
use std::fmt;

use appkit_lakebase::LakebasePool;
use async_trait::async_trait;
use axum::Router;
use taskflow::TaskFlow;

use crate::config::Config;
use crate::error::BoxError;

pub use context::{ExecuteSettings, PluginContext};

/// A unit of an app: it registers tasks at setup, serves routes under `/api/{name}`, and
/// takes part in shutdown.
///
/// Plugins never install signal handlers; the host's shutdown coordinator calls
/// [`abort_active_operations`](Self::abort_active_operations) and
/// [`shutdown`](Self::shutdown), each at most once.
///
/// # Examples
///
/// ```
/// use appkit::extract::Json;
/// use appkit::taskflow::{TaskContext, TaskDef, TaskError};
/// use appkit::{Plugin, PluginContext, SetupContext, TaskRequest};
/// use axum::{Router, extract::State, response::Response, routing::post};
///
/// const GREET: TaskDef<String, ()> = TaskDef::new("greet");
///
/// async fn greet(ctx: TaskContext, who: String) -> Result<(), TaskError> {
///     ctx.emit("greeting", format!("hello {who}")).await?;
///     Ok(())
/// }
///
/// struct Hello;
///
/// #[async_trait::async_trait]
/// impl Plugin for Hello {
///     fn name(&self) -> &str {
///         "hello"
///     }
///
///     async fn setup(&mut self, cx: &SetupContext) -> Result<(), appkit::BoxError> {
///         cx.taskflow().register(GREET, greet)?;
///         Ok(())
///     }
///
///     fn routes(&self) -> Router<PluginContext> {
///         async fn start(
///             State(cx): State<PluginContext>,
///             req: TaskRequest,
///             Json(who): Json<String>,
///         ) -> appkit::Result<Response> {
///             cx.execute(&req, GREET, who).await
///         }
///         Router::new()
///             .route("/greet", post(start))
///             .nest("/tasks", appkit::task_routes())
///     }
/// }
/// ```
#[async_trait]
pub trait Plugin: Send + Sync + 'static {
    /// The plugin's name: its routes live under `/api/{name}`. 1 to 64 of `a-z`, `0-9`,
    /// `-` and `_`; unique within the app.
    fn name(&self) -> &str;

    /// Registers tasks and prepares state, once, before the server binds. An error aborts
    /// start-up.
    ///
    /// # Errors
    ///
    /// Whatever the plugin cannot recover from; it is reported with the plugin's name.
    async fn setup(&mut self, cx: &SetupContext) -> Result<(), BoxError> {
        let _ = cx;
        Ok(())
    }

    /// The plugin's routes, nested at `/api/{name}`; the host gives them their state, the
    /// [`PluginContext`] (reach it with `State<PluginContext>`). Unmatched paths under the
    /// mount answer 404.
    fn routes(&self) -> Router<PluginContext> {
        Router::new()
    }

    /// The plugin's named endpoints, for the front end: name → path relative to the
    /// plugin's mount (`"count" → "/count"`). The host serves them, prefixed with
    /// `/api/{name}`, in `window.__CONFIG__.endpoints[name]` on every HTML page, where
    /// AppKit front ends look their URLs up. Default: none.
    fn endpoints(&self) -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    /// Shutdown step 3: abort in-flight work that would hold the server up (the task
    /// engine's own drain runs after every plugin's hook).
    async fn abort_active_operations(&self) {}

    /// Shutdown step 5: release the plugin's resources. Runs before the core services
    /// close, in reverse plugin order.
    async fn shutdown(&self) {}
}

/// What a plugin's [`setup`](Plugin::setup) gets.
pub struct SetupContext {
    plugin: String,
    taskflow: TaskFlow,
    lakebase: Option<LakebasePool>,
    config: std::sync::Arc<Config>,
}

impl fmt::Debug for SetupContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SetupContext")
            .field("plugin", &self.plugin)
            .finish_non_exhaustive()
    }
}

impl SetupContext {
    pub(crate) fn new(
        plugin: &str,
        taskflow: TaskFlow,
        lakebase: Option<LakebasePool>,
        config: std::sync::Arc<Config>,
    ) -> Self {
        Self {
            plugin: plugin.to_owned(),
            taskflow,
            lakebase,
            config,
        }
    }

    /// The task engine, to register task handlers. A task name registered twice (by any
    /// plugin) is a start-up error.
    pub fn taskflow(&self) -> &TaskFlow {
        &self.taskflow
    }

    /// The Lakebase pool, when one is configured, e.g. to create the plugin's tables.
    pub fn lakebase(&self) -> Option<&LakebasePool> {
        self.lakebase.as_ref()
    }

    /// The host configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The name of the plugin being set up.
    pub fn plugin_name(&self) -> &str {
        &self.plugin
    }
}

/// Checks a plugin name: 1 to 64 of `a-z`, `0-9`, `-`, `_`.
pub(crate) fn valid_plugin_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}
