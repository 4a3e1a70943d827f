//! Database credentials: the provider trait, a static password and Databricks OAuth.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::Deserialize;
use tokio::sync::Mutex;

use appkit_env::{Problem, Problems, Shown};

use crate::error::{Error, Result};

/// How long an HTTP call to the Databricks workspace may take.
const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest part of a workspace error body quoted in an error message.
const MAX_BODY_IN_ERROR: usize = 300;

/// A Postgres password and, when it rotates, the moment it stops working.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    password: String,
    expires_at: Option<SystemTime>,
}

impl Credential {
    /// Creates a credential; `expires_at` is `None` for a password that never expires.
    pub fn new(password: impl Into<String>, expires_at: Option<SystemTime>) -> Self {
        Self {
            password: password.into(),
            expires_at,
        }
    }

    /// The password. It is a secret: do not log it.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// When the password stops working, or `None` if it never expires.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("password", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// A source of Postgres passwords, asked again before each credential expires.
///
/// Implement it for a credential source this crate does not know; the pool caches the
/// result, refreshes it in the background and makes concurrent callers share one fetch, so
/// an implementation only fetches.
#[async_trait]
pub trait CredentialProvider: fmt::Debug + Send + Sync + 'static {
    /// Fetches a fresh credential.
    ///
    /// # Errors
    ///
    /// [`Error::Credential`] when the source cannot issue one.
    ///
    /// # Cancellation safety
    ///
    /// Implementations must be cancel safe: the pool drops this future when it closes.
    async fn fetch(&self) -> Result<Credential>;
}

/// Which kind of credential a configuration uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CredentialKind {
    /// No password (the server trusts the client, or a password comes from sqlx's own
    /// `PGPASSWORD`/`.pgpass` handling).
    None,
    /// A fixed password.
    Password,
    /// Databricks OAuth machine-to-machine, rotating database credentials.
    DatabricksOAuth,
    /// A caller-supplied [`CredentialProvider`].
    Custom,
}

/// Where the pool's Postgres password comes from.
#[derive(Clone)]
pub struct Credentials(Source);

#[derive(Clone)]
enum Source {
    None,
    Password(String),
    DatabricksOAuth(DatabricksOAuthConfig),
    Custom(Arc<dyn CredentialProvider>),
}

impl Credentials {
    /// No password.
    pub fn none() -> Self {
        Self(Source::None)
    }

    /// A fixed password that never expires (`PGPASSWORD`).
    pub fn password(password: impl Into<String>) -> Self {
        Self(Source::Password(password.into()))
    }

    /// Rotating database credentials issued by a Databricks workspace.
    pub fn databricks_oauth(config: DatabricksOAuthConfig) -> Self {
        Self(Source::DatabricksOAuth(config))
    }

    /// Credentials from a custom provider.
    pub fn custom(provider: impl CredentialProvider) -> Self {
        Self(Source::Custom(Arc::new(provider)))
    }

    /// Which kind of credential this is.
    pub fn kind(&self) -> CredentialKind {
        match &self.0 {
            Source::None => CredentialKind::None,
            Source::Password(_) => CredentialKind::Password,
            Source::DatabricksOAuth(_) => CredentialKind::DatabricksOAuth,
            Source::Custom(_) => CredentialKind::Custom,
        }
    }

    /// The Databricks settings, when this is [`CredentialKind::DatabricksOAuth`].
    pub fn databricks_oauth_config(&self) -> Option<&DatabricksOAuthConfig> {
        match &self.0 {
            Source::DatabricksOAuth(config) => Some(config),
            _ => None,
        }
    }

    /// Turns the choice into a provider (`None` when there is no password at all).
    pub(crate) fn into_provider(self) -> Result<Option<Arc<dyn CredentialProvider>>> {
        Ok(match self.0 {
            Source::None => None,
            Source::Password(password) => Some(Arc::new(StaticPassword(password))),
            Source::DatabricksOAuth(config) => Some(Arc::new(DatabricksOAuth::new(config)?)),
            Source::Custom(provider) => Some(provider),
        })
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Source::None => f.write_str("None"),
            Source::Password(_) => f.write_str("Password(<redacted>)"),
            Source::DatabricksOAuth(config) => {
                f.debug_tuple("DatabricksOAuth").field(config).finish()
            }
            Source::Custom(provider) => f.debug_tuple("Custom").field(provider).finish(),
        }
    }
}

