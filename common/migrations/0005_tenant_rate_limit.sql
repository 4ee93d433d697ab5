-- A tenant's own rate limit ("1000/minute"), set by the operator; null: the deployment's.
ALTER TABLE tenant_settings ADD COLUMN rate_limit text;
