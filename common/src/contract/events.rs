//! The events on `mem.v1.events.<tenant>.<event>` and the ingest event publishers send.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::{ConversationId, MessageId, MessageInput, Role, TenantId};

/// The past-tense events on `mem.v1.events.<tenant>.<event>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Stored,
    Embedded,
    EmbeddingFailed,
    Archived,
    Restored,
    Deleted,
    Updated,
    Erased,
}

impl EventKind {
    pub const ALL: [Self; 8] = [
        Self::Stored,
        Self::Embedded,
        Self::EmbeddingFailed,
        Self::Archived,
        Self::Restored,
        Self::Deleted,
        Self::Updated,
        Self::Erased,
    ];

    /// The kind a subject token or a client names.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stored => "stored",
            Self::Embedded => "embedded",
            Self::EmbeddingFailed => "embedding_failed",
            Self::Archived => "archived",
            Self::Restored => "restored",
            Self::Deleted => "deleted",
            Self::Updated => "updated",
            Self::Erased => "erased",
        }
    }
}

/// Published by the gateway (or a direct publisher) on `mem.v1.ingest.<tenant>[.<id>]`: a message
/// that passed validation, not yet stored. The `Nats-Msg-Id` header is the message id.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageReceived {
    /// Payload version: 1.
    pub v: u8,
    /// The message, as a client submits it. Re-validated by the embedder.
    #[serde(flatten)]
    pub message: MessageInput,
    /// 0–1: the importance it had when it was exported, kept by an import. Computed at ingest
    /// when absent (and ignored for pinned messages or with an override).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub importance: Option<f64>,
}

/// Published by the embedder once a message is committed to the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageStored {
    pub v: u8,
    pub message_id: MessageId,
    pub tenant_id: TenantId,
    pub conversation_id: ConversationId,
    pub role: Role,
    pub importance: f64,
    pub stored_at: DateTime<Utc>,
}

/// Published by the embedder once a message's vector is committed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageEmbedded {
    pub v: u8,
    pub message_id: MessageId,
    pub tenant_id: TenantId,
    pub space: SpaceRef,
}

/// Published by the embedder when the provider refused a message: it is stored, `failed`, and
/// found by lexical search only. The sweeper tries it again later.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageEmbeddingFailed {
    pub v: u8,
    pub message_id: MessageId,
    pub tenant_id: TenantId,
    pub space: SpaceRef,
    pub reason: String,
}

/// Published on `mem.v1.events.<tenant>.archived.<batch id>` when retention archived messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessagesArchived {
    pub v: u8,
    pub tenant_id: TenantId,
    pub message_ids: Vec<MessageId>,
    pub archived_at: DateTime<Utc>,
}

/// Published on `mem.v1.events.<tenant>.restored.<id>` when an archived message was restored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessagesRestored {
    pub v: u8,
    pub tenant_id: TenantId,
    pub message_ids: Vec<MessageId>,
}

/// Published on `mem.v1.events.<tenant>.deleted.<batch id>` when messages were deleted for good.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessagesDeleted {
    pub v: u8,
    pub tenant_id: TenantId,
    pub message_ids: Vec<MessageId>,
}

/// Published on `mem.v1.events.<tenant>.updated.<id>` when a message was edited.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageUpdated {
    pub v: u8,
    pub message_id: MessageId,
    pub tenant_id: TenantId,
    /// Content edits so far; a content change means the message is being embedded again.
    pub revision: i32,
    pub content_changed: bool,
}

/// Published on `mem.v1.events.<tenant>.erased.<id>` once every message of a tenant was erased
/// (after the tenant's earlier events were purged from the events stream).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantErased {
    pub v: u8,
    pub tenant_id: TenantId,
    pub deleted: u64,
}

/// Broadcast on `mem.v1.cache.purge`: drop the tenant's cached query vectors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachePurge {
    pub v: u8,
    pub tenant_id: TenantId,
}

/// An embedding space: vectors are only ever compared within one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SpaceRef {
    pub provider: String,
    pub model: String,
    pub dimensions: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_received_rejects_unknown_fields_and_keeps_known_ones() {
        let ok: MessageReceived = serde_json::from_str(
            r#"{"v":1,"tenant_id":"t","conversation_id":"c","role":"user","content":"hi","pinned":true}"#,
        )
        .unwrap();
        assert_eq!((ok.v, ok.message.content.as_str(), ok.message.pinned), (1, "hi", Some(true)));
        let unknown = serde_json::from_str::<MessageReceived>(
            r#"{"v":1,"tenant_id":"t","conversation_id":"c","role":"user","content":"hi","colour":"red"}"#,
        );
        assert!(unknown.unwrap_err().to_string().contains("colour"));
    }

    #[test]
    fn importance_on_an_ingest_event_is_the_exported_importance_not_an_override() {
        // A REST body's `importance` (the original's documented name) is an override; on an ingest
        // event the field is the event's own, kept by an import.
        let event: MessageReceived = serde_json::from_str(
            r#"{"v":1,"tenant_id":"t","conversation_id":"c","role":"user","content":"hi","importance":0.8}"#,
        )
        .unwrap();
        assert_eq!((event.importance, event.message.importance_override), (Some(0.8), None));
        let input: MessageInput = serde_json::from_str(
            r#"{"tenant_id":"t","conversation_id":"c","role":"user","content":"hi","importance":0.8}"#,
        )
        .unwrap();
        assert_eq!(input.importance_override, Some(0.8));
        let both = r#"{"tenant_id":"t","conversation_id":"c","role":"user","content":"hi","importance":0.8,"importance_override":0.1}"#;
        assert!(serde_json::from_str::<MessageInput>(both).unwrap_err().to_string().contains("duplicate field"));
    }
}
