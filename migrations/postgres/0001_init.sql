-- vidgate's shared store on PostgreSQL: the same tables as the embedded SQLite store (jobs, their
-- labels and submissions, the event log, reader cursors, metadata), plus what several instances
-- need to share: the event sequence counter, and roles held by one instance at a time.
--
-- The whole `Job` is kept as JSON text (`job`), the source of truth on every read; the other
-- columns of `jobs` duplicate the fields that queries filter or sort on and are written by the
-- same statement. Applied by sqlx's migrator, which holds an advisory lock while it runs, so
-- several instances starting at once apply it exactly once.

CREATE TABLE jobs (
    id             TEXT    NOT NULL PRIMARY KEY,
    tenant         TEXT    NOT NULL,
    request_id     TEXT,
    fingerprint    TEXT    NOT NULL,
    status         TEXT    NOT NULL,
    model          TEXT    NOT NULL,
    create_time_ms BIGINT  NOT NULL,
    next_action_ms BIGINT,
    deleted        BOOLEAN NOT NULL DEFAULT FALSE,
    version        BIGINT  NOT NULL,
    last_sequence  BIGINT  NOT NULL,
    job            TEXT    NOT NULL,
    -- Ownership of the job's progress: the claim's token and when it ends (Unix ms).
    lease_token    TEXT,
    lease_until    BIGINT,
    -- A cancel or delete recorded while the job is owned, applied by the owner's next write.
    requested      TEXT CHECK (requested IN ('cancel', 'delete'))
);

-- Idempotency keys are per tenant; jobs without a key never collide. Creates are serialised
-- (see `event_counter`), so the lookup before the insert already sees every committed key; the
-- index is the last word if that ever changes.
CREATE UNIQUE INDEX jobs_tenant_request_id ON jobs (tenant, request_id)
    WHERE request_id IS NOT NULL;

-- Listing: a tenant's live jobs, newest first, keyset-paginated on (create_time_ms, id).
CREATE INDEX jobs_tenant_created ON jobs (tenant, create_time_ms DESC, id DESC)
    WHERE NOT deleted;

-- The dispatchers' agenda: live jobs with something to do, soonest first.
CREATE INDEX jobs_next_action ON jobs (next_action_ms, id)
    WHERE next_action_ms IS NOT NULL AND NOT deleted;

-- The earliest end of a lease (few rows: jobs being worked on).
CREATE INDEX jobs_lease_until ON jobs (lease_until) WHERE lease_until IS NOT NULL;

-- The full accepted request lives apart from `jobs`, which is rewritten on every poll.
CREATE TABLE job_submissions (
    job_id     TEXT  NOT NULL PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    submission BYTEA NOT NULL
);

-- One row per label, so a listing can require labels with EXISTS on the primary key.
CREATE TABLE job_labels (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    key    TEXT NOT NULL,
    value  TEXT NOT NULL,
    PRIMARY KEY (job_id, key)
);

-- The event log. Sequences are not a SERIAL: they come from `event_counter`, in commit order.
CREATE TABLE events (
    sequence BIGINT NOT NULL PRIMARY KEY,
    job_id   TEXT   NOT NULL,
    tenant   TEXT   NOT NULL,
    time_ms  BIGINT NOT NULL,
    job      TEXT   NOT NULL
);

CREATE INDEX events_job_sequence ON events (job_id, sequence);
CREATE INDEX events_tenant_sequence ON events (tenant, sequence);

-- The highest event sequence ever handed out, in one row. Every write batch that changes jobs
-- locks this row first (`SELECT ... FOR UPDATE`) and holds it until it commits: batches from
-- all instances are therefore applied one after the other, each numbers its events after the
-- previous batch's, and a reader can never see sequence N+1 committed while N is still open.
CREATE TABLE event_counter (
    only_row BOOLEAN NOT NULL PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    value    BIGINT  NOT NULL CHECK (value >= 0)
);
INSERT INTO event_counter (only_row, value) VALUES (TRUE, 0);

-- Small named integers: `pruned_through`, the highest event sequence ever pruned.
CREATE TABLE meta (
    key   TEXT   NOT NULL PRIMARY KEY,
    value BIGINT NOT NULL
);

-- Durable reader positions in the event log, by name (the AMQP relay's confirmed position).
CREATE TABLE cursors (
    name     TEXT   NOT NULL PRIMARY KEY,
    sequence BIGINT NOT NULL CHECK (sequence >= 0)
);

-- Roles one instance holds at a time (the AMQP relay): the holder's token and when its hold
-- ends unless renewed (Unix ms).
CREATE TABLE roles (
    name     TEXT   NOT NULL PRIMARY KEY,
    holder   TEXT   NOT NULL,
    until_ms BIGINT NOT NULL
);
