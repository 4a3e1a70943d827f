//! Pool configuration, from the `PG*` and Databricks environment variables or a builder.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use appkit_env::{Env, Problem, Shown};
use sqlx::postgres::{PgConnectOptions, PgSslMode};

use crate::credentials::{
    Credential, Credentials, DatabricksOAuthConfig, normalize_workspace_host,
};
use crate::error::{Error, Result};

mod url;

/// Default Postgres port.
pub const DEFAULT_PORT: u16 = 5432;
/// Default TLS mode, as in libpq.
pub const DEFAULT_SSL_MODE: PgSslMode = PgSslMode::Prefer;
/// Default upper bound on open connections.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10;
/// Default bound on opening a connection (or waiting for a free one).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time after which an idle connection is closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default bound on the health check's `SELECT 1`.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// Default largest margin before a credential's expiry at which it is renewed (the margin is
/// 20% of the credential's lifetime, at most this).
pub const DEFAULT_REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// The Lakebase database instance name used with Databricks OAuth.
pub const ENV_INSTANCE_NAME: &str = "LAKEBASE_INSTANCE_NAME";

/// Every variable [`LakebaseConfig::from_env`] reads (the `PG*` ones and Databricks OAuth's).
pub const VARIABLES: [&str; 11] = [
    "PGHOST",
    "PGPORT",
    "PGDATABASE",
    "PGUSER",
    "PGSSLMODE",
    "PGAPPNAME",
    "PGPASSWORD",
    "DATABRICKS_HOST",
    "DATABRICKS_CLIENT_ID",
    "DATABRICKS_CLIENT_SECRET",
    ENV_INSTANCE_NAME,
];

/// A hook that adjusts the connect options each time a credential is applied.
pub type ConnectOptionsHook =
    Arc<dyn Fn(PgConnectOptions, &Credential) -> PgConnectOptions + Send + Sync>;

/// Everything needed to open a Lakebase (Postgres) pool.
///
/// Build it with [`LakebaseConfig::from_env`], [`LakebaseConfig::from_url`] or
/// [`LakebaseConfig::builder`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use appkit_lakebase::{Credentials, LakebaseConfig};
///
/// let config = LakebaseConfig::builder("db.example.com", "app")
///     .database("app")
///     .credentials(Credentials::password("secret"))
///     .max_connections(4)
///     .idle_timeout(Duration::from_secs(10))
///     .build();
/// assert_eq!(config.port(), 5432);
/// ```
#[derive(Clone)]
pub struct LakebaseConfig {
    host: String,
    port: u16,
    database: Option<String>,
    user: String,
    ssl_mode: PgSslMode,
    application_name: Option<String>,
    options: Vec<(String, String)>,
    credentials: Credentials,
    max_connections: u32,
    connect_timeout: Duration,
    idle_timeout: Duration,
    health_timeout: Duration,
    refresh_margin: Duration,
    connect_options_hook: Option<ConnectOptionsHook>,
}

/// Builds a [`LakebaseConfig`] with consuming setters.
#[derive(Debug, Clone)]
pub struct LakebaseConfigBuilder {
    config: LakebaseConfig,
}

impl LakebaseConfig {
    /// Starts a configuration for `host` (a name, an address, or a Unix socket directory
    /// starting with `/`) and the Postgres role `user`, with every other value at its default
    /// and no password.
    pub fn builder(host: impl Into<String>, user: impl Into<String>) -> LakebaseConfigBuilder {
        LakebaseConfigBuilder {
            config: Self {
                host: host.into(),
                port: DEFAULT_PORT,
                database: None,
                user: user.into(),
                ssl_mode: DEFAULT_SSL_MODE,
                application_name: None,
                options: Vec::new(),
                credentials: Credentials::none(),
                max_connections: DEFAULT_MAX_CONNECTIONS,
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                idle_timeout: DEFAULT_IDLE_TIMEOUT,
                health_timeout: DEFAULT_HEALTH_TIMEOUT,
                refresh_margin: DEFAULT_REFRESH_MARGIN,
                connect_options_hook: None,
            },
        }
    }

