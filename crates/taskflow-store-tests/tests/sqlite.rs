//! The store conformance suite against SQLite, each case on a fresh temporary file, and
//! the checks only SQLite has.

#![allow(clippy::unwrap_used)]

use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use taskflow::SqliteStore;
use taskflow::testing::storage;

taskflow_store_tests::conformance_tests!(taskflow_store_tests::fresh_sqlite);

/// A pending `job` task `t{i}` with key `k{i}`.
fn job(i: usize, input: serde_json::Value) -> taskflow::testing::SubmitParams {
    taskflow::testing::SubmitParams {
        id: format!("t{i}"),
        name: "job".into(),
        key: format!("k{i}"),
        user_id: None,
        input,
        max_attempts: 3,
        max_recoveries: 20,
        auto_recover: true,
        mode: taskflow::IdempotencyMode::AtLeastOnce,
        now: 1_000,
        claim: None,
    }
}

/// `sql`'s single integer, read on a connection of its own to the store's file.
async fn scalar(opts: &SqliteConnectOptions, sql: &'static str) -> i64 {
    let mut conn = SqliteConnection::connect_with(opts).await.unwrap();
    let n = sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    n
}

#[tokio::test]
async fn second_process_is_locked_out_until_the_first_closes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tasks.db");
    let first = SqliteStore::open(&path).await.unwrap();
    let err = SqliteStore::open(&path).await.unwrap_err();
    assert!(matches!(err, taskflow::Error::Locked { .. }), "{err:?}");
    storage(first).close().await;
    let again = SqliteStore::open(&path)
        .await
        .expect("lock released on close");
    storage(again).close().await;
}

#[tokio::test]
async fn purge_deletes_commit_markers_before_the_cutoff() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tasks.db");
    let store = storage(SqliteStore::open(&path).await.unwrap());
    let opts = SqliteConnectOptions::new().filename(&path).read_only(true);
    let markers =
        async || u64::try_from(scalar(&opts, "SELECT count(*) FROM task_batches").await).unwrap();
    taskflow_store_tests::purge_deletes_commit_markers_before_the_cutoff(store.clone(), markers)
        .await;
    store.close().await;
}

/// A row this version cannot read is reported as corrupt data (a 500 at the HTTP edge),
/// not as an unreachable store (a 503 that tells clients to retry a bug).
#[tokio::test]
async fn a_corrupt_row_is_reported_as_corrupt_not_as_an_outage() {
    use serde_json::json;
    use taskflow::testing::WriteOp;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tasks.db");
    let store = storage(SqliteStore::open(&path).await.unwrap());
    store
        .write_batch(&[WriteOp::Submit(job(1, json!(1)))])
        .await
        .unwrap();
    let opts = SqliteConnectOptions::new().filename(&path);
    let mut conn = SqliteConnection::connect_with(&opts).await.unwrap();
    sqlx::query("UPDATE tasks SET status = 'exploded' WHERE id = 't1'")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let err = store.task_by_id("t1").await.unwrap_err();
    assert!(matches!(err, taskflow::Error::Corrupt(_)), "{err:?}");
    assert!(!err.is_unavailable());
    assert!(err.to_string().contains("exploded"), "{err}");
    store.close().await;
}

/// The store's own checkpointer copies what batches commit into the database file, soon
/// after they commit: read with `immutable=1` (the main file alone, the WAL ignored), the
/// file holds every committed task within the deadline.
#[tokio::test]
async fn committed_batches_reach_the_database_file() {
    use std::time::{Duration, Instant};
    use taskflow::testing::WriteOp;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tasks.db");
    let store = storage(SqliteStore::open(&path).await.unwrap());
    for chunk in (0..60).collect::<Vec<_>>().chunks(20) {
        let ops: Vec<WriteOp> = chunk
            .iter()
            .map(|&i| WriteOp::Submit(job(i, serde_json::json!(i))))
            .collect();
        store.write_batch(&ops).await.unwrap();
    }
    let file_only = SqliteConnectOptions::new()
        .filename(&path)
        .read_only(true)
        .immutable(true);
    let in_file = async || -> Option<i64> {
        let mut conn = SqliteConnection::connect_with(&file_only).await.ok()?;
        let n = sqlx::query_scalar("SELECT count(*) FROM tasks")
            .fetch_one(&mut conn)
            .await
            .ok();
        let _ = conn.close().await;
        n
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = None;
    while Instant::now() < deadline {
        seen = in_file().await;
        if seen == Some(60) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        seen,
        Some(60),
        "the checkpointer copied every committed task"
    );
    store.close().await;
}

/// Tasks written before the key-hash index existed (their `key_hash` is `NULL`, and there
/// is no index) get it when the store opens, so lookups by key and the live-key check of a
/// submit find them.
#[tokio::test]
async fn tasks_without_a_key_hash_get_one_at_open() {
    use taskflow::testing::{OpResult, WriteOp};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tasks.db");
    let store = storage(SqliteStore::open(&path).await.unwrap());
    // More than one fill chunk (10,000 rows), and an owned task.
    let mut params: Vec<_> = (0..10_100).map(|i| job(i, serde_json::json!(i))).collect();
    params[7].user_id = Some("alice".into());
    for chunk in params.chunks(1_000) {
        let ops: Vec<WriteOp> = chunk.iter().cloned().map(WriteOp::Submit).collect();
        store.write_batch(&ops).await.unwrap();
    }
    store.close().await;

    let opts = SqliteConnectOptions::new().filename(&path);
    let nulls = async || scalar(&opts, "SELECT count(*) FROM tasks WHERE key_hash IS NULL").await;
    {
        let mut conn = SqliteConnection::connect_with(&opts).await.unwrap();
        // The state migration 0006 leaves behind: no index, no hashes.
        sqlx::query("DROP INDEX tasks_key_hash; UPDATE tasks SET key_hash = NULL")
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    }
    assert_eq!(nulls().await, 10_100);

    let store = storage(SqliteStore::open(&path).await.unwrap());
    let found = store.task_by_key("k7", Some("alice")).await.unwrap();
    assert_eq!(found.map(|t| t.id).as_deref(), Some("t7"));
    let found = store.task_by_key("k10099", None).await.unwrap();
    assert_eq!(found.map(|t| t.id).as_deref(), Some("t10099"));
    assert!(store.task_by_key("k7", None).await.unwrap().is_none());
    // A submit of a live task's key attaches to it instead of making a second one.
    let mut again = job(5, serde_json::json!("again"));
    again.id = "t5-again".into();
    let out = store.write_batch(&[WriteOp::Submit(again)]).await.unwrap();
    match &out[0].result {
        OpResult::Submitted { task, created, .. } => {
            assert!(!created);
            assert_eq!(task.id, "t5");
        }
        other => panic!("{other:?}"),
    }
    store.close().await;
    assert_eq!(nulls().await, 0);
}
