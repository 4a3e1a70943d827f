//! The [`App`] builder: start the core services and the plugins, serve, shut down.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Extension;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use taskflow::TaskFlow;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::extract::{RequestPolicy, UserContext, UserExtractor};
use crate::layers::log_and_redact_errors;
use crate::plugin::{Plugin, PluginContext, SetupContext, valid_plugin_name};
use crate::run_error::RunError;
use crate::shutdown::{CloseHooks, Sequence, ShutdownHandle, listen_for_signals};
use crate::stream::{BridgeRegistry, DisconnectPolicy};
use crate::telemetry::{Telemetry, configs_from_env, with_request_spans};
use crate::{TelemetryGuard, health, services, static_files};

/// Collects plugins and options; [`build_from_env`](Self::build_from_env) or
/// [`build`](Self::build) check them and give an [`App`].
#[derive(Default)]
pub struct AppBuilder {
    plugins: Vec<Box<dyn Plugin>>,
    static_dir: Option<PathBuf>,
    hooks: CloseHooks,
    telemetry: Option<TelemetryGuard>,
    user_extractor: Option<UserExtractor>,
}

impl fmt::Debug for AppBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppBuilder")
            .field(
                "plugins",
                &self.plugins.iter().map(|p| p.name()).collect::<Vec<_>>(),
            )
            .field("static_dir", &self.static_dir)
            .field("close_hooks", &self.hooks)
            .field("telemetry", &self.telemetry)
            .field("user_extractor", &self.user_extractor.is_some())
            .finish()
    }
}

impl AppBuilder {
    /// Adds a plugin; its routes are nested at `/api/{name}`.
    pub fn plugin(mut self, plugin: impl Plugin) -> Self {
        self.plugins.push(Box::new(plugin));
        self
    }

