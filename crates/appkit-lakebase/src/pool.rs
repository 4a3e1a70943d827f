//! The pool handle: connect, health check, credential access and close-once.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::LakebaseConfig;
use crate::credentials::Credential;
use crate::error::{Error, Result};
use crate::refresh::Rotator;

/// A Postgres pool whose password comes from a (possibly rotating) credential.
///
/// Cheap to clone: clones share one pool. Pass [`pool`](Self::pool) to code that runs SQL,
/// use [`health`](Self::health) for readiness and call [`close`](Self::close) once at
/// shutdown (calling it again is harmless). With rotating credentials a background task
/// renews the password before it expires; new connections use the new password, open
/// connections live on.
///
/// # Examples
///
/// ```no_run
/// use appkit_lakebase::{LakebaseConfig, LakebasePool};
///
/// # async fn example() -> Result<(), appkit_lakebase::Error> {
/// let pool = LakebasePool::connect(LakebaseConfig::from_env()?).await?;
/// sqlx::query("SELECT 1").execute(pool.pool()).await.map_err(appkit_lakebase::Error::Unavailable)?;
/// pool.health().await?;
/// pool.close().await;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct LakebasePool {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    rotator: Option<Arc<Rotator>>,
    health_timeout: Duration,
    token: CancellationToken,
    tracker: TaskTracker,
    closed: OnceCell<()>,
    close_count: AtomicU64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Stops the refresh loop when the last handle goes away without `close()`.
        self.token.cancel();
    }
}

impl LakebasePool {
    /// Fetches the first credential, opens the pool and checks it with one connection,
    /// then starts the credential refresh loop when the credential expires.
    ///
    /// # Errors
    ///
    /// [`Error::Credential`] when no credential can be obtained, [`Error::Unavailable`] when
    /// the database cannot be reached or refuses the login within the connect timeout.
    ///
    /// # Cancellation safety
    ///
    /// Cancel safe: dropping the future drops whatever was opened so far.
    #[tracing::instrument(name = "lakebase_connect", skip_all, fields(db.host = %config.host(), db.port = config.port()))]
    pub async fn connect(config: LakebaseConfig) -> Result<Self> {
        let provider = config.credentials().clone().into_provider()?;
        let fetched_at = SystemTime::now();
        let credential = match &provider {
            Some(provider) => Some(provider.fetch().await?),
            None => None,
        };
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections())
            .acquire_timeout(config.connect_timeout())
            .idle_timeout(config.idle_timeout())
            .connect_with(config.connect_options(credential.as_ref()))
            .await
            .map_err(Error::from_sqlx)?;
        let (token, tracker) = (CancellationToken::new(), TaskTracker::new());
        let (kind, health_timeout) = (config.credentials().kind(), config.health_timeout());
        let rotator = match (provider, credential) {
            (Some(provider), Some(credential)) => {
                let rotates = credential.expires_at().is_some();
                let rotator = Arc::new(Rotator::new(
                    provider,
                    config,
                    pool.clone(),
                    credential,
                    fetched_at,
                ));
                if rotates {
                    tracker.spawn(Arc::clone(&rotator).run(token.clone()));
                }
                Some(rotator)
            }
            _ => None,
        };
        tracing::info!(credential.kind = ?kind, "lakebase pool ready");
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                rotator,
                health_timeout,
                token,
                tracker,
                closed: OnceCell::new(),
                close_count: AtomicU64::new(0),
            }),
        })
    }

    /// Reads [`LakebaseConfig::from_env`] and [connects](Self::connect).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a bad environment, else as [`connect`](Self::connect).
    ///
    /// # Cancellation safety
    ///
    /// As [`connect`](Self::connect).
    pub async fn from_env() -> Result<Self> {
        Self::connect(LakebaseConfig::from_env()?).await
    }

    /// The sqlx pool, for running queries (clone it to keep it).
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// Checks that the database answers `SELECT 1` within the health timeout; for `/ready`.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after [`close`](Self::close), [`Error::Timeout`] when the database
    /// does not answer in time, [`Error::Unavailable`] when the query fails.
    ///
    /// # Cancellation safety
    ///
    /// Cancel safe.
    pub async fn health(&self) -> Result<()> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let timeout = self.inner.health_timeout;
        let query = sqlx::query("SELECT 1").execute(&self.inner.pool);
        match tokio::time::timeout(timeout, query).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(Error::from_sqlx(error)),
            Err(_) => Err(Error::Timeout { timeout }),
        }
    }

    /// The current credential, renewed first when it is due; `None` when the pool uses no
    /// password. Concurrent callers share one renewal.
    ///
    /// # Errors
    ///
    /// [`Error::Credential`] when a due credential cannot be renewed; [`Error::Closed`] after
    /// [`close`](Self::close).
    ///
    /// # Cancellation safety
    ///
    /// Cancel safe: a renewal in flight is abandoned, and the next caller starts another.
    pub async fn credential(&self) -> Result<Option<Credential>> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        match &self.inner.rotator {
            Some(rotator) => rotator.credential().await.map(Some),
            None => Ok(None),
        }
    }

    /// How many credentials the pool has applied: 1 after connecting, plus one per rotation;
    /// 0 without a password.
    pub fn credential_generation(&self) -> u64 {
        self.inner.rotator.as_ref().map_or(0, |r| r.generation())
    }

    /// Stops the credential refresh, then closes the pool once: it waits for checked-out
    /// connections to come back and closes them all. Later and concurrent calls wait for that
    /// same close and do nothing more.
    ///
    /// # Cancellation safety
    ///
    /// If the future is dropped before the close finished (e.g. under a shutdown deadline),
    /// the pool is already refusing new connections and a later call finishes the close.
    pub async fn close(&self) {
        let inner = &self.inner;
        let mut first = false;
        inner
            .closed
            .get_or_init(|| async {
                first = true;
                inner.token.cancel();
                // Marks the pool closed at once; awaiting waits for connections to return.
                let closing = inner.pool.close();
                inner.tracker.close();
                inner.tracker.wait().await;
                closing.await;
                inner.close_count.fetch_add(1, Ordering::SeqCst);
                tracing::info!("lakebase pool closed");
            })
            .await;
        if !first {
            tracing::debug!("lakebase pool already closed");
        }
    }

    /// Whether [`close`](Self::close) has been called (the pool refuses new work from then on).
    pub fn is_closed(&self) -> bool {
        self.inner.token.is_cancelled() || self.inner.pool.is_closed()
    }

    /// How many times the pool was actually closed: 0 before [`close`](Self::close), 1 after,
    /// however often it is called.
    pub fn close_count(&self) -> u64 {
        self.inner.close_count.load(Ordering::SeqCst)
    }
}

impl fmt::Debug for LakebasePool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LakebasePool")
            .field("size", &self.inner.pool.size())
            .field("idle", &self.inner.pool.num_idle())
            .field("closed", &self.is_closed())
            .field("credential_generation", &self.credential_generation())
            .finish()
    }
}
