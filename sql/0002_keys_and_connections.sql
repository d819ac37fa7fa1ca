-- Key store (SSH and PGP keys, share tokens) and partner connections with their known hosts.
-- ssh_keys comes first because connections references it.

-- ============================================================
-- SSH KEYS
-- ============================================================
CREATE TABLE ssh_keys (
    id                  UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name                TEXT NOT NULL,
    key_type            TEXT NOT NULL,
    public_key_data     TEXT NOT NULL,
    private_key_data    BYTEA NOT NULL,
    passphrase_hash     TEXT,
    fingerprint         TEXT NOT NULL,
    status              TEXT NOT NULL DEFAULT 'active',
    notes               TEXT,
    created_by          TEXT NOT NULL,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    is_deleted          BOOLEAN NOT NULL DEFAULT FALSE,
    deleted_at          TIMESTAMPTZ,

    CONSTRAINT ck_ssh_keys_type CHECK (
        key_type IN ('rsa_2048', 'rsa_4096', 'ed25519', 'ecdsa_256')
    ),
    CONSTRAINT ck_ssh_keys_status CHECK (status IN ('active', 'retired', 'deleted'))
);

CREATE UNIQUE INDEX ix_ssh_keys_fingerprint ON ssh_keys (fingerprint) WHERE NOT is_deleted;
CREATE INDEX ix_ssh_keys_status ON ssh_keys (status) WHERE NOT is_deleted;

-- ============================================================
-- CONNECTIONS
-- ============================================================
CREATE TABLE connections (
    id                      UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name                    TEXT NOT NULL,
    "group"                 TEXT,
    protocol                TEXT NOT NULL,
    host                    TEXT NOT NULL,
    port                    INT NOT NULL,
    auth_method             TEXT NOT NULL,
    username                TEXT NOT NULL,
    password_encrypted      BYTEA,
    ssh_key_id              UUID,
    host_key_policy         TEXT NOT NULL DEFAULT 'trust_on_first_use',
    stored_host_fingerprint TEXT,
    passive_mode            BOOLEAN NOT NULL DEFAULT TRUE,
    tls_version_floor       TEXT,
    tls_cert_policy         TEXT NOT NULL DEFAULT 'system_trust',
    tls_pinned_thumbprint   TEXT,
    ssh_algorithms          JSONB,
    connect_timeout_sec     INT NOT NULL DEFAULT 30,
    operation_timeout_sec   INT NOT NULL DEFAULT 300,
    keepalive_interval_sec  INT NOT NULL DEFAULT 60,
    transport_retries       INT NOT NULL DEFAULT 2,
    status                  TEXT NOT NULL DEFAULT 'active',
    fips_override           BOOLEAN NOT NULL DEFAULT FALSE,
    notes                   TEXT,
    created_at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    is_deleted              BOOLEAN NOT NULL DEFAULT FALSE,
    deleted_at              TIMESTAMPTZ,

    CONSTRAINT ck_connections_protocol CHECK (protocol IN ('sftp', 'ftp', 'ftps')),
    CONSTRAINT ck_connections_auth CHECK (auth_method IN ('password', 'ssh_key', 'password_and_ssh_key')),
    CONSTRAINT ck_connections_host_key CHECK (host_key_policy IN ('trust_on_first_use', 'always_trust', 'manual')),
    CONSTRAINT ck_connections_tls_cert CHECK (tls_cert_policy IN ('system_trust', 'pinned_thumbprint', 'insecure')),
    CONSTRAINT ck_connections_status CHECK (status IN ('active', 'disabled')),
    CONSTRAINT ck_connections_retries CHECK (transport_retries BETWEEN 0 AND 3),
    CONSTRAINT fk_connections_ssh_keys FOREIGN KEY (ssh_key_id)
        REFERENCES ssh_keys (id) ON DELETE SET NULL
);

