//! Types for working with errors.

use std::time::Duration;

/// A boxed error from a credential source, kept as the `source()` of [`Error::Credential`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A `Result` whose error defaults to this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while building, using or closing a Lakebase pool.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid; the message lists every problem found.
    #[error(transparent)]
    Config(#[from] ConfigError),

    /// The database could not be reached or refused the connection or query.
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),

    /// The database did not answer the health check in time.
    #[error("database did not answer within {timeout:?}")]
    Timeout {
        /// How long the check waited.
        timeout: Duration,
    },

    /// A database credential could not be obtained from its source.
    #[error("could not obtain a database credential: {message}")]
    Credential {
        /// What failed, without secrets.
        message: String,
        /// The underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },

    /// The pool has been closed.
    #[error("pool is closed")]
    Closed,
}

impl Error {
    /// Builds an [`Error::Credential`], e.g. from a custom [`CredentialProvider`](crate::CredentialProvider).
    pub fn credential(message: impl Into<String>, source: Option<BoxError>) -> Self {
        Self::Credential {
            message: message.into(),
            source,
        }
    }

    /// Classifies an error from sqlx: a closed pool is [`Error::Closed`], anything else
    /// [`Error::Unavailable`].
    pub(crate) fn from_sqlx(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::PoolClosed => Self::Closed,
            other => Self::Unavailable(other),
        }
    }
}

/// One problem found while reading the configuration (the [`appkit_env`] type every
/// AppKit crate reports with): the variable (or URL part, e.g. `url port`), its value
/// (secrets redacted) and the expected form.
pub use appkit_env::Problem as ConfigProblem;

/// Every problem found in a configuration, reported together (the [`appkit_env`] type
/// every AppKit crate reports with).
pub use appkit_env::Problems as ConfigError;

/// Formats an error and its sources as `outer: inner: innermost`, for logs.
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