    /// Reads the configuration from the process environment.
    ///
    /// | Variable | Meaning | Default |
    /// |---|---|---|
    /// | `PGHOST` | host name, address or socket directory | required |
    /// | `PGPORT` | port, 1–65535 | 5432 |
    /// | `PGDATABASE` | database | the server's default (the user name) |
    /// | `PGUSER` | Postgres role (with OAuth, the service principal) | required |
    /// | `PGSSLMODE` | `disable` `allow` `prefer` `require` `verify-ca` `verify-full`, as in libpq | `prefer` |
    /// | `PGAPPNAME` | `application_name` reported to the server | none |
    /// | `PGPASSWORD` | static password (secret); wins over OAuth when set | none |
    /// | `DATABRICKS_HOST` | workspace URL, for OAuth | required with OAuth |
    /// | `DATABRICKS_CLIENT_ID` | service principal client id, for OAuth | none |
    /// | `DATABRICKS_CLIENT_SECRET` | service principal secret (secret), for OAuth | none |
    /// | `LAKEBASE_INSTANCE_NAME` | database instance the credential is for | required with OAuth |
    ///
    /// The credential is the static `PGPASSWORD` when it is set, else Databricks OAuth when
    /// `DATABRICKS_CLIENT_ID` and `DATABRICKS_CLIENT_SECRET` are set; one of the two is
    /// required. Empty values count as unset. sqlx itself also honours `PGSSLROOTCERT`,
    /// `PGSSLCERT`, `PGSSLKEY` and `PGOPTIONS` as libpq does.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] listing every bad or missing variable, with
    /// its value (secrets redacted) and the expected form.
    pub fn from_env() -> Result<Self> {
        Self::from_reader(Env::process())
    }

    /// Reads the configuration from the environment if `PGHOST` is set (not empty or only
    /// whitespace), the sign that a database is attached; `Ok(None)` otherwise.
    ///
    /// # Errors
    ///
    /// As [`LakebaseConfig::from_env`].
    pub fn from_env_if_configured() -> Result<Option<Self>> {
        if Env::process().is_set("PGHOST") {
            Self::from_env().map(Some)
        } else {
            Ok(None)
        }
    }