/// A fixed password that never expires.
struct StaticPassword(String);

impl fmt::Debug for StaticPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StaticPassword(<redacted>)")
    }
}

#[async_trait]
impl CredentialProvider for StaticPassword {
    async fn fetch(&self) -> Result<Credential> {
        Ok(Credential::new(self.0.clone(), None))
    }
}

/// Settings for Databricks OAuth: a workspace, a service principal and a database instance.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabricksOAuthConfig {
    workspace_host: String,
    client_id: String,
    client_secret: String,
    instance_name: String,
}

impl DatabricksOAuthConfig {
    /// Creates the settings.
    ///
    /// `workspace_host` is the workspace URL (`https://…`; a bare host name gets `https://`).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the host is not an http(s) URL or a value is empty.
    pub fn new(
        workspace_host: &str,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
        instance_name: impl Into<String>,
    ) -> Result<Self> {
        let (client_id, client_secret) = (client_id.into(), client_secret.into());
        let instance_name = instance_name.into();
        let mut problems = Problems::new();
        let host = normalize_workspace_host(workspace_host)
            .map_err(|expected| {
                problems.push(Problem::invalid(
                    "workspace_host",
                    workspace_host,
                    Shown::Url,
                    expected,
                ));
            })
            .unwrap_or_default();
        for (name, value) in [
            ("client_id", &client_id),
            ("client_secret", &client_secret),
            ("instance_name", &instance_name),
        ] {
            if value.is_empty() {
                problems.push(Problem::missing(name, "a non-empty value"));
            }
        }
        if !problems.is_empty() {
            return Err(problems.into());
        }
        Ok(Self {
            workspace_host: host,
            client_id,
            client_secret,
            instance_name,
        })
    }

    /// The workspace URL, without a trailing slash.
    pub fn workspace_host(&self) -> &str {
        &self.workspace_host
    }

    /// The service principal's OAuth client id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The Lakebase database instance the credential is for.
    pub fn instance_name(&self) -> &str {
        &self.instance_name
    }
}

impl fmt::Debug for DatabricksOAuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabricksOAuthConfig")
            .field("workspace_host", &self.workspace_host)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("instance_name", &self.instance_name)
            .finish()
    }
}

/// Checks a workspace URL and returns it without a trailing slash, or the expected form.
pub(crate) fn normalize_workspace_host(raw: &str) -> std::result::Result<String, &'static str> {
    const EXPECTED: &str = "the workspace URL, e.g. https://my-workspace.cloud.databricks.com";
    let raw = raw.trim();
    let with_scheme = if raw.contains("://") {
        raw.to_owned()
    } else {
        format!("https://{raw}")
    };
    match appkit_env::parse_url(&with_scheme, &["http", "https"]) {
        Ok(_) => Ok(with_scheme.trim_end_matches('/').to_owned()),
        Err(_) => Err(EXPECTED),
    }
}

/// Rotating Postgres passwords from a Databricks workspace, for a service principal.
///
/// It exchanges the client credentials for a workspace access token
/// (`POST /oidc/v1/token`, cached until shortly before it expires; concurrent callers share
/// one exchange) and the token for a database credential
/// (`POST /api/2.0/database/credentials`). Each [`fetch`](CredentialProvider::fetch) issues a
/// new database credential; the pool decides when to call it.
pub struct DatabricksOAuth {
    config: DatabricksOAuthConfig,
    http: reqwest::Client,
    access_token: Mutex<Option<AccessToken>>,
}