    /// Serves the front end from `dir` (with an SPA fallback to its `index.html`), unless
    /// `APPKIT_STATIC_DIR` says otherwise. Without either, `client/dist` if it exists.
    pub fn static_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.static_dir = Some(dir.into());
        self
    }

    /// Registers a core service the app started before the host (a database pool, a
    /// cache): `close` runs once at shutdown step 5, after the task store, in reverse
    /// order of registration, and before telemetry is flushed (see
    /// [`telemetry`](Self::telemetry)).
    pub fn on_close<F, Fut>(mut self, service: impl Into<String>, close: F) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.hooks.push(service, close);
        self
    }

    /// Finds the request's user with `extract` instead of the platform proxy's
    /// `X-Forwarded-*` headers, which are then never read (whatever
    /// `APPKIT_TRUST_FORWARDED_USER` says). `extract` returns `Ok(None)` when the request
    /// has no user: routes that need one answer 401 in production, and development stands
    /// in the local user as usual. Its error is the request's answer.
    ///
    /// # Examples
    ///
    /// ```
    /// # struct MyPlugin;
    /// # impl appkit::Plugin for MyPlugin { fn name(&self) -> &str { "mine" } }
    /// use appkit::UserContext;
    /// let builder = appkit::App::builder().plugin(MyPlugin).user_extractor(|parts| {
    ///     // e.g. a session the app verified itself
    ///     Ok(parts.extensions.get::<UserContext>().cloned())
    /// });
    /// ```
    pub fn user_extractor<F>(mut self, extract: F) -> Self
    where
        F: Fn(&axum::http::request::Parts) -> Result<Option<UserContext>> + Send + Sync + 'static,
    {
        self.user_extractor = Some(Arc::new(extract));
        self
    }

    /// Uses telemetry the app set up itself instead of the host's own.
    ///
    /// Without it, [`build_from_env`](Self::build_from_env) reads the telemetry variables
    /// and [`App::run`] starts [`appkit_telemetry::init`] first thing (see
    /// docs/configuration.md). Pass the guard of your own `appkit_telemetry::init` to
    /// configure it in code, or [`TelemetryGuard::disabled()`] to install nothing: a
    /// process has one global subscriber, so a process that runs several apps (tests)
    /// must opt out. The shutdown coordinator flushes the guard once, as its last step.
    ///
    /// # Examples
    ///
    /// ```
    /// # struct MyPlugin;
    /// # impl appkit::Plugin for MyPlugin { fn name(&self) -> &str { "mine" } }
    /// let builder = appkit::App::builder()
    ///     .plugin(MyPlugin)
    ///     .telemetry(appkit::TelemetryGuard::disabled());
    /// ```
    pub fn telemetry(mut self, guard: TelemetryGuard) -> Self {
        self.telemetry = Some(guard);
        self
    }

    /// Reads [`Config::from_env`] and, unless [`telemetry`](Self::telemetry) gave a guard,
    /// the telemetry variables (`OTEL_*`, `RUST_LOG`, …), then builds the app. [`App::run`]
    /// starts telemetry from them before anything else.
    ///
    /// # Errors
    ///
    /// [`RunError::Config`] naming every bad variable (host and telemetry alike); the
    /// errors of [`build`](Self::build).
    pub fn build_from_env(self) -> Result<App, RunError> {
        if self.telemetry.is_some() {
            return self.build(Config::from_env()?);
        }
        let (config, telemetry) = configs_from_env(Config::from_env())?;
        let mut app = self.build(config)?;
        app.telemetry = Telemetry::Init(Box::new(telemetry));
        Ok(app)
    }

    /// Builds the app with `config`, reading no environment variable.
    ///
    /// Telemetry is off unless [`telemetry`](Self::telemetry) gave a guard: `build`
    /// installs no subscriber (use [`build_from_env`](Self::build_from_env), or call
    /// `appkit_telemetry::init` yourself and pass its guard).
    ///
    /// # Errors
    ///
    /// [`RunError::InvalidPluginName`], [`RunError::DuplicatePlugin`];
    /// [`RunError::UntrustedIdentity`] in production outside Databricks Apps when
    /// `APPKIT_TRUST_FORWARDED_USER` is unset and the app installed no
    /// [`user_extractor`](Self::user_extractor).
    pub fn build(self, config: Config) -> Result<App, RunError> {
        let trust_forwarded_user = match config.forwarded_user_trust() {
            Ok(trust) => trust,
            Err(_) if self.user_extractor.is_some() => false,
            Err(e) => return Err(RunError::UntrustedIdentity(e)),
        };
        let mut seen = std::collections::HashSet::new();
        for plugin in &self.plugins {
            let name = plugin.name();
            if !valid_plugin_name(name) {
                return Err(RunError::InvalidPluginName(name.to_owned()));
            }
            if !seen.insert(name.to_owned()) {
                return Err(RunError::DuplicatePlugin(name.to_owned()));
            }
        }
        let policy = RequestPolicy {
            production: config.is_production(),
            trust_forwarded_user: trust_forwarded_user && self.user_extractor.is_none(),
            extractor: self.user_extractor,
        };
        Ok(App {
            config: Arc::new(config),
            plugins: self.plugins,
            static_dir: self.static_dir,
            policy,
            hooks: self.hooks,
            telemetry: self.telemetry.map_or_else(Telemetry::off, Telemetry::Ready),
            shutdown: ShutdownHandle::new(),
        })
    }
}

/// An appkit server: core services, plugins, routes, and the shutdown coordinator.
///
/// # Examples
///
/// ```no_run
/// # async fn run() -> Result<(), appkit::RunError> {
/// # struct MyPlugin;
/// # impl appkit::Plugin for MyPlugin { fn name(&self) -> &str { "mine" } }
/// appkit::App::builder()
///     .plugin(MyPlugin)
///     .build_from_env()?
///     .run()
///     .await
/// # }
/// ```
pub struct App {
    config: Arc<Config>,
    plugins: Vec<Box<dyn Plugin>>,
    static_dir: Option<PathBuf>,
    policy: RequestPolicy,
    hooks: CloseHooks,
    telemetry: Telemetry,
    shutdown: ShutdownHandle,
}

