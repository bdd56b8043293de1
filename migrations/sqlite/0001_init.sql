-- vidgate's embedded store: jobs, their labels and submissions, the event log, and metadata.
--
-- The whole `Job` is kept as JSON (`job`), the source of truth on every read. The other columns
-- of `jobs` duplicate the fields that queries filter or sort on; both are written by the same
-- statement, so they cannot drift apart. STRICT tables make SQLite refuse values of the wrong
-- type instead of storing them silently.

CREATE TABLE jobs (
    id             TEXT    NOT NULL PRIMARY KEY,
    tenant         TEXT    NOT NULL,
    request_id     TEXT,
    fingerprint    TEXT    NOT NULL,
    status         TEXT    NOT NULL,
    model          TEXT    NOT NULL,
    create_time_ms INTEGER NOT NULL,
    next_action_ms INTEGER,
    deleted        INTEGER NOT NULL DEFAULT 0 CHECK (deleted IN (0, 1)),
    version        INTEGER NOT NULL,
    last_sequence  INTEGER NOT NULL,
    job            TEXT    NOT NULL
) STRICT;

-- Idempotency keys are per tenant; jobs without a key never collide.
CREATE UNIQUE INDEX jobs_tenant_request_id ON jobs (tenant, request_id)
    WHERE request_id IS NOT NULL;

-- Listing: a tenant's live jobs, newest first, keyset-paginated on (create_time_ms, id).
CREATE INDEX jobs_tenant_created ON jobs (tenant, create_time_ms DESC, id DESC)
    WHERE deleted = 0;

-- The dispatcher's agenda: live jobs with something to do, soonest first.
CREATE INDEX jobs_next_action ON jobs (next_action_ms, id)
    WHERE next_action_ms IS NOT NULL AND deleted = 0;

-- The full accepted request (input bytes included) lives apart from `jobs`: SQLite rewrites a
-- whole row on UPDATE, and a job is updated on every poll, so a multi-megabyte submission in
-- the same row would be rewritten dozens of times for nothing.
CREATE TABLE job_submissions (
    job_id     TEXT NOT NULL PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    submission BLOB NOT NULL
) STRICT;

-- One row per label, so a listing can require labels with EXISTS on the primary key.
CREATE TABLE job_labels (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    key    TEXT NOT NULL,
    value  TEXT NOT NULL,
    PRIMARY KEY (job_id, key)
) STRICT, WITHOUT ROWID;

-- The event log. AUTOINCREMENT (not a plain rowid) so a sequence is never handed out twice,
-- even after pruning has deleted the newest events: resume cursors rely on that. No foreign
-- key to `jobs`: the log is pruned by age on its own schedule.
CREATE TABLE events (
    sequence INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    job_id   TEXT    NOT NULL,
    tenant   TEXT    NOT NULL,
    time_ms  INTEGER NOT NULL,
    job      TEXT    NOT NULL
) STRICT;

CREATE INDEX events_job_sequence ON events (job_id, sequence);
CREATE INDEX events_tenant_sequence ON events (tenant, sequence);

-- Small named integers: `pruned_through`, the highest event sequence ever pruned.
CREATE TABLE meta (
    key   TEXT    NOT NULL PRIMARY KEY,
    value INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
