-- Job engine additions: execution bookkeeping for dispatch, control requests, heartbeats
-- and retries; per-iteration step rows and live progress; step aliases.

-- ============================================================
-- JOB STEPS
-- ============================================================
-- A step may be named in context references by alias as well as by its order
-- ("<alias>.<output>"), so inserting a step does not break later references.
ALTER TABLE job_steps ADD COLUMN alias TEXT;
ALTER TABLE job_steps ADD CONSTRAINT ck_job_steps_alias CHECK (alias IS NULL OR alias ~ '^[A-Za-z_][A-Za-z0-9_]*$');
CREATE UNIQUE INDEX ix_job_steps_job_alias ON job_steps (job_id, alias) WHERE alias IS NOT NULL;

-- ============================================================
-- JOB EXECUTIONS
-- ============================================================
ALTER TABLE job_executions
    -- 1 for a first run; retry_job and crash recovery queue attempt + 1.
    ADD COLUMN attempt INT NOT NULL DEFAULT 1,
    ADD COLUMN retry_of_execution_id UUID,
    -- Set when the dispatcher hands a queued execution to Celery; a queued row whose
    -- dispatch is old was lost with its message and is dispatched again by the sweep.
    ADD COLUMN dispatched_at TIMESTAMPTZ,
    -- The worker process running it, and when that process last reported progress.
    ADD COLUMN worker_name TEXT,
    ADD COLUMN heartbeat_at TIMESTAMPTZ,
    -- An operator's pause or cancel, picked up by the running worker within a second.
    ADD COLUMN control_request TEXT,
    ADD COLUMN control_requested_by TEXT,
    ADD COLUMN error_message TEXT,
    ADD COLUMN updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    ADD CONSTRAINT ck_job_executions_control CHECK (control_request IS NULL OR control_request IN ('pause', 'cancel')),
    ADD CONSTRAINT ck_job_executions_attempt CHECK (attempt >= 1);

-- Serves crash recovery: running executions whose heartbeat has expired.
CREATE INDEX ix_job_executions_running_heartbeat ON job_executions (heartbeat_at) WHERE state = 'running';
-- Serves retry chains: executions retried from a given one.
CREATE INDEX ix_job_executions_retry_of ON job_executions (retry_of_execution_id) WHERE retry_of_execution_id IS NOT NULL;

CREATE TRIGGER tr_job_executions_updated_at BEFORE UPDATE ON job_executions
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

-- ============================================================
-- STEP EXECUTIONS
-- ============================================================
ALTER TABLE step_executions
    -- Index of the loop iteration (innermost flow.foreach) this row ran in.
    ADD COLUMN iteration_index INT,
    -- Position of the step instance in the loop nesting, e.g. "4" or "2[3].4": the
    -- checkpoint key that resume uses to skip completed work.
    ADD COLUMN position TEXT,
    -- Name and type at run time; job_steps rows can be replaced by a later version.
    ADD COLUMN step_name TEXT,
    ADD COLUMN type_key TEXT,
    -- Live progress of a running step: bytes_done, bytes_total, rate, updated_at.
    ADD COLUMN progress JSONB;
