-- Lifecycle: edits and real deletes.
-- `revision` counts content edits. A vector is stored only for the revision it was computed
-- from, so an embedding that races an edit never lands on the new text.
ALTER TABLE messages ADD COLUMN revision integer NOT NULL DEFAULT 0;

-- A tombstone stands for a deleted message, conversation or tenant. Ingest events the stream had
-- stored when the delete came (sequence at most `before_sequence`, stored no later than
-- `before_at` by the NATS server's clock, so a recreated stream's new events do not match) are
-- dropped, so they never bring deleted data back; anything published later is stored as usual.
CREATE TABLE tombstones (
    tenant_id        text        NOT NULL,
    kind             text        NOT NULL CHECK (kind IN ('message', 'conversation', 'tenant')),
    -- The message or conversation id; '' for the whole tenant.
    key              text        NOT NULL,
    before_sequence  bigint      NOT NULL,
    before_at        timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, kind, key)
);
CREATE INDEX tombstones_created ON tombstones (created_at);
-- Deletes take a tenant's (or a conversation's) rows stored before their tombstone.
CREATE INDEX messages_tenant_stored ON messages (tenant_id, stored_at);
