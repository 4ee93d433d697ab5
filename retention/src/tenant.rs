//! A tenant's own requests to the retention service: its retention policy (the one owner of it,
//! REST's included) and its messages read out in export pages.

use common::contract::{
    EXPORT_PAGE_MAX, ExportPage, ExportRecord, ExportRequest, ExportVector, RemoteError, RetentionPolicyReply,
    RetentionPolicyRequest, SettingSource,
};

use crate::lifecycle::{Lifecycle, bad, unavailable};

/// Largest export page in serialised bytes (under NATS's 1 MiB default).
const EXPORT_PAGE_BYTES: usize = 512 * 1024;

impl Lifecycle {
    pub(crate) async fn policy(&self, request: RetentionPolicyRequest) -> Result<RetentionPolicyReply, RemoteError> {
        let tenant = &request.tenant_id;
        let store = &self.deps.store;
        match (request.policy, request.reset) {
            (Some(_), true) => return Err(bad("give a policy or reset, not both")),
            (Some(policy), false) => {
                policy.check().map_err(|e| bad(e.to_string()))?;
                store
                    .set_tenant_retention(tenant, Some(&policy))
                    .await
                    .map_err(|e| unavailable("saving the policy", &e))?;
            }
            (None, true) => {
                store.set_tenant_retention(tenant, None).await.map_err(|e| unavailable("saving the policy", &e))?;
            }
            (None, false) => {}
        }
        let own = store.tenant_retention(tenant).await.map_err(|e| unavailable("reading the policy", &e))?;
        Ok(match own {
            Some(policy) => RetentionPolicyReply { tenant_id: tenant.clone(), policy, source: SettingSource::Tenant },
            None => RetentionPolicyReply {
                tenant_id: tenant.clone(),
                policy: self.policy,
                source: SettingSource::Deployment,
            },
        })
    }

    pub(crate) async fn export(&self, request: ExportRequest) -> Result<ExportPage, RemoteError> {
        if !(1..=EXPORT_PAGE_MAX).contains(&request.limit) {
            return Err(bad(format!("limit must be 1 to {EXPORT_PAGE_MAX}")));
        }
        let space = if request.include_vectors {
            self.deps.store.active_space().await.map_err(|e| unavailable("reading the active space", &e))?
        } else {
            None
        };
        let rows = self
            .deps
            .store
            .export(&request.tenant_id, request.after, request.limit, space.as_ref())
            .await
            .map_err(|e| unavailable("reading messages", &e))?;
        let full = rows.len() == request.limit as usize;
        let (mut records, mut bytes) = (Vec::with_capacity(rows.len()), 0);
        let mut truncated = false;
        for row in rows {
            let record = ExportRecord {
                revision: row.message.revision,
                vector: row
                    .vector
                    .zip(space.as_ref())
                    .map(|(values, s)| ExportVector { space: s.reference.clone(), values }),
                message: row.message.view(),
            };
            let size = serde_json::to_vec(&record).map_or(0, |b| b.len());
            if !records.is_empty() && bytes + size > EXPORT_PAGE_BYTES {
                truncated = true;
                break;
            }
            bytes += size;
            records.push(record);
        }
        let next = if full || truncated { records.last().map(|r| r.message.id) } else { None };
        Ok(ExportPage { records, next })
    }
}
