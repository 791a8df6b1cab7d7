-- The event log. `position` (the rowid) is the global order: SQLite has one writer at a time,
-- so positions are assigned in commit order and a reader never sees a later position first.
CREATE TABLE IF NOT EXISTS events (
    position        INTEGER PRIMARY KEY,
    event_id        BLOB    NOT NULL,
    aggregate_type  TEXT    NOT NULL,
    aggregate_id    TEXT    NOT NULL,
    version         INTEGER NOT NULL,
    event_type      TEXT    NOT NULL,
    schema_version  INTEGER NOT NULL,
    occurred_at     INTEGER NOT NULL, -- microseconds since 1970-01-01 UTC
    tenant_id       TEXT,
    actor_id        TEXT,
    correlation_id  BLOB,
    causation_id    BLOB,
    metadata        TEXT,             -- free-form metadata (JSON object), NULL when empty
    payload         TEXT    NOT NULL, -- the event (JSON)
    CONSTRAINT events_event_id UNIQUE (event_id),
    -- Optimistic concurrency, enforced by the database: one event per stream version.
    -- Also the index of stream reads.
    CONSTRAINT events_stream_version UNIQUE (aggregate_type, aggregate_id, version)
);
