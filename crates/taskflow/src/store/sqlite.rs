//! The SQLite driver: the embedded store, where one process owns the file.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous as Sync,
};
use sqlx::{Connection, Sqlite};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Backend;
use super::driver::Driver;
use super::rows::task_columns;
use super::sql::Sql;
use crate::error::{Error, Result};
use crate::key::key_hash;

/// How hard SQLite syncs on commit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SqliteSynchronous {
    /// WAL + `synchronous=NORMAL`: survives any process crash (the default).
    #[default]
    Normal,
    /// `synchronous=FULL`: also survives power loss, at the cost of an fsync per commit.
    Full,
}

super::store_type!(
    /// The embedded SQLite store. Open it with [`SqliteStore::open`] and pass it to
    /// [`TaskFlow::start`](crate::TaskFlow::start).
    ///
    /// An advisory lock on `<file>.lock` makes one process the owner of the database; the
    /// OS releases it when the process dies, so a SIGKILLed process never blocks its
    /// successor.
    SqliteStore(SqliteDriver)
);

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` with `synchronous=NORMAL`, takes
    /// the lock file and applies migrations.
    ///
    /// # Errors
    ///
    /// [`Error::Locked`] if another live process owns the file; store or migration errors.
    ///
    /// # Cancellation safety
    ///
    /// Not cancellation safe: dropping the future may leave the lock file taken until the
    /// value is dropped.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, SqliteSynchronous::Normal).await
    }

    /// Like [`open`](Self::open), choosing the sync level.
    ///
    /// # Errors
    ///
    /// As for [`open`](Self::open).
    ///
    /// # Cancellation safety
    ///
    /// As for [`open`](Self::open).
    pub async fn open_with(path: impl AsRef<Path>, sync: SqliteSynchronous) -> Result<Self> {
        Ok(Self::from_driver(
            SqliteDriver::open(path.as_ref(), sync).await?,
        ))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.driver().path
    }
}

/// The SQLite connections: one writer (batches are serialized anyway), a few read-only
/// readers, and a checkpointer that keeps WAL checkpoints off the commit path.
#[derive(Debug)]
pub(crate) struct SqliteDriver {
    path: PathBuf,
    writer: Arc<SoleWriter>,
    reader: SqlitePool,
    lock: std::sync::Mutex<Option<File>>,
    background: TaskTracker,
    stop: CancellationToken,
}

/// How long the checkpointer lets commits gather after the first one it sees before it
/// copies them into the database file (it sleeps while nothing is written), while the
/// writer has time to spare.
///
/// Small and often: a checkpoint reads and writes every page changed since the last one
/// and syncs two files, a burst of CPU and I/O that slows the batches and reads running
/// beside it on a small machine. Checkpoints 250 ms apart took ~12 ms each at 1,000 tasks/s
/// and put that load's p99 at 2.5–2.8 ms; 25 ms apart, 1.7 ms, for the same throughput.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(25);

/// The interval while the writer is saturated ([`SATURATED`]): commits then queue behind
/// one another whatever the checkpointer does, and what counts is the work checkpoints
/// take from them.
///
/// A checkpoint copies each page once, however many commits changed it since the last
/// one. On a store whose key index has outgrown the page cache (around 300,000 tasks)
/// every submit changes a random leaf of it, so checkpoints 25 ms apart copied about one
/// page per submit, and a store holding a million finished tasks ran 0.74–0.90 as fast as
/// an empty one. Up to 500 ms apart, each leaf takes several submits per copy: 0.86–0.92,
/// with both stores faster (at 100,000 tasks +5 % empty, +10 % on the million-task store),
/// and p99 at 1,000 tasks/s, where the writer is not saturated, unchanged
/// (`docs/benchmarks.md`). The WAL grows by ~20,000 frames in 500 ms of saturated writes,
/// within [`WAL_RESTART_FRAMES`].
const SATURATED_CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);

/// The share of wall time the writer's connection is held by batches above which the
/// writer counts as saturated. Measured: 0.39–0.50 at 1,000 tasks/s, 0.88–1.0 when
/// submits outrun it.
const SATURATED: f64 = 0.75;

/// WAL frames (pages) past which the checkpointer restarts the log from its beginning.
///
/// A `PASSIVE` checkpoint never catches up with a writer that commits while it copies, and
/// SQLite only rewinds the WAL when a write begins with every frame copied; so under
/// steady load the WAL would grow for as long as the load lasts (4.6 GB in a run of
/// 200,000 tasks), every commit appending to fresh file pages. When load pauses, a
/// checkpoint catches up and the next write rewinds the WAL by itself; this bound only
/// acts under sustained writes.
///
/// 32,768 frames is 128 MiB. A restart holds the writer while it copies and syncs the
/// frames the last pass left, and on a large store those are scattered pages: with a
/// million finished tasks and 16 MiB (a restart every ~1,700 tasks), the store on disk ran
/// ~20 % below the same store on a RAM disk, where syncs are free, and most of the
/// writer's waits on the disk were in those restarts. At 128 MiB
/// the restarts are eight times rarer: 100,000 tasks on a million-task store ran 16.2k
/// and 16.4k tasks/s instead of 13.7k–15.0k (`docs/benchmarks.md`). An empty store, and
/// p99 at 1,000 tasks/s, did not change.
const WAL_RESTART_FRAMES: i64 = 32_768;

impl SqliteDriver {
    async fn open(path: &Path, sync: SqliteSynchronous) -> Result<Self> {
        let path = path.to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let lock = take_lock(&path)?;
        let opts = SqliteConnectOptions::from_str("sqlite://")?
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match sync {
                SqliteSynchronous::Normal => Sync::Normal,
                SqliteSynchronous::Full => Sync::Full,
            })
            .busy_timeout(Duration::from_secs(5))
            .pragma("temp_store", "memory")
            .pragma("cache_size", "-4000")
            // Checkpoints run on their own connection (below), never inside the writer's
            // commit, where their fsync would stall every caller of that batch.
            .pragma("wal_autocheckpoint", "0");
        let mut conn = SqliteConnection::connect_with(&opts).await?;
        sqlx::migrate!("./migrations/sqlite").run(&mut conn).await?;
        backfill_key_hashes(&mut conn).await?;
        let writer = Arc::new(SoleWriter {
            slot: tokio::sync::Mutex::new(Some(conn)),
            opts: opts.clone(),
            closed: AtomicBool::new(false),
            written: tokio::sync::Notify::new(),
            held_us: AtomicU64::new(0),
        });
        // The connections are local and kept open, so no ping before each use (it would
        // cost a round trip to SQLite's worker thread per read).
        let checkpointer = SqliteConnection::connect_with(&opts).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(1)
            .test_before_acquire(false)
            .connect_with(opts.read_only(true))
            .await?;
        let background = TaskTracker::new();
        let stop = CancellationToken::new();
        background.spawn(checkpoint_loop(
            checkpointer,
            Arc::clone(&writer),
            stop.clone(),
        ));
        Ok(Self {
            path,
            writer,
            reader,
            lock: std::sync::Mutex::new(Some(lock)),
            background,
            stop,
        })
    }
}

/// Gives the tasks written before the key-hash migration their [`key_hash`], which SQLite
/// cannot compute, then creates the index on it (see `migrations/sqlite/0006_*.sql`). Runs
/// at open, before any lookup, on the only writer. The index exists only once every row has
/// its hash, so a store that has it is done; one interrupted part-way (a crash) starts over
/// where it stopped.
async fn backfill_key_hashes(conn: &mut SqliteConnection) -> Result<()> {
    const CHUNK: i64 = 10_000;
    let indexed: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM sqlite_schema WHERE type = 'index' AND name = 'tasks_key_hash'",
    )
    .fetch_optional(&mut *conn)
    .await?;
    if indexed.is_some() {
        return Ok(());
    }
    let (mut after, mut filled) = (0i64, 0usize);
    loop {
        let rows: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT rowid, idempotency_key, user_id FROM tasks \
             WHERE rowid > ?1 AND key_hash IS NULL ORDER BY rowid LIMIT +?2",
        )
        .bind(after)
        .bind(CHUNK)
        .fetch_all(&mut *conn)
        .await?;
        let Some(&(last, _, _)) = rows.last() else {
            break;
        };
        let hashes: Vec<(i64, i64)> = rows
            .iter()
            .map(|(rowid, key, user)| (*rowid, key_hash(key, user)))
            .collect();
        sqlx::query(
            "UPDATE tasks SET key_hash = v.value ->> 1 FROM jsonb_each(?1) AS v \
             WHERE tasks.rowid = v.value ->> 0",
        )
        .bind(serde_json::to_string(&hashes)?)
        .execute(&mut *conn)
        .await?;
        // No checkpointer runs yet: keep the WAL from growing with the whole table.
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&mut *conn)
            .await?;
        after = last;
        filled += rows.len();
    }
    sqlx::query("CREATE INDEX tasks_key_hash ON tasks (key_hash)")
        .execute(&mut *conn)
        .await?;
    if filled > 0 {
        tracing::info!(tasks = filled, "filled in the key hashes of existing tasks");
    }
    Ok(())
}

/// Copies committed WAL frames into the database file without blocking the writer
/// (`PASSIVE`), [`CHECKPOINT_INTERVAL`] after a commit (up to
/// [`SATURATED_CHECKPOINT_INTERVAL`] while the writer stays saturated), until stopped; a
/// last checkpoint at close. When the WAL has grown past [`WAL_RESTART_FRAMES`], restarts
/// it (see [`restart_wal`]).
async fn checkpoint_loop(
    mut conn: SqliteConnection,
    writer: Arc<SoleWriter>,
    stop: CancellationToken,
) {
    loop {
        let mut stopped = tokio::select! {
            () = stop.cancelled() => true,
            () = writer.written.notified() => false,
        };
        // One interval, more while the writer stays saturated: a load that eases is
        // checkpointed within an interval, as before.
        let mut load = WriterLoad::start(&writer.held_us, Instant::now());
        let mut waited = Duration::ZERO;
        while !stopped {
            stopped = tokio::select! {
                () = stop.cancelled() => true,
                () = tokio::time::sleep(CHECKPOINT_INTERVAL) => false,
            };
            waited += CHECKPOINT_INTERVAL;
            if waited >= SATURATED_CHECKPOINT_INTERVAL
                || load.share(&writer.held_us, Instant::now()) < SATURATED
            {
                break;
            }
        }
        // (busy, frames in the WAL, frames copied)
        match sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&mut conn)
            .await
        {
            Ok((_, frames, _)) if frames >= WAL_RESTART_FRAMES && !stopped => {
                restart_wal(&writer).await;
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "wal checkpoint failed; retrying later"),
        }
        if stopped {
            break;
        }
    }
    let _ = conn.close().await;
}

/// The share of wall time the writer's connection was held, between two readings of
/// [`SoleWriter::held_us`].
#[derive(Debug)]
struct WriterLoad {
    at: Instant,
    held_us: u64,
}

impl WriterLoad {
    /// A first reading, at `now`.
    fn start(held_us: &AtomicU64, now: Instant) -> Self {
        Self {
            at: now,
            held_us: held_us.load(Ordering::Relaxed),
        }
    }

    /// The share since the last reading (0 to 1, about); `now` becomes the last reading.
    fn share(&mut self, held_us: &AtomicU64, now: Instant) -> f64 {
        let last = std::mem::replace(self, Self::start(held_us, now));
        let wall = now.saturating_duration_since(last.at).as_secs_f64();
        let held = Duration::from_micros(self.held_us.saturating_sub(last.held_us));
        if wall > 0.0 {
            held.as_secs_f64() / wall
        } else {
            0.0
        }
    }
}

/// Copies the frames the last `PASSIVE` pass left (those committed while it ran) and
/// rewinds the WAL, on the writer's own connection: holding it keeps the next batch
/// waiting for it (for that copy and its fsync) instead of sleeping in SQLite's busy
/// handler.
async fn restart_wal(writer: &SoleWriter) {
    let Ok(mut conn) = writer.lock().await else {
        return;
    };
    if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(RESTART)")
        .execute(&mut *conn)
        .await
    {
        tracing::debug!(error = %e, "wal restart failed; retrying later");
    }
}

/// The one connection batches are written through, kept out of a pool: a pool pings a
/// connection each time it comes back (a call to SQLite's worker thread per batch) and
/// takes it back on a spawned task, which the next batch would wait for.
#[derive(Debug)]
struct SoleWriter {
    /// The connection; `None` after [`discard`](Driver::discard) until the next batch
    /// opens a fresh one.
    slot: tokio::sync::Mutex<Option<SqliteConnection>>,
    opts: SqliteConnectOptions,
    closed: AtomicBool,
    /// Signalled as each holder lets the connection go: something may have been written
    /// for the checkpointer to copy.
    written: tokio::sync::Notify,
    /// Microseconds the connection has been held in all, which tells the checkpointer how
    /// loaded the writer is.
    held_us: AtomicU64,
}

impl SoleWriter {
    /// Waits for the connection (a batch or a WAL restart may hold it), opening a fresh
    /// one if the last was discarded.
    async fn lock(&self) -> Result<WriterGuard<'_>> {
        let mut slot = self.slot.lock().await;
        if self.closed.load(Ordering::SeqCst) {
            return Err(Error::ShuttingDown);
        }
        if slot.is_none() {
            *slot = Some(SqliteConnection::connect_with(&self.opts).await?);
        }
        Ok(WriterGuard {
            slot,
            written: &self.written,
            held_us: &self.held_us,
            since: Instant::now(),
        })
    }

    /// Waits for the batch in flight, then closes the connection for good.
    async fn close(&self) {
        let mut slot = self.slot.lock().await;
        self.closed.store(true, Ordering::SeqCst);
        if let Some(conn) = slot.take() {
            let _ = conn.close().await;
        }
    }
}

/// The writer connection, held by one batch (or WAL restart) at a time.
#[derive(Debug)]
pub(crate) struct WriterGuard<'a> {
    /// Always `Some` while the guard lives, but for [`Driver::discard`], which consumes it.
    slot: tokio::sync::MutexGuard<'a, Option<SqliteConnection>>,
    written: &'a tokio::sync::Notify,
    /// [`SoleWriter::held_us`], and when this guard took the connection.
    held_us: &'a AtomicU64,
    since: Instant,
}

impl Drop for WriterGuard<'_> {
    fn drop(&mut self) {
        let held = u64::try_from(self.since.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.held_us.fetch_add(held, Ordering::Relaxed);
        self.written.notify_one();
    }
}

impl std::ops::Deref for WriterGuard<'_> {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        self.slot
            .as_ref()
            .unwrap_or_else(|| unreachable!("a writer guard holds its connection"))
    }
}

impl std::ops::DerefMut for WriterGuard<'_> {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        self.slot
            .as_mut()
            .unwrap_or_else(|| unreachable!("a writer guard holds its connection"))
    }
}

fn take_lock(db: &Path) -> Result<File> {
    let mut lock_path = db.as_os_str().to_owned();
    lock_path.push(".lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Locked {
            path: PathBuf::from(lock_path).display().to_string(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
    }
}

#[async_trait]
impl Driver for SqliteDriver {
    type Db = Sqlite;
    const BACKEND: Backend = Backend::Sqlite;
    const SQL: &'static Sql = &SQL;
    const EXCLUSIVE: bool = true;

    type WriteConn<'a> = WriterGuard<'a>;

    async fn write_conn(&self) -> Result<WriterGuard<'_>> {
        self.writer.lock().await
    }

    fn discard(mut conn: WriterGuard<'_>) {
        // Dropping the connection closes it on its worker thread; SQLite rolls back the
        // transaction it left open.
        drop(conn.slot.take());
    }

    fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    async fn close(&self) {
        self.writer.close().await;
        self.stop.cancel();
        self.background.close();
        self.background.wait().await;
        self.reader.close().await;
        if let Ok(mut lock) = self.lock.lock() {
            lock.take();
        }
    }
}

/// Terminal or long-suspended tasks, for retention. The first term is the predicate of
/// the partial index `tasks_finished`, so the purge walks that index instead of scanning
/// every task.
macro_rules! purgeable {
    () => {
        "status IN ('completed', 'failed', 'cancelled', 'suspended') \
         AND updated_at < max(?1, ?2) \
         AND ((status <> 'suspended' AND updated_at < ?1) \
              OR (status = 'suspended' AND updated_at < ?2))"
    };
}

/// `(rows json)`: a batch's events.
macro_rules! insert_events {
    () => {
        "INSERT INTO task_events (task_id, seq, kind, name, payload, created_at) \
         SELECT value ->> 'task_id', value ->> 'seq', value ->> 'kind', value ->> 'name', \
         value -> 'payload', value ->> 'created_at' FROM jsonb_each(?1)"
    };
}

// Every `LIMIT` takes its parameter as `+?N`. SQLite (3.51) plans a `LIMIT ?N` with the
// value bound at the time and marks the statement to be prepared again whenever that value
// changes: a claim (limit = free slots) was parsed and planned anew on each call, ~2 % of
// the writer's time. `+?N` is an expression, not a bare parameter, so the plan holds.
static SQL: Sql = Sql {
    task_by_key: concat!(
        "SELECT ",
        task_columns!(),
        " FROM tasks WHERE key_hash = ?3 AND idempotency_key = ?1 AND user_id = ?2 \
         ORDER BY created_at DESC, id DESC LIMIT 1"
    ),
    task_by_id: concat!("SELECT ", task_columns!(), " FROM tasks WHERE id = ?1"),
    events_after: "SELECT task_id, seq, kind, name, payload, created_at FROM task_events \
         WHERE task_id = ?1 AND seq > ?2 ORDER BY seq LIMIT +?3",
    steps: "SELECT name, result FROM task_steps WHERE task_id = ?1",
    tasks_failed: concat!(
        "SELECT ",
        task_columns!(),
        " FROM tasks WHERE status = 'failed' ORDER BY updated_at DESC, id DESC LIMIT +?1"
    ),
    pending_count: "SELECT count(*) AS n FROM tasks WHERE status = 'pending'",
    still_pending: "SELECT id FROM tasks WHERE id IN (SELECT value FROM jsonb_each(?1)) \
         AND status = 'pending'",
    health: "SELECT 1",
    begin_batch: "BEGIN",
    close_batch: Some(concat!(
        insert_events!(),
        "; INSERT INTO task_batches (id, created_at) VALUES (?2, ?3); COMMIT"
    )),
    batch_committed: "SELECT count(*) AS n FROM task_batches WHERE id = ?1",
    find_by_key: concat!(
        "SELECT ",
        task_columns!(),
        " FROM tasks WHERE key_hash = ?3 AND idempotency_key = ?1 AND user_id = ?2 \
         ORDER BY created_at DESC, id DESC LIMIT 1"
    ),
    insert_tasks: "INSERT INTO tasks (id, name, idempotency_key, key_hash, user_id, input, \
         status, attempt, max_attempts, max_recoveries, auto_recover, owner_node, \
         lease_expires_at, epoch, run_at, created_at, updated_at, last_seq) \
         SELECT value ->> 'id', value ->> 'name', value ->> 'key', value ->> 'kh', \
         value ->> 'usr', \
         value -> 'input', value ->> 'status', value ->> 'attempt', value ->> 'max_attempts', \
         value ->> 'max_recoveries', value ->> 'auto_recover', value ->> 'node', \
         value ->> 'lease', value ->> 'epoch', value ->> 'now', value ->> 'now', \
         value ->> 'now', value ->> 'last_seq' \
         FROM jsonb_each(?1) AS j WHERE NOT EXISTS (SELECT 1 FROM tasks AS t \
         WHERE t.key_hash = j.value ->> 'kh' AND t.idempotency_key = j.value ->> 'key' \
         AND t.user_id = j.value ->> 'usr' \
         AND t.status IN ('pending', 'running', 'suspended')) \
         ORDER BY j.key ON CONFLICT DO NOTHING RETURNING id",
    claim_candidates: "SELECT id, user_id, name, recovery, auto_recover, run_at FROM tasks \
         WHERE status = 'pending' AND run_at <= ?1 AND run_at >= ?4 \
         AND name IN (SELECT value FROM jsonb_each(?2)) ORDER BY run_at, id LIMIT +?3",
    claim_mark: concat!(
        "UPDATE tasks SET status = 'running', attempt = attempt + 1, epoch = epoch + 1, \
         owner_node = ?1, lease_expires_at = ?2, control = NULL, recovery = 0, \
         last_seq = last_seq + 1, updated_at = ?3 \
         WHERE id IN (SELECT value FROM jsonb_each(?4)) AND status = 'pending' RETURNING ",
        task_columns!(),
        ", epoch"
    ),
    bump_seqs: "UPDATE tasks SET last_seq = tasks.last_seq + v.n, updated_at = v.now \
         FROM (SELECT value ->> 'id' AS id, value ->> 'node' AS node, \
               value ->> 'epoch' AS epoch, value ->> 'n' AS n, value ->> 'now' AS now \
               FROM jsonb_each(?1)) AS v \
         WHERE tasks.id = v.id AND tasks.owner_node = v.node AND tasks.epoch = v.epoch \
         AND tasks.status = 'running' \
         RETURNING tasks.id AS id, tasks.owner_node AS node, tasks.epoch AS epoch, \
         tasks.last_seq AS last_seq",
    insert_steps: "INSERT INTO task_steps (task_id, name, result, created_at) \
         SELECT value ->> 'task_id', value ->> 'name', value -> 'result', value ->> 'now' \
         FROM jsonb_each(?1) WHERE true ON CONFLICT DO NOTHING",
    finish: "UPDATE tasks SET status = v.status, result = coalesce(v.result, tasks.result), \
         error = coalesce(v.error, tasks.error), run_at = coalesce(v.run_at, tasks.run_at), \
         owner_node = NULL, lease_expires_at = NULL, control = NULL, \
         attempt = tasks.attempt - v.give_back, recovery = v.give_back, \
         last_seq = tasks.last_seq + v.bump, updated_at = v.now \
         FROM (SELECT value ->> 'id' AS id, value ->> 'node' AS node, \
               value ->> 'epoch' AS epoch, value ->> 'status' AS status, \
               value -> 'result' AS result, value -> 'error' AS error, \
               value ->> 'run_at' AS run_at, value ->> 'give_back' AS give_back, \
               value ->> 'bump' AS bump, value ->> 'now' AS now FROM jsonb_each(?1)) AS v \
         WHERE tasks.id = v.id AND tasks.owner_node = v.node AND tasks.epoch = v.epoch \
         AND tasks.status = 'running' RETURNING tasks.id AS id, tasks.last_seq AS last_seq",
    control_status: "SELECT status FROM tasks WHERE id = ?1",
    control_update: "UPDATE tasks SET status = ?1, \
         run_at = CASE WHEN ?1 = 'pending' THEN ?2 ELSE run_at END, \
         max_attempts = CASE WHEN status = 'failed' THEN attempt + max_attempts \
                        ELSE max_attempts END, \
         recoveries = CASE WHEN status = 'failed' THEN 0 ELSE recoveries END, \
         recovery = CASE WHEN status = 'failed' THEN FALSE ELSE recovery END, \
         owner_node = CASE WHEN ?1 = 'cancelled' THEN NULL ELSE owner_node END, \
         lease_expires_at = CASE WHEN ?1 = 'cancelled' THEN NULL ELSE lease_expires_at END, \
         last_seq = last_seq + 1, updated_at = ?2 WHERE id = ?3 AND status = ?4 \
         AND (?1 <> 'pending' OR status <> 'failed' OR NOT EXISTS (SELECT 1 FROM tasks AS live \
              WHERE live.key_hash = tasks.key_hash \
              AND live.idempotency_key = tasks.idempotency_key \
              AND live.user_id = tasks.user_id \
              AND live.status IN ('pending', 'running', 'suspended'))) \
         RETURNING id, last_seq",
    request_stop: "UPDATE tasks SET control = 'stop' WHERE id = ?1 AND status = 'running'",
    lease_renew: "UPDATE tasks SET lease_expires_at = ?1 \
         WHERE owner_node = ?2 AND status = 'running' RETURNING id, epoch, control",
    reap_candidates: "SELECT id, epoch, attempt, recoveries, max_recoveries, auto_recover, \
         created_at FROM tasks WHERE status = 'running' AND (?1 OR lease_expires_at < ?2)",
    reap_update: "UPDATE tasks SET status = ?1, error = coalesce(?2, error), \
         owner_node = NULL, lease_expires_at = NULL, control = NULL, recovery = 1, \
         recoveries = recoveries + 1, attempt = attempt - ?3, run_at = ?4, \
         last_seq = last_seq + 1, updated_at = ?4 \
         WHERE id = ?5 AND status = 'running' AND epoch = ?6 RETURNING id, last_seq",
    purge_ids: concat!("SELECT id FROM tasks WHERE ", purgeable!(), " LIMIT +?3"),
    purge_events: "DELETE FROM task_events WHERE task_id IN (SELECT value FROM jsonb_each(?1))",
    purge_steps: "DELETE FROM task_steps WHERE task_id IN (SELECT value FROM jsonb_each(?1))",
    purge_tasks: "DELETE FROM tasks WHERE id IN (SELECT value FROM jsonb_each(?1))",
    purge_batches: "DELETE FROM task_batches WHERE created_at < ?1 AND id <> ?2",
    insert_events: insert_events!(),
    notify: None,
};

#[cfg(test)]
mod tests {
    use super::SQL;

    /// The writer's load is the time its connection was held over the wall time between
    /// two readings, each reading starting the next window.
    #[test]
    fn writer_load_is_time_held_over_wall_time() {
        use super::{AtomicU64, Duration, Instant, Ordering, WriterLoad};
        let held = AtomicU64::new(1_000);
        let t0 = Instant::now();
        let mut load = WriterLoad::start(&held, t0);
        held.fetch_add(50_000, Ordering::Relaxed);
        let share = load.share(&held, t0 + Duration::from_millis(100));
        assert!((share - 0.5).abs() < 1e-9, "{share}");
        let share = load.share(&held, t0 + Duration::from_millis(125));
        assert!(
            share.abs() < 1e-9,
            "nothing held in the second window: {share}"
        );
        held.fetch_add(25_000, Ordering::Relaxed);
        let share = load.share(&held, t0 + Duration::from_millis(150));
        assert!((share - 1.0).abs() < 1e-9, "{share}");
        assert!(load.share(&held, t0 + Duration::from_millis(150)).abs() < 1e-9);
    }

    /// See the comment on [`SQL`]: a bare `LIMIT ?N` re-prepares its statement whenever
    /// the bound limit changes.
    #[test]
    fn no_statement_takes_its_limit_as_a_bare_parameter() {
        let all = format!("{SQL:?}");
        assert!(all.contains("LIMIT +?"), "the check reads the statements");
        assert!(!all.contains("LIMIT ?"), "a bare LIMIT parameter in {all}");
    }
}