impl fmt::Debug for App {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("App")
            .field("config", &self.config)
            .field(
                "plugins",
                &self.plugins.iter().map(|p| p.name()).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// The started host, before it binds.
pub(crate) struct Started {
    pub(crate) router: Router,
    pub(crate) taskflow: TaskFlow,
    pub(crate) bridges: BridgeRegistry,
    pub(crate) plugins: Vec<Arc<dyn Plugin>>,
    pub(crate) hooks: CloseHooks,
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) shutdown: ShutdownHandle,
}

impl App {
    /// A builder with no plugins.
    pub fn builder() -> AppBuilder {
        AppBuilder::default()
    }

    /// The configuration the app runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The shutdown latch, for shutting down programmatically (as a signal would).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Starts the core services and plugins, binds, logs `listening on http://ADDR`,
    /// serves until SIGINT, SIGTERM or [`ShutdownHandle::trigger`], then runs the shutdown
    /// sequence (see [`shutdown`](crate::shutdown)).
    ///
    /// Telemetry starts first (unless the app passed its own guard, see
    /// [`AppBuilder::telemetry`]): the task engine's metrics come from the meter provider
    /// it installs. It is flushed once, as the last shutdown step, or after a failed
    /// start-up.
    ///
    /// # Errors
    ///
    /// Start-up errors (telemetry, store, engine, plugin setup, bind) after stopping what
    /// started; [`RunError::ShutdownTimedOut`] if the shutdown deadline passed.
    pub async fn run(mut self) -> Result<(), RunError> {
        let telemetry = std::mem::replace(&mut self.telemetry, Telemetry::off()).start()?;
        let result = self.serve(telemetry.clone()).await;
        if let Err(e) = &result
            && !matches!(e, RunError::ShutdownTimedOut { .. })
        {
            // Start-up failed: export what was recorded, within the guard's own bound
            // (a failure is logged by the guard). After a shutdown that ran, this is a
            // no-op; after one that timed out, the deadline has passed: skip it.
            let _ = telemetry.shutdown().await;
        }
        result
    }

    /// Everything after telemetry: start, bind, serve, shut down.
    async fn serve(self, telemetry: TelemetryGuard) -> Result<(), RunError> {
        let signals = TaskTracker::new();
        listen_for_signals(self.shutdown.clone(), &signals)?;
        let timeout = self.config.shutdown_timeout;
        let write_timeout = self.config.sse_write_timeout;
        let addr = SocketAddr::new(self.config.host, self.config.port);
        let shutdown = self.shutdown.clone();
        let started = self.start().await?;
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(source) => {
                started.taskflow.shutdown().await;
                started.hooks.close_all().await;
                return Err(RunError::Bind { addr, source });
            }
        };
        let local = listener.local_addr().unwrap_or(addr);
        info!("listening on http://{local}");
        let http_close = CancellationToken::new();
        let server = signals.spawn(crate::server::serve(
            listener,
            started.router,
            crate::server::ServeOptions { write_timeout },
            http_close.clone(),
        ));
        shutdown.requested().await;
        Sequence {
            bridges: started.bridges,
            plugins: started.plugins,
            taskflow: started.taskflow,
            http_close,
            server,
            hooks: started.hooks,
            telemetry,
            timeout,
        }
        .run()
        .await
    }

