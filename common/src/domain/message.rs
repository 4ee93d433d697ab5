//! The message a client submits, its validation, and the message as the API shows it.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::metadata::check_metadata;
use super::{
    CONTENT_MAX, CONVERSATION_ID_MAX, CREATED_AT_SKEW_SECS, ConversationId, FieldError, MessageId, MessageKey,
    MessageStatus, NAME_MAX, QUERY_MAX, Role, TENANT_ID_MAX, TOP_K_MAX, TenantId, ValidationError, check_id,
};

/// A message as a client submits it (REST body or the payload of a direct NATS publish).
/// Fields arrive loosely typed so that every problem can be reported at once, by field.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageInput {
    /// Your own id for the message (a UUID). Sending one makes retries safe: the same id is stored
    /// once. Omit it and the gateway mints a UUIDv7.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = Uuid)]
    pub message_id: Option<String>,
    /// 1–64 characters of `[A-Za-z0-9_.-]`.
    #[serde(default)]
    pub tenant_id: String,
    /// 1–128 characters of `[A-Za-z0-9_.-]`.
    #[serde(default)]
    pub conversation_id: String,
    /// `user`, `assistant` or `system`.
    #[serde(default)]
    #[schema(example = "user")]
    pub role: String,
    /// Optional speaker name (1–128 characters), embedded as `"{name}: {content}"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// 1–100,000 characters, not only whitespace.
    #[serde(default)]
    pub content: String,
    /// A JSON object: depth ≤ 4, ≤ 50 keys per object and items per array, strings ≤ 2,048
    /// characters. `null` means `{}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// 0–1. When given, it is the message's importance. `importance`, the name the original
    /// service's documentation gave it, is read as the same field.
    #[serde(default, alias = "importance", skip_serializing_if = "Option::is_none")]
    pub importance_override: Option<f64>,
    /// Pinned messages rank with importance 1.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned: Option<bool>,
    /// When the message was written; defaults to the time it is accepted. At most 5 minutes ahead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<DateTime<Utc>>,
    /// Stores the message archived as of this time (an import of an export keeps archive
    /// state). Omit it for a live message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archived_at: Option<DateTime<Utc>>,
}

/// A message that passed validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewMessage {
    pub message_id: MessageId,
    pub tenant_id: TenantId,
    pub conversation_id: ConversationId,
    pub role: Role,
    pub name: Option<String>,
    pub content: String,
    pub metadata: Map<String, Value>,
    pub importance_override: Option<f64>,
    pub pinned: bool,
    pub created_at: DateTime<Utc>,
    pub archived_at: Option<DateTime<Utc>>,
}

impl NewMessage {
    /// What names this message: its tenant and id.
    pub fn key(&self) -> MessageKey {
        MessageKey::new(self.tenant_id.clone(), self.message_id)
    }

    /// The text the embedding model sees: the speaker's name leads, because questions name people.
    pub fn embedding_text(&self) -> String {
        embedding_text(self.name.as_deref(), &self.content)
    }
}

impl From<&NewMessage> for MessageInput {
    /// The input that validates back to exactly this message (id and timestamp included).
    fn from(m: &NewMessage) -> Self {
        Self {
            message_id: Some(m.message_id.to_string()),
            tenant_id: m.tenant_id.to_string(),
            conversation_id: m.conversation_id.to_string(),
            role: m.role.as_str().to_owned(),
            name: m.name.clone(),
            content: m.content.clone(),
            metadata: Some(Value::Object(m.metadata.clone())),
            importance_override: m.importance_override,
            pinned: Some(m.pinned),
            created_at: Some(m.created_at),
            archived_at: m.archived_at,
        }
    }
}

/// Checks search parameters shared by the gateway and the searcher.
pub fn check_search(query: &str, top_k: u32) -> Result<(), ValidationError> {
    let mut errors = Vec::new();
    let len = query.chars().count();
    if query.contains('\0') {
        // Postgres takes no text with NUL characters.
        errors.push(FieldError::new("query", "invalid_characters", "must not contain NUL characters"));
    } else if query.trim().is_empty() {
        errors.push(FieldError::new("query", "empty", "must not be empty or only whitespace"));
    } else if len > QUERY_MAX {
        errors.push(FieldError::new("query", "too_long", format!("must be at most {QUERY_MAX} characters, got {len}")));
    }
    if !(1..=TOP_K_MAX).contains(&top_k) {
        errors.push(FieldError::new("top_k", "out_of_range", format!("must be between 1 and {TOP_K_MAX}")));
    }
    if errors.is_empty() { Ok(()) } else { Err(ValidationError(errors)) }
}

