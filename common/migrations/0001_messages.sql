-- Messages, embedding spaces. Vectors live in one table per space (created by the store when a
-- space is registered), so each has a fixed dimension and its own HNSW index.
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE messages (
    id                  uuid PRIMARY KEY,
    tenant_id           text        NOT NULL,
    conversation_id     text        NOT NULL,
    role                text        NOT NULL CHECK (role IN ('user', 'assistant', 'system')),
    name                text,
    content             text        NOT NULL,
    metadata            jsonb       NOT NULL DEFAULT '{}'::jsonb,
    importance          double precision NOT NULL CHECK (importance BETWEEN 0 AND 1),
    importance_override double precision CHECK (importance_override BETWEEN 0 AND 1),
    pinned              boolean     NOT NULL DEFAULT false,
    status              text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'embedded', 'failed')),
    failure_reason      text,
    created_at          timestamptz NOT NULL,
    stored_at           timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX messages_tenant_conversation_created ON messages (tenant_id, conversation_id, created_at);
CREATE INDEX messages_tenant_created ON messages (tenant_id, created_at);
CREATE INDEX messages_not_embedded ON messages (stored_at) WHERE status <> 'embedded';

CREATE TABLE embedding_spaces (
    id          serial PRIMARY KEY,
    provider    text        NOT NULL,
    model       text        NOT NULL,
    dimensions  integer     NOT NULL CHECK (dimensions BETWEEN 1 AND 2000),
    active      boolean     NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (provider, model, dimensions)
);

-- At most one active space: search compares only vectors of the active one.
CREATE UNIQUE INDEX embedding_spaces_one_active ON embedding_spaces (active) WHERE active;
