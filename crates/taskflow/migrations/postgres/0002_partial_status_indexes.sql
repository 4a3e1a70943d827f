-- Same indexes as the SQLite store (there a full (status, updated_at) index misled the
-- planner into scanning every pending row per claim). Retention and dead-letter listing
-- use partial indexes.
DROP INDEX tasks_updated;
CREATE INDEX tasks_finished ON tasks (updated_at)
    WHERE status IN ('completed', 'failed', 'cancelled', 'suspended');
CREATE INDEX tasks_failed ON tasks (updated_at) WHERE status = 'failed';
