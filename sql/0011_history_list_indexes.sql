-- Console lists of the history tables, newest first.

-- Serves the execution list in the console (ORDER BY created_at DESC LIMIT 50): each
-- partition is read newest first and merged, instead of sorting a million rows.
CREATE INDEX ix_job_executions_created ON job_executions (created_at DESC);
-- Serves the step execution list in the console, newest first.
CREATE INDEX ix_step_executions_created ON step_executions (created_at DESC);
