//! Host configuration, read once from the environment.
//!
//! Only this module reads environment variables, through an [`appkit_env::Env`], as the
//! telemetry and Lakebase configurations do: [`Config::from_env`] collects every problem
//! before it fails and returns one [`ConfigError`] that names each variable, the value it
//! got (secrets and URL passwords redacted) and the form it expects. A malformed value is
//! always an error, never a silent default; an empty value counts as unset. The variables
//! are listed in `docs/configuration.md`; a unit test keeps that table and this module in
//! step.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use appkit_env::{Env, Problem, Shown};
use appkit_lakebase::LakebaseConfig;
use taskflow::RateLimit;

/// Default port when neither `DATABRICKS_APP_PORT` nor `PORT` is set.
pub const DEFAULT_PORT: u16 = 8000;
/// Default bind address.
pub const DEFAULT_HOST: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
/// Default task store location.
pub const DEFAULT_TASKS_STORE: &str = "sqlite://.appkit/tasks.db";
/// Default idle time after which an SSE stream gets a `: hb` comment.
pub const DEFAULT_SSE_KEEPALIVE: Duration = Duration::from_millis(25_000);
/// Default time a write to a client may make no progress before its connection is closed.
pub const DEFAULT_SSE_WRITE_TIMEOUT: Duration = Duration::from_millis(60_000);
/// Default grace between an SSE client's disconnect and stopping its task.
pub const DEFAULT_SSE_DISCONNECT_GRACE: Duration = Duration::from_millis(5_000);
/// Default bound on the whole shutdown sequence.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_millis(15_000);
/// Default limit on request bodies read by extractors.
pub const DEFAULT_MAX_BODY_BYTES: usize = 2 * 1024 * 1024;
/// Default static directory, used when it exists and nothing else is configured.
pub const DEFAULT_STATIC_DIR: &str = "client/dist";

/// Whether the host runs for development or production.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Environment {
    /// Local development: a fixed local user stands in for a missing one, and 5xx
    /// messages are shown in full.
    #[default]
    Development,
    /// Behind the platform proxy: a route that needs a user answers 401 without one, and
    /// 5xx messages are redacted to "Server error".
    Production,
}

/// Why the host runs in the [`Environment`] it does (logged at start-up).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EnvironmentSource {
    /// `APPKIT_ENV` was set.
    Explicit,
    /// `APPKIT_ENV` unset and `DATABRICKS_APP_NAME` set: on Databricks Apps, production.
    DatabricksApp,
    /// `APPKIT_ENV` unset and not on Databricks Apps: development.
    #[default]
    Default,
}

impl EnvironmentSource {
    /// Why, in words, for the start-up log.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Explicit => "set by APPKIT_ENV",
            Self::DatabricksApp => {
                "APPKIT_ENV is unset and DATABRICKS_APP_NAME is set: running on Databricks Apps"
            }
            Self::Default => {
                "APPKIT_ENV is unset and DATABRICKS_APP_NAME is unset: not on Databricks Apps"
            }
        }
    }
}

/// The variables the Lakebase pool is configured with (see
/// [`LakebaseConfig::from_env`]); read when `PGHOST` is set or the task store is `lakebase`.
pub const LAKEBASE_VARIABLES: [&str; 11] = appkit_lakebase::config::VARIABLES;

/// Where the task engine keeps its tasks and events.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum TasksStore {
    /// An embedded SQLite file (one process owns it).
    Sqlite(PathBuf),
    /// A Postgres database given by a `postgres://` URL, on a pool of the store's own.
    /// Several processes can share it.
    Postgres(Box<LakebaseConfig>),
    /// The Lakebase pool ([`Config::lakebase`], from the `PG*` variables), shared with the
    /// plugins.
    Lakebase,
}

/// Task engine settings the host passes on to [`taskflow::Config`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct TaskflowSettings {
    /// Lease on a running task (`TASKFLOW_LEASE_MS`).
    pub lease: Duration,
    /// Time running tasks get to finish at shutdown (`TASKFLOW_DRAIN_TIMEOUT_MS`).
    pub drain_timeout: Duration,
    /// Pending-work poll interval (`TASKFLOW_POLL_INTERVAL_MS`).
    pub poll_interval: Duration,
    /// Grace a stopped handler gets before it is dropped (`TASKFLOW_STOP_GRACE_MS`).
    pub stop_grace: Duration,
    /// Base of the retry backoff (`TASKFLOW_RETRY_BASE_MS`).
    pub retry_base: Duration,
    /// Cap of the retry backoff (`TASKFLOW_RETRY_CAP_MS`).
    pub retry_cap: Duration,
    /// Interval of the expired-lease scan (`TASKFLOW_REAP_INTERVAL_MS`).
    pub reap_interval: Duration,
    /// Recoveries a task may have (its process died or lost its lease) before it fails
    /// with kind `recovery_limit` (`TASKFLOW_MAX_RECOVERIES`).
    pub max_recoveries: u32,
}

