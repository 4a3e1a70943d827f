-- The rows of a batch's JSON document, for statements that join them to `tasks`.
--
-- Batch statements run with generic plans, made once per connection whatever the
-- tables hold then. Planned on nearly empty tables, a join of `jsonb_array_elements`
-- (which the planner takes for 100 rows) to `tasks` (taken for one) reads `tasks` in
-- full and the document once per task: fine while empty, quadratic later. Declared
-- here as one row, the document drives the join and each of its rows probes the
-- primary key, whatever the sizes. PL/pgSQL keeps the function from being inlined
-- (which would bring the 100-row estimate back) and caches its one query's plan.
CREATE FUNCTION taskflow_batch_rows(doc jsonb) RETURNS SETOF jsonb
    LANGUAGE plpgsql VOLATILE ROWS 1
    AS $$ BEGIN RETURN QUERY SELECT jsonb_array_elements(doc); END $$;