    /// Reads the configuration from `vars` as [`LakebaseConfig::from_env`] reads the
    /// environment; for tests and hosts that keep their settings elsewhere.
    ///
    /// # Errors
    ///
    /// As [`LakebaseConfig::from_env`].
    pub fn from_vars<I, K, V>(vars: I) -> Result<Self>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let vars: HashMap<String, String> = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        Self::from_reader(Env::new(|name| vars.get(name).cloned()))
    }

    /// Parses a `postgres://user:password@host:port/database?sslmode=…&application_name=…`
    /// URL (also `connect_timeout=SECONDS`, libpq's name: the
    /// [connect timeout](Self::connect_timeout)); the password, if any, becomes a static
    /// credential.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming each bad part of the URL.
    pub fn from_url(url: &str) -> Result<Self> {
        url::parse(url)
    }

    fn from_reader(mut env: Env<'_>) -> Result<Self> {
        let config = Self::read(&mut env);
        match env.finish(config)? {
            Some(config) => Ok(config),
            // `read` gives `None` only after recording a problem; this is a safety net.
            None => Err(appkit_env::Problems::from(Problem::missing("PGHOST", HOST)).into()),
        }
    }

    /// Reads the configuration through `env` as [`LakebaseConfig::from_env`] reads the
    /// environment, recording every bad or missing variable in `env` (so a host reads its
    /// own variables through the same [`Env`] and reports every problem at once).
    ///
    /// Returns `None` when a variable this configuration needs is bad or missing.
    pub fn read(env: &mut Env<'_>) -> Option<Self> {
        let before = env.problems().len();
        let host = env.string("PGHOST");
        if host.is_none() {
            env.require("PGHOST", HOST);
        }
        let user = env.string("PGUSER");
        if user.is_none() {
            env.require("PGUSER", "the Postgres role name");
        }
        let port = env.port("PGPORT", 1).unwrap_or(DEFAULT_PORT);
        let ssl_mode = env
            .parse("PGSSLMODE", |v| parse_ssl_mode(v).map_err(str::to_owned))
            .unwrap_or(DEFAULT_SSL_MODE);
        let database = env.string("PGDATABASE");
        let application_name = env.string("PGAPPNAME");
        let credentials = read_credentials(env);
        let (Some(host), Some(user), Some(credentials)) = (host, user, credentials) else {
            return None;
        };
        if env.problems().len() > before {
            return None;
        }
        let mut builder = Self::builder(host, user)
            .port(port)
            .ssl_mode(ssl_mode)
            .credentials(credentials);
        if let Some(database) = database {
            builder = builder.database(database);
        }
        if let Some(name) = application_name {
            builder = builder.application_name(name);
        }
        Some(builder.build())
    }

    /// Starts a builder from this configuration, to change some values.
    pub fn into_builder(self) -> LakebaseConfigBuilder {
        LakebaseConfigBuilder { config: self }
    }

    /// The host name, address or Unix socket directory.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The database, or `None` for the server's default.
    pub fn database(&self) -> Option<&str> {
        self.database.as_deref()
    }

    /// The Postgres role.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The TLS mode.
    pub fn ssl_mode(&self) -> PgSslMode {
        self.ssl_mode
    }

    /// The `application_name` reported to the server.
    pub fn application_name(&self) -> Option<&str> {
        self.application_name.as_deref()
    }

    /// The run-time parameters every connection sets at start-up (see
    /// [`LakebaseConfigBuilder::option`]).
    pub fn options(&self) -> &[(String, String)] {
        &self.options
    }

    /// Where the password comes from.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// The upper bound on open connections.
    pub fn max_connections(&self) -> u32 {
        self.max_connections
    }

    /// The bound on opening a connection or waiting for a free one.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The time after which an idle connection is closed.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// The bound on the health check.
    pub fn health_timeout(&self) -> Duration {
        self.health_timeout
    }

    /// The largest margin before expiry at which a rotating credential is renewed.
    pub fn refresh_margin(&self) -> Duration {
        self.refresh_margin
    }

    /// The connect options for `credential` (without a password for `None`), after the hook.
    pub(crate) fn connect_options(&self, credential: Option<&Credential>) -> PgConnectOptions {
        // sqlx's constructor reads PG* variables itself; every value we own is set below.
        let mut options = PgConnectOptions::new_without_pgpass()
            .port(self.port)
            .username(&self.user)
            .ssl_mode(self.ssl_mode);
        options = if self.host.starts_with('/') {
            options.socket(&self.host)
        } else {
            options.host(&self.host)
        };
        if let Some(database) = &self.database {
            options = options.database(database);
        }
        if let Some(name) = &self.application_name {
            options = options.application_name(name);
        }
        if !self.options.is_empty() {
            options = options.options(self.options.iter().map(|(k, v)| (k, v)));
        }
        let Some(credential) = credential else {
            return options;
        };
        options = options.password(credential.password());
        match &self.connect_options_hook {
            Some(hook) => hook(options, credential),
            None => options,
        }
    }
}

impl fmt::Debug for LakebaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LakebaseConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("ssl_mode", &self.ssl_mode)
            .field("application_name", &self.application_name)
            .field("options", &self.options)
            .field("credentials", &self.credentials)
            .field("max_connections", &self.max_connections)
            .field("connect_timeout", &self.connect_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("health_timeout", &self.health_timeout)
            .field("refresh_margin", &self.refresh_margin)
            .field("connect_options_hook", &self.connect_options_hook.is_some())
            .finish()
    }
}

