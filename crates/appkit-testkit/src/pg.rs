//! Fresh Postgres schemas of a test's own at `TEST_DATABASE_URL`, so tests run in
//! parallel on one server without seeing each other's rows:
//!
//! - [`fresh_schema`]: connect options whose `search_path` is a new, empty schema (for
//!   tests that open the store in-process);
//! - [`TestDb`]: a schema owned by a login role made for the test, for servers started
//!   on it, with the stored event log to read and a real outage for just this test's
//!   connections.
//!
//! Every name is `tk_<tag>_<pid>_<unix secs>_<n>`. Schemas and roles whose test process
//! is gone are swept by the next test that makes one (a test that panics skips its
//! cleanup). Other tests share the server: nothing here touches anything but those
//! names and their connections.

use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Row};
use tokio::time::Instant;

use crate::DEADLINE;
use crate::server::Server;

/// Lease used by tests that kill or pause a runner: short, so takeover is quick.
pub const SHORT_LEASE_MS: u64 = 1500;
/// Reaper interval used with [`SHORT_LEASE_MS`].
pub const SHORT_REAP_MS: u64 = 200;

/// Prefix of every schema and role made here.
const PREFIX: &str = "tk";

/// `TEST_DATABASE_URL`, or `None` after printing that `test` is skipped.
#[allow(clippy::print_stdout, reason = "says why a test did nothing")]
pub fn database_url(test: &str) -> Option<String> {
    match std::env::var("TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            println!("skipped {test}: TEST_DATABASE_URL is not set");
            None
        }
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A name no other test (process) uses: `tk_<tag>_<pid>_<secs>_<n>`.
fn unique_name(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{PREFIX}_{tag}_{}_{}_{n}", std::process::id(), unix_secs())
}

/// Whether a name made by [`unique_name`] belongs to a test process that is gone: its pid
/// is not running here and it is older than ten minutes, or it is older than a day.
/// Without procfs only age counts (an hour).
fn is_stale(name: &str) -> bool {
    let mut parts = name.rsplit('_');
    let (Some(_n), Some(secs), Some(pid)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let (Ok(secs), Ok(pid)) = (secs.parse::<u64>(), pid.parse::<u32>()) else {
        return false;
    };
    let age = unix_secs().saturating_sub(secs);
    if !Path::new("/proc/self").exists() {
        return age > 3600;
    }
    let gone = !Path::new(&format!("/proc/{pid}")).exists();
    (gone && age > 600) || age > 86_400
}

async fn admin_pool(options: &PgConnectOptions) -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options.clone())
        .await
        .unwrap_or_else(|e| panic!("connect to TEST_DATABASE_URL: {}", crate::error_chain(&e)))
}

fn parse_url(url: &str) -> PgConnectOptions {
    PgConnectOptions::from_str(url)
        .unwrap_or_else(|e| panic!("TEST_DATABASE_URL: {}", crate::error_chain(&e)))
}

/// Drops the schemas and roles left by test processes that are gone. Best effort: a
/// concurrent sweeper may get there first.
async fn sweep_stale(admin: &PgPool) {
    let pattern = format!("{PREFIX}\\_%");
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE $1 \
         UNION SELECT rolname::text FROM pg_roles WHERE rolname LIKE $1",
    )
    .bind(&pattern)
    .fetch_all(admin)
    .await
    .unwrap_or_default();
    for name in names.into_iter().filter(|n| is_stale(n)) {
        for sql in [
            format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{name}'"
            ),
            format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"),
            format!("DROP OWNED BY \"{name}\""),
            format!("DROP ROLE IF EXISTS \"{name}\""),
        ] {
            let _ = sqlx::query(AssertSqlSafe(sql)).execute(admin).await;
        }
    }
}

/// Runs `sql`; retries while a concurrent test's GRANT/REVOKE on the same database row
/// collides with it ("tuple concurrently updated").
async fn admin_exec(admin: &PgPool, sql: &str) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match sqlx::query(AssertSqlSafe(sql.to_owned()))
            .execute(admin)
            .await
        {
            Ok(_) => return,
            Err(e) if e.to_string().contains("concurrently") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{sql}: {}", crate::error_chain(&e)),
        }
    }
}

