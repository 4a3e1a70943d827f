//! Helpers shared by the engine tests.
#![allow(dead_code, unused_imports, unreachable_pub, clippy::unwrap_used)]

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
pub async fn wait_for<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    appkit_testkit::wait_for(what, DEADLINE, check).await
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

/// Connect options for a fresh schema in the database at `TEST_DATABASE_URL` (the shared
/// test kit's), so tests run in parallel without seeing each other's rows; `None` (after
/// saying so) when the variable is unset.
pub use appkit_testkit::pg::fresh_schema as pg_schema;
