-- A full (status, updated_at) index leads SQLite (which has no planner statistics here) to
-- answer every `status = 'pending'` condition through it, scanning and sorting all pending
-- rows on each claim. Retention and dead-letter listing get partial indexes instead.
DROP INDEX tasks_updated;
CREATE INDEX tasks_finished ON tasks (updated_at)
    WHERE status IN ('completed', 'failed', 'cancelled', 'suspended');
CREATE INDEX tasks_failed ON tasks (updated_at) WHERE status = 'failed';
