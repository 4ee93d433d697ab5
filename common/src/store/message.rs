//! A message as stored, the record every role reads.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::domain::{ConversationId, MessageId, MessageStatus, MessageView, Role, TenantId};

/// A message as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    pub id: MessageId,
    pub tenant_id: TenantId,
    pub conversation_id: ConversationId,
    pub role: Role,
    pub name: Option<String>,
    pub content: String,
    pub metadata: Map<String, Value>,
    pub importance: f64,
    pub importance_override: Option<f64>,
    pub pinned: bool,
    pub status: MessageStatus,
    pub failure_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub stored_at: DateTime<Utc>,
    pub archived_at: Option<DateTime<Utc>>,
    /// Content edits so far; a vector is stored only for the revision it was computed from.
    pub revision: i32,
}

impl StoredMessage {
    pub fn view(self) -> MessageView {
        MessageView {
            id: self.id,
            tenant_id: self.tenant_id,
            conversation_id: self.conversation_id,
            role: self.role,
            name: self.name,
            content: self.content,
            metadata: self.metadata,
            importance: Some(self.importance),
            importance_override: self.importance_override,
            pinned: self.pinned,
            status: self.status,
            failure_reason: self.failure_reason,
            created_at: self.created_at,
            stored_at: Some(self.stored_at),
            archived_at: self.archived_at,
        }
    }
}
