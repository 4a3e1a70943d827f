//! The store conformance suite against PostgreSQL (`TEST_DATABASE_URL`), each case in its
//! own schema so cases run in parallel, and the checks only Postgres has. Without the
//! variable every case prints that it was skipped; CI always sets it.

#![allow(clippy::unwrap_used)]

use sqlx::postgres::PgPoolOptions;
use taskflow::PostgresStore;
use taskflow::testing::storage;

taskflow_store_tests::conformance_tests!(taskflow_store_tests::fresh_postgres);

#[tokio::test]
async fn purge_deletes_commit_markers_before_the_cutoff() {
    let Some(opts) = taskflow_store_tests::pg_schema().await else {
        return;
    };
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(opts)
        .await
        .unwrap();
    let store = storage(PostgresStore::new(pool.clone()).await.unwrap());
    let markers = async || {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM task_batches")
            .fetch_one(&pool)
            .await
            .unwrap();
        u64::try_from(n).unwrap()
    };
    taskflow_store_tests::purge_deletes_commit_markers_before_the_cutoff(store.clone(), markers)
        .await;
    store.close().await;
    pool.close().await;
}
