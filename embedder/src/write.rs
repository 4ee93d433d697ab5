//! Embedding stored messages into the active space and announcing the outcome: shared by the
//! ingest loop and the sweeper.

use std::collections::HashMap;

use crate::Deps;
use common::bus::{BusError, Envelope};
use common::contract::{EventKind, MessageEmbedded, MessageEmbeddingFailed, VERSION};
use common::domain::MessageKey;
use common::store::{Failure, NewVector, Space, StoreError, StoredMessage};

use crate::embed::Embeddings;
use crate::provider::{ProviderError, Purpose};

#[derive(Debug, thiserror::Error)]
pub(crate) enum WriteError {
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error("storing vectors failed")]
    Store(#[from] StoreError),
}

/// Embeds `rows` and stores the vectors in `space` (the active one), recording refusals as
/// failures. Returns the refused messages and why.
pub(crate) async fn embed_rows(
    deps: &Deps,
    embeddings: &Embeddings,
    space: &Space,
    rows: &[&StoredMessage],
) -> Result<HashMap<MessageKey, String>, WriteError> {
    let mut refused = HashMap::new();
    if rows.is_empty() {
        return Ok(refused);
    }
    let texts: Vec<String> =
        rows.iter().map(|r| common::domain::embedding_text(r.name.as_deref(), &r.content)).collect();
    let answers = embeddings.embed(&texts, Purpose::Document).await?;
    let mut vectors = Vec::with_capacity(answers.len());
    let mut failures = Vec::new();
    for (row, answer) in rows.iter().zip(answers) {
        match answer {
            Ok(vector) => vectors.push(NewVector {
                message_id: row.message_id,
                tenant_id: row.tenant_id.clone(),
                vector,
                revision: row.revision,
            }),
            Err(refusal) => {
                tracing::warn!(message_id = %row.message_id, reason = %refusal, "the provider refused a message; it is marked failed");
                refused.insert(row.key(), refusal.0.clone());
                failures.push(Failure {
                    message_id: row.message_id,
                    tenant_id: row.tenant_id.clone(),
                    reason: refusal.0,
                    revision: row.revision,
                });
            }
        }
    }
    deps.store.save_vectors(space, &vectors).await?;
    deps.store.mark_failed(space, &failures).await?;
    Ok(refused)
}

/// Publishes `MessageEmbedded` for every row, or `MessageEmbeddingFailed` for the refused ones,
/// concurrently; each event's id lets the events stream drop a repeat.
pub(crate) async fn publish_outcomes(
    deps: &Deps,
    space: &Space,
    rows: &[&StoredMessage],
    refused: &HashMap<MessageKey, String>,
) -> Result<(), BusError> {
    let publishes = rows.iter().map(|row| {
        let (kind, payload) = match refused.get(&row.key()) {
            None => (
                EventKind::Embedded,
                serde_json::to_vec(&MessageEmbedded {
                    v: VERSION,
                    message_id: row.message_id,
                    tenant_id: row.tenant_id.clone(),
                    space: space.reference.clone(),
                }),
            ),
            Some(reason) => (
                EventKind::EmbeddingFailed,
                serde_json::to_vec(&MessageEmbeddingFailed {
                    v: VERSION,
                    message_id: row.message_id,
                    tenant_id: row.tenant_id.clone(),
                    space: space.reference.clone(),
                    reason: reason.clone(),
                }),
            ),
        };
        publish(deps, kind, row, payload.expect("events serialise"))
    });
    futures::future::try_join_all(publishes).await.map(|_| ())
}

/// Publishes one event about `row`, with an id that deduplicates a repeat.
pub(crate) async fn publish(
    deps: &Deps,
    kind: EventKind,
    row: &StoredMessage,
    payload: Vec<u8>,
) -> Result<(), BusError> {
    let envelope = Envelope::new(deps.subjects.event(&row.tenant_id, kind, row.message_id), payload);
    deps.bus.publish(envelope, Some(&format!("{}-{}", kind.as_str(), row.key()))).await.map(|_| ())
}
