-- Message ids are unique per tenant, not globally: a message is (tenant_id, id) in every table,
-- so one tenant's export imports into another, and no tenant can claim or probe another's ids.

-- Everything that referenced messages (id) lets go first.
ALTER TABLE embedding_failures ADD COLUMN tenant_id text;
UPDATE embedding_failures f SET tenant_id = m.tenant_id FROM messages m WHERE m.id = f.message_id;
DELETE FROM embedding_failures WHERE tenant_id IS NULL;
ALTER TABLE embedding_failures
    ALTER COLUMN tenant_id SET NOT NULL,
    DROP CONSTRAINT embedding_failures_message_id_fkey,
    DROP CONSTRAINT embedding_failures_pkey;
DROP INDEX embedding_failures_message;

-- The vector tables (one per space, created by the store) key their rows the same way.
DO $$
DECLARE
    space record;
BEGIN
    FOR space IN SELECT id FROM embedding_spaces LOOP
        IF to_regclass(format('message_vectors_%s', space.id)) IS NOT NULL THEN
            EXECUTE format('ALTER TABLE message_vectors_%1$s
                                DROP CONSTRAINT message_vectors_%1$s_message_id_fkey,
                                DROP CONSTRAINT message_vectors_%1$s_pkey', space.id);
        END IF;
    END LOOP;
END $$;

ALTER TABLE messages DROP CONSTRAINT messages_pkey, ADD PRIMARY KEY (tenant_id, id);

ALTER TABLE embedding_failures
    ADD PRIMARY KEY (space_id, tenant_id, message_id),
    ADD FOREIGN KEY (tenant_id, message_id) REFERENCES messages (tenant_id, id) ON DELETE CASCADE;
CREATE INDEX embedding_failures_message ON embedding_failures (tenant_id, message_id);

DO $$
DECLARE
    space record;
BEGIN
    FOR space IN SELECT id FROM embedding_spaces LOOP
        IF to_regclass(format('message_vectors_%s', space.id)) IS NOT NULL THEN
            EXECUTE format('ALTER TABLE message_vectors_%1$s
                                ADD PRIMARY KEY (tenant_id, message_id),
                                ADD FOREIGN KEY (tenant_id, message_id)
                                    REFERENCES messages (tenant_id, id) ON DELETE CASCADE', space.id);
            -- The primary key leads with the tenant: it serves the per-tenant scans.
            EXECUTE format('DROP INDEX IF EXISTS message_vectors_%s_tenant', space.id);
        END IF;
    END LOOP;
END $$;

-- A backfill walks messages in (tenant_id, id) order, the primary key's; an id alone no longer
-- says where it stopped, so it starts over (rows it covered already are skipped at once).
ALTER TABLE embedding_spaces ADD COLUMN backfill_cursor_tenant text;
UPDATE embedding_spaces SET backfill_cursor = NULL;
