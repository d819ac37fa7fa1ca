-- File monitor polling: when each monitor is due, what went wrong last, and which event a
-- file log row recorded.

-- ============================================================
-- FILE MONITORS
-- ============================================================
ALTER TABLE file_monitors
    -- The periodic scan is the authority: a monitor is claimed when next_poll_at passes.
    ADD COLUMN next_poll_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    ADD COLUMN last_polled_at TIMESTAMPTZ,
    -- Why the last poll failed (cleared by a successful poll), for the operator at the list.
    ADD COLUMN last_error TEXT,
    -- A JSONB object, not a string: validated by the console and the import.
    ADD CONSTRAINT ck_monitors_watch_target CHECK (jsonb_typeof(watch_target) = 'object'),
    ADD CONSTRAINT ck_monitors_trigger_events CHECK (trigger_events BETWEEN 1 AND 7);

-- Serves poll_due_monitors (every beat tick): monitors that poll and whose time has come,
-- claimed with FOR UPDATE SKIP LOCKED.
CREATE INDEX ix_file_monitors_due ON file_monitors (next_poll_at)
    WHERE NOT is_deleted AND state IN ('active', 'degraded');

-- ============================================================
-- MONITOR FILE LOG
-- ============================================================
-- The event that triggered (FileCreated, FileModified, FileExists): deduplication asks
-- "was this path announced as created since it last appeared?".
ALTER TABLE monitor_file_log ADD COLUMN trigger_event TEXT;

-- Serves the daily prune of the file log after monitor.file_log_retention_days.
CREATE INDEX ix_monitor_file_log_triggered ON monitor_file_log (triggered_at);

-- ============================================================
-- PROCESS HEARTBEATS
-- ============================================================
-- The inotify watcher of local monitors is a process of its own; while none reports,
-- local monitors run on the periodic scan alone and show as degraded.
ALTER TABLE process_heartbeats DROP CONSTRAINT ck_process_heartbeats_kind;
ALTER TABLE process_heartbeats ADD CONSTRAINT ck_process_heartbeats_kind CHECK (kind IN ('worker', 'beat', 'watcher'));