impl LakebaseConfigBuilder {
    /// Sets the host name, address, or Unix socket directory (starting with `/`).
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.config.host = host.into();
        self
    }

    /// Sets the Postgres role (with Databricks OAuth, the service principal).
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.config.user = user.into();
        self
    }

    /// Sets the port (default [`DEFAULT_PORT`]).
    pub fn port(mut self, port: u16) -> Self {
        self.config.port = port;
        self
    }

    /// Sets the database (default: the server's default).
    pub fn database(mut self, database: impl Into<String>) -> Self {
        self.config.database = Some(database.into());
        self
    }

    /// Sets the TLS mode (default [`DEFAULT_SSL_MODE`]).
    pub fn ssl_mode(mut self, mode: PgSslMode) -> Self {
        self.config.ssl_mode = mode;
        self
    }

    /// Sets the `application_name` reported to the server.
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.config.application_name = Some(name.into());
        self
    }

    /// Adds a run-time parameter that every connection sets at start-up (libpq's
    /// `options`, `-c name=value`), e.g. `search_path` to keep an app's tables in its own
    /// schema. Later values for the same name win.
    pub fn option(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.options.push((name.into(), value.into()));
        self
    }

    /// Sets where the password comes from (default: no password).
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.config.credentials = credentials;
        self
    }

    /// Sets the upper bound on open connections (default [`DEFAULT_MAX_CONNECTIONS`]).
    pub fn max_connections(mut self, max: u32) -> Self {
        self.config.max_connections = max;
        self
    }

    /// Sets the bound on opening a connection (default [`DEFAULT_CONNECT_TIMEOUT`]).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// Sets the idle time after which a connection is closed (default
    /// [`DEFAULT_IDLE_TIMEOUT`]).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.config.idle_timeout = timeout;
        self
    }

    /// Sets the bound on the health check (default [`DEFAULT_HEALTH_TIMEOUT`]).
    pub fn health_timeout(mut self, timeout: Duration) -> Self {
        self.config.health_timeout = timeout;
        self
    }

    /// Sets the largest margin before expiry at which a rotating credential is renewed
    /// (default [`DEFAULT_REFRESH_MARGIN`]; the margin used is 20% of the credential's
    /// lifetime, at most this). Short-lived credentials in tests want a small value.
    pub fn refresh_margin(mut self, margin: Duration) -> Self {
        self.config.refresh_margin = margin;
        self
    }

    /// Adjusts the connect options each time a credential is applied (at start and after
    /// each rotation), e.g. to add TLS roots or startup parameters. New connections use the
    /// result.
    pub fn map_connect_options(
        mut self,
        hook: impl Fn(PgConnectOptions, &Credential) -> PgConnectOptions + Send + Sync + 'static,
    ) -> Self {
        self.config.connect_options_hook = Some(Arc::new(hook));
        self
    }

    /// Finishes the configuration.
    pub fn build(self) -> LakebaseConfig {
        self.config
    }
}