#[derive(Clone)]
struct AccessToken {
    token: String,
    refresh_at: Option<Instant>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct DatabaseCredentialResponse {
    token: String,
    expiration_time: String,
}

impl DatabricksOAuth {
    /// Creates the provider and its HTTP client.
    ///
    /// # Errors
    ///
    /// [`Error::Credential`] when the HTTP client cannot be built (e.g. no TLS roots).
    pub fn new(config: DatabricksOAuthConfig) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(DEFAULT_HTTP_TIMEOUT)
            .build()
            .map_err(|e| Error::credential("could not build the HTTP client", Some(e.into())))?;
        Ok(Self {
            config,
            http,
            access_token: Mutex::new(None),
        })
    }

    /// Returns a cached workspace access token, exchanging the client credentials when the
    /// cached one is missing or about to expire. The lock makes concurrent callers share one
    /// exchange.
    async fn access_token(&self) -> Result<String> {
        let mut cached = self.access_token.lock().await;
        if let Some(token) = cached.as_ref()
            && token.refresh_at.is_some_and(|at| Instant::now() < at)
        {
            return Ok(token.token.clone());
        }
        let url = format!("{}/oidc/v1/token", self.config.workspace_host);
        let response = self
            .http
            .post(&url)
            .basic_auth(&self.config.client_id, Some(&self.config.client_secret))
            .form(&[("grant_type", "client_credentials"), ("scope", "all-apis")])
            .send()
            .await;
        let body: TokenResponse = read_json(response, "workspace token endpoint").await?;
        let refresh_at = body.expires_in.map(|secs| {
            let lifetime = Duration::from_secs(secs);
            Instant::now() + lifetime.saturating_sub(refresh_margin(lifetime, MAX_TOKEN_MARGIN))
        });
        tracing::debug!(
            expires_in_s = body.expires_in,
            "databricks access token issued"
        );
        *cached = Some(AccessToken {
            token: body.access_token.clone(),
            refresh_at,
        });
        Ok(body.access_token)
    }

    async fn database_credential(&self, access_token: &str) -> reqwest::Result<reqwest::Response> {
        let url = format!(
            "{}/api/2.0/database/credentials",
            self.config.workspace_host
        );
        let body = serde_json::json!({
            "request_id": uuid::Uuid::now_v7().to_string(),
            "instance_names": [self.config.instance_name],
        });
        self.http
            .post(&url)
            .bearer_auth(access_token)
            .json(&body)
            .send()
            .await
    }
}

/// Largest margin before a workspace access token's expiry at which it is renewed.
const MAX_TOKEN_MARGIN: Duration = Duration::from_secs(300);

/// The margin before expiry at which a credential with `lifetime` is renewed: 20% of its
/// lifetime, at most `max`.
pub(crate) fn refresh_margin(lifetime: Duration, max: Duration) -> Duration {
    (lifetime / 5).min(max)
}

#[async_trait]
impl CredentialProvider for DatabricksOAuth {
    async fn fetch(&self) -> Result<Credential> {
        let token = self.access_token().await?;
        let mut response = self.database_credential(&token).await;
        let rejected = response.as_ref().is_ok_and(|r| {
            matches!(
                r.status(),
                reqwest::StatusCode::UNAUTHORIZED | reqwest::StatusCode::FORBIDDEN
            )
        });
        if rejected {
            // The access token may have been revoked early: exchange again, once.
            *self.access_token.lock().await = None;
            let token = self.access_token().await?;
            response = self.database_credential(&token).await;
        }
        let body: DatabaseCredentialResponse =
            read_json(response, "database credential endpoint").await?;
        let expires_at = parse_rfc3339(&body.expiration_time).ok_or_else(|| {
            let message = format!(
                "database credential endpoint returned expiration_time {:?}, expected an RFC 3339 timestamp",
                body.expiration_time
            );
            Error::credential(message, None)
        })?;
        Ok(Credential::new(body.token, Some(expires_at)))
    }
}