impl Default for TaskflowSettings {
    fn default() -> Self {
        Self {
            lease: taskflow::DEFAULT_LEASE,
            drain_timeout: taskflow::DEFAULT_DRAIN_TIMEOUT,
            poll_interval: taskflow::DEFAULT_POLL_INTERVAL,
            stop_grace: taskflow::DEFAULT_STOP_GRACE,
            retry_base: taskflow::DEFAULT_RETRY_BASE,
            retry_cap: taskflow::DEFAULT_RETRY_CAP,
            reap_interval: taskflow::DEFAULT_REAP_INTERVAL,
            max_recoveries: taskflow::DEFAULT_MAX_RECOVERIES,
        }
    }
}

/// Everything the host is configured with. `Default` gives the documented defaults.
///
/// # Examples
///
/// ```
/// use appkit::{Config, Environment};
/// let mut config = Config::default();
/// config.env = Environment::Production;
/// assert_eq!(config.port, 8000);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Port to listen on; 0 picks an ephemeral one (`DATABRICKS_APP_PORT`, else `PORT`).
    pub port: u16,
    /// Address to bind (`APPKIT_HOST`).
    pub host: IpAddr,
    /// Development or production (`APPKIT_ENV`; unset: production on Databricks Apps,
    /// else development).
    pub env: Environment,
    /// Why [`env`](Self::env) is what it is.
    pub env_source: EnvironmentSource,
    /// The Databricks app's name (`DATABRICKS_APP_NAME`, set by the platform): `Some` on
    /// Databricks Apps. Shown to the front end as `appName` in `window.__CONFIG__`.
    pub app_name: Option<String>,
    /// The task store (`APPKIT_TASKS_STORE`).
    pub tasks_store: TasksStore,
    /// The Postgres schema the task store's tables live in: the `search_path` of the
    /// connections of the pool it runs on (`APPKIT_TASKS_SCHEMA`).
    pub tasks_schema: Option<String>,
    /// The Lakebase pool, when `PGHOST` is set or the task store is `lakebase` (the `PG*`
    /// and Databricks variables in [`LAKEBASE_VARIABLES`]).
    pub lakebase: Option<LakebaseConfig>,
    /// Idle time before a `: hb` keep-alive comment (`APPKIT_SSE_KEEPALIVE_MS`).
    pub sse_keepalive: Duration,
    /// Time a write to a client may make no progress (the client stopped reading) before
    /// the server closes its connection (`APPKIT_SSE_WRITE_TIMEOUT_MS`).
    pub sse_write_timeout: Duration,
    /// Grace between a client's disconnect and stopping its task
    /// (`APPKIT_SSE_DISCONNECT_GRACE_MS`).
    pub sse_disconnect_grace: Duration,
    /// Bound on the whole shutdown sequence (`APPKIT_SHUTDOWN_TIMEOUT_MS`).
    pub shutdown_timeout: Duration,
    /// Whether the `X-Forwarded-*` user headers are trusted
    /// (`APPKIT_TRUST_FORWARDED_USER`): `Some(true)` always, `Some(false)` never, `None`
    /// (unset) in development and on Databricks Apps, while production elsewhere refuses
    /// to start (see [`forwarded_user_trust`](Self::forwarded_user_trust)).
    pub trust_forwarded_user: Option<bool>,
    /// The built front end to serve, overriding the app's choice (`APPKIT_STATIC_DIR`).
    pub static_dir: Option<PathBuf>,
    /// Largest request body extractors read (`APPKIT_MAX_BODY_BYTES`).
    pub max_body_bytes: usize,
    /// Submissions allowed per user (`APPKIT_RATE_LIMIT_PER_USER`, e.g. `20/1000ms`).
    pub rate_limit_per_user: Option<RateLimit>,
    /// Task engine settings.
    pub taskflow: TaskflowSettings,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            port: DEFAULT_PORT,
            host: DEFAULT_HOST,
            env: Environment::Development,
            env_source: EnvironmentSource::Default,
            app_name: None,
            tasks_store: TasksStore::Sqlite(PathBuf::from(".appkit/tasks.db")),
            tasks_schema: None,
            lakebase: None,
            sse_keepalive: DEFAULT_SSE_KEEPALIVE,
            sse_write_timeout: DEFAULT_SSE_WRITE_TIMEOUT,
            sse_disconnect_grace: DEFAULT_SSE_DISCONNECT_GRACE,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            trust_forwarded_user: None,
            static_dir: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            rate_limit_per_user: None,
            taskflow: TaskflowSettings::default(),
        }
    }
}

/// One variable that did not parse: its name, its value as it may be shown and the form
/// it should have (the [`appkit_env`] type every AppKit crate reports with).
pub use appkit_env::Problem as ConfigProblem;

/// Every configuration problem found, host, telemetry and Lakebase alike, in the order the
/// variables were read; its message names each variable (the [`appkit_env`] type every
/// AppKit crate reports with).
pub use appkit_env::Problems as ConfigError;

