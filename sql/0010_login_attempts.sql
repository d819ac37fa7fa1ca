-- Sign-in throttling: failed console logins counted per username and per client address,
-- in the database so that every web host sees the same counters and locks.

-- ============================================================
-- LOGIN THROTTLES
-- One row per username (lower-cased) or client address with recent failures. A row
-- whose window has passed and that locks nothing is pruned after each failure.
-- ============================================================
CREATE TABLE login_throttles (
    id                  UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    scope               TEXT NOT NULL,
    identifier          TEXT NOT NULL,
    failure_count       INT NOT NULL DEFAULT 0,
    window_started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_failure_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    locked_until        TIMESTAMPTZ,

    CONSTRAINT ck_login_throttles_scope CHECK (scope IN ('username', 'address')),
    CONSTRAINT ck_login_throttles_failure_count CHECK (failure_count >= 0)
);

-- Serves the lock check on every sign-in POST ("is this username or address locked?"),
-- the counter update on each failure (its ON CONFLICT target) and the reset after a
-- successful sign-in.
CREATE UNIQUE INDEX ix_login_throttles_identity ON login_throttles (scope, identifier);
-- Serves the prune after each failure: counters whose window has passed.
CREATE INDEX ix_login_throttles_last_failure ON login_throttles (last_failure_at);
