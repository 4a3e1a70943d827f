-- Tasks, their event log and their step checkpoints.
-- Times are milliseconds since the Unix epoch. user_id '' means "no owner".
CREATE TABLE tasks (
    id               TEXT    PRIMARY KEY NOT NULL,
    name             TEXT    NOT NULL,
    idempotency_key  TEXT    NOT NULL,
    user_id          TEXT    NOT NULL DEFAULT '',
    input            JSONB   NOT NULL,
    status           TEXT    NOT NULL,
    attempt          INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    auto_recover     BOOLEAN NOT NULL,
    recovery         BOOLEAN NOT NULL DEFAULT FALSE,
    result           JSONB,
    error            JSONB,
    owner_node       TEXT,
    lease_expires_at BIGINT,
    control          TEXT,
    run_at           BIGINT  NOT NULL,
    created_at       BIGINT  NOT NULL,
    updated_at       BIGINT  NOT NULL,
    last_seq         BIGINT  NOT NULL DEFAULT 0
);

-- One live task per (key, owner): duplicates attach instead of inserting, across processes.
CREATE UNIQUE INDEX tasks_active_key ON tasks (idempotency_key, user_id)
    WHERE status IN ('pending', 'running', 'suspended');
CREATE INDEX tasks_key ON tasks (idempotency_key, user_id, created_at);
CREATE INDEX tasks_pending ON tasks (run_at, id) WHERE status = 'pending';
CREATE INDEX tasks_running ON tasks (owner_node) WHERE status = 'running';
CREATE INDEX tasks_lease ON tasks (lease_expires_at) WHERE status = 'running';
CREATE INDEX tasks_updated ON tasks (status, updated_at);

CREATE TABLE task_events (
    task_id    TEXT    NOT NULL,
    seq        BIGINT  NOT NULL,
    kind       TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    payload    JSONB   NOT NULL,
    created_at BIGINT  NOT NULL,
    PRIMARY KEY (task_id, seq)
);

CREATE TABLE task_steps (
    task_id    TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    result     JSONB   NOT NULL,
    created_at BIGINT  NOT NULL,
    PRIMARY KEY (task_id, name)
);
