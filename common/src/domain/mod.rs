//! Domain types: ids, roles, statuses and the message a client submits, with the validation limits
//! of ARCHITECTURE §11. The gateway and the embedder validate with this same code, so a message
//! published straight to NATS is held to exactly the rules REST enforces.

pub mod importance;
mod message;
mod metadata;
mod retention;
mod search;
mod tenancy;
mod update;

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

pub use message::{MessageInput, MessageView, NewMessage, check_name, check_search, embedding_text};
pub use metadata::check_metadata;
pub use retention::{RetentionAction, RetentionPolicy, TenantRetention};
pub use search::{Ranking, SearchFilters, SearchMode};
pub use tenancy::{ApiKey, NewApiKey, Scope, Tenant};
pub use update::{MessageUpdate, ValidUpdate};

/// Maximum length of a tenant id, in characters.
pub const TENANT_ID_MAX: usize = 64;
/// Maximum length of a conversation id, in characters.
pub const CONVERSATION_ID_MAX: usize = 128;
/// Maximum length of a speaker name, in characters.
pub const NAME_MAX: usize = 128;
/// Maximum length of a message's content, in characters.
pub const CONTENT_MAX: usize = 100_000;
/// Maximum nesting depth of metadata; the root object is depth 1.
pub const METADATA_DEPTH_MAX: usize = 4;
/// Maximum keys of one metadata object, and items of one metadata array.
pub const METADATA_KEYS_MAX: usize = 50;
/// Maximum length of a metadata string (values and keys), in characters.
pub const METADATA_STRING_MAX: usize = 2_048;
/// Most items in one batch request.
pub const BATCH_MAX: usize = 100;
/// Largest `top_k` a search may ask for, and the default.
pub const TOP_K_MAX: u32 = 50;
pub const TOP_K_DEFAULT: u32 = 5;
/// Longest search query, in characters.
pub const QUERY_MAX: usize = 10_000;
/// How far in the future a client-given `created_at` may lie (clock skew).
pub const CREATED_AT_SKEW_SECS: i64 = 300;

/// One reason a field is invalid: the field's JSON path, a stable code and a human sentence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FieldError {
    /// JSON path of the offending field, e.g. `metadata.tags[3]`.
    pub field: String,
    /// Stable machine-readable reason, e.g. `too_long`.
    pub code: String,
    /// What is wrong, for people.
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, code: &str, message: impl Into<String>) -> Self {
        Self { field: field.into(), code: code.to_owned(), message: message.into() }
    }
}

/// Every problem found in one input, reported together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid input: {}", summary(.0))]
pub struct ValidationError(pub Vec<FieldError>);

fn summary(errors: &[FieldError]) -> String {
    errors.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; ")
}

fn check_id(field: &str, value: &str, max: usize, errors: &mut Vec<FieldError>) {
    let len = value.chars().count();
    if len == 0 {
        errors.push(FieldError::new(field, "empty", "must not be empty"));
    } else if len > max {
        errors.push(FieldError::new(field, "too_long", format!("must be at most {max} characters, got {len}")));
    } else if !value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        errors.push(FieldError::new(field, "invalid_characters", "may contain only A-Z, a-z, 0-9, '_', '.' and '-'"));
    }
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $field:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
        #[serde(try_from = "String", into = "String")]
        #[schema(value_type = String)]
        pub struct $name(String);

        impl $name {
            /// Checks the value against the limits and wraps it.
            pub fn parse(value: impl Into<String>) -> Result<Self, ValidationError> {
                let value = value.into();
                let mut errors = Vec::new();
                check_id($field, &value, $max, &mut errors);
                if errors.is_empty() { Ok(Self(value)) } else { Err(ValidationError(errors)) }
            }
            pub fn as_str(&self) -> &str { &self.0 }
        }
        impl TryFrom<String> for $name {
            type Error = ValidationError;
            fn try_from(value: String) -> Result<Self, Self::Error> { Self::parse(value) }
        }
        impl From<$name> for String {
            fn from(id: $name) -> String { id.0 }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(&self.0) }
        }
    };
}