    /// Starts the core services (the Lakebase pool if configured, the task store and
    /// engine), sets up every plugin and builds the router.
    pub(crate) async fn start(self) -> Result<Started, RunError> {
        let App {
            config,
            plugins,
            static_dir,
            policy,
            mut hooks,
            shutdown,
            telemetry: _,
        } = self;
        log_deployment(&config, &policy);
        let services::Services { taskflow, lakebase } =
            services::start(&config, &mut hooks).await?;
        let mut ready = Vec::with_capacity(plugins.len());
        for mut plugin in plugins {
            let name = plugin.name().to_owned();
            let cx = SetupContext::new(&name, taskflow.clone(), lakebase.clone(), config.clone());
            if let Err(source) = plugin.setup(&cx).await {
                taskflow.shutdown().await;
                hooks.close_all().await;
                return Err(RunError::Setup {
                    plugin: name,
                    source,
                });
            }
            info!(plugin = %name, "plugin set up");
            ready.push(Arc::<dyn Plugin>::from(plugin));
        }
        let mut plugin_hooks = CloseHooks::default();
        for plugin in &ready {
            let plugin = plugin.clone();
            plugin_hooks.push(plugin.name().to_owned(), move || async move {
                plugin.shutdown().await;
            });
        }
        hooks.extend(plugin_hooks);
        let bridges = BridgeRegistry::new(DisconnectPolicy {
            stop_on_disconnect: true,
            grace: config.sse_disconnect_grace,
        });
        let cx = PluginContext::new(
            taskflow.clone(),
            lakebase.clone(),
            config.clone(),
            bridges.clone(),
            shutdown.clone(),
        );
        let static_dir =
            static_files::resolve_dir(config.static_dir.as_deref(), static_dir.as_deref());
        let health = health::routes(taskflow.clone(), lakebase, shutdown.clone());
        let router = router(&config, policy, &cx, &ready, static_dir, health);
        Ok(Started {
            router,
            taskflow,
            bridges,
            plugins: ready,
            hooks,
            shutdown,
        })
    }
}

/// Logs the environment and why, and whose word identifies users.
fn log_deployment(config: &Config, policy: &RequestPolicy) {
    let env = if config.is_production() {
        "production"
    } else {
        "development"
    };
    info!(
        environment = env,
        "environment: {env} ({})",
        config.env_source.reason()
    );
    let identity = match (&policy.extractor, policy.trust_forwarded_user) {
        (Some(_), _) => "the app's user extractor (X-Forwarded-* user headers ignored)",
        (None, true) if config.trust_forwarded_user == Some(true) => {
            "X-Forwarded-* user headers, trusted (APPKIT_TRUST_FORWARDED_USER=true)"
        }
        (None, true) if config.on_databricks_apps() => {
            "X-Forwarded-* user headers, trusted (on Databricks Apps, its proxy sets them)"
        }
        (None, true) => "X-Forwarded-* user headers, trusted (development)",
        (None, false) => {
            "none: X-Forwarded-* user headers ignored (APPKIT_TRUST_FORWARDED_USER=false)"
        }
    };
    info!("identity: {identity}");
}

fn router(
    config: &Config,
    policy: RequestPolicy,
    cx: &PluginContext,
    plugins: &[Arc<dyn Plugin>],
    static_dir: Option<PathBuf>,
    health: Router,
) -> Router {
    let mut router = health;
    for plugin in plugins {
        let routes = plugin
            .routes()
            .fallback(api_not_found)
            .with_state(cx.clone());
        router = router.nest(&format!("/api/{}", plugin.name()), routes);
    }
    let endpoints = plugins
        .iter()
        .map(|plugin| {
            let prefix = format!("/api/{}", plugin.name());
            let named = plugin
                .endpoints()
                .into_iter()
                .map(|(name, path)| {
                    let path = if path.starts_with('/') {
                        format!("{prefix}{path}")
                    } else {
                        format!("{prefix}/{path}")
                    };
                    (name, path)
                })
                .collect();
            (plugin.name().to_owned(), named)
        })
        .collect();
    let client = static_files::client_config(config.app_name.as_deref(), endpoints);
    let script: Arc<str> = static_files::config_script(&client).into();
    let router = router
        .fallback(static_files::fallback(static_dir, script))
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        // Two layers, one job each: errors are logged (and redacted in production) once,
        // outside; the request policy the user extractors read rides in the extensions.
        .layer(Extension(policy))
        .layer(axum::middleware::from_fn_with_state(
            config.is_production(),
            log_and_redact_errors,
        ));
    // Last, so outermost: the request span covers every other layer.
    with_request_spans(router)
}

async fn api_not_found() -> Error {
    Error::NotFound
}
