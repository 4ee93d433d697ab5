//! Rows as Postgres returns them, and their conversions to the store's types: one place each.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sqlx::FromRow;
use sqlx::types::Json;
use uuid::Uuid;

use crate::contract::SpaceRef;
use crate::domain::{
    ApiKey, ConversationId, MessageId, MessageKey, MessageStatus, NewMessage, Role, Scope, Tenant, TenantId,
};
use crate::store::{NewRow, Space, StoreError, StoredMessage};

/// A tenant id read back from the database.
pub(super) fn tenant_of(id: String) -> Result<TenantId, StoreError> {
    TenantId::parse(id.clone()).map_err(|_| StoreError::Corrupt(format!("tenant {id}")))
}

/// New rows as one array per column, for `UNNEST`.
pub(super) struct RowColumns<'a> {
    pub(super) ids: Vec<Uuid>,
    pub(super) tenants: Vec<&'a str>,
    pub(super) conversations: Vec<&'a str>,
    pub(super) roles: Vec<&'a str>,
    pub(super) names: Vec<Option<&'a str>>,
    pub(super) contents: Vec<&'a str>,
    pub(super) metadata: Vec<String>,
    pub(super) importance: Vec<f64>,
    pub(super) overrides: Vec<Option<f64>>,
    pub(super) pinned: Vec<bool>,
    pub(super) created: Vec<DateTime<Utc>>,
    pub(super) archived: Vec<Option<DateTime<Utc>>>,
    pub(super) sequences: Vec<Option<i64>>,
    pub(super) published: Vec<Option<DateTime<Utc>>>,
}

impl<'a> RowColumns<'a> {
    pub(super) fn of(rows: &'a [NewRow]) -> Self {
        Self {
            ids: rows.iter().map(|r| r.message.message_id.0).collect(),
            tenants: rows.iter().map(|r| r.message.tenant_id.as_str()).collect(),
            conversations: rows.iter().map(|r| r.message.conversation_id.as_str()).collect(),
            roles: rows.iter().map(|r| r.message.role.as_str()).collect(),
            names: rows.iter().map(|r| r.message.name.as_deref()).collect(),
            contents: rows.iter().map(|r| r.message.content.as_str()).collect(),
            metadata: rows.iter().map(|r| Value::Object(r.message.metadata.clone()).to_string()).collect(),
            importance: rows.iter().map(|r| r.importance).collect(),
            overrides: rows.iter().map(|r| r.message.importance_override).collect(),
            pinned: rows.iter().map(|r| r.message.pinned).collect(),
            created: rows.iter().map(|r| r.message.created_at).collect(),
            archived: rows.iter().map(|r| r.message.archived_at).collect(),
            sequences: rows.iter().map(|r| r.origin.map(|o| i64::try_from(o.sequence).unwrap_or(i64::MAX))).collect(),
            published: rows.iter().map(|r| r.origin.map(|o| o.published_at)).collect(),
        }
    }
}

#[derive(FromRow)]
pub(super) struct MessageRow {
    pub(super) id: Uuid,
    pub(super) tenant_id: String,
    pub(super) conversation_id: String,
    pub(super) role: String,
    pub(super) name: Option<String>,
    pub(super) content: String,
    pub(super) metadata: Json<Map<String, Value>>,
    pub(super) importance: f64,
    pub(super) importance_override: Option<f64>,
    pub(super) pinned: bool,
    pub(super) status: String,
    pub(super) failure_reason: Option<String>,
    pub(super) created_at: DateTime<Utc>,
    pub(super) stored_at: DateTime<Utc>,
    pub(super) archived_at: Option<DateTime<Utc>>,
    pub(super) revision: i32,
    pub(super) updated_at: DateTime<Utc>,
}

