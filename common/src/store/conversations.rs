//! Conversations: the client's title, metadata and archived flag, and the counts that triggers
//! on `messages` keep current (migration 0011).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::StoreError;
use crate::domain::{ConversationId, TenantId};

/// A conversation as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    pub tenant_id: TenantId,
    pub conversation_id: ConversationId,
    pub title: Option<String>,
    pub metadata: Map<String, Value>,
    pub archived: bool,
    /// Stored messages (queued ones count once stored).
    pub message_count: i64,
    pub user_messages: i64,
    pub assistant_messages: i64,
    pub system_messages: i64,
    /// Mean importance of its messages; `None` without messages.
    pub avg_importance: Option<f64>,
    pub first_message_at: Option<DateTime<Utc>>,
    pub last_message_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// Its last change: a message stored or deleted, or an edit.
    pub updated_at: DateTime<Utc>,
}

/// An edit of a conversation: each field given replaces the stored one (`title: Some(None)`
/// clears the title).
#[derive(Debug, Clone, Default)]
pub struct ConversationPatch {
    pub title: Option<Option<String>>,
    pub metadata: Option<Map<String, Value>>,
    pub archived: Option<bool>,
}

/// A page of a tenant's conversations, most recently active first.
#[derive(Debug, Clone)]
pub struct ConversationPage {
    pub items: Vec<Conversation>,
    /// All of the tenant's conversations that match, on every page.
    pub total: i64,
}

#[async_trait]
pub trait Conversations: Send + Sync {
    /// The tenant's conversations (only archived ones, or only live ones, when `archived` says),
    /// skipping `offset`, at most `limit`.
    async fn conversations(
        &self,
        tenant: &TenantId,
        archived: Option<bool>,
        offset: u64,
        limit: u32,
    ) -> Result<ConversationPage, StoreError>;

    async fn conversation(&self, tenant: &TenantId, id: &ConversationId) -> Result<Option<Conversation>, StoreError>;

    /// Creates the conversation as the client's own, or returns the stored one untouched;
    /// `true` when it was created.
    async fn create_conversation(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        title: Option<&str>,
        metadata: &Map<String, Value>,
    ) -> Result<(Conversation, bool), StoreError>;

    /// Applies `patch`; `None` when there is no such conversation.
    async fn update_conversation(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        patch: &ConversationPatch,
    ) -> Result<Option<Conversation>, StoreError>;

    /// Forgets what the client set on a conversation (title, metadata, archived), keeping its
    /// messages: a conversation without messages goes, one with messages stays as its messages
    /// make it. `false` when there was no such conversation.
    async fn forget_conversation(&self, tenant: &TenantId, id: &ConversationId) -> Result<bool, StoreError>;
}
