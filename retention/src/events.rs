//! The events retention publishes on `mem.v1.events.<tenant>.<event>.<id>`. The change they
//! announce is committed whatever becomes of the event: a failed publish is logged.

use crate::Deps;
use chrono::{DateTime, Utc};
use common::bus::Envelope;
use common::contract::{
    EventKind, MessageUpdated, MessagesArchived, MessagesDeleted, MessagesRestored, TenantErased, VERSION,
};
use common::domain::{MessageId, TenantId};
use serde::Serialize;
use tracing::warn;

/// Publishes one event under a fresh id (a batch's, or one message's own with `id`).
async fn publish(deps: &Deps, tenant: &TenantId, kind: EventKind, id: Option<MessageId>, event: &impl Serialize) {
    let id = id.unwrap_or_default();
    let payload = serde_json::to_vec(event).expect("events serialise");
    let envelope = Envelope::new(deps.subjects.event(tenant, kind, id), payload);
    // Unique per publish: the same change announced twice is two events.
    let dedup = format!("{}-{id}-{}", kind.as_str(), MessageId::new());
    if let Err(e) = deps.bus.publish(envelope, Some(&dedup)).await {
        warn!(error = %e, %tenant, event = kind.as_str(), "announcing a change failed");
    }
}

pub(crate) async fn archived(deps: &Deps, tenant: &TenantId, ids: &[MessageId], at: DateTime<Utc>) {
    if !ids.is_empty() {
        let event =
            MessagesArchived { v: VERSION, tenant_id: tenant.clone(), message_ids: ids.to_vec(), archived_at: at };
        publish(deps, tenant, EventKind::Archived, None, &event).await;
    }
}

pub(crate) async fn restored(deps: &Deps, tenant: &TenantId, ids: &[MessageId]) {
    if !ids.is_empty() {
        let event = MessagesRestored { v: VERSION, tenant_id: tenant.clone(), message_ids: ids.to_vec() };
        publish(deps, tenant, EventKind::Restored, None, &event).await;
    }
}

pub(crate) async fn deleted(deps: &Deps, tenant: &TenantId, ids: &[MessageId]) {
    if !ids.is_empty() {
        let event = MessagesDeleted { v: VERSION, tenant_id: tenant.clone(), message_ids: ids.to_vec() };
        publish(deps, tenant, EventKind::Deleted, None, &event).await;
    }
}

pub(crate) async fn updated(deps: &Deps, event: &MessageUpdated) {
    publish(deps, &event.tenant_id, EventKind::Updated, Some(event.message_id), event).await;
}

pub(crate) async fn erased(deps: &Deps, tenant: &TenantId, deleted: u64) {
    let event = TenantErased { v: VERSION, tenant_id: tenant.clone(), deleted };
    publish(deps, tenant, EventKind::Erased, None, &event).await;
}
