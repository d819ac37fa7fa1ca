-- Job definitions, versions, executions (partitioned), chains, dependencies and schedules.

-- ============================================================
-- JOBS
-- ============================================================
CREATE TABLE jobs (
    id                  UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name                TEXT NOT NULL,
    description         TEXT,
    current_version     INT NOT NULL DEFAULT 1,
    failure_policy      JSONB NOT NULL DEFAULT '{"type":"stop","max_retries":3,"backoff_base_seconds":1,"backoff_max_seconds":60}',
    is_enabled          BOOLEAN NOT NULL DEFAULT TRUE,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    is_deleted          BOOLEAN NOT NULL DEFAULT FALSE,
    deleted_at          TIMESTAMPTZ
);

CREATE INDEX ix_jobs_name ON jobs (name) WHERE NOT is_deleted;
CREATE INDEX ix_jobs_is_enabled ON jobs (is_enabled) WHERE NOT is_deleted;

-- ============================================================
-- JOB STEPS
-- ============================================================
CREATE TABLE job_steps (
    id                  UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    job_id              UUID NOT NULL,
    step_order          INT NOT NULL,
    name                TEXT NOT NULL,
    type_key            TEXT NOT NULL,
    configuration       JSONB NOT NULL DEFAULT '{}',
    timeout_seconds     INT NOT NULL DEFAULT 300,

    CONSTRAINT fk_job_steps_jobs FOREIGN KEY (job_id)
        REFERENCES jobs (id) ON DELETE CASCADE,
    CONSTRAINT ck_job_steps_order_positive CHECK (step_order >= 0),
    CONSTRAINT ck_job_steps_timeout_positive CHECK (timeout_seconds > 0)
);

CREATE UNIQUE INDEX ix_job_steps_job_order ON job_steps (job_id, step_order);
CREATE INDEX ix_job_steps_type_key ON job_steps (type_key);

-- ============================================================
-- JOB VERSIONS
-- ============================================================
CREATE TABLE job_versions (
    id                  UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    job_id              UUID NOT NULL,
    version_number      INT NOT NULL,
    config_snapshot     JSONB NOT NULL,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_by          TEXT NOT NULL,

    CONSTRAINT fk_job_versions_jobs FOREIGN KEY (job_id)
        REFERENCES jobs (id) ON DELETE CASCADE
);

CREATE UNIQUE INDEX ix_job_versions_job_version ON job_versions (job_id, version_number);

-- ============================================================
-- JOB EXECUTIONS (PARTITIONED)
-- ============================================================
CREATE TABLE job_executions (
    id                  UUID NOT NULL DEFAULT gen_random_uuid(),
    job_id              UUID NOT NULL,
    job_version_number  INT NOT NULL,
    chain_execution_id  UUID,
    triggered_by        TEXT NOT NULL,
    state               TEXT NOT NULL DEFAULT 'created',
    queued_at           TIMESTAMPTZ,
    started_at          TIMESTAMPTZ,
    completed_at        TIMESTAMPTZ,
    context_snapshot    JSONB DEFAULT '{}',
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),

    CONSTRAINT pk_job_executions PRIMARY KEY (id, created_at),
    CONSTRAINT ck_job_executions_state CHECK (
        state IN ('created', 'queued', 'running', 'paused', 'completed', 'failed', 'cancelled')
    )
) PARTITION BY RANGE (created_at);

-- Partition creation is handled by a scheduled maintenance script (see 13.5)
-- Example: CREATE TABLE job_executions_2026_02 PARTITION OF job_executions
--          FOR VALUES FROM ('2026-02-01') TO ('2026-03-01');

-- Serves: Job page "recent executions" and dependency checks (latest execution of a job).
CREATE INDEX ix_job_executions_job_id ON job_executions (job_id, created_at DESC);
-- Serves: Dashboard counts and the changelist state filter; the dispatcher counts running rows here.
CREATE INDEX ix_job_executions_state ON job_executions (state, created_at DESC);
-- Serves: Chain execution page: member executions of one chain run.
CREATE INDEX ix_job_executions_chain ON job_executions (chain_execution_id, created_at DESC)
    WHERE chain_execution_id IS NOT NULL;