/// `"{name}: {content}"` when a speaker name is given, else the content.
pub fn embedding_text(name: Option<&str>, content: &str) -> String {
    match name {
        Some(name) => format!("{name}: {content}"),
        None => content.to_owned(),
    }
}

impl MessageInput {
    /// Validates every field and returns the typed message, or every problem found.
    /// `now` stamps `created_at` when absent; `mint` supplies the id when absent.
    pub fn validate(self, now: DateTime<Utc>, mint: impl FnOnce() -> MessageId) -> Result<NewMessage, ValidationError> {
        let mut errors = Vec::new();
        let message_id = match self.message_id.as_deref() {
            None => Some(mint()),
            Some(raw) => match MessageId::parse(raw) {
                Ok(id) if id.0.is_nil() || id.0.is_max() => {
                    errors.push(FieldError::new("message_id", "invalid_uuid", "must not be the nil or max UUID"));
                    None
                }
                Ok(id) => Some(id),
                Err(e) => {
                    errors.extend(e.0);
                    None
                }
            },
        };
        check_id("tenant_id", &self.tenant_id, TENANT_ID_MAX, &mut errors);
        check_id("conversation_id", &self.conversation_id, CONVERSATION_ID_MAX, &mut errors);
        let role = Role::parse(&self.role);
        if role.is_none() {
            errors.push(FieldError::new("role", "invalid_role", "must be one of user, assistant, system"));
        }
        if let Some(name) = &self.name {
            check_name("name", name, &mut errors);
        }
        check_content(&self.content, &mut errors);
        let metadata = metadata_map(self.metadata, &mut errors);
        check_override(self.importance_override, &mut errors);
        if let Some(at) = self.created_at
            && at > now + Duration::seconds(CREATED_AT_SKEW_SECS)
        {
            errors.push(FieldError::new("created_at", "in_future", "must not lie more than 5 minutes in the future"));
        }
        if let Some(at) = self.archived_at
            && at > now + Duration::seconds(CREATED_AT_SKEW_SECS)
        {
            errors.push(FieldError::new("archived_at", "in_future", "must not lie more than 5 minutes in the future"));
        }
        match (message_id, role) {
            (Some(message_id), Some(role)) if errors.is_empty() => Ok(NewMessage {
                message_id,
                tenant_id: TenantId(self.tenant_id),
                conversation_id: ConversationId(self.conversation_id),
                role,
                name: self.name,
                content: self.content,
                metadata,
                importance_override: self.importance_override,
                pinned: self.pinned.unwrap_or(false),
                created_at: self.created_at.unwrap_or(now),
                archived_at: self.archived_at,
            }),
            _ => Err(ValidationError(errors)),
        }
    }
}

/// A short human label (a speaker's, a tenant's or a key's name): 1–[`NAME_MAX`] characters, no
/// control characters.
pub fn check_name(field: &str, name: &str, errors: &mut Vec<FieldError>) {
    let len = name.chars().count();
    if name.trim().is_empty() {
        errors.push(FieldError::new(field, "empty", "must not be empty or only whitespace"));
    } else if len > NAME_MAX {
        errors.push(FieldError::new(field, "too_long", format!("must be at most {NAME_MAX} characters, got {len}")));
    } else if name.chars().any(char::is_control) {
        errors.push(FieldError::new(field, "invalid_characters", "must not contain control characters"));
    }
}

pub(super) fn check_content(content: &str, errors: &mut Vec<FieldError>) {
    let len = content.chars().count();
    if content.contains('\0') {
        errors.push(FieldError::new("content", "invalid_characters", "must not contain NUL characters"));
    } else if content.trim().is_empty() {
        errors.push(FieldError::new("content", "empty", "must not be empty or only whitespace"));
    } else if len > CONTENT_MAX {
        errors.push(FieldError::new(
            "content",
            "too_long",
            format!("must be at most {CONTENT_MAX} characters, got {len}"),
        ));
    }
}

/// Metadata as given: `null` (or absent) is `{}`, anything but an object is an error.
pub(super) fn metadata_map(metadata: Option<Value>, errors: &mut Vec<FieldError>) -> Map<String, Value> {
    match metadata {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(map)) => {
            check_metadata(&map, errors);
            map
        }
        Some(_) => {
            errors.push(FieldError::new("metadata", "invalid_type", "must be a JSON object"));
            Map::new()
        }
    }
}

