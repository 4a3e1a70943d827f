//! Engine configuration. Every default is a named constant beside its field.

use std::time::Duration;

use crate::limits::RateLimit;

/// Default global concurrency slots per node.
pub const DEFAULT_GLOBAL_SLOTS: usize = 64;
/// Default concurrency slots per user per node.
pub const DEFAULT_PER_USER_SLOTS: usize = 8;
/// Default interval of the pending-work poll.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Default lease; renewed every third of it.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
/// Default interval of the expired-lease scan.
pub const DEFAULT_REAP_INTERVAL: Duration = Duration::from_secs(5);
/// Default grace a stopped handler gets before its future is dropped.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(5);
/// Default time running tasks get to finish at shutdown before they are released.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Default base of the exponential retry backoff.
pub const DEFAULT_RETRY_BASE: Duration = Duration::from_secs(1);
/// Default cap of the retry backoff.
pub const DEFAULT_RETRY_CAP: Duration = Duration::from_secs(30);
/// Default age past which a task whose node died is failed instead of recovered.
pub const DEFAULT_RECOVERY_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Default retention of terminal and suspended tasks.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default interval of the retention sweep.
pub const DEFAULT_PURGE_INTERVAL: Duration = Duration::from_secs(3600);
/// Default bound on pending tasks before submissions are rejected.
pub const DEFAULT_MAX_PENDING: u64 = 100_000;
/// Default number of times a task may be recovered after its process died or lost its
/// lease before it fails with kind `recovery_limit`.
pub const DEFAULT_MAX_RECOVERIES: u32 = 20;

/// Engine settings, with consuming setters.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use taskflow::{Config, RateLimit};
/// let config = Config::default()
///     .global_slots(128)
///     .lease(Duration::from_secs(10))
///     .user_rate_limit(RateLimit::new(20, Duration::from_secs(1)));
/// # let _ = config;
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) node_id: Option<String>,
    pub(crate) global_slots: usize,
    pub(crate) per_user_slots: usize,
    pub(crate) poll_interval: Duration,
    pub(crate) lease: Duration,
    pub(crate) reap_interval: Duration,
    pub(crate) stop_grace: Duration,
    pub(crate) drain_timeout: Duration,
    pub(crate) retry_base: Duration,
    pub(crate) retry_cap: Duration,
    pub(crate) recovery_max_age: Duration,
    pub(crate) retention: Duration,
    pub(crate) purge_interval: Duration,
    pub(crate) max_pending: u64,
    pub(crate) max_recoveries: u32,
    pub(crate) run_tasks: bool,
    pub(crate) rate_limit: Option<RateLimit>,
    pub(crate) user_rate_limit: Option<RateLimit>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_id: None,
            global_slots: DEFAULT_GLOBAL_SLOTS,
            per_user_slots: DEFAULT_PER_USER_SLOTS,
            poll_interval: DEFAULT_POLL_INTERVAL,
            lease: DEFAULT_LEASE,
            reap_interval: DEFAULT_REAP_INTERVAL,
            stop_grace: DEFAULT_STOP_GRACE,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            retry_base: DEFAULT_RETRY_BASE,
            retry_cap: DEFAULT_RETRY_CAP,
            recovery_max_age: DEFAULT_RECOVERY_MAX_AGE,
            retention: DEFAULT_RETENTION,
            purge_interval: DEFAULT_PURGE_INTERVAL,
            max_pending: DEFAULT_MAX_PENDING,
            max_recoveries: DEFAULT_MAX_RECOVERIES,
            run_tasks: true,
            rate_limit: None,
            user_rate_limit: None,
        }
    }
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident: $ty:ty) => {
        $(#[$doc])*
        pub fn $name(mut self, value: $ty) -> Self {
            self.$name = value;
            self
        }
    };
}

impl Config {
    /// Names this node (lease owner). Default: a fresh UUIDv7 per engine start, so a
    /// restarted process never inherits its predecessor's leases.
    pub fn node_id(mut self, id: impl Into<String>) -> Self {
        self.node_id = Some(id.into());
        self
    }

    setter!(
        /// Tasks running at once on this node (default 64, at least 1).
        global_slots: usize
    );
    setter!(
        /// Tasks of one user running at once on this node (default 8).
        per_user_slots: usize
    );
    setter!(
        /// How often the executor looks for pending work without a wake-up (default 1 s).
        poll_interval: Duration
    );
    setter!(
        /// Lease length; renewed every third of it (default 30 s).
        lease: Duration
    );
    setter!(
        /// How often expired leases are looked for (default 5 s).
        reap_interval: Duration
    );
    setter!(
        /// Grace a stopped handler gets before its future is dropped (default 5 s).
        stop_grace: Duration
    );
    setter!(
        /// Time running tasks get to finish at shutdown (default 10 s).
        drain_timeout: Duration
    );
    setter!(
        /// Base of the full-jitter exponential backoff (default 1 s).
        retry_base: Duration
    );
    setter!(
        /// Cap of the backoff (default 30 s).
        retry_cap: Duration
    );
    setter!(
        /// Tasks older than this whose node died are failed, not recovered (default 24 h).
        recovery_max_age: Duration
    );
    setter!(
        /// Terminal and suspended tasks are deleted after this (default 7 days).
        retention: Duration
    );
    setter!(
        /// How often the retention sweep runs (default 1 h).
        purge_interval: Duration
    );
    setter!(
        /// Submissions are rejected while about this many tasks are pending (default 100 000).
        max_pending: u64
    );

    setter!(
        /// Times a task may be recovered after its process died or lost its lease
        /// (default 20), for tasks whose [`TaskOptions`](crate::TaskOptions) set no limit
        /// of their own. Recoveries never spend the task's `max_attempts`, which count
        /// only handler failures; past this limit the task fails with kind
        /// `recovery_limit`, so a task that kills its process cannot crash-loop forever.
        max_recoveries: u32
    );
    setter!(
        /// Whether this node claims and runs tasks (default `true`). A node with `false`
        /// still submits, answers status and streams events, and leaves running to the
        /// other nodes sharing its (Postgres) store.
        run_tasks: bool
    );

    /// Limits submissions across all users.
    pub fn rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate_limit = Some(limit);
        self
    }

    /// Limits submissions per user.
    pub fn user_rate_limit(mut self, limit: RateLimit) -> Self {
        self.user_rate_limit = Some(limit);
        self
    }

    /// The configured lease.
    pub fn lease_duration(&self) -> Duration {
        self.lease
    }
}
