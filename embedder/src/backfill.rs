//! Backfill: embeds every stored message into a space that is not active yet, then activates
//! it. It walks messages in id order from a cursor saved with every batch, so a stopped backfill
//! resumes where it was; a final pass from the start catches messages stored meanwhile. Only one
//! backfill of a space runs at a time, across every replica.

use std::time::{Duration, Instant};

use crate::Deps;
use common::store::{Failure, NewVector, Space, StoreError, StoredMessage, locks};
use tokio_util::sync::CancellationToken;

use crate::embed::Embeddings;
use crate::metrics::Metrics;
use crate::provider::{ProviderError, Purpose};
use crate::write;

/// Pause before trying again after a transient failure.
const RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every message is covered and the space is now the active one.
    Activated,
    /// Every message is covered; activation was not asked for.
    Complete,
    /// Another process is backfilling this space.
    Busy,
    /// Shutdown came first; the cursor is saved.
    Stopped,
}

/// Where a backfill stands, for progress output.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub space_id: i32,
    /// Messages embedded (or refused) by this run.
    pub done: i64,
    /// Messages the space lacked when this run started.
    pub missing_at_start: i64,
    pub started: Instant,
}

impl Progress {
    pub fn per_second(&self) -> f64 {
        self.done as f64 / self.started.elapsed().as_secs_f64().max(1e-3)
    }
}

pub struct Backfill {
    pub deps: Deps,
    pub embeddings: Embeddings,
    pub metrics: Metrics,
    /// Messages per batch.
    pub batch_size: u32,
    /// Activate the space once it covers every message.
    pub activate: bool,
}

impl Backfill {
    /// Runs the backfill of `space` to the end (or shutdown), calling `progress` after every batch.
    pub async fn run(
        &self,
        space: &Space,
        shutdown: &CancellationToken,
        mut progress: impl FnMut(&Progress),
    ) -> Result<Outcome, StoreError> {
        let store = &self.deps.store;
        let Some(_lock) = store.try_lock(locks::backfill(space.id)).await? else {
            return Ok(Outcome::Busy);
        };
        // The cursor as saved by the last run, read under the lock.
        let space = store.space(space.id).await?.unwrap_or_else(|| space.clone());
        let coverage = store.coverage(&space).await?;
        let mut state =
            Progress { space_id: space.id, done: 0, missing_at_start: coverage.missing, started: Instant::now() };
        self.metrics.backfill_remaining.set(coverage.missing);
        tracing::info!(space = space.id, messages = coverage.messages, missing = coverage.missing, resume_after = ?space.backfill_cursor, "backfill started");
        let mut cursor = space.backfill_cursor.clone();
        loop {
            if shutdown.is_cancelled() {
                return Ok(Outcome::Stopped);
            }
            let rows = store.unembedded(&space, cursor.as_ref(), self.batch_size).await?;
            let Some(last) = rows.last().map(|r| r.key()) else {
                if cursor.is_some() {
                    // The end of the (tenant, id) order; messages stored meanwhile may sit before the cursor.
                    cursor = None;
                    continue;
                }
                if !self.activate {
                    return Ok(Outcome::Complete);
                }
                // Ingest goes on meanwhile: a few messages may have arrived since this pass.
                let Some(leftovers) = store.activate_space(&space, self.batch_size).await? else { continue };
                self.metrics.backfill_remaining.set(0);
                tracing::info!(
                    space = space.id,
                    done = state.done,
                    leftovers = leftovers.len(),
                    "backfill complete; the space is active"
                );
                self.catch_up(&space, &leftovers, shutdown).await;
                return Ok(Outcome::Activated);
            };
            let texts: Vec<String> =
                rows.iter().map(|r| common::domain::embedding_text(r.name.as_deref(), &r.content)).collect();
            let answers = match self.embeddings.embed(&texts, Purpose::Document).await {
                Ok(answers) => answers,
                Err(e) => {
                    let wait = match e {
                        ProviderError::CircuitOpen { retry_in } => retry_in,
                        e => e.retry_after().unwrap_or(RETRY),
                    };
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(Outcome::Stopped),
                        () = tokio::time::sleep(wait) => continue,
                    }
                }
            };
            let mut vectors = Vec::with_capacity(rows.len());
            let mut failures = Vec::new();
            for (row, answer) in rows.iter().zip(answers) {
                match answer {
                    Ok(vector) => {
                        vectors.push(NewVector {
                            message_id: row.message_id,
                            tenant_id: row.tenant_id.clone(),
                            vector,
                            revision: row.revision,
                        });
                    }
                    Err(refused) => failures.push(Failure {
                        message_id: row.message_id,
                        tenant_id: row.tenant_id.clone(),
                        reason: refused.0,
                        revision: row.revision,
                    }),
                }
            }
            store.save_backfill(&space, &vectors, &failures, &last).await?;
            cursor = Some(last);
            let n = rows.len() as i64;
            state.done += n;
            self.metrics.backfilled.inc_by(n as u64);
            self.metrics.backfill_remaining.set((state.missing_at_start - state.done).max(0));
            progress(&state);
        }
    }

    /// Embeds the messages that arrived between the last pass and the activation, now into the
    /// active space. What fails here is left `pending` for the ingest redelivery or the sweeper.
    async fn catch_up(&self, space: &Space, leftovers: &[StoredMessage], shutdown: &CancellationToken) {
        let space = Space { active: true, ..space.clone() };
        for chunk in leftovers.chunks(self.batch_size.max(1) as usize) {
            if shutdown.is_cancelled() {
                return;
            }
            let rows: Vec<&StoredMessage> = chunk.iter().collect();
            match write::embed_rows(&self.deps, &self.embeddings, &space, &rows).await {
                Ok(refused) => {
                    if let Err(e) = write::publish_outcomes(&self.deps, &space, &rows, &refused).await {
                        tracing::warn!(error = %e, "announcing caught-up messages failed");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "embedding messages stored during the switch failed; the sweeper will retry")
                }
            }
        }
    }
}
