-- Tenants and their API keys. A key is stored only as the SHA-256 of the whole key (looked up
-- by it) and a short visible prefix for listing; the key itself is shown once, at creation.
CREATE TABLE tenants (
    id          text PRIMARY KEY,
    name        text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id            uuid PRIMARY KEY,
    tenant_id     text        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name          text,
    prefix        text        NOT NULL,
    hash          bytea       NOT NULL UNIQUE,
    scopes        text[]      NOT NULL CHECK (scopes <@ ARRAY['read', 'write', 'admin'] AND cardinality(scopes) > 0),
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz,
    revoked_at    timestamptz,
    last_used_at  timestamptz
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);
