-- Long work a client may follow (deletes of conversations and tenants, retention runs): the
-- gateway records one as running before it asks the worker, the worker heartbeats and records
-- the outcome. Finished ones are pruned after 7 days.
CREATE TABLE operations (
    id          uuid PRIMARY KEY,
    kind        text        NOT NULL,
    tenant_id   text,
    status      text        NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'succeeded', 'failed')),
    result      jsonb,
    error       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);

CREATE INDEX operations_finished ON operations (finished_at) WHERE finished_at IS NOT NULL;
