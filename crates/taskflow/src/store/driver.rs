//! The narrow interface a backend implements: its SQL dialect and its connections.
//!
//! Everything a batch *means* lives in [`batch`](super::batch), written once; a driver
//! only says how to reach its database and how to spell each statement.

use std::fmt::Debug;

use async_trait::async_trait;
use sqlx::Pool;
use tokio::sync::broadcast;

use super::sql::{Sql, SqlConn};
use super::{Backend, Notice};

/// One backend's dialect and connection handling.
#[async_trait]
pub(crate) trait Driver: Send + Sync + Debug + 'static {
    /// The sqlx database type.
    type Db: sqlx::Database<Connection: SqlConn>;

    /// Which database this is.
    const BACKEND: Backend;

    /// The statements, in this backend's dialect.
    const SQL: &'static Sql;

    /// The pool batches are written through (one connection for SQLite: one writer).
    fn writer(&self) -> &Pool<Self::Db>;

    /// The pool reads go through.
    fn reader(&self) -> &Pool<Self::Db>;

    /// `true` when this process is the only writer.
    const EXCLUSIVE: bool;

    /// Cross-process hints, for a shared store (none by default).
    fn notices(&self) -> Option<broadcast::Receiver<Notice>> {
        None
    }

    /// A name for this process in notifications, so it can skip its own (none needed by
    /// default).
    fn instance(&self) -> &str {
        ""
    }

    /// Stops background work and releases what the driver owns. Idempotent.
    async fn close(&self);
}
