-- Snapshots: per stream, the newest state saved by a repository, so that loading reads only the
-- events after `version`. Never a source of truth: a snapshot of another `state_version`, or one
-- that does not decode, is ignored and the state rebuilt from the events.
CREATE TABLE IF NOT EXISTS snapshots (
    aggregate_type  TEXT    NOT NULL,
    aggregate_id    TEXT    NOT NULL,
    version         INTEGER NOT NULL, -- the stream version the state reflects
    state_version   INTEGER NOT NULL, -- the schema version of the state
    state           TEXT    NOT NULL, -- the state (JSON)
    taken_at        INTEGER NOT NULL, -- microseconds since 1970-01-01 UTC
    PRIMARY KEY (aggregate_type, aggregate_id)
) WITHOUT ROWID;