impl Config {
    /// Reads the configuration from the process environment.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming every variable with a bad value.
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut vars = Env::process();
        let config = Self::read(&mut vars);
        vars.finish(config)
    }

    /// Reads the configuration through `lookup` (a variable's value, or `None` if unset).
    ///
    /// # Errors
    ///
    /// As for [`from_env`](Self::from_env).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::collections::HashMap;
    /// let env = HashMap::from([("APPKIT_SSE_KEEPALIVE_MS", "soon")]);
    /// let err = appkit::Config::from_lookup(|k| env.get(k).map(|v| v.to_string())).unwrap_err();
    /// assert!(err.to_string().contains("APPKIT_SSE_KEEPALIVE_MS"));
    /// ```
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut vars = Env::new(lookup);
        let config = Self::read(&mut vars);
        vars.finish(config)
    }

    /// Reads the configuration through `vars`, which records every bad variable (so the
    /// host's, telemetry's and Lakebase's problems can be reported together). Where a
    /// variable is bad, the configuration holds its default.
    pub fn read(vars: &mut Env<'_>) -> Self {
        let d = Self::default();
        let port = if vars.is_set("DATABRICKS_APP_PORT") {
            vars.port("DATABRICKS_APP_PORT", 0)
        } else {
            vars.port("PORT", 0)
        }
        .unwrap_or(d.port);
        let t = d.taskflow;
        let taskflow = TaskflowSettings {
            lease: vars.millis("TASKFLOW_LEASE_MS", 1).unwrap_or(t.lease),
            drain_timeout: vars
                .millis("TASKFLOW_DRAIN_TIMEOUT_MS", 0)
                .unwrap_or(t.drain_timeout),
            poll_interval: vars
                .millis("TASKFLOW_POLL_INTERVAL_MS", 1)
                .unwrap_or(t.poll_interval),
            stop_grace: vars
                .millis("TASKFLOW_STOP_GRACE_MS", 0)
                .unwrap_or(t.stop_grace),
            retry_base: vars
                .millis("TASKFLOW_RETRY_BASE_MS", 1)
                .unwrap_or(t.retry_base),
            retry_cap: vars
                .millis("TASKFLOW_RETRY_CAP_MS", 1)
                .unwrap_or(t.retry_cap),
            reap_interval: vars
                .millis("TASKFLOW_REAP_INTERVAL_MS", 1)
                .unwrap_or(t.reap_interval),
            max_recoveries: vars
                .number("TASKFLOW_MAX_RECOVERIES", 0)
                .unwrap_or(t.max_recoveries),
        };
        let tasks_store = vars
            .parse_shown("APPKIT_TASKS_STORE", Shown::Url, parse_store)
            .unwrap_or(d.tasks_store);
        let tasks_schema = vars.parse("APPKIT_TASKS_SCHEMA", parse_schema);
        if let Some(schema) = &tasks_schema
            && matches!(tasks_store, TasksStore::Sqlite(_))
            && !vars.problems().names("APPKIT_TASKS_STORE")
        {
            vars.report(Problem::invalid(
                "APPKIT_TASKS_SCHEMA",
                schema,
                Shown::Plain,
                "unset with a `sqlite://` task store (a schema needs `postgres://…` or `lakebase`)",
            ));
        }
        let lakebase = if matches!(tasks_store, TasksStore::Lakebase) || vars.is_set("PGHOST") {
            LakebaseConfig::read(vars)
        } else {
            None
        };
        let app_name = vars.string("DATABRICKS_APP_NAME");
        let environments = [
            ("development", Environment::Development),
            ("production", Environment::Production),
        ];
        let (env, env_source) = match vars.one_of("APPKIT_ENV", &environments) {
            Some(env) => (env, EnvironmentSource::Explicit),
            // Set but bad: reported; the default stands in while the rest is read.
            None if vars.is_set("APPKIT_ENV") => (d.env, EnvironmentSource::Explicit),
            None if app_name.is_some() => {
                (Environment::Production, EnvironmentSource::DatabricksApp)
            }
            None => (Environment::Development, EnvironmentSource::Default),
        };
        Self {
            port,
            host: vars
                .parse("APPKIT_HOST", |v| {
                    v.parse()
                        .map_err(|_| "an IP address such as 0.0.0.0 or 127.0.0.1".to_owned())
                })
                .unwrap_or(d.host),
            env,
            env_source,
            app_name,
            tasks_store,
            tasks_schema,
            lakebase,
            sse_keepalive: vars
                .millis("APPKIT_SSE_KEEPALIVE_MS", 1)
                .unwrap_or(d.sse_keepalive),
            sse_write_timeout: vars
                .millis("APPKIT_SSE_WRITE_TIMEOUT_MS", 1)
                .unwrap_or(d.sse_write_timeout),
            sse_disconnect_grace: vars
                .millis("APPKIT_SSE_DISCONNECT_GRACE_MS", 0)
                .unwrap_or(d.sse_disconnect_grace),
            shutdown_timeout: vars
                .millis("APPKIT_SHUTDOWN_TIMEOUT_MS", 1)
                .unwrap_or(d.shutdown_timeout),
            trust_forwarded_user: vars.bool("APPKIT_TRUST_FORWARDED_USER"),
            static_dir: vars.parse("APPKIT_STATIC_DIR", parse_dir),
            max_body_bytes: vars
                .bytes("APPKIT_MAX_BODY_BYTES")
                .unwrap_or(d.max_body_bytes),
            rate_limit_per_user: vars.parse("APPKIT_RATE_LIMIT_PER_USER", parse_rate),
            taskflow,
        }
    }

    /// `true` in production.
    pub fn is_production(&self) -> bool {
        self.env == Environment::Production
    }

    /// `true` on Databricks Apps (`DATABRICKS_APP_NAME` is set).
    pub fn on_databricks_apps(&self) -> bool {
        self.app_name.is_some()
    }

    /// Whether the `X-Forwarded-*` user headers are read.
    ///
    /// `APPKIT_TRUST_FORWARDED_USER` decides when set. Unset, they are trusted in
    /// development and on Databricks Apps (whose proxy sets them and strips client-sent
    /// copies).
    ///
    /// # Errors
    ///
    /// [`UntrustedIdentity`] when unset in production outside Databricks Apps: nothing
    /// says a proxy strips client-sent copies there, so any client could claim any user.
    pub fn forwarded_user_trust(&self) -> Result<bool, UntrustedIdentity> {
        match self.trust_forwarded_user {
            Some(trust) => Ok(trust),
            None if !self.is_production() || self.on_databricks_apps() => Ok(true),
            None => Err(UntrustedIdentity),
        }
    }

    /// The task engine configuration these settings describe.
    pub fn taskflow_config(&self) -> taskflow::Config {
        let t = &self.taskflow;
        let mut config = taskflow::Config::default()
            .lease(t.lease)
            .drain_timeout(t.drain_timeout)
            .poll_interval(t.poll_interval)
            .stop_grace(t.stop_grace)
            .retry_base(t.retry_base)
            .retry_cap(t.retry_cap)
            .reap_interval(t.reap_interval)
            .max_recoveries(t.max_recoveries);
        if let Some(limit) = self.rate_limit_per_user {
            config = config.user_rate_limit(limit);
        }
        config
    }
}

