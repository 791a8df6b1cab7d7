-- Projections: where each one has got to in the global order, and the events it gave up on.
CREATE TABLE IF NOT EXISTS checkpoints (
    name        TEXT        NOT NULL PRIMARY KEY, -- the projection's name
    position    BIGINT      NOT NULL,             -- every event up to here is applied
    updated_at  TIMESTAMPTZ NOT NULL
);

CREATE TABLE IF NOT EXISTS dead_letters (
    projection      TEXT        NOT NULL,
    position        BIGINT      NOT NULL, -- the event's position in the global order
    event_id        UUID,                 -- NULL when the stored row could not be read at all
    aggregate_type  TEXT        NOT NULL,
    aggregate_id    TEXT        NOT NULL,
    version         BIGINT,
    event_type      TEXT,
    error           TEXT        NOT NULL, -- why the last attempt failed
    attempts        INTEGER     NOT NULL,
    failed_at       TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (projection, position)
);
