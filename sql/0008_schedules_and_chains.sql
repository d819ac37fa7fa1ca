-- Schedules, job dependencies and chains: per-schedule time zones, due-schedule claims,
-- and the state of every member within a chain execution.

-- ============================================================
-- SCHEDULES
-- ============================================================
-- Cron expressions are evaluated in this IANA zone's wall-clock time (NULL = UTC), so
-- "0 2 * * *" stays at 02:00 local time across daylight-saving changes.
ALTER TABLE job_schedules ADD COLUMN time_zone TEXT;
ALTER TABLE chain_schedules ADD COLUMN time_zone TEXT;

-- Serves fire_due_schedules (every beat tick): enabled schedules whose next_fire_at has
-- passed, claimed with FOR UPDATE SKIP LOCKED.
CREATE INDEX ix_job_schedules_due ON job_schedules (next_fire_at) WHERE is_enabled AND next_fire_at IS NOT NULL;
CREATE INDEX ix_chain_schedules_due ON chain_schedules (next_fire_at) WHERE is_enabled AND next_fire_at IS NOT NULL;

-- ============================================================
-- CHAIN EXECUTIONS
-- ============================================================
ALTER TABLE chain_executions
    -- Why the chain failed or who cancelled it, for the operator reading the list.
    ADD COLUMN error_message TEXT,
    -- Trigger values handed to every member (monitor.*, trigger.*), so a monitor-triggered
    -- chain's members see the files that triggered it.
    ADD COLUMN context JSONB NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN updated_at TIMESTAMPTZ NOT NULL DEFAULT now();

CREATE TRIGGER tr_chain_executions_updated_at BEFORE UPDATE ON chain_executions
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

-- Serves the chain sweep: chain executions still in progress.
CREATE INDEX ix_chain_executions_active ON chain_executions (created_at) WHERE state IN ('pending', 'running');

-- ============================================================
-- CHAIN EXECUTION MEMBERS
-- ============================================================
-- One row per chain member and chain execution: what happened to the member in that
-- run (pending until its upstream finishes, queued with its job execution, skipped when
-- its upstream failed …). The member's definition is copied (job, order, upstream) so the
-- run stays readable after the chain is edited.
CREATE TABLE chain_execution_members (
    id                      UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    chain_execution_id      UUID NOT NULL,
    member_id               UUID,
    job_id                  UUID NOT NULL,
    execution_order         INT NOT NULL,
    depends_on_order        INT,
    run_on_upstream_failure BOOLEAN NOT NULL DEFAULT FALSE,
    state                   TEXT NOT NULL DEFAULT 'pending',
    job_execution_id        UUID,
    note                    TEXT,
    created_at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at              TIMESTAMPTZ NOT NULL DEFAULT now(),

    CONSTRAINT fk_chain_execution_members_executions FOREIGN KEY (chain_execution_id)
        REFERENCES chain_executions (id) ON DELETE CASCADE,
    CONSTRAINT fk_chain_execution_members_members FOREIGN KEY (member_id)
        REFERENCES job_chain_members (id) ON DELETE SET NULL,
    CONSTRAINT ck_chain_execution_members_state CHECK (
        state IN ('pending', 'queued', 'completed', 'failed', 'skipped', 'cancelled')
    )
);

CREATE UNIQUE INDEX ix_chain_execution_members_order ON chain_execution_members (chain_execution_id, execution_order);
-- Serves chain propagation: the member row of a job execution that just finished.
CREATE INDEX ix_chain_execution_members_job_execution ON chain_execution_members (job_execution_id)
    WHERE job_execution_id IS NOT NULL;

CREATE TRIGGER tr_chain_execution_members_updated_at BEFORE UPDATE ON chain_execution_members
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

-- ============================================================
-- JOB EXECUTIONS
-- ============================================================
-- Serves the dependency check: the latest finished execution of an upstream job.
CREATE INDEX ix_job_executions_job_finished ON job_executions (job_id, completed_at DESC)
    WHERE state IN ('completed', 'failed', 'cancelled');
