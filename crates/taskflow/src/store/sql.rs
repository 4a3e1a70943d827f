//! Running one statement on either backend: backend-neutral arguments, the statement
//! table each driver fills with its dialect, and [`SqlConn`], implemented for both
//! connection types by one macro so that the binding and fetching code exists once.

use std::borrow::Cow;

use futures_util::future::BoxFuture;
use serde_json::Value;
use sqlx::FromRow;
use sqlx::postgres::{PgConnection, PgRow, Postgres};
use sqlx::sqlite::{Sqlite, SqliteConnection, SqliteRow};
use sqlx::types::Json;

/// A statement argument, bound with the type both backends agree on.
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    Text(String),
    OptText(Option<String>),
    Int(i64),
    Bool(bool),
    /// A JSON document (SQLite: text; Postgres: `jsonb`).
    Json(Value),
    OptJson(Option<Value>),
}

impl From<&str> for Arg {
    fn from(s: &str) -> Self {
        Self::Text(s.to_owned())
    }
}

impl From<String> for Arg {
    fn from(s: String) -> Self {
        Self::Text(s)
    }
}

impl From<&String> for Arg {
    fn from(s: &String) -> Self {
        Self::Text(s.clone())
    }
}

impl From<i64> for Arg {
    fn from(n: i64) -> Self {
        Self::Int(n)
    }
}

impl From<u32> for Arg {
    fn from(n: u32) -> Self {
        Self::Int(i64::from(n))
    }
}

impl From<bool> for Arg {
    fn from(b: bool) -> Self {
        Self::Bool(b)
    }
}

impl From<Value> for Arg {
    fn from(v: Value) -> Self {
        Self::Json(v)
    }
}

impl From<Option<Value>> for Arg {
    fn from(v: Option<Value>) -> Self {
        Self::OptJson(v)
    }
}

impl From<Option<String>> for Arg {
    fn from(v: Option<String>) -> Self {
        Self::OptText(v)
    }
}

/// Builds a `Vec<Arg>` from anything that converts.
macro_rules! args {
    ($($arg:expr),* $(,)?) => { vec![$($crate::store::sql::Arg::from($arg)),*] };
}
pub(crate) use args;

/// A row type both backends decode (every `rows` struct, and one-column tuples).
pub(crate) trait Row:
    for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin + 'static
{
}

impl<T> Row for T where
    T: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin + 'static
{
}

/// A statement's text: one of the dialect's (static), or one built for a batch.
pub(crate) type Text = Cow<'static, str>;

/// A connection that runs the engine's statements.
pub(crate) trait SqlConn: Send {
    /// Every row the statement returns.
    fn fetch_all<'a, O: Row>(
        &'a mut self,
        sql: impl Into<Text>,
        args: Vec<Arg>,
    ) -> BoxFuture<'a, sqlx::Result<Vec<O>>>;

    /// The statement's first row, if any.
    fn fetch_optional<'a, O: Row>(
        &'a mut self,
        sql: impl Into<Text>,
        args: Vec<Arg>,
    ) -> BoxFuture<'a, sqlx::Result<Option<O>>>;

    /// Runs the statement; the number of rows it affected.
    fn execute<'a>(
        &'a mut self,
        sql: impl Into<Text>,
        args: Vec<Arg>,
    ) -> BoxFuture<'a, sqlx::Result<u64>>;
}

/// A connection whose transaction is opened by the first statement sent through it: the
/// opening statements are put in front of that statement's text, so they cost no call of
/// their own. For SQLite only, where one call to the connection's worker thread runs a
/// list of statements (Postgres' extended protocol takes one statement per message).
///
/// sqlx does not know about a transaction opened this way: whoever uses this wrapper
/// commits in a statement of its own, and closes the connection after any error (SQLite
/// rolls back what a closed connection left open).
pub(crate) struct Opening<'c, C> {
    conn: &'c mut C,
    opening: Option<String>,
}

