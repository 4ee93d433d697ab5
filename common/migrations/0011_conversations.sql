-- Conversations and usage counters, kept current by triggers on `messages` in the same
-- transaction as every insert, delete and importance change, whatever path made it (ingest,
-- import, edits, retention, conversation and tenant deletes). So listing a tenant's
-- conversations, one conversation's stats and usage analytics read a few rows instead of
-- counting messages.
--
-- `conversations`: a row per (tenant, conversation) that has messages or was created by a client.
CREATE TABLE conversations (
    tenant_id          text             NOT NULL,
    conversation_id    text             NOT NULL,
    title              text,
    metadata           jsonb            NOT NULL DEFAULT '{}',
    archived           boolean          NOT NULL DEFAULT false,
    -- Created or edited by a client: kept when its last message goes.
    explicit           boolean          NOT NULL DEFAULT false,
    message_count      bigint           NOT NULL DEFAULT 0,
    user_messages      bigint           NOT NULL DEFAULT 0,
    assistant_messages bigint           NOT NULL DEFAULT 0,
    system_messages    bigint           NOT NULL DEFAULT 0,
    importance_sum     double precision NOT NULL DEFAULT 0,
    first_message_at   timestamptz,
    last_message_at    timestamptz,
    created_at         timestamptz      NOT NULL DEFAULT now(),
    -- The last change: a message stored or deleted, or the client's edit.
    updated_at         timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, conversation_id)
);
-- Listing: a tenant's conversations, most recently active first.
CREATE INDEX conversations_tenant_updated ON conversations (tenant_id, updated_at DESC, conversation_id);
-- A tenant's conversations by their last message (`/v1/analytics/top-conversations`).
CREATE INDEX conversations_tenant_last ON conversations (tenant_id, last_message_at DESC NULLS LAST);

-- Messages per tenant, day (UTC, of `created_at`) and role: trends and recent counts.
CREATE TABLE message_days (
    tenant_id text   NOT NULL,
    day       date   NOT NULL,
    role      text   NOT NULL,
    messages  bigint NOT NULL,
    PRIMARY KEY (tenant_id, day, role)
);

-- The messages not embedded, per tenant and status (few, when the pipeline keeps up).
CREATE INDEX messages_tenant_unembedded ON messages (tenant_id, status) WHERE status <> 'embedded';

-- Rows are locked in key order (ORDER BY), so two writers touching the same conversations wait
-- for each other instead of deadlocking.
CREATE FUNCTION conversations_count_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO conversations AS c (tenant_id, conversation_id, message_count, user_messages,
                                    assistant_messages, system_messages, importance_sum,
                                    first_message_at, last_message_at)
    SELECT tenant_id, conversation_id, count(*),
           count(*) FILTER (WHERE role = 'user'), count(*) FILTER (WHERE role = 'assistant'),
           count(*) FILTER (WHERE role = 'system'), sum(importance), min(created_at), max(created_at)
    FROM inserted
    GROUP BY tenant_id, conversation_id
    ORDER BY tenant_id, conversation_id
    ON CONFLICT (tenant_id, conversation_id) DO UPDATE SET
        message_count = c.message_count + excluded.message_count,
        user_messages = c.user_messages + excluded.user_messages,
        assistant_messages = c.assistant_messages + excluded.assistant_messages,
        system_messages = c.system_messages + excluded.system_messages,
        importance_sum = c.importance_sum + excluded.importance_sum,
        first_message_at = least(c.first_message_at, excluded.first_message_at),
        last_message_at = greatest(c.last_message_at, excluded.last_message_at),
        updated_at = now();
    INSERT INTO message_days AS d (tenant_id, day, role, messages)
    SELECT tenant_id, (created_at AT TIME ZONE 'UTC')::date, role, count(*)
    FROM inserted
    GROUP BY 1, 2, 3
    ORDER BY 1, 2, 3
    ON CONFLICT (tenant_id, day, role) DO UPDATE SET messages = d.messages + excluded.messages;
    RETURN NULL;
END $$;

