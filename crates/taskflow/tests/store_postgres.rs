//! The store conformance suite against PostgreSQL (`TEST_DATABASE_URL`), each case in its
//! own schema so cases run in parallel. Without the variable every case prints that it was
//! skipped; CI always sets it.

#![allow(clippy::unwrap_used)]

use std::str::FromStr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use taskflow::{PostgresStore, Store};

async fn fresh_store() -> Option<Arc<dyn Store>> {
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
    // Drop schemas that earlier runs left behind (older than an hour).
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
    let opts = PgConnectOptions::from_str(&url)
        .unwrap()
        .options([("search_path", schema.as_str())]);
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(opts)
        .await
        .unwrap();
    Some(Arc::new(
        PostgresStore::new(pool)
            .await
            .expect("migrate postgres store"),
    ))
}

taskflow::store_conformance_tests!(fresh_store);
