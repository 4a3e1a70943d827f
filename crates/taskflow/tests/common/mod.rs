//! Helpers shared by the engine tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use taskflow::{Config, SqliteStore, TaskEvent, TaskFlow, TaskInfo, TaskStatus};

/// Generous bound for conditions on a loaded 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Short intervals so recovery and polling happen quickly in tests.
pub fn fast_config() -> Config {
    Config::default()
        .poll_interval(Duration::from_millis(50))
        .lease(Duration::from_millis(600))
        .reap_interval(Duration::from_millis(100))
        .stop_grace(Duration::from_millis(500))
        .drain_timeout(Duration::from_millis(500))
        .retry_base(Duration::from_millis(10))
        .retry_cap(Duration::from_millis(50))
}

pub async fn start_at(path: &Path, config: Config) -> TaskFlow {
    let store = SqliteStore::open(path.join("tasks.db"))
        .await
        .expect("open store");
    TaskFlow::start(store, config).await.expect("start engine")
}

pub async fn start(config: Config) -> (TaskFlow, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let flow = start_at(dir.path(), config).await;
    (flow, dir)
}

/// Polls `check` until it yields `Some`, failing after [`DEADLINE`].
pub async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub async fn wait_status(
    flow: &TaskFlow,
    key: &str,
    user: Option<&str>,
    want: TaskStatus,
) -> TaskInfo {
    wait_for(&format!("{key} to be {want}"), || async {
        flow.status(key, user)
            .await
            .ok()
            .filter(|t| t.status == want)
    })
    .await
}

/// Every event of the task until its stream ends.
pub async fn all_events(
    flow: &TaskFlow,
    key: &str,
    user: Option<&str>,
    after: u64,
) -> Vec<TaskEvent> {
    let mut stream = flow.subscribe(key, user, after).await.expect("subscribe");
    let mut out = Vec::new();
    let collect = async {
        while let Some(e) = stream.next().await {
            out.push(e.expect("event"));
        }
    };
    tokio::time::timeout(DEADLINE, collect)
        .await
        .expect("stream ends in time");
    out
}

pub fn names(events: &[TaskEvent]) -> Vec<&str> {
    events.iter().map(|e| e.name.as_str()).collect()
}

pub fn assert_gapless(events: &[TaskEvent], from: u64) {
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            e.seq,
            from + 1 + i as u64,
            "seq gap or duplicate in {events:#?}"
        );
    }
}

/// Connect options for a fresh schema in the database at `TEST_DATABASE_URL`, so tests
/// run in parallel without seeing each other's rows; `None` (after saying so) when the
/// variable is unset. Schemas left by runs older than an hour are dropped on the way.
pub async fn pg_schema() -> Option<sqlx::postgres::PgConnectOptions> {
    use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
    use std::str::FromStr;
    use std::time::{SystemTime, UNIX_EPOCH};

    let Ok(url) = std::env::var("TEST_DATABASE_URL") else {
        eprintln!("skipped: TEST_DATABASE_URL is not set");
        return None;
    };
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let old: Vec<String> =
        sqlx::query_scalar("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'tf\\_%\\_%'")
            .fetch_all(&admin)
            .await
            .unwrap();
    for schema in old {
        let stamp = schema.split('_').nth(1).and_then(|s| s.parse::<u64>().ok());
        if stamp.is_some_and(|t| t + 3600 < now) {
            let drop = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
            let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&admin).await;
        }
    }
    let schema = format!("tf_{now}_{}", fastrand::u64(..));
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA \"{schema}\"")))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let opts = PgConnectOptions::from_str(&url).unwrap();
    Some(opts.options([("search_path", schema.as_str())]))
}