CREATE FUNCTION conversations_count_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    WITH gone AS (
        SELECT tenant_id, conversation_id, count(*) AS n,
               count(*) FILTER (WHERE role = 'user') AS users,
               count(*) FILTER (WHERE role = 'assistant') AS assistants,
               count(*) FILTER (WHERE role = 'system') AS systems,
               sum(importance) AS importance
        FROM deleted GROUP BY tenant_id, conversation_id
    ),
    locked AS (
        SELECT c.tenant_id, c.conversation_id FROM conversations c
        JOIN gone g USING (tenant_id, conversation_id)
        ORDER BY c.tenant_id, c.conversation_id
        FOR UPDATE OF c
    )
    UPDATE conversations c SET
        message_count = c.message_count - g.n,
        user_messages = c.user_messages - g.users,
        assistant_messages = c.assistant_messages - g.assistants,
        system_messages = c.system_messages - g.systems,
        importance_sum = c.importance_sum - g.importance,
        -- The first and last of what is left, read from the (tenant, conversation, created_at) index.
        first_message_at = (SELECT min(m.created_at) FROM messages m
                            WHERE m.tenant_id = c.tenant_id AND m.conversation_id = c.conversation_id),
        last_message_at = (SELECT max(m.created_at) FROM messages m
                           WHERE m.tenant_id = c.tenant_id AND m.conversation_id = c.conversation_id),
        updated_at = now()
    FROM gone g, locked l
    WHERE c.tenant_id = g.tenant_id AND c.conversation_id = g.conversation_id
      AND l.tenant_id = g.tenant_id AND l.conversation_id = g.conversation_id;
    -- A conversation no client made ends with its last message.
    DELETE FROM conversations c USING (SELECT DISTINCT tenant_id, conversation_id FROM deleted) d
    WHERE c.tenant_id = d.tenant_id AND c.conversation_id = d.conversation_id
      AND c.message_count <= 0 AND NOT c.explicit;

    -- The days' counts likewise; a day left without messages of a role goes.
    WITH gone AS (
        SELECT tenant_id, (created_at AT TIME ZONE 'UTC')::date AS day, role, count(*) AS n
        FROM deleted GROUP BY 1, 2, 3
    ),
    locked AS (
        SELECT d.tenant_id, d.day, d.role FROM message_days d
        JOIN gone g USING (tenant_id, day, role)
        ORDER BY d.tenant_id, d.day, d.role
        FOR UPDATE OF d
    )
    UPDATE message_days d SET messages = d.messages - g.n
    FROM gone g, locked l
    WHERE d.tenant_id = g.tenant_id AND d.day = g.day AND d.role = g.role
      AND l.tenant_id = g.tenant_id AND l.day = g.day AND l.role = g.role;
    DELETE FROM message_days d USING (SELECT DISTINCT tenant_id FROM deleted) t
    WHERE d.tenant_id = t.tenant_id AND d.messages <= 0;
    RETURN NULL;
END $$;

-- Importance changes only with a client's edit, one message at a time: a row trigger, which
-- (unlike a statement trigger with transition tables) can be limited to that column, so the
-- status updates of every embedded batch do not pay for it.
CREATE FUNCTION conversations_count_reweighed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE conversations SET importance_sum = importance_sum + (NEW.importance - OLD.importance)
    WHERE tenant_id = NEW.tenant_id AND conversation_id = NEW.conversation_id;
    RETURN NULL;
END $$;

CREATE TRIGGER messages_count_inserted AFTER INSERT ON messages
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION conversations_count_inserted();
CREATE TRIGGER messages_count_deleted AFTER DELETE ON messages
    REFERENCING OLD TABLE AS deleted FOR EACH STATEMENT EXECUTE FUNCTION conversations_count_deleted();
CREATE TRIGGER messages_count_reweighed AFTER UPDATE OF importance ON messages
    FOR EACH ROW WHEN (OLD.importance IS DISTINCT FROM NEW.importance)
    EXECUTE FUNCTION conversations_count_reweighed();

-- The conversations of the messages already stored.
INSERT INTO conversations (tenant_id, conversation_id, message_count, user_messages, assistant_messages,
                           system_messages, importance_sum, first_message_at, last_message_at, updated_at)
SELECT tenant_id, conversation_id, count(*),
       count(*) FILTER (WHERE role = 'user'), count(*) FILTER (WHERE role = 'assistant'),
       count(*) FILTER (WHERE role = 'system'), sum(importance), min(created_at), max(created_at),
       max(stored_at)
FROM messages
GROUP BY tenant_id, conversation_id;
INSERT INTO message_days (tenant_id, day, role, messages)
SELECT tenant_id, (created_at AT TIME ZONE 'UTC')::date, role, count(*)
FROM messages
GROUP BY 1, 2, 3;

-- Statistics now, so the first lists walk the index rather than sort every conversation.
ANALYZE conversations;
ANALYZE message_days;