pub(super) fn check_override(value: Option<f64>, errors: &mut Vec<FieldError>) {
    if let Some(v) = value
        && !(0.0..=1.0).contains(&v)
    {
        errors.push(FieldError::new("importance_override", "out_of_range", "must be between 0 and 1"));
    }
}

/// A message as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MessageView {
    pub id: MessageId,
    pub tenant_id: TenantId,
    pub conversation_id: ConversationId,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub content: String,
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    /// Importance in 0–1; absent while the message is only queued.
    pub importance: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub importance_override: Option<f64>,
    pub pinned: bool,
    pub status: MessageStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    /// When the embedder stored it; absent while queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_at: Option<DateTime<Utc>>,
    /// When it was archived: out of search (unless asked for), still readable, restorable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archived_at: Option<DateTime<Utc>>,
    /// Its last change (stored, embedded, edited, archived, restored); absent while queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<DateTime<Utc>>,
}

impl MessageView {
    /// The view of an accepted message in `status`: every field it was accepted with, and none
    /// of what storing adds (the one place a message's fields are copied into a view).
    pub fn accepted(m: NewMessage, status: MessageStatus) -> Self {
        Self {
            id: m.message_id,
            tenant_id: m.tenant_id,
            conversation_id: m.conversation_id,
            role: m.role,
            name: m.name,
            content: m.content,
            metadata: m.metadata,
            importance: None,
            importance_override: m.importance_override,
            pinned: m.pinned,
            status,
            failure_reason: None,
            created_at: m.created_at,
            stored_at: None,
            archived_at: m.archived_at,
            updated_at: None,
        }
    }

    /// The view of a message that is accepted but not yet stored.
    pub fn queued(m: &NewMessage) -> Self {
        Self::accepted(m.clone(), MessageStatus::Queued)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::METADATA_STRING_MAX;
    use serde_json::json;

    fn input() -> MessageInput {
        MessageInput {
            tenant_id: "acme".into(),
            conversation_id: "c-1".into(),
            role: "user".into(),
            content: "hello".into(),
            ..MessageInput::default()
        }
    }

    fn fields(result: Result<NewMessage, ValidationError>) -> Vec<(String, String)> {
        result.unwrap_err().0.into_iter().map(|e| (e.field, e.code)).collect()
    }

    #[test]
    fn a_minimal_message_is_valid_and_gets_defaults() {
        let now = Utc::now();
        let m = input().validate(now, MessageId::new).unwrap();
        assert_eq!(m.created_at, now);
        assert!(m.metadata.is_empty());
        assert!(!m.pinned);
        assert_eq!(m.embedding_text(), "hello");
    }

    #[test]
    fn every_problem_is_reported_together() {
        let bad = MessageInput { tenant_id: "a b".into(), role: "bot".into(), content: "  ".into(), ..input() };
        assert_eq!(
            fields(bad.validate(Utc::now(), MessageId::new)),
            vec![
                ("tenant_id".into(), "invalid_characters".into()),
                ("role".into(), "invalid_role".into()),
                ("content".into(), "empty".into())
            ]
        );
    }

    #[test]
    fn metadata_limits_name_the_offending_path() {
        // The root object is depth 1, so four nested objects are the most allowed.
        let ok = json!({"a": {"b": {"c": {"d": 1}}}});
        let deep = json!({"a": {"b": {"c": {"d": {"e": 1}}}}});
        assert!(MessageInput { metadata: Some(ok), ..input() }.validate(Utc::now(), MessageId::new).is_ok());
        assert_eq!(
            fields(MessageInput { metadata: Some(deep), ..input() }.validate(Utc::now(), MessageId::new)),
            vec![("metadata.a.b.c.d".into(), "too_deep".into())]
        );
        let long = json!({"tags": ["x".repeat(METADATA_STRING_MAX + 1)]});
        assert_eq!(
            fields(MessageInput { metadata: Some(long), ..input() }.validate(Utc::now(), MessageId::new)),
            vec![("metadata.tags[0]".into(), "too_long".into())]
        );
    }

    #[test]
    fn nul_characters_are_rejected_where_postgres_cannot_store_them() {
        let bad = MessageInput { content: "a\0b".into(), metadata: Some(json!({"k\0": "v", "s": "x\0"})), ..input() };
        assert_eq!(
            fields(bad.validate(Utc::now(), MessageId::new)),
            vec![
                ("content".into(), "invalid_characters".into()),
                ("metadata".into(), "invalid_characters".into()),
                ("metadata.s".into(), "invalid_characters".into())
            ]
        );
    }
}
