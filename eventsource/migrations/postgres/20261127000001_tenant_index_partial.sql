-- The tenant index holds only tenants' events: a store without tenants (most) no longer pays an
-- index entry per event. Tenant reads filter on `tenant_id = $1`, which implies
-- `tenant_id IS NOT NULL` (the operator is strict), so they still walk it. Rebuilding the index
-- locks writes to `events` for as long as it takes to index the tenants' events.
DROP INDEX IF EXISTS events_tenant_position;
CREATE INDEX events_tenant_position ON events (tenant_id, position) WHERE tenant_id IS NOT NULL;
