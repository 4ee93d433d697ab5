-- Failed embeddings and backfills. A provider's refusal of a message is recorded per space, so a
-- backfill into a new space keeps its own failures; `messages.status` and `failure_reason`
-- describe the active space.
ALTER TABLE messages ADD COLUMN embed_failures integer NOT NULL DEFAULT 0;

CREATE TABLE embedding_failures (
    space_id    integer     NOT NULL REFERENCES embedding_spaces (id) ON DELETE CASCADE,
    message_id  uuid        NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    reason      text        NOT NULL,
    failed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (space_id, message_id)
);
CREATE INDEX embedding_failures_message ON embedding_failures (message_id);

-- A backfill walks messages in id order; the cursor is the last id it finished, so a stopped
-- backfill resumes where it was.
ALTER TABLE embedding_spaces
    ADD COLUMN backfill_cursor uuid,
    ADD COLUMN backfilled      bigint NOT NULL DEFAULT 0,
    ADD COLUMN activated_at    timestamptz;
UPDATE embedding_spaces SET activated_at = created_at WHERE active;

-- The sweeper looks for messages left unembedded, oldest change first.
DROP INDEX messages_not_embedded;
CREATE INDEX messages_unembedded ON messages (updated_at) WHERE status <> 'embedded';
