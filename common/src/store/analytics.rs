//! Usage analytics from counters (migration 0011): no request counts messages.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};

use super::{Conversation, StoreError};
use crate::domain::TenantId;

/// A tenant's totals.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    pub total_messages: i64,
    pub total_conversations: i64,
    pub archived_conversations: i64,
    pub importance_sum: f64,
    /// Stored messages waiting for their embedding, and those the provider refused.
    pub pending_embeddings: i64,
    pub failed_embeddings: i64,
    pub last_activity: Option<DateTime<Utc>>,
}

impl Usage {
    /// Stored messages with a vector in the active space: all but the pending and the failed.
    pub fn embedded(&self) -> i64 {
        (self.total_messages - self.pending_embeddings - self.failed_embeddings).max(0)
    }
}

/// Messages of one role created on one day (UTC).
#[derive(Debug, Clone, PartialEq)]
pub struct DayCount {
    pub day: NaiveDate,
    pub role: String,
    pub messages: i64,
}

/// One tenant's totals in the operator's list.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantUsage {
    pub tenant_id: TenantId,
    pub total_messages: i64,
    pub total_conversations: i64,
    pub last_activity: Option<DateTime<Utc>>,
}

#[async_trait]
pub trait Analytics: Send + Sync {
    async fn usage(&self, tenant: &TenantId) -> Result<Usage, StoreError>;

    /// Messages per day and role, from `from` (inclusive), oldest first.
    async fn days(&self, tenant: &TenantId, from: NaiveDate) -> Result<Vec<DayCount>, StoreError>;

    /// The tenant's conversations by their last message, newest first.
    async fn recent_conversations(&self, tenant: &TenantId, limit: u32) -> Result<Vec<Conversation>, StoreError>;

    /// Every tenant with messages or conversations, by id.
    async fn tenants_usage(&self) -> Result<Vec<TenantUsage>, StoreError>;
}
