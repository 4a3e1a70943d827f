//! The PostgreSQL driver: several processes share one task database.
//!
//! Claims use `FOR UPDATE SKIP LOCKED`; the idempotency unique index holds across
//! processes. Each commit that appends events or creates claimable work sends a `NOTIFY`
//! (`taskflow_events`, `taskflow_work`), which one shared `LISTEN` connection per store
//! turns into [`Notice`]s — wake-up hints only, since notifications can be lost while the
//! listener reconnects; subscribers and executors also poll.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::Postgres;
use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::driver::Driver;
use super::rows::task_columns;
use super::sql::Sql;
use super::{Backend, Notice};
use crate::error::Result;

const EVENTS_CHANNEL: &str = "taskflow_events";
const WORK_CHANNEL: &str = "taskflow_work";

/// First and longest wait between attempts to (re)establish the `LISTEN` connection.
const LISTEN_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

super::store_type!(
    /// The Postgres store. Create it with [`PostgresStore::new`] on a pool (for example the
    /// `appkit-lakebase` pool) and pass it to [`TaskFlow::start`](crate::TaskFlow::start).
    PostgresStore(PgDriver)
);

impl PostgresStore {
    /// Applies migrations on `pool` and starts the shared `LISTEN` connection.
    ///
    /// # Errors
    ///
    /// Store or migration errors.
    ///
    /// # Cancellation safety
    ///
    /// Not cancellation safe: migrations may be partly applied (each runs in a transaction,
    /// so a later call resumes cleanly).
    pub async fn new(pool: PgPool) -> Result<Self> {
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        let (notices, _) = broadcast::channel(1024);
        let driver = PgDriver {
            pool,
            instance: uuid::Uuid::now_v7().simple().to_string(),
            notices,
            tracker: TaskTracker::new(),
            stop: CancellationToken::new(),
        };
        driver.tracker.spawn(listen(
            driver.pool.clone(),
            driver.instance.clone(),
            driver.notices.clone(),
            driver.stop.clone(),
        ));
        Ok(Self::from_driver(driver))
    }

    /// The pool this store runs on.
    pub fn pool(&self) -> &PgPool {
        &self.driver().pool
    }
}

/// The Postgres connections: a pool shared by batches and reads (it may be the app's
/// Lakebase pool), and the listener.
#[derive(Debug)]
pub(crate) struct PgDriver {
    pool: PgPool,
    instance: String,
    notices: broadcast::Sender<Notice>,
    tracker: TaskTracker,
    stop: CancellationToken,
}

/// Forwards notifications from other processes until stopped; reconnects with backoff
/// and jitter when the connection or the `LISTEN` fails.
async fn listen(
    pool: PgPool,
    instance: String,
    notices: broadcast::Sender<Notice>,
    stop: CancellationToken,
) {
    let mut failures = 0u32;
    while !stop.is_cancelled() {
        if failures > 0 {
            let delay = crate::backoff::backoff(failures, LISTEN_BACKOFF.0, LISTEN_BACKOFF.1);
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(delay.max(LISTEN_BACKOFF.0 / 2)) => {}
            }
        }
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                debug!(error = %e, "task store listener cannot connect yet");
                failures = failures.saturating_add(1);
                continue;
            }
        };
        if let Err(e) = listener.listen_all([EVENTS_CHANNEL, WORK_CHANNEL]).await {
            warn!(error = %e, "task store listener failed to LISTEN; retrying with backoff");
            failures = failures.saturating_add(1);
            continue;
        }
        // Anything may have been missed while not listening.
        let _ = notices.send(Notice::Resync);
        loop {
            let received = tokio::select! {
                () = stop.cancelled() => return,
                r = listener.try_recv() => r,
            };
            match received {
                Ok(Some(n)) => {
                    // `instance:id,id,…` (events) or `instance:` (work).
                    let (from, tasks) = n.payload().split_once(':').unwrap_or((n.payload(), ""));
                    if from == instance {
                        continue;
                    }
                    if n.channel() == EVENTS_CHANNEL {
                        for task in tasks.split(',').filter(|t| !t.is_empty()) {
                            let _ = notices.send(Notice::Events(task.to_owned()));
                        }
                    } else {
                        let _ = notices.send(Notice::Work);
                    }
                }
                Ok(None) => {
                    let _ = notices.send(Notice::Resync);
                }
                Err(e) => {
                    debug!(error = %e, "task store listener lost its connection");
                    failures = 1;
                    break;
                }
            }
        }
    }
}