impl<'c, C: SqlConn> Opening<'c, C> {
    /// `opening` (such as `BEGIN`) goes in front of the first statement.
    pub(crate) fn new(conn: &'c mut C, opening: String) -> Self {
        Self {
            conn,
            opening: Some(opening),
        }
    }

    fn text(&mut self, sql: impl Into<Text>) -> Text {
        let sql = sql.into();
        match self.opening.take() {
            Some(opening) => Cow::Owned(format!("{opening}; {sql}")),
            None => sql,
        }
    }
}

impl<C: SqlConn> SqlConn for Opening<'_, C> {
    fn fetch_all<'a, O: Row>(
        &'a mut self,
        sql: impl Into<Text>,
        args: Vec<Arg>,
    ) -> BoxFuture<'a, sqlx::Result<Vec<O>>> {
        let sql = self.text(sql);
        self.conn.fetch_all(sql, args)
    }

    fn fetch_optional<'a, O: Row>(
        &'a mut self,
        sql: impl Into<Text>,
        args: Vec<Arg>,
    ) -> BoxFuture<'a, sqlx::Result<Option<O>>> {
        let sql = self.text(sql);
        self.conn.fetch_optional(sql, args)
    }

    fn execute<'a>(
        &'a mut self,
        sql: impl Into<Text>,
        args: Vec<Arg>,
    ) -> BoxFuture<'a, sqlx::Result<u64>> {
        let sql = self.text(sql);
        self.conn.execute(sql, args)
    }
}

macro_rules! sql_conn {
    ($conn:ty, $db:ty) => {
        impl SqlConn for $conn {
            fn fetch_all<'a, O: Row>(
                &'a mut self,
                sql: impl Into<Text>,
                args: Vec<Arg>,
            ) -> BoxFuture<'a, sqlx::Result<Vec<O>>> {
                let sql = sqlx::AssertSqlSafe(sql.into());
                Box::pin(async move {
                    let mut q = sqlx::query_as::<$db, O>(sql);
                    for arg in args {
                        q = bind!(q, arg);
                    }
                    q.fetch_all(self).await
                })
            }

            fn fetch_optional<'a, O: Row>(
                &'a mut self,
                sql: impl Into<Text>,
                args: Vec<Arg>,
            ) -> BoxFuture<'a, sqlx::Result<Option<O>>> {
                let sql = sqlx::AssertSqlSafe(sql.into());
                Box::pin(async move {
                    let mut q = sqlx::query_as::<$db, O>(sql);
                    for arg in args {
                        q = bind!(q, arg);
                    }
                    q.fetch_optional(self).await
                })
            }

            fn execute<'a>(
                &'a mut self,
                sql: impl Into<Text>,
                args: Vec<Arg>,
            ) -> BoxFuture<'a, sqlx::Result<u64>> {
                let sql = sqlx::AssertSqlSafe(sql.into());
                Box::pin(async move {
                    let mut q = sqlx::query::<$db>(sql);
                    for arg in args {
                        q = bind!(q, arg);
                    }
                    Ok(q.execute(self).await?.rows_affected())
                })
            }
        }
    };
}

macro_rules! bind {
    ($q:expr, $arg:expr) => {
        match $arg {
            Arg::Text(s) => $q.bind(s),
            Arg::OptText(s) => $q.bind(s),
            Arg::Int(n) => $q.bind(n),
            Arg::Bool(b) => $q.bind(b),
            Arg::Json(v) => $q.bind(Json(v)),
            Arg::OptJson(v) => $q.bind(v.map(Json)),
        }
    };
}

sql_conn!(SqliteConnection, Sqlite);
sql_conn!(PgConnection, Postgres);

