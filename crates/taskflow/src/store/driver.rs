//! The narrow interface a backend implements: its SQL dialect and its connections.
//!
//! Everything a batch *means* lives in [`batch`](super::batch), written once; a driver
//! only says how to reach its database and how to spell each statement.

use std::fmt::Debug;
use std::ops::DerefMut;

use async_trait::async_trait;
use sqlx::Pool;
use tokio::sync::broadcast;

use super::sql::{Sql, SqlConn};
use super::{Backend, Notice};
use crate::error::Result;

/// One backend's dialect and connection handling.
#[async_trait]
pub(crate) trait Driver: Send + Sync + Debug + 'static {
    /// The sqlx database type.
    type Db: sqlx::Database<Connection: SqlConn>;

    /// Which database this is.
    const BACKEND: Backend;

    /// The statements, in this backend's dialect.
    const SQL: &'static Sql;

    /// The connection one batch is written through, held for that batch.
    type WriteConn<'a>: DerefMut<Target = <Self::Db as sqlx::Database>::Connection> + Send
    where
        Self: 'a;

    /// Waits for the connection the next batch is written through.
    async fn write_conn(&self) -> Result<Self::WriteConn<'_>>;

    /// Closes a connection whose state is unknown (a batch failed or stalled on it), so
    /// that the database rolls back whatever it left open; the next batch gets a fresh one.
    fn discard(conn: Self::WriteConn<'_>);

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