/// The static password if set, else Databricks OAuth if its client credentials are set.
fn read_credentials(env: &mut Env<'_>) -> Option<Credentials> {
    let password = env.secret("PGPASSWORD");
    let client_id = env.string("DATABRICKS_CLIENT_ID");
    let client_secret = env.secret("DATABRICKS_CLIENT_SECRET");
    if let Some(password) = password {
        if client_id.is_some() || client_secret.is_some() {
            tracing::debug!("PGPASSWORD is set; using it instead of Databricks OAuth");
        }
        return Some(Credentials::password(password));
    }
    let (client_id, client_secret) = match (client_id, client_secret) {
        (Some(id), Some(secret)) => (id, secret),
        (None, None) => {
            env.require("PGPASSWORD", NO_CREDENTIAL);
            return None;
        }
        (None, Some(_)) => {
            env.require(
                "DATABRICKS_CLIENT_ID",
                "set together with DATABRICKS_CLIENT_SECRET",
            );
            return None;
        }
        (Some(_), None) => {
            env.require(
                "DATABRICKS_CLIENT_SECRET",
                "set together with DATABRICKS_CLIENT_ID",
            );
            return None;
        }
    };
    let host = env.parse_shown("DATABRICKS_HOST", Shown::Url, |raw| {
        normalize_workspace_host(raw).map_err(str::to_owned)
    });
    if host.is_none() {
        env.require("DATABRICKS_HOST", "the workspace URL, for Databricks OAuth");
    }
    let instance = env.string(ENV_INSTANCE_NAME);
    if instance.is_none() {
        env.require(
            ENV_INSTANCE_NAME,
            "the Lakebase database instance name, for Databricks OAuth",
        );
    }
    let (host, instance) = (host?, instance?);
    match DatabricksOAuthConfig::new(&host, client_id, client_secret, instance) {
        Ok(config) => Some(Credentials::databricks_oauth(config)),
        Err(Error::Config(e)) => {
            env.report_all(e);
            None
        }
        Err(other) => {
            env.report(Problem::invalid(
                "DATABRICKS_HOST",
                &host,
                Shown::Url,
                other.to_string(),
            ));
            None
        }
    }
}

const HOST: &str = "a host name, address or socket directory";

const NO_CREDENTIAL: &str = "a password, or Databricks OAuth: DATABRICKS_HOST, DATABRICKS_CLIENT_ID, \
     DATABRICKS_CLIENT_SECRET and LAKEBASE_INSTANCE_NAME";

/// Parses a libpq `sslmode` value.
pub(crate) fn parse_ssl_mode(raw: &str) -> Result<PgSslMode, &'static str> {
    Ok(match raw {
        "disable" => PgSslMode::Disable,
        "allow" => PgSslMode::Allow,
        "prefer" => PgSslMode::Prefer,
        "require" => PgSslMode::Require,
        "verify-ca" => PgSslMode::VerifyCa,
        "verify-full" => PgSslMode::VerifyFull,
        _ => return Err("one of disable, allow, prefer, require, verify-ca, verify-full"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_utf8_values_are_named_and_secrets_redacted() {
        use std::ffi::OsString;
        use std::os::unix::ffi::OsStringExt;
        let lookup = |name: &str| match name {
            "PGHOST" | "PGPASSWORD" => Some(OsString::from_vec(vec![b'x', 0xff])),
            "PGUSER" => Some(OsString::from("app")),
            _ => None,
        };
        let mut env = Env::from_os(lookup);
        assert!(LakebaseConfig::read(&mut env).is_none());
        let err = LakebaseConfig::from_reader(Env::from_os(lookup))
            .unwrap_err()
            .to_string();
        assert!(err.contains("PGHOST=\"<not valid UTF-8>\""), "{err}");
        assert!(
            err.contains("PGPASSWORD=\"<redacted>\": expected valid UTF-8"),
            "{err}"
        );
        assert_eq!(err.matches("PGHOST").count(), 1, "reported once: {err}");
    }

    #[test]
    fn options_apply_with_and_without_a_password() {
        let config = LakebaseConfig::builder("db", "app")
            .option("search_path", "tasks")
            .build();
        assert_eq!(
            config.options(),
            [("search_path".to_owned(), "tasks".to_owned())]
        );
        let options = config.connect_options(None);
        assert_eq!(options.get_options(), Some("-c search_path=tasks"));
    }

    #[test]
    fn unix_socket_hosts_connect_through_the_socket() {
        let config = LakebaseConfig::builder("/var/run/postgresql", "app").build();
        let options = config.connect_options(None);
        assert!(options.get_socket().is_some());
        assert_eq!(options.get_username(), "app");
    }
}
