//! Types for working with errors.

use std::fmt;
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

/// One problem found while parsing the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    variable: String,
    value: Option<String>,
    expected: String,
}

impl ConfigProblem {
    /// Records that `variable` had `value` (`None` when unset; already redacted when secret)
    /// and what was expected instead.
    pub(crate) fn new(
        variable: impl Into<String>,
        value: Option<String>,
        expected: impl Into<String>,
    ) -> Self {
        Self {
            variable: variable.into(),
            value,
            expected: expected.into(),
        }
    }

    /// The variable (or URL part) the problem is about, e.g. `PGPORT`.
    pub fn variable(&self) -> &str {
        &self.variable
    }

    /// The value found (redacted for secrets), or `None` when it was not set.
    pub fn value(&self) -> Option<&str> {
        self.value.as_deref()
    }

    /// The form the value should have.
    pub fn expected(&self) -> &str {
        &self.expected
    }
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(value) => write!(f, "{}={value:?}: expected {}", self.variable, self.expected),
            None => write!(
                f,
                "{} is not set: expected {}",
                self.variable, self.expected
            ),
        }
    }
}

/// Every problem found in a configuration, reported together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    problems: Vec<ConfigProblem>,
}

impl ConfigError {
    pub(crate) fn new(problems: Vec<ConfigProblem>) -> Self {
        Self { problems }
    }

    /// The problems, in the order they were found.
    pub fn problems(&self) -> &[ConfigProblem] {
        &self.problems
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid lakebase configuration: ")?;
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

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