/// Every statement the engine runs, in one backend's dialect. Arguments are listed in the
/// order each statement binds them; bulk statements take one JSON array of objects.
#[derive(Debug)]
pub(crate) struct Sql {
    // Reads.
    /// `(key, user, key_hash)` → the newest task row of that key and owner (`key_hash`:
    /// [`key_hash`](crate::key::key_hash) of both, for a dialect that indexes it).
    pub(crate) task_by_key: &'static str,
    /// `(id)` → task row.
    pub(crate) task_by_id: &'static str,
    /// `(task_id, after_seq, limit)` → event rows.
    pub(crate) events_after: &'static str,
    /// `(task_id)` → step rows.
    pub(crate) steps: &'static str,
    /// `(limit)` → failed task rows, newest first.
    pub(crate) tasks_failed: &'static str,
    /// `()` → `n`.
    pub(crate) pending_count: &'static str,
    /// `(ids json)` → ids still pending.
    pub(crate) still_pending: &'static str,
    /// `()`.
    pub(crate) health: &'static str,

    // The commit marker.
    /// A simple-protocol statement list that opens a batch's transaction (`BEGIN` and any
    /// session settings for it); the store appends the insert of the batch's commit
    /// marker, so both go in one round trip.
    pub(crate) begin_batch: &'static str,
    /// `(event rows json, batch_id, now)`: where one call runs a list of statements, the
    /// end of a batch in one: its events, its commit marker and `COMMIT`; the batch's
    /// `BEGIN` then goes in front of its first statement (see [`Opening`]). `None`: the
    /// marker goes with `BEGIN`, the events in a statement of their own, and the store
    /// commits.
    pub(crate) close_batch: Option<&'static str>,
    /// `(batch_id)` → `n` (0 or 1).
    pub(crate) batch_committed: &'static str,

    // Writes, in a batch's transaction.
    /// `(key, user, key_hash)` → task row, locking it where the backend can.
    pub(crate) find_by_key: &'static str,
    /// `(rows json)` → inserted ids; conflicting keys are skipped. Each row carries its
    /// key's hash as `kh`.
    pub(crate) insert_tasks: &'static str,
    /// `(now, names json, limit, from)` → candidate rows due in `from..=now`, oldest first.
    pub(crate) claim_candidates: &'static str,
    /// `(node, lease_until, now, ids json)` → claimed rows.
    pub(crate) claim_mark: &'static str,
    /// `(rows json)` → `(id, node, epoch, last_seq)` rows of the runs whose fence held;
    /// each row reserves `n` seqs for one run.
    pub(crate) bump_seqs: &'static str,
    /// `(rows json)`: step checkpoints; a name already checkpointed keeps its first result.
    pub(crate) insert_steps: &'static str,
    /// `(rows json)` → seq rows of the applied outcomes (fenced).
    pub(crate) finish: &'static str,
    /// `(id)` → status, locking the row where the backend can.
    pub(crate) control_status: &'static str,
    /// `(to, now, id, from)` → seq row.
    pub(crate) control_update: &'static str,
    /// `(id)`.
    pub(crate) request_stop: &'static str,
    /// `(until, node)` → lease rows.
    pub(crate) lease_renew: &'static str,
    /// `(all, now)` → reap rows.
    pub(crate) reap_candidates: &'static str,
    /// `(status, error, attempt_back, now, id, epoch)` → seq row.
    pub(crate) reap_update: &'static str,
    /// `(terminal_before, suspended_before)` → ids to purge.
    pub(crate) purge_ids: &'static str,
    /// `(ids json)`.
    pub(crate) purge_events: &'static str,
    /// `(ids json)`.
    pub(crate) purge_steps: &'static str,
    /// `(ids json)`.
    pub(crate) purge_tasks: &'static str,
    /// `(before, own batch id)`: never the purging batch's own marker.
    pub(crate) purge_batches: &'static str,
    /// `(rows json)`.
    pub(crate) insert_events: &'static str,
    /// `(event payloads json, work payload or NULL)`: wakes other processes' subscribers
    /// and executors (`None`: nobody to wake).
    pub(crate) notify: Option<&'static str>,
}
