//! The store conformance suite against SQLite, each case on a fresh temporary file.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use taskflow::{SqliteStore, Store};

async fn fresh_store() -> Option<Arc<dyn Store>> {
    let dir = tempfile::tempdir().expect("temp dir").keep();
    let store = SqliteStore::open(dir.join("tasks.db"))
        .await
        .expect("open sqlite store");
    Some(Arc::new(store))
}

taskflow::store_conformance_tests!(fresh_store);

#[tokio::test]
async fn second_process_is_locked_out_until_the_first_closes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tasks.db");
    let first = SqliteStore::open(&path).await.unwrap();
    let err = SqliteStore::open(&path).await.unwrap_err();
    assert!(matches!(err, taskflow::Error::Locked { .. }), "{err:?}");
    first.close().await;
    let again = SqliteStore::open(&path)
        .await
        .expect("lock released on close");
    again.close().await;
}
