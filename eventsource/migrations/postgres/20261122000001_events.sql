-- The event log.
--
-- `position` is the global order: the writing transaction's id (xid8) * 65536 + the event's
-- index in its append. Positions therefore sort exactly as transaction ids do, and a reader that
-- only reads below pg_snapshot_xmin(pg_current_snapshot()) * 65536 reads only events of finished
-- transactions, never missing one that commits later with a lower position. See the README's
-- design notes.
CREATE TABLE IF NOT EXISTS events (
    position        BIGINT      NOT NULL,
    event_id        UUID        NOT NULL,
    aggregate_type  TEXT        NOT NULL,
    aggregate_id    TEXT        NOT NULL,
    version         BIGINT      NOT NULL,
    event_type      TEXT        NOT NULL,
    schema_version  INTEGER     NOT NULL,
    occurred_at     TIMESTAMPTZ NOT NULL,
    tenant_id       TEXT,
    actor_id        TEXT,
    correlation_id  UUID,
    causation_id    UUID,
    metadata        JSONB,               -- free-form metadata, NULL when empty
    payload         JSONB       NOT NULL,
    CONSTRAINT events_pkey PRIMARY KEY (position),
    CONSTRAINT events_event_id UNIQUE (event_id),
    -- Optimistic concurrency, enforced by the database: one event per stream version.
    -- Also the index of stream reads.
    CONSTRAINT events_stream_version UNIQUE (aggregate_type, aggregate_id, version)
);
