-- Multi-tenancy. A tenant's global read (`ReadAll::tenant`, every read of a `TenantStore`) walks
-- this index in position order instead of the whole log. (`position` is the rowid: the index
-- holds it anyway, naming it makes the order explicit.)
CREATE INDEX IF NOT EXISTS events_tenant_position ON events (tenant_id, position);