string_id!(
    /// A tenant: 1–64 characters of `[A-Za-z0-9_.-]`. Safe as a NATS subject token.
    TenantId, "tenant_id", TENANT_ID_MAX
);
string_id!(
    /// A conversation within a tenant: 1–128 characters of `[A-Za-z0-9_.-]`.
    ConversationId, "conversation_id", CONVERSATION_ID_MAX
);

/// A message id: a UUID, v7 when minted by us, so ids sort by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(transparent)]
#[schema(value_type = String, format = Uuid)]
pub struct MessageId(pub Uuid);

impl MessageId {
    /// A fresh, time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
    pub fn parse(value: &str) -> Result<Self, ValidationError> {
        Uuid::try_parse(value)
            .map(Self)
            .map_err(|_| ValidationError(vec![FieldError::new("message_id", "invalid_uuid", "must be a UUID")]))
    }
    /// A deterministic v7-shaped id for an event that arrived without one: the same stream
    /// message always gets the same id, so a redelivery is still deduplicated.
    pub fn derived(timestamp: DateTime<Utc>, seed: &[u8]) -> Self {
        let hash = fnv1a_128(seed).to_be_bytes();
        let millis = u64::try_from(timestamp.timestamp_millis()).unwrap_or(0);
        Self(uuid::Builder::from_unix_timestamp_millis(millis, hash[..10].try_into().expect("10 bytes")).into_uuid())
    }
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What names one message: ids are unique within a tenant, not across tenants, so one tenant's
/// export imports into another and no tenant can claim or probe another's ids.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageKey {
    pub tenant_id: TenantId,
    pub id: MessageId,
}

impl MessageKey {
    pub fn new(tenant_id: TenantId, id: MessageId) -> Self {
        Self { tenant_id, id }
    }
}

impl fmt::Display for MessageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant_id, self.id)
    }
}

fn fnv1a_128(bytes: &[u8]) -> u128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    bytes.iter().fold(OFFSET, |h, b| (h ^ u128::from(*b)).wrapping_mul(PRIME))
}

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
    System,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Assistant => "assistant",
            Self::System => "system",
        }
    }
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "user" => Some(Self::User),
            "assistant" => Some(Self::Assistant),
            "system" => Some(Self::System),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a message is in the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MessageStatus {
    /// Accepted into the ingest stream, not yet stored.
    Queued,
    /// Stored, waiting for its embedding.
    Pending,
    /// Stored and embedded: searchable by meaning.
    Embedded,
    /// Stored, but the embedding provider refused it (`failure_reason` says why).
    Failed,
}

impl MessageStatus {
    /// The original service's `embedding_status`: `pending` (queued or stored, not yet
    /// embedded), `completed` or `failed`.
    pub fn embedding_status(self) -> &'static str {
        match self {
            Self::Queued | Self::Pending => "pending",
            Self::Embedded => "completed",
            Self::Failed => "failed",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Pending => "pending",
            Self::Embedded => "embedded",
            Self::Failed => "failed",
        }
    }
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "queued" => Some(Self::Queued),
            "pending" => Some(Self::Pending),
            "embedded" => Some(Self::Embedded),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;
    use serde_json::json;

    #[test]
    fn derived_ids_are_stable_and_time_ordered() {
        let t = Utc::now();
        assert_eq!(MessageId::derived(t, b"s:1"), MessageId::derived(t, b"s:1"));
        assert_ne!(MessageId::derived(t, b"s:1"), MessageId::derived(t, b"s:2"));
        assert_eq!(MessageId::derived(t, b"s:1").0.get_version_num(), 7);
        assert!(MessageId::derived(t, b"z") < MessageId::derived(t + Duration::seconds(1), b"a"));
    }

    #[test]
    fn ids_round_trip_through_serde_and_reject_bad_values() {
        let t: TenantId = serde_json::from_value(json!("acme.prod")).unwrap();
        assert_eq!(serde_json::to_value(&t).unwrap(), json!("acme.prod"));
        assert!(serde_json::from_value::<TenantId>(json!("acme>")).is_err());
        assert!(serde_json::from_value::<TenantId>(json!("x".repeat(65))).is_err());
    }
}
