//! A Postgres pool for Databricks Lakebase with rotating credentials.
//!
//! [`LakebasePool`] wraps a [`sqlx::PgPool`] built from the libpq `PG*` variables (or a
//! `postgres://` URL, or a builder). Its password is static (`PGPASSWORD`) or a Databricks
//! database credential obtained with a service principal's OAuth client credentials and
//! renewed in the background before it expires: new connections log in with the new
//! password, open connections live on. The crate knows no table names; it only hands out
//! the pool, a health check for `/ready` and a close-once for shutdown.
//!
//! # Examples
//!
//! ```no_run
//! use appkit_lakebase::{LakebaseConfig, LakebasePool};
//!
//! # async fn example() -> Result<(), appkit_lakebase::Error> {
//! // PGHOST, PGUSER, … plus PGPASSWORD, or DATABRICKS_HOST, DATABRICKS_CLIENT_ID,
//! // DATABRICKS_CLIENT_SECRET and LAKEBASE_INSTANCE_NAME.
//! let lakebase = LakebasePool::connect(LakebaseConfig::from_env()?).await?;
//! let pool: appkit_lakebase::PgPool = lakebase.pool().clone(); // give this to the store
//! lakebase.health().await?; // in /ready
//! lakebase.close().await; // in the shutdown sequence; repeat calls are no-ops
//! # drop(pool);
//! # Ok(())
//! # }
//! ```

pub mod config;
mod credentials;
mod error;
mod pool;
mod refresh;

pub use config::{LakebaseConfig, LakebaseConfigBuilder};
pub use credentials::{
    Credential, CredentialKind, CredentialProvider, Credentials, DatabricksOAuth,
    DatabricksOAuthConfig,
};
pub use error::{BoxError, ConfigError, ConfigProblem, Error, Result};
pub use pool::LakebasePool;
pub use sqlx::postgres::{PgConnectOptions, PgPool, PgSslMode};

/// This crate's README, compiled as doc tests so it cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
