//! The cached credential, its single-flight refresh and the background refresh loop.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::LakebaseConfig;
use crate::credentials::{Credential, CredentialProvider, refresh_margin};
use crate::error::Result;

/// The shortest wait between two refreshes, so a credential that arrives already due (its
/// lifetime shorter than the margin) cannot make the loop spin.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_millis(500);
/// First wait after a failed refresh; doubled on each further failure.
const RETRY_BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest wait between retries of a failing refresh.
const RETRY_BACKOFF_CAP: Duration = Duration::from_secs(30);

/// Holds the current credential and applies new ones to the pool's connect options.
pub(crate) struct Rotator {
    provider: Arc<dyn CredentialProvider>,
    config: LakebaseConfig,
    pool: PgPool,
    state: Mutex<State>,
    /// Held while a refresh is in flight, so concurrent callers share it.
    gate: tokio::sync::Mutex<()>,
}

struct State {
    credential: Credential,
    fetched_at: SystemTime,
    generation: u64,
}

impl Rotator {
    /// Wraps a pool that was opened with `initial`, fetched at `fetched_at`.
    pub(crate) fn new(
        provider: Arc<dyn CredentialProvider>,
        config: LakebaseConfig,
        pool: PgPool,
        initial: Credential,
        fetched_at: SystemTime,
    ) -> Self {
        Self {
            provider,
            config,
            pool,
            state: Mutex::new(State {
                credential: initial,
                fetched_at,
                generation: 1,
            }),
            gate: tokio::sync::Mutex::new(()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The guarded data is replaced whole, so a poisoned lock still holds a valid value.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many credentials have been applied, the first included.
    pub(crate) fn generation(&self) -> u64 {
        self.state().generation
    }

    /// When the current credential should be replaced, or `None` if it never expires.
    fn refresh_at(&self) -> Option<SystemTime> {
        let state = self.state();
        let expires_at = state.credential.expires_at()?;
        let lifetime = expires_at
            .duration_since(state.fetched_at)
            .unwrap_or_default();
        let margin = refresh_margin(lifetime, self.config.refresh_margin());
        Some(expires_at.checked_sub(margin).unwrap_or(expires_at))
    }

    /// The current credential if it is not due, else `None`.
    fn fresh(&self) -> Option<Credential> {
        let due = self.refresh_at().is_some_and(|at| SystemTime::now() >= at);
        (!due).then(|| self.state().credential.clone())
    }

    /// Returns the current credential, refreshing it first when it is due. Concurrent
    /// callers wait for one refresh and share its result.
    pub(crate) async fn credential(&self) -> Result<Credential> {
        if let Some(credential) = self.fresh() {
            return Ok(credential);
        }
        let _gate = self.gate.lock().await;
        if let Some(credential) = self.fresh() {
            return Ok(credential);
        }
        let fetched_at = SystemTime::now();
        let credential = self.provider.fetch().await?;
        self.apply(credential.clone(), fetched_at);
        Ok(credential)
    }

    /// Makes `credential` current; new connections use it, open ones are left alone.
    fn apply(&self, credential: Credential, fetched_at: SystemTime) {
        let options = self.config.connect_options(Some(&credential));
        let generation = {
            let mut state = self.state();
            state.generation += 1;
            state.credential = credential;
            state.fetched_at = fetched_at;
            // Set inside the lock so generation and connect options always match.
            self.pool.set_connect_options(options);
            state.generation
        };
        tracing::info!(
            credential.generation = generation,
            credential.expires_in_s = self.expires_in().map(|d| d.as_secs()),
            "lakebase credential rotated"
        );
    }

    fn expires_in(&self) -> Option<Duration> {
        let expires_at = self.state().credential.expires_at()?;
        Some(
            expires_at
                .duration_since(SystemTime::now())
                .unwrap_or_default(),
        )
    }

    fn until_due(&self) -> Duration {
        let wait = self.refresh_at().map_or(Duration::MAX, |at| {
            at.duration_since(SystemTime::now()).unwrap_or_default()
        });
        wait.max(MIN_REFRESH_INTERVAL)
    }

    /// Refreshes the credential shortly before each expiry until `token` is cancelled.
    /// Failures are logged and retried with backoff; open connections keep working.
    pub(crate) async fn run(self: Arc<Self>, token: CancellationToken) {
        let mut failures: u32 = 0;
        loop {
            let wait = match failures {
                0 => self.until_due(),
                n => retry_backoff(n),
            };
            tokio::select! {
                () = token.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
            let result = tokio::select! {
                () = token.cancelled() => break,
                result = self.credential() => result,
            };
            match result {
                Ok(_) => failures = 0,
                Err(error) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(
                        error = %crate::error::chain(&error),
                        attempt = failures,
                        retry_in_ms = u64::try_from(retry_backoff(failures).as_millis()).unwrap_or(u64::MAX),
                        "lakebase credential refresh failed; open connections keep working"
                    );
                }
            }
        }
        tracing::debug!("lakebase credential refresh stopped");
    }
}

/// The wait before retry number `failures` (1-based): 1 s, 2 s, 4 s … at most 30 s.
fn retry_backoff(failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    RETRY_BACKOFF_BASE
        .saturating_mul(factor)
        .min(RETRY_BACKOFF_CAP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_backoff_doubles_up_to_the_cap() {
        let secs: Vec<u64> = (1..=7).map(|n| retry_backoff(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(retry_backoff(u32::MAX), RETRY_BACKOFF_CAP);
    }
}
