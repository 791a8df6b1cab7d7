-- Projection bookkeeping behind the same wall as the events (see 20261126000001_tenancy.sql): a
-- role that does not own the tables reads, moves and deletes only the checkpoints and dead
-- letters of the tenant named by `eventsource.tenant`, and without the setting none. Leases are
-- advisory locks, not rows: no policy reaches them.
--
-- Each row carries its tenant, stamped by default from the transaction's setting (a
-- tenant-scoped store sets it); the owner's (unscoped) rows keep NULL, which no tenant sees.
ALTER TABLE checkpoints ADD COLUMN IF NOT EXISTS tenant_id TEXT
    DEFAULT NULLIF(current_setting('eventsource.tenant', true), '');
ALTER TABLE dead_letters ADD COLUMN IF NOT EXISTS tenant_id TEXT
    DEFAULT NULLIF(current_setting('eventsource.tenant', true), '');

-- Existing rows: a tenant-scoped store keys them `<tenant>/<projection>`, `%` and `/` in the
-- tenant escaped as `%25` and `%2F` (written raw before). A row whose name starts with the key,
-- either form, of exactly one tenant that has events is that tenant's; a name that two tenants'
-- keys could start (`a` and `a/b` for `a/b/c`) stays NULL, the owner's. The tenants are found by
-- skipping through `events_tenant_position`, one probe per tenant, not by reading the log.
CREATE TEMPORARY TABLE eventsource_migration_tenants AS
WITH RECURSIVE tenants(tenant_id) AS (
    (SELECT tenant_id FROM events WHERE tenant_id IS NOT NULL ORDER BY tenant_id LIMIT 1)
    UNION ALL
    SELECT (SELECT e.tenant_id FROM events e WHERE e.tenant_id > t.tenant_id
            ORDER BY e.tenant_id LIMIT 1)
    FROM tenants t WHERE t.tenant_id IS NOT NULL
)
SELECT tenant_id, tenant_id || '/' AS raw_key,
    replace(replace(tenant_id, '%', '%25'), '/', '%2F') || '/' AS key
FROM tenants WHERE tenant_id IS NOT NULL;

UPDATE checkpoints c SET tenant_id = o.tenant_id
FROM (
    SELECT c.name, min(t.tenant_id) AS tenant_id
    FROM checkpoints c JOIN eventsource_migration_tenants t
        ON starts_with(c.name, t.key) OR starts_with(c.name, t.raw_key)
    WHERE c.tenant_id IS NULL
    GROUP BY c.name HAVING count(*) = 1
) o
WHERE c.name = o.name;

UPDATE dead_letters d SET tenant_id = o.tenant_id
FROM (
    SELECT d.projection, min(t.tenant_id) AS tenant_id
    FROM (SELECT DISTINCT projection FROM dead_letters WHERE tenant_id IS NULL) d
    JOIN eventsource_migration_tenants t
        ON starts_with(d.projection, t.key) OR starts_with(d.projection, t.raw_key)
    GROUP BY d.projection HAVING count(*) = 1
) o
WHERE d.projection = o.projection AND d.tenant_id IS NULL;

DROP TABLE eventsource_migration_tenants;

ALTER TABLE checkpoints ENABLE ROW LEVEL SECURITY;
ALTER TABLE dead_letters ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS checkpoints_tenant ON checkpoints;
CREATE POLICY checkpoints_tenant ON checkpoints
    USING (tenant_id = NULLIF(current_setting('eventsource.tenant', true), ''))
    WITH CHECK (tenant_id = NULLIF(current_setting('eventsource.tenant', true), ''));
DROP POLICY IF EXISTS dead_letters_tenant ON dead_letters;
CREATE POLICY dead_letters_tenant ON dead_letters
    USING (tenant_id = NULLIF(current_setting('eventsource.tenant', true), ''))
    WITH CHECK (tenant_id = NULLIF(current_setting('eventsource.tenant', true), ''));
