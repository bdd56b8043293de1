-- Durable reader positions in the event log, by name. The AMQP outbox relay keeps here the
-- highest sequence below which every event is confirmed by the broker, so that after a restart
-- it continues from there: nothing lost, nothing skipped (at-least-once, duplicates possible).

CREATE TABLE cursors (
    name     TEXT    NOT NULL PRIMARY KEY,
    sequence INTEGER NOT NULL CHECK (sequence >= 0)
) STRICT, WITHOUT ROWID;
