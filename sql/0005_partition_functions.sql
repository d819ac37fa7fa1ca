-- Monthly partition maintenance functions and the first three months of partitions.

-- ============================================================
-- Partition creation function
-- Called monthly by a scheduled job or on application startup
-- ============================================================
CREATE OR REPLACE FUNCTION create_monthly_partitions(
    target_date DATE DEFAULT CURRENT_DATE + INTERVAL '1 month'
)
RETURNS void AS $$
DECLARE
    partition_start DATE := date_trunc('month', target_date);
    partition_end DATE := partition_start + INTERVAL '1 month';
    suffix TEXT := to_char(partition_start, 'YYYY_MM');
BEGIN
    -- Job executions
    EXECUTE format(
        'CREATE TABLE IF NOT EXISTS job_executions_%s PARTITION OF job_executions
         FOR VALUES FROM (%L) TO (%L)',
        suffix, partition_start, partition_end
    );

    -- Step executions
    EXECUTE format(
        'CREATE TABLE IF NOT EXISTS step_executions_%s PARTITION OF step_executions
         FOR VALUES FROM (%L) TO (%L)',
        suffix, partition_start, partition_end
    );

    -- Monitor file log
    EXECUTE format(
        'CREATE TABLE IF NOT EXISTS monitor_file_log_%s PARTITION OF monitor_file_log
         FOR VALUES FROM (%L) TO (%L)',
        suffix, partition_start, partition_end
    );

    -- Audit log
    EXECUTE format(
        'CREATE TABLE IF NOT EXISTS audit_log_entries_%s PARTITION OF audit_log_entries
         FOR VALUES FROM (%L) TO (%L)',
        suffix, partition_start, partition_end
    );

    -- Domain events
    EXECUTE format(
        'CREATE TABLE IF NOT EXISTS domain_events_%s PARTITION OF domain_events
         FOR VALUES FROM (%L) TO (%L)',
        suffix, partition_start, partition_end
    );
END;
$$ LANGUAGE plpgsql;

-- ============================================================
-- Partition drop function for data retention
-- Drops partitions older than the configured retention period
-- ============================================================
CREATE OR REPLACE FUNCTION drop_old_partitions(
    table_name TEXT,
    retention_months INT
)
RETURNS void AS $$
DECLARE
    cutoff_date DATE := date_trunc('month', CURRENT_DATE - (retention_months || ' months')::INTERVAL);
    suffix TEXT := to_char(cutoff_date - INTERVAL '1 month', 'YYYY_MM');
    partition_name TEXT := table_name || '_' || suffix;
BEGIN
    -- Only drop if the partition exists
    IF EXISTS (
        SELECT 1 FROM pg_tables
        WHERE tablename = partition_name
    ) THEN
        EXECUTE format('DROP TABLE %I', partition_name);
        RAISE NOTICE 'Dropped partition: %', partition_name;
    END IF;
END;
$$ LANGUAGE plpgsql;

-- Current month and the next two; `manage.py migrate` and the weekly beat task
-- keep this window rolling forward afterwards.
SELECT create_monthly_partitions(CURRENT_DATE);
SELECT create_monthly_partitions((CURRENT_DATE + INTERVAL '1 month')::date);
SELECT create_monthly_partitions((CURRENT_DATE + INTERVAL '2 month')::date);