/// Connect options for a fresh, empty schema in the database at `TEST_DATABASE_URL`
/// (its `search_path`), so tests run in parallel without seeing each other's rows;
/// `None` (after saying so) when the variable is unset. The schema stays until a later
/// test sweeps it once this process is gone.
///
/// # Panics
/// When the database cannot be reached or the schema cannot be made.
pub async fn fresh_schema() -> Option<PgConnectOptions> {
    let url = database_url("(Postgres case)")?;
    let options = parse_url(&url);
    let admin = admin_pool(&options).await;
    sweep_stale(&admin).await;
    let schema = unique_name("s");
    admin_exec(&admin, &format!("CREATE SCHEMA \"{schema}\"")).await;
    admin.close().await;
    Some(options.options([("search_path", schema.as_str())]))
}

/// One stored event.
#[derive(Debug, Clone)]
pub struct EventRow {
    /// The event's seq (its SSE id).
    pub seq: i64,
    /// `created`, `started`, `custom`, `completed`, ….
    pub kind: String,
    /// The name (a custom event's name).
    pub name: String,
    /// The payload.
    pub payload: Value,
    /// Commit time, ms since the Unix epoch.
    pub at: i64,
}

/// A schema owned by a login role, both made for one test and dropped by [`cleanup`].
///
/// [`cleanup`]: TestDb::cleanup
#[derive(Debug)]
pub struct TestDb {
    /// Admin pool (the `TEST_DATABASE_URL` user); never used by the servers.
    pub admin: PgPool,
    /// The schema (also the role's name).
    pub schema: String,
    admin_options: PgConnectOptions,
}

impl TestDb {
    /// Creates role and schema `tk_<tag>_<pid>_<secs>_<n>`; the role owns the schema.
    ///
    /// # Panics
    /// When the database cannot be reached or either cannot be made.
    pub async fn create(url: &str, tag: &str) -> Self {
        let admin_options = parse_url(url);
        let admin = admin_pool(&admin_options).await;
        sweep_stale(&admin).await;
        let schema = unique_name(tag);
        let database = admin_options
            .get_database()
            .map(str::to_owned)
            .unwrap_or_else(|| admin_options.get_username().to_owned());
        for sql in [
            format!("CREATE ROLE {schema} LOGIN PASSWORD 'e2e'"),
            format!("GRANT CONNECT ON DATABASE \"{database}\" TO {schema}"),
            format!("CREATE SCHEMA {schema} AUTHORIZATION {schema}"),
        ] {
            admin_exec(&admin, &sql).await;
        }
        Self {
            admin,
            schema,
            admin_options,
        }
    }

    /// The store URL a server logs in with: this test's role, reporting `app` as its
    /// `application_name`.
    pub fn url(&self, app: &str) -> String {
        let o = &self.admin_options;
        let database = o.get_database().unwrap_or(o.get_username());
        format!(
            "postgres://{role}:e2e@{host}:{port}/{database}?application_name={app}",
            role = self.schema,
            host = o.get_host(),
            port = o.get_port(),
        )
    }

