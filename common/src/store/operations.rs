//! Operations: long work (deletes of conversations and tenants, retention runs) a client may
//! follow after its request ended (migration 0012). The gateway starts one; the worker doing the
//! work heartbeats it and records the outcome.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::StoreError;
use crate::domain::TenantId;

/// How often the worker marks a running operation alive.
pub const OPERATION_HEARTBEAT: Duration = Duration::from_secs(20);
/// A running operation silent this long was interrupted (its worker stopped): readers report it
/// failed, and the client repeats the request (long work is idempotent).
pub const OPERATION_SILENCE: Duration = Duration::from_secs(60);

/// Where an operation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperationStatus {
    Running,
    Succeeded,
    Failed,
}

impl OperationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }
}

/// An operation as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Operation {
    pub id: Uuid,
    /// `delete_conversation`, `erase_tenant` or `retention_run`.
    pub kind: String,
    /// The tenant it acts on; `None` for work over every tenant.
    pub tenant_id: Option<TenantId>,
    pub status: OperationStatus,
    /// What the work answered, once it succeeded.
    pub result: Option<Value>,
    /// Why it failed.
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    /// Its last heartbeat (or its end).
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[async_trait]
pub trait Operations: Send + Sync {
    /// Records a new operation as running.
    async fn start_operation(&self, id: Uuid, kind: &str, tenant: Option<&TenantId>) -> Result<Operation, StoreError>;

    /// A running operation's heartbeat.
    async fn touch_operation(&self, id: Uuid) -> Result<(), StoreError>;

    /// Records how a running operation ended (a finished one is left as it is), and prunes
    /// operations finished more than a week ago.
    async fn finish_operation(&self, id: Uuid, outcome: Result<Value, String>) -> Result<(), StoreError>;

    async fn operation(&self, id: Uuid) -> Result<Option<Operation>, StoreError>;
}