impl TryFrom<MessageRow> for StoredMessage {
    type Error = StoreError;
    fn try_from(r: MessageRow) -> Result<Self, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("message {}: {what}", r.id));
        let message = NewMessage {
            message_id: MessageId(r.id),
            tenant_id: TenantId::parse(r.tenant_id.clone()).map_err(|_| corrupt("tenant_id"))?,
            conversation_id: ConversationId::parse(r.conversation_id.clone())
                .map_err(|_| corrupt("conversation_id"))?,
            role: Role::parse(&r.role).ok_or_else(|| corrupt("role"))?,
            name: r.name,
            content: r.content,
            metadata: r.metadata.0,
            importance_override: r.importance_override,
            pinned: r.pinned,
            created_at: r.created_at,
            archived_at: r.archived_at,
        };
        Ok(StoredMessage {
            message,
            importance: r.importance,
            status: MessageStatus::parse(&r.status).ok_or_else(|| corrupt("status"))?,
            failure_reason: r.failure_reason,
            stored_at: r.stored_at,
            updated_at: r.updated_at,
            revision: r.revision,
        })
    }
}

#[derive(FromRow)]
pub(super) struct SpaceRow {
    pub(super) id: i32,
    pub(super) provider: String,
    pub(super) model: String,
    pub(super) dimensions: i32,
    pub(super) active: bool,
    pub(super) activated_at: Option<DateTime<Utc>>,
    pub(super) backfill_cursor_tenant: Option<String>,
    pub(super) backfill_cursor: Option<Uuid>,
    pub(super) backfilled: i64,
}

impl From<SpaceRow> for Space {
    fn from(r: SpaceRow) -> Self {
        Space {
            id: r.id,
            reference: SpaceRef { provider: r.provider, model: r.model, dimensions: r.dimensions.unsigned_abs() },
            active: r.active,
            activated_at: r.activated_at,
            // A cursor that does not read back starts the backfill over, which is only slower.
            backfill_cursor: r
                .backfill_cursor_tenant
                .zip(r.backfill_cursor)
                .and_then(|(tenant, id)| Some(MessageKey::new(TenantId::parse(tenant).ok()?, MessageId(id)))),
            backfilled: r.backfilled,
        }
    }
}

#[derive(FromRow)]
pub(super) struct HitRow {
    #[sqlx(flatten)]
    pub(super) message: MessageRow,
    pub(super) similarity: f64,
    /// How many nearest vectors the statement read before filtering (`search::Shape::Nearest`).
    #[sqlx(default)]
    pub(super) nearest: Option<i64>,
}

#[derive(FromRow)]
pub(super) struct TenantRow {
    pub(super) id: String,
    pub(super) name: Option<String>,
    pub(super) created_at: DateTime<Utc>,
}

impl TryFrom<TenantRow> for Tenant {
    type Error = StoreError;
    fn try_from(r: TenantRow) -> Result<Self, StoreError> {
        Ok(Tenant {
            id: TenantId::parse(r.id.clone()).map_err(|_| StoreError::Corrupt(format!("tenant {}", r.id)))?,
            name: r.name,
            created_at: r.created_at,
        })
    }
}

#[derive(FromRow)]
pub(super) struct KeyRow {
    pub(super) id: Uuid,
    pub(super) tenant_id: String,
    pub(super) name: Option<String>,
    pub(super) prefix: String,
    pub(super) scopes: Vec<String>,
    pub(super) created_at: DateTime<Utc>,
    pub(super) expires_at: Option<DateTime<Utc>>,
    pub(super) revoked_at: Option<DateTime<Utc>>,
    pub(super) last_used_at: Option<DateTime<Utc>>,
}

impl TryFrom<KeyRow> for ApiKey {
    type Error = StoreError;
    fn try_from(r: KeyRow) -> Result<Self, StoreError> {
        let corrupt = || StoreError::Corrupt(format!("api key {}", r.id));
        Ok(ApiKey {
            id: r.id,
            tenant_id: TenantId::parse(r.tenant_id.clone()).map_err(|_| corrupt())?,
            scopes: r.scopes.iter().map(|s| Scope::parse(s).ok_or_else(corrupt)).collect::<Result<_, _>>()?,
            name: r.name,
            prefix: r.prefix,
            created_at: r.created_at,
            expires_at: r.expires_at,
            revoked_at: r.revoked_at,
            last_used_at: r.last_used_at,
        })
    }
}

#[derive(FromRow)]
pub(super) struct LexicalRow {
    #[sqlx(flatten)]
    pub(super) message: MessageRow,
    pub(super) rank: f64,
    pub(super) similarity: Option<f64>,
}
