use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use uuid::Uuid;

use super::PgStore;
use crate::domain::TenantId;
use crate::store::{Operation, OperationStatus, Operations, StoreError};

/// Finished operations older than this are pruned.
const KEPT_DAYS: i32 = 7;

const COLUMNS: &str = "id, kind, tenant_id, status, result, error, created_at, updated_at, finished_at";

type OperationRow = (
    Uuid,
    String,
    Option<String>,
    String,
    Option<Json<Value>>,
    Option<String>,
    DateTime<Utc>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
);

fn operation(row: OperationRow) -> Result<Operation, StoreError> {
    let (id, kind, tenant, status, result, error, created_at, updated_at, finished_at) = row;
    let status = match status.as_str() {
        "running" => OperationStatus::Running,
        "succeeded" => OperationStatus::Succeeded,
        "failed" => OperationStatus::Failed,
        other => return Err(StoreError::Corrupt(format!("operations: status {other:?}"))),
    };
    let tenant_id = tenant
        .map(|t| TenantId::parse(t.clone()).map_err(|_| StoreError::Corrupt(format!("operations: tenant_id {t:?}"))))
        .transpose()?;
    Ok(Operation {
        id,
        kind,
        tenant_id,
        status,
        result: result.map(|r| r.0),
        error,
        created_at,
        updated_at,
        finished_at,
    })
}

#[async_trait]
impl Operations for PgStore {
    async fn start_operation(&self, id: Uuid, kind: &str, tenant: Option<&TenantId>) -> Result<Operation, StoreError> {
        let row: OperationRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "INSERT INTO operations (id, kind, tenant_id) VALUES ($1, $2, $3) RETURNING {COLUMNS}"
        )))
        .bind(id)
        .bind(kind)
        .bind(tenant.map(TenantId::as_str))
        .fetch_one(&self.pool)
        .await?;
        operation(row)
    }

    async fn touch_operation(&self, id: Uuid) -> Result<(), StoreError> {
        sqlx::query("UPDATE operations SET updated_at = now() WHERE id = $1 AND status = 'running'")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn finish_operation(&self, id: Uuid, outcome: Result<Value, String>) -> Result<(), StoreError> {
        let (status, result, error) = match outcome {
            Ok(result) => ("succeeded", Some(Json(result)), None),
            Err(error) => ("failed", None, Some(error)),
        };
        sqlx::query(
            "UPDATE operations SET status = $2, result = $3, error = $4, updated_at = now(), finished_at = now()
             WHERE id = $1 AND status = 'running'",
        )
        .bind(id)
        .bind(status)
        .bind(result)
        .bind(error)
        .execute(&self.pool)
        .await?;
        sqlx::query(
            "DELETE FROM operations WHERE id IN (
                 SELECT id FROM operations WHERE finished_at < now() - make_interval(days => $1) LIMIT 1000)",
        )
        .bind(KEPT_DAYS)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn operation(&self, id: Uuid) -> Result<Option<Operation>, StoreError> {
        let row: Option<OperationRow> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM operations WHERE id = $1")))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        row.map(operation).transpose()
    }
}
