//! The store conformance suite against PostgreSQL (`TEST_DATABASE_URL`), each case in its
//! own schema so cases run in parallel. Without the variable every case prints that it was
//! skipped; CI always sets it.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use sqlx::postgres::PgPoolOptions;
use taskflow::{PostgresStore, Store};

async fn fresh_store() -> Option<Arc<dyn Store>> {
    let opts = common::pg_schema().await?;
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
