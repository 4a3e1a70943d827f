-- Idempotency keys are random (derived keys are SHA-256 digests), so every entry of a key
-- index lands on a random leaf page: each insert or delete dirties a 4 KiB page of its
-- own, written to the WAL and again by the checkpoint, and once the index outgrows the
-- page cache each one reads a page too. The partial unique index on live keys cost two
-- of those per task (an insert at submit, a delete when the task ends). SQLite has one
-- writer (one connection, behind the database's lock file), so the rule it enforced, one
-- live task per (key, owner), is kept by the statements that make a task live: the bulk
-- insert skips a key with a live task (through `tasks_key`) and a redrive refuses while
-- one exists; submits of one key within a batch are merged before the insert.
DROP INDEX tasks_active_key;