    /// The `PG*` variables of the Lakebase pool for this test's role and schema.
    pub fn lakebase_env(&self, app: &str) -> Vec<(String, String)> {
        let o = &self.admin_options;
        [
            ("APPKIT_TASKS_STORE", "lakebase".to_owned()),
            ("APPKIT_TASKS_SCHEMA", self.schema.clone()),
            ("PGHOST", o.get_host().to_owned()),
            ("PGPORT", o.get_port().to_string()),
            (
                "PGDATABASE",
                o.get_database().unwrap_or(o.get_username()).to_owned(),
            ),
            ("PGUSER", self.schema.clone()),
            ("PGPASSWORD", "e2e".to_owned()),
            ("PGAPPNAME", app.to_owned()),
            ("PGSSLMODE", "disable".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Starts a dev-playground on this schema as `app`, with `extra` env (which wins).
    ///
    /// # Panics
    /// As [`Server::start`].
    pub async fn start_server(&self, dir: &Path, app: &str, extra: &[(&str, &str)]) -> Server {
        let url = self.url(app);
        let mut env: Vec<(&str, &str)> = vec![
            ("APPKIT_TASKS_STORE", &url),
            ("APPKIT_TASKS_SCHEMA", &self.schema),
        ];
        env.extend_from_slice(extra);
        Server::start(dir, &env).await
    }

    /// Every stored event of the task with idempotency key `key`, by seq.
    ///
    /// # Panics
    /// When the query fails.
    pub async fn events(&self, key: &str) -> Vec<EventRow> {
        events_in(&self.admin, &self.schema, key).await
    }

    /// How many task rows carry idempotency key `key`.
    ///
    /// # Panics
    /// When the query fails.
    pub async fn task_count(&self, key: &str) -> i64 {
        let sql = format!(
            "SELECT count(*) FROM {}.tasks WHERE idempotency_key = $1",
            self.schema
        );
        sqlx::query_scalar(AssertSqlSafe(sql))
            .bind(key)
            .fetch_one(&self.admin)
            .await
            .expect("count tasks")
    }

    /// The stored status of the latest task with idempotency key `key`.
    ///
    /// # Panics
    /// When the query fails or there is no such task.
    pub async fn task_status(&self, key: &str) -> String {
        self.latest(key, "status").await
    }

    /// The node whose runner holds the latest task with key `key` (`None` unless running).
    ///
    /// # Panics
    /// When the query fails or there is no such task.
    pub async fn owner_node(&self, key: &str) -> Option<String> {
        self.latest(key, "owner_node").await
    }

    /// Column `column` of the latest task with idempotency key `key`.
    async fn latest<T>(&self, key: &str, column: &str) -> T
    where
        T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
    {
        let sql = format!(
            "SELECT {column} FROM {}.tasks WHERE idempotency_key = $1 \
             ORDER BY created_at DESC LIMIT 1",
            self.schema
        );
        sqlx::query_scalar(AssertSqlSafe(sql))
            .bind(key)
            .fetch_one(&self.admin)
            .await
            .unwrap_or_else(|e| panic!("task {key}'s {column}: {}", crate::error_chain(&e)))
    }

    /// Waits until the task's stored events satisfy `pred`, returning them.
    ///
    /// # Panics
    /// After [`DEADLINE`], with the events.
    pub async fn wait_events(
        &self,
        key: &str,
        what: &str,
        pred: impl Fn(&[EventRow]) -> bool,
    ) -> Vec<EventRow> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let events = self.events(key).await;
            if pred(&events) {
                return events;
            }
            assert!(
                Instant::now() < deadline,
                "task {key}: no {what} within {DEADLINE:?}; events: {events:#?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// How many backends report `application_name = app`.
    ///
    /// # Panics
    /// When the query fails.
    pub async fn app_backends(&self, app: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1")
            .bind(app)
            .fetch_one(&self.admin)
            .await
            .expect("count backends")
    }

    /// Terminates every backend that reports `application_name = app`; how many.
    ///
    /// # Panics
    /// When the query fails.
    pub async fn terminate_app(&self, app: &str) -> i64 {
        sqlx::query_scalar(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = $1",
        )
        .bind(app)
        .fetch_one(&self.admin)
        .await
        .expect("terminate backends")
    }

    /// The database goes away for this test's role: new logins are refused and every open
    /// connection of the role is terminated (their count is returned). Other tests are
    /// untouched.
    pub async fn outage_begin(&self) -> i64 {
        admin_exec(&self.admin, &format!("ALTER ROLE {} NOLOGIN", self.schema)).await;
        self.terminate_role().await
    }

    /// Terminates every backend of this test's role; how many.
    ///
    /// # Panics
    /// When the query fails.
    pub async fn terminate_role(&self) -> i64 {
        sqlx::query_scalar(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = $1",
        )
        .bind(&self.schema)
        .fetch_one(&self.admin)
        .await
        .expect("terminate role backends")
    }

    /// Ends [`outage_begin`](Self::outage_begin): logins work again.
    pub async fn outage_end(&self) {
        admin_exec(&self.admin, &format!("ALTER ROLE {} LOGIN", self.schema)).await;
    }

    /// Drops the schema and the role (after the servers have exited).
    pub async fn cleanup(self) {
        self.outage_end().await;
        self.terminate_role().await;
        admin_exec(
            &self.admin,
            &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema),
        )
        .await;
        let database = self
            .admin_options
            .get_database()
            .unwrap_or(self.admin_options.get_username())
            .to_owned();
        admin_exec(
            &self.admin,
            &format!("REVOKE ALL ON DATABASE \"{database}\" FROM {}", self.schema),
        )
        .await;
        admin_exec(&self.admin, &format!("DROP ROLE IF EXISTS {}", self.schema)).await;
        self.admin.close().await;
    }
}

/// Every stored event of the task with idempotency key `key` in `schema`, read through
/// `pool` (any database holding a task store), by seq.
///
/// # Panics
/// When the query fails.
pub async fn events_in(pool: &PgPool, schema: &str, key: &str) -> Vec<EventRow> {
    let sql = format!(
        "SELECT e.seq, e.kind, e.name, e.payload, e.created_at FROM {schema}.task_events e \
         JOIN {schema}.tasks t ON t.id = e.task_id \
         WHERE t.idempotency_key = $1 ORDER BY t.created_at, e.seq"
    );
    sqlx::query(AssertSqlSafe(sql))
        .bind(key)
        .fetch_all(pool)
        .await
        .unwrap_or_else(|e| panic!("read task {key}'s events: {}", crate::error_chain(&e)))
        .into_iter()
        .map(|r| EventRow {
            seq: r.get("seq"),
            kind: r.get("kind"),
            name: r.get("name"),
            payload: r.get("payload"),
            at: r.get("created_at"),
        })
        .collect()
}

/// The server's task-engine node id, from its `task engine started node=…` line.
///
/// # Panics
/// When the server has not logged it.
pub fn node_id(server: &Server) -> String {
    let line = server
        .logs
        .snapshot()
        .into_iter()
        .find(|l| l.contains("task engine started"))
        .expect("the engine logged its start");
    let rest = line.split("node=").nth(1).expect("node= field");
    rest.split(|c: char| c.is_whitespace() || c == '"' || c == ',')
        .find(|s| !s.is_empty())
        .expect("node id")
        .to_owned()
}

/// Splits two servers into the one whose runner holds task `key` and the other one (a
/// task submitted on one node may be claimed by either when it was queued first).
///
/// # Panics
/// When the task is not running on either.
pub async fn runner_and_other(db: &TestDb, key: &str, a: Server, b: Server) -> (Server, Server) {
    let owner = db.owner_node(key).await.expect("the task is running");
    if owner == node_id(&a) {
        (a, b)
    } else {
        assert_eq!(owner, node_id(&b), "the task runs on one of the two");
        (b, a)
    }
}

/// The `i` of the stored `tick` events, in seq order.
///
/// # Panics
/// When a tick has no numeric `i`.
pub fn stored_ticks(events: &[EventRow]) -> Vec<u64> {
    events
        .iter()
        .filter(|e| e.kind == "custom" && e.name == "tick")
        .map(|e| e.payload["i"].as_u64().expect("tick i"))
        .collect()
}

/// The attempts of the stored `started` events, in seq order.
///
/// # Panics
/// When a `started` event has no numeric attempt.
pub fn started_attempts(events: &[EventRow]) -> Vec<u64> {
    events
        .iter()
        .filter(|e| e.kind == "started")
        .map(|e| e.payload["attempt"].as_u64().expect("started attempt"))
        .collect()
}

/// How many stored events are of `kind`.
pub fn count_kind(events: &[EventRow], kind: &str) -> usize {
    events.iter().filter(|e| e.kind == kind).count()
}

/// Asserts the log of one count task ran to `n` exactly once: seqs 1, 2, 3… with no gap,
/// one `completed` (the last event) with total `n`, and ticks 1..=n each exactly once,
/// in order.
///
/// # Panics
/// When it did not.
pub fn assert_count_ran_once(key: &str, events: &[EventRow], n: u64) {
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    let expected: Vec<i64> = (1..=i64::try_from(events.len()).expect("few events")).collect();
    assert_eq!(
        seqs, expected,
        "task {key}: seqs gapless from 1: {events:#?}"
    );
    assert_eq!(
        count_kind(events, "completed"),
        1,
        "task {key}: exactly one completed: {events:#?}"
    );
    let last = events.last().expect("events");
    assert_eq!(last.kind, "completed", "task {key}: completed is last");
    assert_eq!(last.payload["result"]["total"], n, "task {key}: {last:?}");
    assert_eq!(
        stored_ticks(events),
        (1..=n).collect::<Vec<_>>(),
        "task {key}: ticks 1..={n} each exactly once: {events:#?}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_pid_and_time_and_only_gone_old_ones_are_stale() {
        let name = unique_name("x_y");
        assert!(name.starts_with("tk_x_y_"), "{name}");
        assert!(!is_stale(&name), "this process is alive: {name}");
        let old = format!("tk_x_{}_{}_0", std::process::id(), unix_secs() - 90_000);
        assert!(is_stale(&old), "a day old counts as stale: {old}");
        assert!(!is_stale("tk_not_a_name"));
    }
}
