-- Process deaths are counted apart from handler failures (recoveries, max_recoveries);
-- every claim gets a never-reused epoch that fences the runner's writes; and each batch
-- leaves a commit marker, so a COMMIT that fails ambiguously can be settled exactly once.
ALTER TABLE tasks ADD COLUMN recoveries INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN max_recoveries INTEGER NOT NULL DEFAULT 20;
ALTER TABLE tasks ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
UPDATE tasks SET epoch = attempt;

CREATE TABLE task_batches (
    id         TEXT    PRIMARY KEY NOT NULL,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;
