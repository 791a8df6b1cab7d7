-- Projections: where each one has got to in the global order, and the events it gave up on.
CREATE TABLE IF NOT EXISTS checkpoints (
    name        TEXT    NOT NULL PRIMARY KEY, -- the projection's name
    position    INTEGER NOT NULL,             -- every event up to here is applied
    updated_at  INTEGER NOT NULL              -- microseconds since 1970-01-01 UTC
) STRICT, WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS dead_letters (
    projection      TEXT    NOT NULL,
    position        INTEGER NOT NULL, -- the event's position in the global order
    event_id        BLOB,             -- NULL when the stored row could not be read at all
    aggregate_type  TEXT    NOT NULL,
    aggregate_id    TEXT    NOT NULL,
    version         INTEGER,
    event_type      TEXT,
    error           TEXT    NOT NULL, -- why the last attempt failed
    attempts        INTEGER NOT NULL,
    failed_at       INTEGER NOT NULL, -- microseconds since 1970-01-01 UTC
    PRIMARY KEY (projection, position)
) STRICT, WITHOUT ROWID;