/// Production outside Databricks Apps with `APPKIT_TRUST_FORWARDED_USER` unset: the
/// forwarded identity headers cannot be trusted by default there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "refusing to start: APPKIT_ENV=production outside Databricks Apps (DATABRICKS_APP_NAME is \
     unset) and APPKIT_TRUST_FORWARDED_USER is unset, so nothing says a proxy sets the \
     X-Forwarded-User headers and strips copies a client sends: any client could claim any \
     user. Set APPKIT_TRUST_FORWARDED_USER=true when such a proxy is in front of this server, \
     APPKIT_TRUST_FORWARDED_USER=false to ignore the headers (requests that need a user then \
     answer 401), or install a user extractor in the app (AppBuilder::user_extractor)"
)]
pub struct UntrustedIdentity;

const STORE_FORMS: &str = "`sqlite://PATH`, \
    `postgres://USER[:PASSWORD]@HOST[:PORT][/DATABASE][?sslmode=…&application_name=…]` or `lakebase`";

fn parse_store(v: &str) -> Result<TasksStore, String> {
    if let Some(path) = v.strip_prefix("sqlite://").filter(|p| !p.is_empty()) {
        return Ok(TasksStore::Sqlite(PathBuf::from(path)));
    }
    if v == "lakebase" {
        return Ok(TasksStore::Lakebase);
    }
    if v.starts_with("postgres://") || v.starts_with("postgresql://") {
        return match LakebaseConfig::from_url(v) {
            Ok(config) => Ok(TasksStore::Postgres(Box::new(config))),
            Err(appkit_lakebase::Error::Config(e)) => {
                let problems: Vec<String> = e.problems().iter().map(ToString::to_string).collect();
                Err(format!("{STORE_FORMS} ({})", problems.join("; ")))
            }
            Err(e) => Err(format!("{STORE_FORMS} ({e})")),
        };
    }
    Err(STORE_FORMS.to_owned())
}

/// A lowercase Postgres identifier, so it needs no quoting.
fn parse_schema(v: &str) -> Result<String, String> {
    let mut bytes = v.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
    let rest_ok = bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if first_ok && rest_ok && v.len() <= 63 {
        Ok(v.to_owned())
    } else {
        Err("a schema name: 1 to 63 of a-z, 0-9 and `_`, not starting with a digit".to_owned())
    }
}

fn parse_dir(v: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(v);
    if path.is_dir() {
        Ok(path)
    } else {
        Err("an existing directory".to_owned())
    }
}

