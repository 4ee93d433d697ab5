-- A tenant's own retention policy; null: the deployment's.
ALTER TABLE tenant_settings ADD COLUMN retention jsonb;
