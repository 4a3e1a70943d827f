-- Tasks, their event log and their step checkpoints.
-- Times are milliseconds since the Unix epoch. user_id '' means "no owner".
CREATE TABLE tasks (
    id               TEXT    PRIMARY KEY NOT NULL,
    name             TEXT    NOT NULL,
    idempotency_key  TEXT    NOT NULL,
    user_id          TEXT    NOT NULL DEFAULT '',
    input            TEXT    NOT NULL,
    status           TEXT    NOT NULL,
    attempt          INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    auto_recover     INTEGER NOT NULL,
    recovery         INTEGER NOT NULL DEFAULT 0,
    result           TEXT,
    error            TEXT,
    owner_node       TEXT,
    lease_expires_at INTEGER,
    control          TEXT,
    run_at           INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    last_seq         INTEGER NOT NULL DEFAULT 0
);

-- One live task per (key, owner): duplicates attach instead of inserting.
CREATE UNIQUE INDEX tasks_active_key ON tasks (idempotency_key, user_id)
    WHERE status IN ('pending', 'running', 'suspended');
CREATE INDEX tasks_key ON tasks (idempotency_key, user_id, created_at);
CREATE INDEX tasks_pending ON tasks (run_at) WHERE status = 'pending';
CREATE INDEX tasks_running ON tasks (owner_node) WHERE status = 'running';
CREATE INDEX tasks_lease ON tasks (lease_expires_at) WHERE status = 'running';
CREATE INDEX tasks_updated ON tasks (status, updated_at);

CREATE TABLE task_events (
    task_id    TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    kind       TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    payload    TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (task_id, seq)
) WITHOUT ROWID;

CREATE TABLE task_steps (
    task_id    TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    result     TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (task_id, name)
) WITHOUT ROWID;