CREATE INDEX ix_connections_name ON connections (name) WHERE NOT is_deleted;
CREATE INDEX ix_connections_group ON connections ("group") WHERE NOT is_deleted AND "group" IS NOT NULL;
CREATE INDEX ix_connections_protocol ON connections (protocol) WHERE NOT is_deleted;

-- ============================================================
-- KNOWN HOSTS
-- ============================================================
CREATE TABLE known_hosts (
    id                  UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    connection_id       UUID NOT NULL,
    fingerprint         TEXT NOT NULL,
    key_type            TEXT NOT NULL,
    first_seen          TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen           TIMESTAMPTZ NOT NULL DEFAULT now(),
    approved_by         TEXT NOT NULL,

    CONSTRAINT fk_known_hosts_connections FOREIGN KEY (connection_id)
        REFERENCES connections (id) ON DELETE CASCADE
);

CREATE UNIQUE INDEX ix_known_hosts_connection_fingerprint ON known_hosts (connection_id, fingerprint);

-- ============================================================
-- PGP KEYS
-- ============================================================
CREATE TABLE pgp_keys (
    id                  UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name                TEXT NOT NULL,
    fingerprint         TEXT NOT NULL,
    short_key_id        TEXT NOT NULL,
    algorithm           TEXT NOT NULL,
    key_type            TEXT NOT NULL,
    purpose             TEXT,
    status              TEXT NOT NULL DEFAULT 'active',
    public_key_data     TEXT NOT NULL,
    private_key_data    BYTEA,
    passphrase_hash     TEXT,
    expires_at          TIMESTAMPTZ,
    successor_key_id    UUID,
    created_by          TEXT NOT NULL,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    is_deleted          BOOLEAN NOT NULL DEFAULT FALSE,
    deleted_at          TIMESTAMPTZ,

    CONSTRAINT ck_pgp_keys_algorithm CHECK (
        algorithm IN ('rsa_2048', 'rsa_3072', 'rsa_4096', 'ecc_curve25519', 'ecc_p256', 'ecc_p384')
    ),
    CONSTRAINT ck_pgp_keys_type CHECK (key_type IN ('public_only', 'key_pair')),
    CONSTRAINT ck_pgp_keys_status CHECK (
        status IN ('active', 'expiring', 'retired', 'revoked', 'deleted')
    ),
    CONSTRAINT fk_pgp_keys_successor FOREIGN KEY (successor_key_id)
        REFERENCES pgp_keys (id) ON DELETE SET NULL
);

CREATE UNIQUE INDEX ix_pgp_keys_fingerprint ON pgp_keys (fingerprint) WHERE NOT is_deleted;
CREATE INDEX ix_pgp_keys_status ON pgp_keys (status) WHERE NOT is_deleted;
-- Serves: Daily key expiry scan.
CREATE INDEX ix_pgp_keys_expires ON pgp_keys (expires_at)
    WHERE status IN ('active', 'expiring') AND expires_at IS NOT NULL;

-- ============================================================
-- PUBLIC KEY SHARE TOKENS
-- ============================================================
CREATE TABLE public_key_share_tokens (
    id                  UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    token_hash          TEXT NOT NULL,           -- SHA-256 hash of the random token
    key_type            TEXT NOT NULL,            -- 'pgp' or 'ssh'
    key_id              UUID NOT NULL,
    expires_at          TIMESTAMPTZ NOT NULL,
    created_by          TEXT NOT NULL,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at          TIMESTAMPTZ,
    download_count      INT NOT NULL DEFAULT 0,

    CONSTRAINT ck_share_key_type CHECK (key_type IN ('pgp', 'ssh'))
);

-- Serves: Public share-link download: lookup by SHA-256 of the token.
CREATE UNIQUE INDEX ix_share_tokens_hash ON public_key_share_tokens (token_hash);
CREATE INDEX ix_share_tokens_key ON public_key_share_tokens (key_type, key_id);
