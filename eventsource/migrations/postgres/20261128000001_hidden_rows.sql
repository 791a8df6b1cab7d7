-- What a tenant-scoped store must know of the rows row-level security hides from it, and no
-- more: whether a stream has events (so that an append to another tenant's stream is refused as
-- such, `TenantMismatch`, not as a conflict at version 0), and which of the event ids it is
-- appending are taken (so that a collision is `DuplicateEvent`, naming the caller's own id).
-- Each answers what the role could learn anyway, by inserting a row and seeing a unique
-- constraint fail, and nothing of the rows themselves.
--
-- SECURITY DEFINER, so that they read past the policies; the table named by its schema and the
-- search_path fixed, so that nothing of the caller's (a temporary table named `events`) can
-- stand in for it.
DO $migration$
BEGIN
    EXECUTE format(
        'CREATE OR REPLACE FUNCTION %1$I.eventsource_stream_taken(aggregate_type TEXT, '
        'aggregate_id TEXT) RETURNS BOOLEAN LANGUAGE sql STABLE SECURITY DEFINER '
        'SET search_path = pg_catalog, pg_temp '
        'AS $fn$ SELECT EXISTS (SELECT 1 FROM %1$I.events e '
        'WHERE e.aggregate_type = $1 AND e.aggregate_id = $2) $fn$',
        current_schema());
    -- The first of `ids`, in their order, that is stored.
    EXECUTE format(
        'CREATE OR REPLACE FUNCTION %1$I.eventsource_event_id_taken(ids UUID[]) RETURNS UUID '
        'LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp '
        'AS $fn$ SELECT i.id FROM unnest($1) WITH ORDINALITY AS i(id, ord) '
        'WHERE EXISTS (SELECT 1 FROM %1$I.events e WHERE e.event_id = i.id) '
        'ORDER BY i.ord LIMIT 1 $fn$',
        current_schema());
END
$migration$;
