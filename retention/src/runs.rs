//! Applying retention policies: a run over one tenant or all, in bounded batches, one run per
//! tenant at a time across replicas.

use chrono::{DateTime, Utc};
use common::contract::{RetentionRunRequest, RetentionRunResponse};
use common::domain::{MessageId, RetentionAction, RetentionPolicy, TenantId, TenantRetention};
use common::store::{StoreError, locks};
use tracing::{info, warn};

use crate::{Deps, Metrics};

/// Ids kept per tenant and action for a run's report.
const SAMPLE: usize = 20;

/// Tombstones are kept at least this long after a delete, past any batch still in flight.
const TOMBSTONE_GRACE: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// Runs retention; cheap to clone.
#[derive(Clone)]
pub struct Runner {
    pub(crate) deps: Deps,
    pub(crate) policy: RetentionPolicy,
    pub(crate) batch_size: u32,
    pub(crate) metrics: Metrics,
}

impl Runner {
    /// Applies `actions` to the named tenant, or with `all_tenants` to every tenant with
    /// messages (and to none when the request names neither).
    pub async fn run(&self, request: &RetentionRunRequest) -> Result<RetentionRunResponse, StoreError> {
        let now = Utc::now();
        let tenants = match &request.tenant_id {
            Some(t) => vec![t.clone()],
            None if request.all_tenants => self.deps.store.tenants_with_messages().await?,
            None => Vec::new(),
        };
        if !request.dry_run {
            self.prune_tombstones(now).await;
        }
        let mut report =
            RetentionRunResponse { dry_run: request.dry_run, archived: 0, deleted: 0, tenants: Vec::new() };
        for tenant in tenants {
            let done = self.run_tenant(&tenant, &request.actions, request.dry_run, now).await?;
            report.archived += done.archived;
            report.deleted += done.deleted;
            report.tenants.push(done);
        }
        Ok(report)
    }

    /// Drops tombstones no queued event can match any more; a failure only delays it.
    async fn prune_tombstones(&self, now: DateTime<Utc>) {
        let state = match self.deps.bus.stream_state(common::contract::StreamKind::Ingest).await {
            Ok(state) => state,
            Err(e) => return warn!(error = %e, "reading the ingest stream to prune tombstones failed"),
        };
        match self.deps.store.prune_tombstones(state.first_sequence, now - TOMBSTONE_GRACE).await {
            Ok(0) => {}
            Ok(n) => info!(pruned = n, "pruned tombstones"),
            Err(e) => warn!(error = %e, "pruning tombstones failed"),
        }
    }

    async fn run_tenant(
        &self,
        tenant: &TenantId,
        actions: &[RetentionAction],
        dry_run: bool,
        now: DateTime<Utc>,
    ) -> Result<TenantRetention, StoreError> {
        let started = std::time::Instant::now();
        let mut report = TenantRetention { tenant_id: Some(tenant.clone()), ..TenantRetention::default() };
        let Some(_lock) = self.deps.store.try_lock(locks::retention(tenant)).await? else {
            self.metrics.busy.inc();
            report.busy = true;
            return Ok(report);
        };
        // The tenant's own policy, else the deployment's.
        let policy = self.deps.store.tenant_retention(tenant).await?.unwrap_or(self.policy);
        // Archive before delete: what is archived now is not old enough to delete in this run,
        // so a dry run reports exactly what the real run then does.
        for action in [RetentionAction::Archive, RetentionAction::Delete] {
            if !actions.contains(&action) {
                continue;
            }
            let (count, sample) = if dry_run {
                let sample = u32::try_from(SAMPLE).unwrap_or(u32::MAX);
                let found = self.deps.store.retention_candidates(tenant, &policy, action, now, sample).await?;
                (found.total, found.ids)
            } else {
                self.apply(tenant, &policy, action, now).await?
            };
            match action {
                RetentionAction::Archive => (report.archived, report.sample_archived) = (count, sample),
                RetentionAction::Delete => (report.deleted, report.sample_deleted) = (count, sample),
            }
        }
        if !dry_run {
            self.metrics.record(report.archived, report.deleted, started.elapsed());
        }
        info!(%tenant, dry_run, archived = report.archived, deleted = report.deleted, "retention applied");
        Ok(report)
    }

    /// Archives or deletes in batches until nothing is left to do.
    async fn apply(
        &self,
        tenant: &TenantId,
        policy: &RetentionPolicy,
        action: RetentionAction,
        now: DateTime<Utc>,
    ) -> Result<(u64, Vec<MessageId>), StoreError> {
        let store = &self.deps.store;
        let (mut total, mut sample) = (0, Vec::new());
        loop {
            let ids = store.retention_candidates(tenant, policy, action, now, self.batch_size).await?.ids;
            if ids.is_empty() {
                return Ok((total, sample));
            }
            let changed = match action {
                RetentionAction::Archive => store.archive_messages(tenant, &ids, now).await?,
                RetentionAction::Delete => store.delete_messages(tenant, &ids).await?,
            };
            match action {
                RetentionAction::Archive => crate::events::archived(&self.deps, tenant, &ids, now).await,
                RetentionAction::Delete => crate::events::deleted(&self.deps, tenant, &ids).await,
            }
            total += changed;
            sample.extend(ids.iter().take(SAMPLE.saturating_sub(sample.len())));
            if ids.len() < self.batch_size as usize || changed == 0 {
                return Ok((total, sample));
            }
        }
    }
}
