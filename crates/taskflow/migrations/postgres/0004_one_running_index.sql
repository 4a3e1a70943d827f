-- Every claim writes a new row version, and on Postgres a new entry in each index whose
-- predicate the running row meets. Lease renewals (every lease/3) and the rescuer find
-- running tasks through `tasks_lease` alone (the live running set is small: the nodes'
-- slots), so the owner index only cost every claim one more index insert.
DROP INDEX tasks_running;
