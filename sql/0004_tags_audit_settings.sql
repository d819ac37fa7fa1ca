-- Cross-cutting tables: tags, the append-only audit log, domain events and system settings.

-- ============================================================
-- TAGS
-- ============================================================
CREATE TABLE tags (
    id                  UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name                TEXT NOT NULL,
    color               TEXT,
    category            TEXT,
    description         TEXT,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    is_deleted          BOOLEAN NOT NULL DEFAULT FALSE,
    deleted_at          TIMESTAMPTZ
);

CREATE UNIQUE INDEX ix_tags_name ON tags (LOWER(name)) WHERE NOT is_deleted;
CREATE INDEX ix_tags_category ON tags (category) WHERE NOT is_deleted AND category IS NOT NULL;

-- ============================================================
-- ENTITY TAGS (POLYMORPHIC JOIN)
-- ============================================================
CREATE TABLE entity_tags (
    id                  UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    tag_id              UUID NOT NULL,
    entity_type         TEXT NOT NULL,
    entity_id           UUID NOT NULL,

    CONSTRAINT fk_entity_tags_tags FOREIGN KEY (tag_id)
        REFERENCES tags (id) ON DELETE CASCADE,
    CONSTRAINT ck_entity_tags_type CHECK (
        entity_type IN ('job', 'job_chain', 'connection', 'pgp_key', 'ssh_key', 'file_monitor')
    )
);

CREATE UNIQUE INDEX ix_entity_tags_unique ON entity_tags (tag_id, entity_type, entity_id);
-- Serves: Tag filters on every list: tags of one entity.
CREATE INDEX ix_entity_tags_entity ON entity_tags (entity_type, entity_id);

-- ============================================================
-- AUDIT LOG (PARTITIONED)
-- ============================================================
CREATE TABLE audit_log_entries (
    id                  UUID NOT NULL DEFAULT gen_random_uuid(),
    entity_type         TEXT NOT NULL,
    entity_id           UUID NOT NULL,
    operation           TEXT NOT NULL,
    performed_by        TEXT NOT NULL,
    performed_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    details             JSONB DEFAULT '{}',

    CONSTRAINT pk_audit_log PRIMARY KEY (id, performed_at),
    CONSTRAINT ck_audit_entity_type CHECK (
        entity_type IN ('job', 'job_execution', 'step_execution', 'chain',
                        'chain_execution', 'connection', 'pgp_key', 'ssh_key', 'file_monitor')
    )
) PARTITION BY RANGE (performed_at);

-- Serves: Per-entity audit history on every console detail page.
CREATE INDEX ix_audit_entity ON audit_log_entries (entity_type, entity_id, performed_at DESC);
-- Serves: Audit console default listing, newest first, bounded by time.
CREATE INDEX ix_audit_performed_at ON audit_log_entries (performed_at DESC);
-- Serves: Audit console filter by user.
CREATE INDEX ix_audit_performed_by ON audit_log_entries (performed_by, performed_at DESC);

-- ============================================================
-- DOMAIN EVENTS (PARTITIONED)
-- ============================================================
CREATE TABLE domain_events (
    id                  UUID NOT NULL DEFAULT gen_random_uuid(),
    event_type          TEXT NOT NULL,
    entity_type         TEXT NOT NULL,
    entity_id           UUID NOT NULL,
    payload             JSONB NOT NULL,
    occurred_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    processed_at        TIMESTAMPTZ,
    processed_by        TEXT,

    CONSTRAINT pk_domain_events PRIMARY KEY (id, occurred_at)
) PARTITION BY RANGE (occurred_at);

-- Serves: Event relay: events not yet processed, oldest first.
CREATE INDEX ix_domain_events_unprocessed ON domain_events (occurred_at)
    WHERE processed_at IS NULL;
CREATE INDEX ix_domain_events_type ON domain_events (event_type, occurred_at DESC);
CREATE INDEX ix_domain_events_entity ON domain_events (entity_type, entity_id, occurred_at DESC);

-- ============================================================
-- SYSTEM SETTINGS
-- ============================================================
CREATE TABLE system_settings (
    key                 TEXT PRIMARY KEY,
    value               TEXT NOT NULL,
    description         TEXT,
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_by          TEXT NOT NULL
);

-- Seed default settings
INSERT INTO system_settings (key, value, description, updated_by) VALUES
    ('job.concurrency_limit', '5', 'Maximum concurrent job executions', 'system'),
    ('job.temp_cleanup_days', '7', 'Days before orphaned temp directories are purged', 'system'),
    ('monitor.file_log_retention_days', '30', 'Days before monitor file log entries are pruned', 'system'),
    ('key.expiration_warning_days', '30', 'Days before expiration to transition keys to Expiring', 'system'),
    ('audit.partition_retention_months', '12', 'Months of audit log partitions to retain', 'system'),
    ('security.fips_mode_enabled', 'true', 'Enforce FIPS 140-2 approved algorithms for internal operations', 'system'),
    ('security.fips_override_require_admin', 'true', 'Require Admin role to set fips_override on connections', 'system'),
    ('security.public_key_share_links_enabled', 'false', 'Allow Admins to generate unauthenticated share links for public keys', 'system'),
    ('security.max_share_link_days', '30', 'Maximum expiration period in days for public key share links', 'system'),
    ('security.insecure_trust_require_admin', 'true', 'Require Admin role to set AlwaysTrust (SSH) or Insecure (TLS) on connections', 'system'),
    ('security.insecure_trust_allow_production', 'false', 'Allow insecure trust policies in production environments', 'system');

-- GIN index on audit details, jsonb_path_ops: serves the console's audit search
-- "details contains {...}" (@> containment), always bounded by performed_at.
CREATE INDEX ix_audit_details_gin ON audit_log_entries
    USING GIN (details jsonb_path_ops);