#[async_trait]
impl Driver for PgDriver {
    type Db = Postgres;
    const BACKEND: Backend = Backend::Postgres;
    const SQL: &'static Sql = &SQL;
    const EXCLUSIVE: bool = false;

    type WriteConn<'a> = sqlx::pool::PoolConnection<Postgres>;

    async fn write_conn(&self) -> Result<Self::WriteConn<'_>> {
        Ok(self.pool.acquire().await?)
    }

    fn discard(conn: Self::WriteConn<'_>) {
        drop(sqlx::pool::PoolConnection::detach(conn));
    }

    fn reader(&self) -> &PgPool {
        &self.pool
    }

    fn notices(&self) -> Option<broadcast::Receiver<Notice>> {
        Some(self.notices.subscribe())
    }

    fn instance(&self) -> &str {
        &self.instance
    }

    async fn close(&self) {
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        // The pool may be shared (Lakebase): its owner closes it.
    }
}

/// Terminal or long-suspended tasks, for retention. The first term is the predicate of
/// the partial index `tasks_finished`, so the purge walks that index instead of scanning
/// every task.
macro_rules! purgeable {
    () => {
        "status IN ('completed', 'failed', 'cancelled', 'suspended') \
         AND updated_at < greatest($1, $2) \
         AND ((status <> 'suspended' AND updated_at < $1) \
              OR (status = 'suspended' AND updated_at < $2))"
    };
}

/// The newest task with key `$1` and owner `$2`: the live one (`tasks_active_key`, at most
/// one) or the newest ended one (`tasks_key`, which holds ended tasks only).
macro_rules! by_key {
    () => {
        concat!(
            "SELECT ",
            task_columns!(),
            " FROM ((SELECT ",
            task_columns!(),
            " FROM tasks WHERE idempotency_key = $1 AND user_id = $2 \
               AND status IN ('pending', 'running', 'suspended')) \
             UNION ALL (SELECT ",
            task_columns!(),
            " FROM tasks WHERE idempotency_key = $1 AND user_id = $2 \
               AND status IN ('completed', 'failed', 'cancelled') \
               ORDER BY created_at DESC, id DESC LIMIT 1)) AS t \
             ORDER BY created_at DESC, id DESC LIMIT 1"
        )
    };
}

