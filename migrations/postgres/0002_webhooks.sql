-- Webhooks (issue #16). An endpoint is a tenant's URL with filters and a signing secret (and,
-- during a rotation, the previous one until `previous_until_ms`); a callback is an endpoint of
-- kind 'callback' that one job named at its creation (`job_id`). A delivery is one event for
-- one endpoint, keyed by its `webhook-id` (stable per event and endpoint): pending until it is
-- delivered or has failed for good; claimed by a sender with a lease (token and end) so that
-- one instance sends it at a time. Each attempt is recorded (status code or error).

CREATE TABLE webhook_endpoints (
    id                TEXT    NOT NULL PRIMARY KEY,
    tenant            TEXT    NOT NULL,
    kind              TEXT    NOT NULL CHECK (kind IN ('endpoint', 'callback')),
    url               TEXT    NOT NULL,
    description       TEXT    NOT NULL,
    event_types       TEXT    NOT NULL,
    model             TEXT,
    labels            TEXT    NOT NULL,
    job_id            TEXT,
    secret            TEXT    NOT NULL,
    previous_secret   TEXT,
    previous_until_ms BIGINT,
    disabled_reason   TEXT,
    disabled_ms       BIGINT,
    failing_since_ms  BIGINT,
    create_time_ms    BIGINT NOT NULL,
    update_time_ms    BIGINT NOT NULL,
    version           BIGINT NOT NULL
);

CREATE INDEX webhook_endpoints_tenant ON webhook_endpoints (tenant, kind, id);

CREATE TABLE webhook_deliveries (
    id              TEXT    NOT NULL PRIMARY KEY,
    endpoint_id     TEXT    NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    sequence        BIGINT NOT NULL,
    event_type      TEXT    NOT NULL,
    job_id          TEXT    NOT NULL,
    event_time_ms   BIGINT NOT NULL,
    body            TEXT,
    state           TEXT    NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        BIGINT NOT NULL,
    next_attempt_ms BIGINT NOT NULL,
    lease_token     TEXT,
    lease_until_ms  BIGINT NOT NULL,
    last_status     BIGINT,
    last_error      TEXT,
    create_time_ms  BIGINT NOT NULL,
    update_time_ms  BIGINT NOT NULL
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_ms) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, create_time_ms, id);
CREATE INDEX webhook_deliveries_finished ON webhook_deliveries (update_time_ms) WHERE state <> 'pending';

CREATE TABLE webhook_attempts (
    delivery_id TEXT    NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt     BIGINT NOT NULL,
    time_ms     BIGINT NOT NULL,
    status      BIGINT,
    error       TEXT,
    duration_ms BIGINT NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);

-- The secret that signs a tenant's per-job callbacks, made on first use.
CREATE TABLE webhook_tenant_secrets (
    tenant TEXT NOT NULL PRIMARY KEY,
    secret TEXT NOT NULL
);