fn parse_rate(v: &str) -> Result<RateLimit, String> {
    const EXPECTED: &str = "`N/WINDOW` with N ≥ 1 and WINDOW like `1000ms` or `1s`";
    let (max, window) = v.split_once('/').ok_or_else(|| EXPECTED.to_owned())?;
    let max: u32 = max.trim().parse().map_err(|_| EXPECTED.to_owned())?;
    let window = window.trim();
    let window = if let Some(n) = window.strip_suffix("ms") {
        n.parse::<u64>().map(Duration::from_millis)
    } else if let Some(n) = window.strip_suffix('s') {
        n.parse::<u64>().map(Duration::from_secs)
    } else {
        return Err(EXPECTED.to_owned());
    }
    .map_err(|_| EXPECTED.to_owned())?;
    if max == 0 || window.is_zero() {
        return Err(EXPECTED.to_owned());
    }
    Ok(RateLimit::new(max, window))
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::{BTreeSet, HashMap};

    use super::*;

    fn parse(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: HashMap<_, _> = vars.iter().copied().collect();
        Config::from_lookup(|k| env.get(k).map(|v| (*v).to_owned()))
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.port, 8000);
        assert_eq!(c.host, DEFAULT_HOST);
        assert_eq!(c.env, Environment::Development);
        assert!(
            matches!(&c.tasks_store, TasksStore::Sqlite(p) if p.as_os_str() == ".appkit/tasks.db")
        );
        assert!(c.lakebase.is_none() && c.tasks_schema.is_none());
        assert_eq!(c.sse_keepalive, Duration::from_secs(25));
        assert_eq!(c.shutdown_timeout, Duration::from_secs(15));
        assert_eq!(c.env_source, EnvironmentSource::Default);
        assert_eq!(c.trust_forwarded_user, None);
        assert_eq!(c.forwarded_user_trust(), Ok(true));
        assert!(c.rate_limit_per_user.is_none());
    }

    #[test]
    fn databricks_port_wins_over_port() {
        let c = parse(&[("DATABRICKS_APP_PORT", "0"), ("PORT", "9000")]).unwrap();
        assert_eq!(c.port, 0);
        let c = parse(&[("PORT", "9000")]).unwrap();
        assert_eq!(c.port, 9000);
    }

    #[test]
    fn every_bad_variable_is_reported_with_its_value() {
        let err = parse(&[
            ("DATABRICKS_APP_PORT", "eighty"),
            ("APPKIT_ENV", "prod"),
            ("APPKIT_SSE_KEEPALIVE_MS", "0"),
            ("APPKIT_RATE_LIMIT_PER_USER", "3 per second"),
        ])
        .unwrap_err();
        let names: Vec<_> = err.problems().iter().map(|p| p.variable()).collect();
        assert_eq!(
            names,
            [
                "DATABRICKS_APP_PORT",
                "APPKIT_ENV",
                "APPKIT_SSE_KEEPALIVE_MS",
                "APPKIT_RATE_LIMIT_PER_USER"
            ]
        );
        let text = err.to_string();
        assert!(text.contains("DATABRICKS_APP_PORT=\"eighty\""), "{text}");
        assert!(text.contains("`development` or `production`"), "{text}");
    }

    #[test]
    fn stores_parse_from_sqlite_and_postgres_urls() {
        let c = parse(&[("APPKIT_TASKS_STORE", "sqlite:///tmp/x/tasks.db")]).unwrap();
        assert!(
            matches!(&c.tasks_store, TasksStore::Sqlite(p) if p.as_os_str() == "/tmp/x/tasks.db")
        );
        let c = parse(&[
            (
                "APPKIT_TASKS_STORE",
                "postgres://app:pw@db:6543/main?application_name=a1",
            ),
            ("APPKIT_TASKS_SCHEMA", "tenant_1"),
        ])
        .unwrap();
        let TasksStore::Postgres(pg) = &c.tasks_store else {
            panic!("not postgres: {:?}", c.tasks_store);
        };
        assert_eq!((pg.host(), pg.port(), pg.user()), ("db", 6543, "app"));
        assert_eq!(pg.application_name(), Some("a1"));
        assert_eq!(c.tasks_schema.as_deref(), Some("tenant_1"));
        assert!(c.lakebase.is_none(), "no PGHOST: no Lakebase pool");
    }

    #[test]
    fn bad_postgres_urls_are_named_with_the_password_redacted() {
        let err = parse(&[("APPKIT_TASKS_STORE", "postgres://app:hunter2@db:x/main")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("APPKIT_TASKS_STORE"), "{err}");
        assert!(
            !err.contains("hunter2") && err.contains("<redacted>"),
            "{err}"
        );
        let err = parse(&[("APPKIT_TASKS_SCHEMA", "Bad-Name")]).unwrap_err();
        assert_eq!(err.problems()[0].variable(), "APPKIT_TASKS_SCHEMA");
        let err = parse(&[("APPKIT_TASKS_SCHEMA", "fine")]).unwrap_err();
        assert!(
            err.to_string().contains("sqlite"),
            "a schema needs Postgres: {err}"
        );
    }

    #[test]
    fn lakebase_store_needs_the_pg_variables() {
        let err = parse(&[("APPKIT_TASKS_STORE", "lakebase")]).unwrap_err();
        let names: Vec<_> = err.problems().iter().map(|p| p.variable()).collect();
        assert!(
            names.contains(&"PGHOST") && names.contains(&"PGUSER"),
            "{err}"
        );
        let c = parse(&[
            ("APPKIT_TASKS_STORE", "lakebase"),
            ("PGHOST", "127.0.0.1"),
            ("PGUSER", "postgres"),
            ("PGPASSWORD", "x"),
            ("PGAPPNAME", "app-1"),
        ])
        .unwrap();
        assert!(matches!(c.tasks_store, TasksStore::Lakebase));
        let lakebase = c.lakebase.expect("lakebase pool configured");
        assert_eq!(lakebase.application_name(), Some("app-1"));
        // PGHOST alone configures the pool for plugins; the tasks stay in SQLite.
        let c = parse(&[("PGHOST", "h"), ("PGUSER", "u"), ("PGPASSWORD", "x")]).unwrap();
        assert!(matches!(c.tasks_store, TasksStore::Sqlite(_)) && c.lakebase.is_some());
    }

    #[test]
    fn rate_limits_parse_in_ms_and_s() {
        let c = parse(&[("APPKIT_RATE_LIMIT_PER_USER", "3/1000ms")]).unwrap();
        assert_eq!(
            c.rate_limit_per_user,
            Some(RateLimit::new(3, Duration::from_secs(1)))
        );
        let c = parse(&[("APPKIT_RATE_LIMIT_PER_USER", "20/2s")]).unwrap();
        assert_eq!(
            c.rate_limit_per_user,
            Some(RateLimit::new(20, Duration::from_secs(2)))
        );
        assert!(parse(&[("APPKIT_RATE_LIMIT_PER_USER", "0/1s")]).is_err());
    }

    #[test]
    fn databricks_apps_default_to_production_and_trust_the_proxy() {
        let c = parse(&[("DATABRICKS_APP_NAME", "reports")]).unwrap();
        assert_eq!(c.env, Environment::Production);
        assert_eq!(c.env_source, EnvironmentSource::DatabricksApp);
        assert_eq!(c.app_name.as_deref(), Some("reports"));
        assert_eq!(c.forwarded_user_trust(), Ok(true));
        let c = parse(&[
            ("DATABRICKS_APP_NAME", "reports"),
            ("APPKIT_ENV", "development"),
        ])
        .unwrap();
        assert_eq!(
            (c.env, c.env_source),
            (Environment::Development, EnvironmentSource::Explicit)
        );
    }

    #[test]
    fn production_elsewhere_needs_an_explicit_trust_decision() {
        let c = parse(&[("APPKIT_ENV", "production")]).unwrap();
        let err = c.forwarded_user_trust().unwrap_err().to_string();
        assert!(err.contains("APPKIT_TRUST_FORWARDED_USER=true"), "{err}");
        let c = parse(&[
            ("APPKIT_ENV", "production"),
            ("APPKIT_TRUST_FORWARDED_USER", "true"),
        ])
        .unwrap();
        assert_eq!(c.forwarded_user_trust(), Ok(true));
        let c = parse(&[("APPKIT_TRUST_FORWARDED_USER", "false")]).unwrap();
        assert_eq!(c.forwarded_user_trust(), Ok(false));
        let err = parse(&[("APPKIT_TRUST_FORWARDED_USER", "maybe")]).unwrap_err();
        assert_eq!(err.problems()[0].variable(), "APPKIT_TRUST_FORWARDED_USER");
    }

    /// The table in docs/configuration.md lists exactly the variables this module reads.
    #[test]
    fn documented_table_matches_the_variables_read() {
        let read = RefCell::new(BTreeSet::new());
        let _ = Config::from_lookup(|name| {
            read.borrow_mut().insert(name.to_owned());
            None
        });
        // DATABRICKS_APP_PORT set: PORT is not consulted, so read it the other way too;
        // the Lakebase variables are read only for the `lakebase` store (or PGHOST), and
        // the workspace ones only with OAuth client credentials.
        let _ = Config::from_lookup(|name| {
            read.borrow_mut().insert(name.to_owned());
            match name {
                "DATABRICKS_APP_PORT" => Some("1".to_owned()),
                "APPKIT_TASKS_STORE" => Some("lakebase".to_owned()),
                "DATABRICKS_CLIENT_ID" | "DATABRICKS_CLIENT_SECRET" => Some("x".to_owned()),
                _ => None,
            }
        });
        let doc = include_str!("../../../docs/configuration.md");
        let table = doc
            .split("<!-- env-table:start -->")
            .nth(1)
            .and_then(|rest| rest.split("<!-- env-table:end -->").next())
            .expect("docs/configuration.md has the env-table markers");
        let documented: BTreeSet<String> = table
            .lines()
            .filter_map(|line| line.strip_prefix("| `"))
            .filter_map(|rest| rest.split('`').next())
            .map(str::to_owned)
            .collect();
        assert_eq!(documented, read.into_inner());
    }

    #[test]
    fn host_and_lakebase_problems_are_reported_together() {
        let err = parse(&[
            ("PORT", "-1"),
            ("APPKIT_TRUST_FORWARDED_USER", "yes"),
            ("APPKIT_MAX_BODY_BYTES", "0"),
            ("TASKFLOW_MAX_RECOVERIES", "99999999999"),
            ("PGHOST", "db"),
            ("PGPORT", "0"),
            ("PGPASSWORD", "hunter2"),
        ])
        .unwrap_err();
        let names: Vec<_> = err.problems().iter().map(|p| p.variable()).collect();
        for name in [
            "PORT",
            "APPKIT_TRUST_FORWARDED_USER",
            "APPKIT_MAX_BODY_BYTES",
            "TASKFLOW_MAX_RECOVERIES",
            "PGUSER",
            "PGPORT",
        ] {
            assert!(names.contains(&name), "{name} missing from {err}");
        }
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn booleans_are_true_false_1_0_only() {
        for (value, want) in [("true", true), ("FALSE", false), ("1", true), ("0", false)] {
            let c = parse(&[("APPKIT_TRUST_FORWARDED_USER", value)]).unwrap();
            assert_eq!(c.trust_forwarded_user, Some(want), "{value}");
        }
        for value in ["yes", "no", "on", "off"] {
            let err = parse(&[("APPKIT_TRUST_FORWARDED_USER", value)]).unwrap_err();
            assert_eq!(err.problems()[0].variable(), "APPKIT_TRUST_FORWARDED_USER");
        }
    }

    /// Property tests: any value of any variable parses to the documented value or fails
    /// with problems naming that variable; never a panic, never a silent default; URL
    /// passwords never appear.
    mod generated {
        use appkit_env::{Url, testing};
        use proptest::prelude::*;
        use proptest::sample::select;

        use super::*;

        /// (variable, least value) of the millisecond durations.
        const MILLIS: [(&str, u64); 11] = [
            ("TASKFLOW_LEASE_MS", 1),
            ("TASKFLOW_DRAIN_TIMEOUT_MS", 0),
            ("TASKFLOW_POLL_INTERVAL_MS", 1),
            ("TASKFLOW_STOP_GRACE_MS", 0),
            ("TASKFLOW_RETRY_BASE_MS", 1),
            ("TASKFLOW_RETRY_CAP_MS", 1),
            ("TASKFLOW_REAP_INTERVAL_MS", 1),
            ("APPKIT_SSE_KEEPALIVE_MS", 1),
            ("APPKIT_SSE_DISCONNECT_GRACE_MS", 0),
            ("APPKIT_SHUTDOWN_TIMEOUT_MS", 1),
            ("APPKIT_SSE_WRITE_TIMEOUT_MS", 1),
        ];

        fn millis_of(c: &Config, var: &str) -> Duration {
            let t = &c.taskflow;
            match var {
                "TASKFLOW_LEASE_MS" => t.lease,
                "TASKFLOW_DRAIN_TIMEOUT_MS" => t.drain_timeout,
                "TASKFLOW_POLL_INTERVAL_MS" => t.poll_interval,
                "TASKFLOW_STOP_GRACE_MS" => t.stop_grace,
                "TASKFLOW_RETRY_BASE_MS" => t.retry_base,
                "TASKFLOW_RETRY_CAP_MS" => t.retry_cap,
                "TASKFLOW_REAP_INTERVAL_MS" => t.reap_interval,
                "APPKIT_SSE_KEEPALIVE_MS" => c.sse_keepalive,
                "APPKIT_SSE_DISCONNECT_GRACE_MS" => c.sse_disconnect_grace,
                "APPKIT_SHUTDOWN_TIMEOUT_MS" => c.shutdown_timeout,
                _ => c.sse_write_timeout,
            }
        }

        /// Every variable the host reads (the documented table).
        fn variables() -> Vec<&'static str> {
            let doc = include_str!("../../../docs/configuration.md");
            let table = doc
                .split("<!-- env-table:start -->")
                .nth(1)
                .and_then(|rest| rest.split("<!-- env-table:end -->").next())
                .expect("env-table markers");
            let mut names: Vec<&'static str> = table
                .lines()
                .filter_map(|line| line.strip_prefix("| `"))
                .filter_map(|rest| rest.split('`').next())
                .collect();
            names.sort_unstable();
            names
        }

        /// Any value, plus the host's own shapes (stores, rates, schemas, addresses).
        fn values() -> impl Strategy<Value = String> {
            prop_oneof![
                testing::values(),
                "(?i)(development|production|lakebase)",
                "(sqlite|postgres|postgresql)://\\PC{0,16}",
                "[0-9]{1,3}/[0-9]{0,5}(ms|s|m)?",
                "[a-z_][a-z0-9_]{0,70}",
                "(127.0.0.1|::1|0.0.0.0|256.1.1.1|localhost)",
            ]
        }

        fn whole(value: &str) -> Option<u128> {
            testing::whole_number(value)
        }

        /// The variable set to `value`, beside a Lakebase user and password (so `PGHOST`
        /// alone configures the pool).
        fn parse_one(var: &str, value: &str) -> Result<Config, ConfigError> {
            let mut vars = vec![("PGUSER", "app"), ("PGPASSWORD", "pw")];
            vars.retain(|(k, _)| *k != var);
            vars.push((var, value));
            parse(&vars)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1024))]

            #[test]
            fn every_variable_parses_or_names_itself(
                var in select(variables()),
                value in values(),
            ) {
                let result = parse_one(var, &value);
                let v = value.trim();
                match &result {
                    Err(err) if var == "APPKIT_TASKS_STORE" && v == "lakebase" => {
                        // The pool's own variables are then required.
                        prop_assert!(err.names("PGHOST"), "{}", err);
                    }
                    Err(err) => {
                        prop_assert!(!v.is_empty(), "blank {} is unset: {}", var, err);
                        prop_assert!(err.to_string().contains(var), "{}", err);
                        for p in err.problems() {
                            prop_assert_eq!(p.variable(), var, "{}", err);
                        }
                    }
                    Ok(_) => {}
                }
                // Where the documented value is easy to state, check it.
                if let Some(&(_, min)) = MILLIS.iter().find(|(name, _)| *name == var)
                    && !v.is_empty()
                {
                    let want = whole(&value)
                        .filter(|n| (u128::from(min)..=u128::from(appkit_env::MAX_MILLIS)).contains(n))
                        .and_then(|n| u64::try_from(n).ok());
                    let got = result.as_ref().ok().map(|c| millis_of(c, var));
                    prop_assert_eq!(got, want.map(Duration::from_millis));
                }
                let port = |c: &Config| c.port;
                match var {
                    "PORT" | "DATABRICKS_APP_PORT" if !v.is_empty() => {
                        let want = whole(&value).and_then(|n| u16::try_from(n).ok());
                        prop_assert_eq!(result.as_ref().ok().map(port), want);
                    }
                    "TASKFLOW_MAX_RECOVERIES" if !v.is_empty() => {
                        let want = whole(&value).and_then(|n| u32::try_from(n).ok());
                        let got = result.as_ref().ok().map(|c| c.taskflow.max_recoveries);
                        prop_assert_eq!(got, want);
                    }
                    "APPKIT_MAX_BODY_BYTES" if !v.is_empty() => {
                        let want = whole(&value)
                            .filter(|n| *n > 0)
                            .and_then(|n| usize::try_from(n).ok());
                        prop_assert_eq!(result.as_ref().ok().map(|c| c.max_body_bytes), want);
                    }
                    "APPKIT_TRUST_FORWARDED_USER" if !v.is_empty() => {
                        let want = testing::boolean(&value);
                        let got = result.as_ref().ok().map(|c| c.trust_forwarded_user);
                        prop_assert_eq!(got, want.map(Some));
                    }
                    _ => {}
                }
            }

            /// `sqlite://PATH` is the file at PATH, whatever PATH is.
            #[test]
            fn sqlite_stores_keep_their_path(path in "[^ \t\r\n\u{b}\u{c}]\\PC{0,40}") {
                let path = path.trim().to_owned();
                prop_assume!(!path.is_empty());
                let c = parse(&[("APPKIT_TASKS_STORE", &format!("sqlite://{path}"))]).unwrap();
                prop_assert!(
                    matches!(&c.tasks_store, TasksStore::Sqlite(p) if p.as_os_str() == path.as_str()),
                    "{:?}", c.tasks_store
                );
            }

            /// Postgres stores with any user, password and database parse to them; the
            /// password never appears in a problem, whatever else is wrong.
            #[test]
            fn postgres_stores_parse_and_hide_their_password(
                // `set_username` and `set_password` keep a `%` as it is, so a generated
                // `%FF` would be an escape of a byte that is not UTF-8: leave escapes out.
                user in "\\PC{1,10}".prop_map(|u| u.replace('%', "pct")),
                password in "[A-Za-z][A-Za-z0-9]{3}\\PC{0,12}".prop_map(|p| p.replace('%', "pct")),
                database in "[a-z]{1,8}",
                port in 1u16..,
                broken in prop_oneof![
                    Just(""), Just(":x"), Just(":99999"), Just("?sslmode=sometimes"),
                    Just("?x=1"), Just("/%FF"),
                ],
            ) {
                let mut url = Url::parse("postgres://db.example.com").unwrap();
                url.set_username(&user).unwrap();
                url.set_password(Some(&password)).unwrap();
                url.set_port(Some(port)).unwrap();
                url.set_path(&database);
                let url = match broken {
                    ":x" | ":99999" => url.as_str().replace(&format!(":{port}"), broken),
                    _ => format!("{url}{broken}"),
                };
                let result = parse(&[("APPKIT_TASKS_STORE", &url)]);
                if broken.is_empty() {
                    let c = result.unwrap();
                    let TasksStore::Postgres(pg) = &c.tasks_store else {
                        panic!("not postgres: {:?}", c.tasks_store);
                    };
                    prop_assert_eq!((pg.user(), pg.port(), pg.database()), (user.as_str(), port, Some(database.as_str())));
                } else {
                    let err = result.unwrap_err();
                    let text = testing::shown(&err);
                    prop_assert!(err.names("APPKIT_TASKS_STORE"), "{}", text);
                    prop_assert!(!text.contains(&password), "{}", text);
                    let encoded = Url::parse("postgres://u@h").map(|mut u| {
                        let _ = u.set_password(Some(&password));
                        u.password().unwrap_or_default().to_owned()
                    }).unwrap();
                    prop_assert!(!text.contains(&encoded), "{}", text);
                }
            }
        }
    }
}