impl fmt::Debug for DatabricksOAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabricksOAuth")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Reads a JSON body from a successful response; anything else becomes [`Error::Credential`].
async fn read_json<T: serde::de::DeserializeOwned>(
    response: reqwest::Result<reqwest::Response>,
    what: &str,
) -> Result<T> {
    let response =
        response.map_err(|e| Error::credential(format!("{what} unreachable"), Some(e.into())))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        let snippet: String = body.chars().take(MAX_BODY_IN_ERROR).collect();
        return Err(Error::credential(
            format!("{what} answered {status}: {snippet}"),
            None,
        ));
    }
    response.json::<T>().await.map_err(|e| {
        Error::credential(
            format!("{what} returned an unexpected body"),
            Some(e.into()),
        )
    })
}

/// Parses an RFC 3339 timestamp (`2025-01-31T12:00:00.123Z`, `…+02:00`) with `jiff`; a
/// time before 1970 is refused (no credential expires then).
pub(crate) fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let timestamp: jiff::Timestamp = s.parse().ok()?;
    SystemTime::try_from(timestamp)
        .ok()
        .filter(|t| *t >= UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(t: SystemTime) -> f64 {
        t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
    }

    #[test]
    fn rfc3339_parses_utc_fractions_and_offsets() {
        let t = parse_rfc3339("2025-01-31T12:00:00Z").unwrap();
        assert_eq!(secs(t), 1_738_324_800.0);
        let t = parse_rfc3339("2025-01-31T12:00:00.250Z").unwrap();
        assert_eq!(secs(t), 1_738_324_800.25);
        let t = parse_rfc3339("2025-01-31T14:00:00+02:00").unwrap();
        assert_eq!(secs(t), 1_738_324_800.0);
        let t = parse_rfc3339("2024-02-29t00:00:00.123456789-00:30").unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap().subsec_nanos(),
            123_456_789
        );
        assert_eq!(secs(parse_rfc3339("1970-01-01T00:00:00Z").unwrap()), 0.0);
    }

    #[test]
    fn rfc3339_rejects_malformed_timestamps() {
        for bad in [
            "",
            "2025-01-31",
            "2025-01-31T12:00:00",
            "2025-13-01T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2025-01-31T24:00:00Z",
            "2025-01-31T12:00:00.Z",
            "2025-01-31T12:00:00+ab:00",
            "1969-12-31T23:59:59Z",
            "2025-01-31T12:00:00Zjunk",
        ] {
            assert!(parse_rfc3339(bad).is_none(), "{bad:?} should not parse");
        }
        // jiff also takes ISO 8601's offset without a colon; it means the same instant.
        assert_eq!(
            parse_rfc3339("2025-01-31T14:00:00+0200"),
            parse_rfc3339("2025-01-31T12:00:00Z")
        );
    }

    #[test]
    fn refresh_margin_is_a_fifth_of_lifetime_capped() {
        let hour = Duration::from_secs(3600);
        assert_eq!(
            refresh_margin(hour, Duration::from_secs(300)),
            Duration::from_secs(300)
        );
        let short = Duration::from_secs(10);
        assert_eq!(
            refresh_margin(short, Duration::from_secs(300)),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn workspace_host_gets_a_scheme_and_loses_its_trailing_slash() {
        let host = normalize_workspace_host("adb-1.azuredatabricks.net/").unwrap();
        assert_eq!(host, "https://adb-1.azuredatabricks.net");
        let host = normalize_workspace_host("http://127.0.0.1:8080").unwrap();
        assert_eq!(host, "http://127.0.0.1:8080");
        assert!(normalize_workspace_host("ftp://x").is_err());
        assert!(normalize_workspace_host("https://").is_err());
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let config = DatabricksOAuthConfig::new("https://w", "id", "s3cr3t", "inst").unwrap();
        let shown = format!(
            "{:?} {:?}",
            Credentials::databricks_oauth(config),
            Credentials::password("pw-xyz")
        );
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("pw-xyz"),
            "{shown}"
        );
        let shown = format!("{:?}", Credential::new("hunter2", None));
        assert!(!shown.contains("hunter2"));
    }
}
