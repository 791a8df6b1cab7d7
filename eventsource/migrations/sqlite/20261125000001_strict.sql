-- Rebuild both tables as STRICT tables: a column accepts only values of its declared type, so a
-- version stored as text or a payload stored as a BLOB cannot get in by hand, and metadata must be
-- JSON. The rows are copied as they are; positions (the rowid) are kept.
CREATE TABLE events_strict (
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
    CONSTRAINT events_stream_version UNIQUE (aggregate_type, aggregate_id, version),
    CONSTRAINT events_metadata_json CHECK (metadata IS NULL OR json_valid(metadata))
) STRICT;
INSERT INTO events_strict SELECT position, event_id, aggregate_type, aggregate_id, version,
    event_type, schema_version, occurred_at, tenant_id, actor_id, correlation_id, causation_id,
    metadata, payload FROM events ORDER BY position;
DROP TABLE events;
ALTER TABLE events_strict RENAME TO events;

CREATE TABLE snapshots_strict (
    aggregate_type  TEXT    NOT NULL,
    aggregate_id    TEXT    NOT NULL,
    version         INTEGER NOT NULL, -- the stream version the state reflects
    state_version   INTEGER NOT NULL, -- the schema version of the state
    state           TEXT    NOT NULL, -- the state (JSON)
    taken_at        INTEGER NOT NULL, -- microseconds since 1970-01-01 UTC
    PRIMARY KEY (aggregate_type, aggregate_id)
) STRICT, WITHOUT ROWID;
INSERT INTO snapshots_strict SELECT aggregate_type, aggregate_id, version, state_version, state,
    taken_at FROM snapshots;
DROP TABLE snapshots;
ALTER TABLE snapshots_strict RENAME TO snapshots;