-- Serves: Dispatcher claim: oldest queued executions FIFO, FOR UPDATE SKIP LOCKED.
CREATE INDEX ix_job_executions_queued ON job_executions (queued_at)
    WHERE state = 'queued';

-- ============================================================
-- STEP EXECUTIONS (PARTITIONED)
-- ============================================================
CREATE TABLE step_executions (
    id                  UUID NOT NULL DEFAULT gen_random_uuid(),
    job_execution_id    UUID NOT NULL,
    job_step_id         UUID NOT NULL,
    step_order          INT NOT NULL,
    state               TEXT NOT NULL DEFAULT 'pending',
    started_at          TIMESTAMPTZ,
    completed_at        TIMESTAMPTZ,
    duration_ms         BIGINT,
    bytes_processed     BIGINT,
    output_data         JSONB,
    error_message       TEXT,
    error_stack_trace   TEXT,
    retry_attempt       INT NOT NULL DEFAULT 0,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),

    CONSTRAINT pk_step_executions PRIMARY KEY (id, created_at),
    CONSTRAINT ck_step_executions_state CHECK (
        state IN ('pending', 'running', 'completed', 'failed', 'skipped')
    )
) PARTITION BY RANGE (created_at);

-- Serves: Execution page step timeline and resume from checkpoint.
CREATE INDEX ix_step_executions_job_execution ON step_executions (job_execution_id, step_order);
CREATE INDEX ix_step_executions_state ON step_executions (state, created_at DESC);

-- ============================================================
-- JOB CHAINS
-- ============================================================
CREATE TABLE job_chains (
    id                  UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name                TEXT NOT NULL,
    description         TEXT,
    is_enabled          BOOLEAN NOT NULL DEFAULT TRUE,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    is_deleted          BOOLEAN NOT NULL DEFAULT FALSE,
    deleted_at          TIMESTAMPTZ
);

CREATE INDEX ix_job_chains_name ON job_chains (name) WHERE NOT is_deleted;

-- ============================================================
-- JOB CHAIN MEMBERS
-- ============================================================
CREATE TABLE job_chain_members (
    id                      UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    chain_id                UUID NOT NULL,
    job_id                  UUID NOT NULL,
    execution_order         INT NOT NULL,
    depends_on_member_id    UUID,
    run_on_upstream_failure BOOLEAN NOT NULL DEFAULT FALSE,

    CONSTRAINT fk_chain_members_chains FOREIGN KEY (chain_id)
        REFERENCES job_chains (id) ON DELETE CASCADE,
    CONSTRAINT fk_chain_members_jobs FOREIGN KEY (job_id)
        REFERENCES jobs (id) ON DELETE RESTRICT,
    CONSTRAINT fk_chain_members_depends FOREIGN KEY (depends_on_member_id)
        REFERENCES job_chain_members (id) ON DELETE SET NULL
);

CREATE UNIQUE INDEX ix_chain_members_chain_order ON job_chain_members (chain_id, execution_order);
CREATE INDEX ix_chain_members_job ON job_chain_members (job_id);

-- ============================================================
-- CHAIN EXECUTIONS
-- ============================================================
CREATE TABLE chain_executions (
    id                  UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    chain_id            UUID NOT NULL,
    triggered_by        TEXT NOT NULL,
    state               TEXT NOT NULL DEFAULT 'pending',
    started_at          TIMESTAMPTZ,
    completed_at        TIMESTAMPTZ,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),

    CONSTRAINT fk_chain_executions_chains FOREIGN KEY (chain_id)
        REFERENCES job_chains (id) ON DELETE CASCADE,
    CONSTRAINT ck_chain_executions_state CHECK (
        state IN ('pending', 'running', 'completed', 'failed', 'paused', 'cancelled')
    )
);

