-- Usage analytics without counting messages: messages per tenant, day (UTC, of `created_at`) and
-- role, kept by the same triggers as `conversations`; and the messages not embedded, per tenant
-- and status, read from a partial index (few, when the pipeline keeps up).
CREATE TABLE message_days (
    tenant_id text   NOT NULL,
    day       date   NOT NULL,
    role      text   NOT NULL,
    messages  bigint NOT NULL,
    PRIMARY KEY (tenant_id, day, role)
);

CREATE INDEX messages_tenant_unembedded ON messages (tenant_id, status) WHERE status <> 'embedded';

CREATE OR REPLACE FUNCTION conversations_count_inserted() RETURNS trigger
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

CREATE OR REPLACE FUNCTION conversations_count_deleted() RETURNS trigger
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
        first_message_at = (SELECT min(m.created_at) FROM messages m
                            WHERE m.tenant_id = c.tenant_id AND m.conversation_id = c.conversation_id),
        last_message_at = (SELECT max(m.created_at) FROM messages m
                           WHERE m.tenant_id = c.tenant_id AND m.conversation_id = c.conversation_id),
        updated_at = now()
    FROM gone g, locked l
    WHERE c.tenant_id = g.tenant_id AND c.conversation_id = g.conversation_id
      AND l.tenant_id = g.tenant_id AND l.conversation_id = g.conversation_id;
    DELETE FROM conversations c USING (SELECT DISTINCT tenant_id, conversation_id FROM deleted) d
    WHERE c.tenant_id = d.tenant_id AND c.conversation_id = d.conversation_id
      AND c.message_count <= 0 AND NOT c.explicit;

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

INSERT INTO message_days (tenant_id, day, role, messages)
SELECT tenant_id, (created_at AT TIME ZONE 'UTC')::date, role, count(*)
FROM messages
GROUP BY 1, 2, 3;

ANALYZE message_days;

-- A tenant's conversations by their last message (`/v1/analytics/top-conversations`).
CREATE INDEX conversations_tenant_last ON conversations (tenant_id, last_message_at DESC NULLS LAST);
