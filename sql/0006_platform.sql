-- Platform additions to the reference schema: process heartbeats, the append-only
-- audit guard, updated_at maintenance, a wider audit entity vocabulary and the
-- retention settings of the other partitioned tables.

-- ============================================================
-- PROCESS HEARTBEATS
-- One row per running worker or beat process, refreshed every few seconds.
-- /health/ reads it, and crash recovery uses it to tell a dead worker from a
-- slow one.
-- ============================================================
CREATE TABLE process_heartbeats (
    process_name        TEXT PRIMARY KEY,
    kind                TEXT NOT NULL,
    hostname            TEXT NOT NULL,
    pid                 INT NOT NULL,
    started_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    stopped_at          TIMESTAMPTZ,
    schema_version      TEXT,

    CONSTRAINT ck_process_heartbeats_kind CHECK (kind IN ('worker', 'beat'))
);

-- Serves the health check "newest heartbeat per kind" and the crash-recovery
-- scan for workers whose heartbeat has expired.
CREATE INDEX ix_process_heartbeats_kind_seen ON process_heartbeats (kind, last_seen_at DESC);

-- ============================================================
-- APPEND-ONLY AUDIT LOG
-- Rows are written once and never changed. Retention removes whole months by
-- detaching and dropping partitions, which does not fire row triggers.
-- ============================================================
CREATE FUNCTION refuse_audit_log_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit_log_entries is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Audit records are never changed; old months leave by partition archival.';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER tr_audit_log_entries_append_only
    BEFORE UPDATE OR DELETE ON audit_log_entries
    FOR EACH ROW EXECUTE FUNCTION refuse_audit_log_change();

CREATE TRIGGER tr_audit_log_entries_no_truncate
    BEFORE TRUNCATE ON audit_log_entries
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_audit_log_change();

-- ============================================================
-- updated_at MAINTENANCE
-- The ORM sets updated_at on save(); this trigger also covers bulk UPDATEs,
-- raw SQL and psql sessions, so the column can be trusted.
-- ============================================================
CREATE FUNCTION touch_updated_at() RETURNS trigger AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER tr_jobs_updated_at BEFORE UPDATE ON jobs
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
CREATE TRIGGER tr_job_chains_updated_at BEFORE UPDATE ON job_chains
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
CREATE TRIGGER tr_job_schedules_updated_at BEFORE UPDATE ON job_schedules
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
CREATE TRIGGER tr_chain_schedules_updated_at BEFORE UPDATE ON chain_schedules
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
CREATE TRIGGER tr_ssh_keys_updated_at BEFORE UPDATE ON ssh_keys
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
CREATE TRIGGER tr_connections_updated_at BEFORE UPDATE ON connections
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
CREATE TRIGGER tr_pgp_keys_updated_at BEFORE UPDATE ON pgp_keys
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
CREATE TRIGGER tr_file_monitors_updated_at BEFORE UPDATE ON file_monitors
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
CREATE TRIGGER tr_system_settings_updated_at BEFORE UPDATE ON system_settings
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

-- ============================================================
-- AUDIT ENTITY TYPES
-- The reference list covers the job, connection, key and monitor aggregates
-- only. Operators also change schedules, dependencies, tags, settings, users,
-- known hosts and share links, and refused actions are audited too, so the
-- list is widened (see schema_deviations.txt).
-- ============================================================
ALTER TABLE audit_log_entries DROP CONSTRAINT ck_audit_entity_type;
ALTER TABLE audit_log_entries ADD CONSTRAINT ck_audit_entity_type CHECK (
    entity_type IN ('job', 'job_execution', 'step_execution', 'chain',
                    'chain_execution', 'connection', 'pgp_key', 'ssh_key', 'file_monitor',
                    'job_step', 'job_schedule', 'chain_schedule', 'job_dependency',
                    'known_host', 'share_token', 'tag', 'system_setting', 'user', 'system')
);

-- ============================================================
-- RETENTION SETTINGS FOR THE OTHER PARTITIONED TABLES
-- ============================================================
INSERT INTO system_settings (key, value, description, updated_by) VALUES
    ('job.execution_partition_retention_months', '12', 'Months of job execution partitions to retain', 'system'),
    ('job.step_execution_partition_retention_months', '12', 'Months of step execution partitions to retain', 'system'),
    ('monitor.file_log_partition_retention_months', '6', 'Months of monitor file log partitions to retain', 'system'),
    ('events.partition_retention_months', '12', 'Months of domain event partitions to retain', 'system'),
    ('partition.archive_overdue_warning_months', '2', 'Months past retention after which unarchived partitions raise a health warning', 'system'),
    ('partition.months_ahead', '2', 'Months of partitions kept ready beyond the current one', 'system');