CREATE INDEX ix_chain_executions_chain ON chain_executions (chain_id, created_at DESC);
CREATE INDEX ix_chain_executions_state ON chain_executions (state);

-- ============================================================
-- JOB DEPENDENCIES
-- ============================================================
CREATE TABLE job_dependencies (
    id                  UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    upstream_job_id     UUID NOT NULL,
    downstream_job_id   UUID NOT NULL,
    run_on_failure      BOOLEAN NOT NULL DEFAULT FALSE,

    CONSTRAINT fk_job_deps_upstream FOREIGN KEY (upstream_job_id)
        REFERENCES jobs (id) ON DELETE CASCADE,
    CONSTRAINT fk_job_deps_downstream FOREIGN KEY (downstream_job_id)
        REFERENCES jobs (id) ON DELETE CASCADE,
    CONSTRAINT ck_job_deps_no_self_ref CHECK (upstream_job_id != downstream_job_id)
);

CREATE UNIQUE INDEX ix_job_deps_pair ON job_dependencies (upstream_job_id, downstream_job_id);
-- Serves: Dependency check when a downstream job is triggered.
CREATE INDEX ix_job_deps_downstream ON job_dependencies (downstream_job_id);

-- ============================================================
-- JOB SCHEDULES
-- ============================================================
CREATE TABLE job_schedules (
    id               UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    job_id           UUID NOT NULL,
    schedule_type    TEXT NOT NULL,              -- 'cron' | 'one_shot'
    cron_expression  TEXT,
    run_at           TIMESTAMPTZ,
    is_enabled       BOOLEAN NOT NULL DEFAULT TRUE,
    last_fired_at    TIMESTAMPTZ,
    next_fire_at     TIMESTAMPTZ,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),

    CONSTRAINT ck_schedule_type CHECK (schedule_type IN ('cron', 'one_shot')),
    CONSTRAINT ck_schedule_cron CHECK (
        (schedule_type = 'cron' AND cron_expression IS NOT NULL) OR
        (schedule_type = 'one_shot' AND run_at IS NOT NULL)
    ),
    CONSTRAINT fk_schedules_jobs FOREIGN KEY (job_id)
        REFERENCES jobs (id) ON DELETE CASCADE
);

CREATE INDEX ix_job_schedules_job_id ON job_schedules (job_id);
-- Serves: Beat tick: enabled schedules due to fire.
CREATE INDEX ix_job_schedules_enabled ON job_schedules (is_enabled, schedule_type);

-- ============================================================
-- CHAIN SCHEDULES
-- ============================================================
CREATE TABLE chain_schedules (
    id               UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    chain_id         UUID NOT NULL,
    schedule_type    TEXT NOT NULL,              -- 'cron' | 'one_shot'
    cron_expression  TEXT,
    run_at           TIMESTAMPTZ,
    is_enabled       BOOLEAN NOT NULL DEFAULT TRUE,
    last_fired_at    TIMESTAMPTZ,
    next_fire_at     TIMESTAMPTZ,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),

    CONSTRAINT ck_chain_schedule_type CHECK (schedule_type IN ('cron', 'one_shot')),
    CONSTRAINT ck_chain_schedule_cron CHECK (
        (schedule_type = 'cron' AND cron_expression IS NOT NULL) OR
        (schedule_type = 'one_shot' AND run_at IS NOT NULL)
    ),
    CONSTRAINT fk_chain_schedules_chains FOREIGN KEY (chain_id)
        REFERENCES job_chains (id) ON DELETE CASCADE
);

CREATE INDEX ix_chain_schedules_chain_id ON chain_schedules (chain_id);
-- Serves: Beat tick: enabled chain schedules due to fire.
CREATE INDEX ix_chain_schedules_enabled ON chain_schedules (is_enabled, schedule_type);