// Statements that address rows by id test their status as `status || '' = '…'`: the same
// condition, but one that does not let the planner use a partial status index. With
// statistics taken while no task was pending or running (a VACUUM ANALYZE after history),
// it would otherwise read all of `tasks_pending` or `tasks_lease`, dead entries included,
// once per id (a claim of 55 tasks: 124,245 rows compared, 77 ms) instead of the key.
//
// Lookups by key leave `$3`, the key's hash, unused: the SQLite store indexes the hash (its
// page cache is small and fixed), Postgres the key and owner (`tasks_active_key` for live
// tasks, `tasks_key` for ended ones).
static SQL: Sql = Sql {
    task_by_key: by_key!(),
    task_by_id: concat!("SELECT ", task_columns!(), " FROM tasks WHERE id = $1"),
    events_after: "SELECT task_id, seq, kind, name, payload, created_at FROM task_events \
         WHERE task_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
    steps: "SELECT name, result FROM task_steps WHERE task_id = $1",
    tasks_failed: concat!(
        "SELECT ",
        task_columns!(),
        " FROM tasks WHERE status = 'failed' ORDER BY updated_at DESC, id DESC LIMIT $1"
    ),
    pending_count: "SELECT count(*) AS n FROM tasks WHERE status = 'pending'",
    still_pending: "SELECT id FROM tasks \
         WHERE id = ANY(ARRAY(SELECT jsonb_array_elements_text($1::jsonb))) \
         AND status || '' = 'pending'",
    health: "SELECT 1",
    // A batch's statements run with generic plans (`force_generic_plan`): planned once per
    // connection, not at every execution (custom plans cost ~0.2-0.35 ms a statement,
    // 17 % of a drain's throughput). A generic plan is made whatever the tables hold at the
    // time, often nothing, and kept as they grow (without VACUUM or ANALYZE nothing
    // invalidates it), so the statements leave the planner one sound choice at any size
    // (`batch_plans_made_on_empty_tables_read_through_index_conditions` checks each):
    // - rows by id through the primary key: `id = ANY(ARRAY(…))`, never `IN (SELECT …)`
    //   (a semi-join that, planned on an empty table, reads the whole index);
    // - a bulk update joins its document's rows through `taskflow_batch_rows`, declared as
    //   one row so that each of them probes the primary key (`jsonb_array_elements` is
    //   taken for 100 rows and would be joined against a scan of every task);
    // - no hash or merge joins, bitmap scans or sequential scans: nested loops over index
    //   probes are right at every size here, and the others only look cheaper while the
    //   tables are empty.
    // No sort where an index gives the order (`enable_sort = off` only prices sorts out):
    // without statistics the planner guesses a claim's range holds a row or two, and then
    // prefers sorting the whole pending backlog to reading `tasks_pending` up to LIMIT.
    // No JIT: these are short statements, and the priced-out sorts (the bulk insert's key
    // order has no index to come from) would otherwise cost 300 ms of compiling each.
    begin_batch: "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan; \
         SET LOCAL enable_sort = off; SET LOCAL enable_seqscan = off; SET LOCAL jit = off; \
         SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off; \
         SET LOCAL enable_bitmapscan = off",
    close_batch: None,
    batch_committed: "SELECT count(*) AS n FROM task_batches WHERE id = $1",
    find_by_key: by_key!(),
    // In key order, so two processes inserting the same keys cannot deadlock.
    insert_tasks: "INSERT INTO tasks (id, name, idempotency_key, user_id, input, status, \
         attempt, max_attempts, max_recoveries, auto_recover, owner_node, lease_expires_at, \
         epoch, run_at, created_at, updated_at, last_seq) \
         SELECT value ->> 'id', value ->> 'name', value ->> 'key', value ->> 'usr', \
         value -> 'input', value ->> 'status', (value ->> 'attempt')::int, \
         (value ->> 'max_attempts')::int, (value ->> 'max_recoveries')::int, \
         (value ->> 'auto_recover')::boolean, value ->> 'node', \
         (value ->> 'lease')::bigint, (value ->> 'epoch')::int, (value ->> 'now')::bigint, \
         (value ->> 'now')::bigint, (value ->> 'now')::bigint, (value ->> 'last_seq')::bigint \
         FROM jsonb_array_elements($1::jsonb) AS value \
         ORDER BY value ->> 'key', value ->> 'usr' ON CONFLICT DO NOTHING RETURNING id",
    // The names are a filter on the index scan (`= ANY` of an array computed once), not a
    // semi-join: joined, the planner (no statistics without ANALYZE) hash-joins and sorts
    // every pending task on each claim, instead of reading the index in order up to LIMIT.
    claim_candidates: "SELECT id, user_id, name, recovery, auto_recover, run_at FROM tasks \
         WHERE status = 'pending' AND run_at <= $1 AND run_at >= $4 \
         AND name = ANY(ARRAY(SELECT jsonb_array_elements_text($2::jsonb))) \
         ORDER BY run_at, id LIMIT $3 FOR UPDATE SKIP LOCKED",
    claim_mark: concat!(
        "UPDATE tasks SET status = 'running', attempt = attempt + 1, epoch = epoch + 1, \
         owner_node = $1, lease_expires_at = $2, control = NULL, recovery = FALSE, \
         last_seq = last_seq + 1, updated_at = $3 \
         WHERE id = ANY(ARRAY(SELECT jsonb_array_elements_text($4::jsonb))) \
         AND status || '' = 'pending' \
         RETURNING ",
        task_columns!(),
        ", epoch"
    ),
    bump_seqs: "UPDATE tasks SET last_seq = tasks.last_seq + v.n, updated_at = v.now \
         FROM (SELECT value ->> 'id' AS id, value ->> 'node' AS node, \
               (value ->> 'epoch')::int AS epoch, (value ->> 'n')::bigint AS n, \
               (value ->> 'now')::bigint AS now \
               FROM taskflow_batch_rows($1::jsonb) AS value) AS v \
         WHERE tasks.id = v.id AND tasks.owner_node = v.node AND tasks.epoch = v.epoch \
         AND tasks.status || '' = 'running' \
         RETURNING tasks.id AS id, tasks.owner_node AS node, tasks.epoch AS epoch, \
         tasks.last_seq AS last_seq",
    insert_steps: "INSERT INTO task_steps (task_id, name, result, created_at) \
         SELECT value ->> 'task_id', value ->> 'name', value -> 'result', \
         (value ->> 'now')::bigint FROM jsonb_array_elements($1::jsonb) AS value \
         ON CONFLICT DO NOTHING",
    finish: "UPDATE tasks SET status = v.status, result = coalesce(v.result, tasks.result), \
         error = coalesce(v.error, tasks.error), run_at = coalesce(v.run_at, tasks.run_at), \
         owner_node = NULL, lease_expires_at = NULL, control = NULL, \
         attempt = tasks.attempt - v.give_back, recovery = v.give_back = 1, \
         last_seq = tasks.last_seq + v.bump, updated_at = v.now \
         FROM (SELECT value ->> 'id' AS id, value ->> 'node' AS node, \
               (value ->> 'epoch')::int AS epoch, value ->> 'status' AS status, \
               value -> 'result' AS result, value -> 'error' AS error, \
               (value ->> 'run_at')::bigint AS run_at, (value ->> 'give_back')::int AS give_back, \
               (value ->> 'bump')::bigint AS bump, (value ->> 'now')::bigint AS now \
               FROM taskflow_batch_rows($1::jsonb) AS value) AS v \
         WHERE tasks.id = v.id AND tasks.owner_node = v.node AND tasks.epoch = v.epoch \
         AND tasks.status || '' = 'running' RETURNING tasks.id AS id, tasks.last_seq AS last_seq",
    control_status: "SELECT status FROM tasks WHERE id = $1 FOR UPDATE",
    // `live.id <> tasks.id` (always true: the row being resumed is failed, not live) keeps
    // the subquery correlated by more than equalities, so it is not turned into a hashed
    // subplan that reads every live task; it probes `tasks_active_key` instead.
    control_update: "UPDATE tasks SET status = $1, \
         run_at = CASE WHEN $1 = 'pending' THEN $2 ELSE run_at END, \
         max_attempts = CASE WHEN status = 'failed' THEN attempt + max_attempts \
                        ELSE max_attempts END, \
         recoveries = CASE WHEN status = 'failed' THEN 0 ELSE recoveries END, \
         recovery = CASE WHEN status = 'failed' THEN FALSE ELSE recovery END, \
         owner_node = CASE WHEN $1 = 'cancelled' THEN NULL ELSE owner_node END, \
         lease_expires_at = CASE WHEN $1 = 'cancelled' THEN NULL ELSE lease_expires_at END, \
         last_seq = last_seq + 1, updated_at = $2 WHERE id = $3 AND status = $4 \
         AND ($1 <> 'pending' OR status <> 'failed' OR NOT EXISTS (SELECT 1 FROM tasks AS live \
              WHERE live.idempotency_key = tasks.idempotency_key \
              AND live.user_id = tasks.user_id \
              AND live.status IN ('pending', 'running', 'suspended') \
              AND live.id <> tasks.id)) \
         RETURNING id, last_seq",
    request_stop: "UPDATE tasks SET control = 'stop' WHERE id = $1 AND status || '' = 'running'",
    lease_renew: "UPDATE tasks SET lease_expires_at = $1 \
         WHERE owner_node = $2 AND status = 'running' RETURNING id, epoch, control",
    reap_candidates: "SELECT id, epoch, attempt, recoveries, max_recoveries, auto_recover, \
         created_at FROM tasks WHERE status = 'running' AND ($1 OR lease_expires_at < $2) \
         FOR UPDATE SKIP LOCKED",
    reap_update: "UPDATE tasks SET status = $1, error = coalesce($2, error), \
         owner_node = NULL, lease_expires_at = NULL, control = NULL, recovery = TRUE, \
         recoveries = recoveries + 1, attempt = attempt - $3, run_at = $4, \
         last_seq = last_seq + 1, updated_at = $4 \
         WHERE id = $5 AND status || '' = 'running' AND epoch = $6 RETURNING id, last_seq",
    purge_ids: concat!("SELECT id FROM tasks WHERE ", purgeable!(), " LIMIT $3"),
    purge_events: "DELETE FROM task_events \
         WHERE task_id = ANY(ARRAY(SELECT jsonb_array_elements_text($1::jsonb)))",
    purge_steps: "DELETE FROM task_steps \
         WHERE task_id = ANY(ARRAY(SELECT jsonb_array_elements_text($1::jsonb)))",
    purge_tasks: "DELETE FROM tasks \
         WHERE id = ANY(ARRAY(SELECT jsonb_array_elements_text($1::jsonb)))",
    purge_batches: "DELETE FROM task_batches WHERE created_at < $1 AND id <> $2",
    insert_events: "INSERT INTO task_events (task_id, seq, kind, name, payload, created_at) \
         SELECT value ->> 'task_id', (value ->> 'seq')::bigint, value ->> 'kind', \
         value ->> 'name', value -> 'payload', (value ->> 'created_at')::bigint \
         FROM jsonb_array_elements($1::jsonb) AS value",
    notify: Some(
        "SELECT pg_notify('taskflow_events', x) FROM jsonb_array_elements_text($1::jsonb) AS x \
         UNION ALL SELECT pg_notify('taskflow_work', $2::text) WHERE $2::text IS NOT NULL",
    ),
};

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::Value;
    use sqlx::{AssertSqlSafe, Connection, Row};

    use super::SQL;

    /// Every scan of a table in `plan` (an `EXPLAIN (FORMAT JSON)` node) that is not driven
    /// by an index condition, as "relation: node type".
    fn unbounded_scans(plan: &Value, out: &mut Vec<String>) {
        if let Some(rel) = plan.get("Relation Name").and_then(Value::as_str) {
            let node = plan["Node Type"].as_str().unwrap_or_default();
            // `tasks_lease` holds running tasks only (a node's slots): lease renewals and
            // the rescuer read it whole by design.
            let bounded = plan.get("Index Cond").is_some()
                || plan.get("Index Name").and_then(Value::as_str) == Some("tasks_lease");
            if node != "ModifyTable" && !bounded {
                out.push(format!("{rel}: {node}"));
            }
        }
        for child in plan
            .get("Plans")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            unbounded_scans(child, out);
        }
    }

    /// Batches run with generic plans, made once per connection while the tables may be
    /// empty and kept as they grow. Made on empty tables, each batch statement that reads
    /// tasks, events or steps must still reach them through an index condition: a plan
    /// that scans a whole index (or table) there would cost more with every task ever run.
    #[tokio::test]
    async fn batch_plans_made_on_empty_tables_read_through_index_conditions() {
        let Some(opts) = appkit_testkit::pg::fresh_schema().await else {
            return;
        };
        let mut conn = sqlx::PgConnection::connect_with(&opts).await.unwrap();
        sqlx::migrate!("./migrations/postgres")
            .run(&mut conn)
            .await
            .unwrap();
        sqlx::raw_sql(SQL.begin_batch)
            .execute(&mut conn)
            .await
            .unwrap();
        let doc = r#"'[{"id":"a","node":"n","epoch":1,"n":1,"status":"completed","result":null,"error":null,"run_at":null,"give_back":0,"bump":1,"now":5}]'"#;
        let ids = r#"'["a"]'"#;
        // (statement, its parameters' types, arguments as SQL literals)
        let statements = [
            (
                SQL.find_by_key,
                "text, text, bigint",
                "'k', '', 0".to_owned(),
            ),
            (
                SQL.claim_candidates,
                "bigint, text, bigint, bigint",
                format!("5, {ids}, 10, 0"),
            ),
            (
                SQL.claim_mark,
                "text, bigint, bigint, text",
                format!("'n', 9, 5, {ids}"),
            ),
            (SQL.bump_seqs, "text", doc.to_owned()),
            (SQL.finish, "text", doc.to_owned()),
            (SQL.control_status, "text", "'a'".to_owned()),
            (
                SQL.control_update,
                "text, bigint, text, text",
                "'pending', 5, 'a', 'failed'".to_owned(),
            ),
            (SQL.request_stop, "text", "'a'".to_owned()),
            (SQL.lease_renew, "bigint, text", "9, 'n'".to_owned()),
            (
                SQL.reap_candidates,
                "boolean, bigint",
                "false, 5".to_owned(),
            ),
            (
                SQL.reap_update,
                "text, jsonb, integer, bigint, text, integer",
                "'pending', NULL, 1, 5, 'a', 1".to_owned(),
            ),
            (
                SQL.purge_ids,
                "bigint, bigint, bigint",
                "5, 5, 100".to_owned(),
            ),
            (SQL.purge_events, "text", ids.to_owned()),
            (SQL.purge_steps, "text", ids.to_owned()),
            (SQL.purge_tasks, "text", ids.to_owned()),
        ];
        let mut bad = Vec::new();
        for (i, (sql, types, args)) in statements.iter().enumerate() {
            sqlx::raw_sql(AssertSqlSafe(format!("PREPARE s{i} ({types}) AS {sql}")))
                .execute(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("PREPARE {sql}: {e}"));
            let row = sqlx::raw_sql(AssertSqlSafe(format!(
                "EXPLAIN (FORMAT JSON) EXECUTE s{i} ({args})"
            )))
            .fetch_one(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("EXPLAIN {sql}: {e}"));
            let plan: Value = row.get::<sqlx::types::Json<Value>, _>(0).0;
            let mut scans = Vec::new();
            unbounded_scans(&plan[0]["Plan"], &mut scans);
            if !scans.is_empty() {
                bad.push(format!("{scans:?} in {sql}"));
            }
        }
        assert!(
            bad.is_empty(),
            "generic plans without index conditions:\n{bad:#?}"
        );
    }
}
