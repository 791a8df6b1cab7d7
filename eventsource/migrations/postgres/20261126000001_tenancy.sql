-- Multi-tenancy. A tenant's global read (`ReadAll::tenant`, every read of a `TenantStore`) walks
-- this index in position order instead of the whole log.
CREATE INDEX IF NOT EXISTS events_tenant_position ON events (tenant_id, position);

-- Snapshots carry their stream's tenant, so that row-level security can cover them too. A
-- tenant-scoped store sets `eventsource.tenant` in each of its transactions and the default
-- stamps the row; the owner's (unscoped) snapshots keep NULL. Existing snapshots take the tenant
-- of their stream's first event.
ALTER TABLE snapshots ADD COLUMN IF NOT EXISTS tenant_id TEXT
    DEFAULT NULLIF(current_setting('eventsource.tenant', true), '');
UPDATE snapshots s SET tenant_id = (
    SELECT e.tenant_id FROM events e
    WHERE e.aggregate_type = s.aggregate_type AND e.aggregate_id = s.aggregate_id
    ORDER BY e.version LIMIT 1
) WHERE s.tenant_id IS NULL;

-- Row-level security, the second wall behind the library's tenant scope. A role that does not
-- own these tables (and is not a superuser or BYPASSRLS) sees and writes only the rows of the
-- tenant named by the transaction-local setting `eventsource.tenant`; without the setting, no
-- row at all. The owner, which runs the migrations and the unscoped store, is not subject to
-- the policies (ENABLE, not FORCE): cross-tenant reads stay possible, through it, explicitly.
ALTER TABLE events ENABLE ROW LEVEL SECURITY;
ALTER TABLE snapshots ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS events_tenant ON events;
CREATE POLICY events_tenant ON events
    USING (tenant_id = NULLIF(current_setting('eventsource.tenant', true), ''))
    WITH CHECK (tenant_id = NULLIF(current_setting('eventsource.tenant', true), ''));
DROP POLICY IF EXISTS snapshots_tenant ON snapshots;
CREATE POLICY snapshots_tenant ON snapshots
    USING (tenant_id = NULLIF(current_setting('eventsource.tenant', true), ''))
    WITH CHECK (tenant_id = NULLIF(current_setting('eventsource.tenant', true), ''));
