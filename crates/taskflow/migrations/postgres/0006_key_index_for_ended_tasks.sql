-- Every transition of a task writes a new row version and, on Postgres, an entry in each
-- index whose predicate that version meets. Live tasks are found by key through
-- `tasks_active_key` already, so `tasks_key` now holds ended tasks only: a submit and a
-- claim each write one index entry fewer. A lookup by key reads both (at most one live
-- task, and the newest ended one) and keeps the newer.
DROP INDEX tasks_key;
CREATE INDEX tasks_key ON tasks (idempotency_key, user_id, created_at)
    WHERE status IN ('completed', 'failed', 'cancelled');
