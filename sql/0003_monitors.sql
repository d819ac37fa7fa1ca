-- File monitors, their bindings to jobs and chains, directory snapshots and the (partitioned) file log.

-- ============================================================
-- FILE MONITORS
-- ============================================================
CREATE TABLE file_monitors (
    id                          UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name                        TEXT NOT NULL,
    description                 TEXT,
    watch_target                JSONB NOT NULL,
    trigger_events              INT NOT NULL,
    file_patterns               JSONB NOT NULL DEFAULT '[]',
    polling_interval_sec        INT NOT NULL DEFAULT 60,
    stability_window_sec        INT NOT NULL DEFAULT 5,
    batch_mode                  BOOLEAN NOT NULL DEFAULT TRUE,
    max_consecutive_failures    INT NOT NULL DEFAULT 5,
    consecutive_failure_count   INT NOT NULL DEFAULT 0,
    state                       TEXT NOT NULL DEFAULT 'active',
    created_at                  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at                  TIMESTAMPTZ NOT NULL DEFAULT now(),
    is_deleted                  BOOLEAN NOT NULL DEFAULT FALSE,
    deleted_at                  TIMESTAMPTZ,

    CONSTRAINT ck_monitors_state CHECK (state IN ('active', 'degraded', 'paused', 'disabled', 'error')),
    CONSTRAINT ck_monitors_polling CHECK (polling_interval_sec >= 30),
    CONSTRAINT ck_monitors_stability CHECK (stability_window_sec >= 1)
);

-- Serves: Monitor poll tick: active and degraded monitors.
CREATE INDEX ix_monitors_state ON file_monitors (state) WHERE NOT is_deleted;

-- ============================================================
-- MONITOR JOB BINDINGS
-- ============================================================
CREATE TABLE monitor_job_bindings (
    id                  UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    monitor_id          UUID NOT NULL,
    job_id              UUID,
    chain_id            UUID,

    CONSTRAINT ck_binding_target CHECK (
        (job_id IS NOT NULL AND chain_id IS NULL) OR
        (job_id IS NULL AND chain_id IS NOT NULL)
    ),
    CONSTRAINT fk_bindings_monitors FOREIGN KEY (monitor_id)
        REFERENCES file_monitors (id) ON DELETE CASCADE,
    CONSTRAINT fk_bindings_jobs FOREIGN KEY (job_id)
        REFERENCES jobs (id) ON DELETE CASCADE,
    CONSTRAINT fk_bindings_chains FOREIGN KEY (chain_id)
        REFERENCES job_chains (id) ON DELETE CASCADE
);

CREATE INDEX ix_bindings_monitor ON monitor_job_bindings (monitor_id);

-- ============================================================
-- MONITOR DIRECTORY STATE
-- ============================================================
CREATE TABLE monitor_directory_state (
    id                  UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    monitor_id          UUID NOT NULL,
    directory_listing   JSONB NOT NULL,
    captured_at         TIMESTAMPTZ NOT NULL DEFAULT now(),

    CONSTRAINT fk_dir_state_monitors FOREIGN KEY (monitor_id)
        REFERENCES file_monitors (id) ON DELETE CASCADE
);

-- Only keep latest state per monitor; old snapshots are pruned
-- Serves: Monitor poll: latest directory snapshot of a monitor.
CREATE INDEX ix_dir_state_monitor ON monitor_directory_state (monitor_id, captured_at DESC);

-- ============================================================
-- MONITOR FILE LOG (PARTITIONED)
-- ============================================================
CREATE TABLE monitor_file_log (
    id                  UUID NOT NULL DEFAULT gen_random_uuid(),
    monitor_id          UUID NOT NULL,
    file_path           TEXT NOT NULL,
    file_size           BIGINT NOT NULL,
    file_hash           TEXT,
    last_modified       TIMESTAMPTZ NOT NULL,
    triggered_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    execution_id        UUID NOT NULL,

    CONSTRAINT pk_monitor_file_log PRIMARY KEY (id, triggered_at)
) PARTITION BY RANGE (triggered_at);

-- Serves: Monitor deduplication: last log row for (monitor, path).
CREATE INDEX ix_monitor_file_log_monitor ON monitor_file_log (monitor_id, file_path, triggered_at DESC);
CREATE INDEX ix_monitor_file_log_execution ON monitor_file_log (execution_id);
