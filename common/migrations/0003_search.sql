-- Lexical retrieval and search filters. The `simple` configuration lowercases and splits words
-- without stemming or stop words, in any language, so names, numbers and codes survive as typed.
ALTER TABLE messages
    ADD COLUMN search_text tsvector GENERATED ALWAYS AS
        (to_tsvector('simple'::regconfig, coalesce(name, '') || ' ' || content)) STORED,
    ADD COLUMN archived_at timestamptz;
CREATE INDEX messages_search_text ON messages USING gin (search_text);
-- Metadata containment (`metadata @> '{"k": "v"}'`).
CREATE INDEX messages_metadata ON messages USING gin (metadata jsonb_path_ops);

-- Per-tenant settings; `ranking` overrides the deployment's ranking weights.
CREATE TABLE tenant_settings (
    tenant_id   text PRIMARY KEY,
    ranking     jsonb,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
