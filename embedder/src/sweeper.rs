//! Upkeep beside the ingest loop: the sweeper re-embeds messages left `pending` (their events
//! dead-lettered after a long outage, say) or `failed` (up to a number of tries) once the
//! provider is healthy, one replica at a time; and the backlog gauges are kept current.

use std::time::Duration;

use crate::Deps;
use chrono::Utc;
use common::config::SweeperConfig;
use common::contract::StreamKind;
use common::store::{Space, StoredMessage, locks};
use tokio_util::sync::CancellationToken;

use crate::breaker::State;
use crate::embed::Embeddings;
use crate::metrics::{BacklogLabels, BacklogSource, ConsumerLabels, Metrics};
use crate::write::{self, WriteError};

/// How often the backlog gauges are refreshed.
const BACKLOG_EVERY: Duration = Duration::from_secs(10);
/// Messages swept per batch.
const BATCH: u32 = 64;

pub(crate) struct Sweeper {
    pub(crate) deps: Deps,
    pub(crate) embeddings: Embeddings,
    pub(crate) metrics: Metrics,
    pub(crate) config: SweeperConfig,
    pub(crate) space_id: i32,
}

impl Sweeper {
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let mut sweep = tokio::time::interval(self.config.interval);
        let mut backlog = tokio::time::interval(BACKLOG_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        backlog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = backlog.tick() => self.measure_backlog().await,
                _ = sweep.tick() => {
                    match self.sweep(&shutdown).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(messages = n, "sweeper re-embedded messages left behind"),
                        Err(e) => tracing::warn!(error = %e, "sweeping failed; trying again next round"),
                    }
                }
            }
        }
    }

    /// One round: `Ok(n)` messages re-embedded (or refused again).
    pub(crate) async fn sweep(&self, shutdown: &CancellationToken) -> Result<usize, WriteError> {
        if self.embeddings.breaker().state() != State::Closed {
            return Ok(0);
        }
        let store = &self.deps.store;
        let Some(space) = store.space(self.space_id).await?.filter(|s| s.active) else { return Ok(0) };
        let Some(_lock) = store.try_lock(locks::SWEEPER).await? else { return Ok(0) };
        let before = Utc::now() - chrono::Duration::from_std(self.config.after).unwrap_or_default();
        let mut swept = 0;
        while !shutdown.is_cancelled() {
            let rows = store.stale(before, self.config.max_attempts, BATCH).await?;
            if rows.is_empty() {
                break;
            }
            if let Err(e) = self.embed(&space, &rows).await {
                // Whatever these rows hold, let the next round try others first.
                let keys: Vec<_> = rows.iter().map(|r| r.key()).collect();
                store.touch(&keys).await?;
                return Err(e);
            }
            swept += rows.len();
            self.metrics.swept.inc_by(rows.len() as u64);
            if rows.len() < BATCH as usize {
                break;
            }
        }
        self.metrics.sweeps.inc();
        Ok(swept)
    }

    async fn embed(&self, space: &Space, rows: &[StoredMessage]) -> Result<(), WriteError> {
        let rows: Vec<&StoredMessage> = rows.iter().collect();
        let refused = write::embed_rows(&self.deps, &self.embeddings, space, &rows).await?;
        if let Err(e) = write::publish_outcomes(&self.deps, space, &rows, &refused).await {
            // The rows are written; only the announcement is missing.
            tracing::warn!(error = %e, "publishing the sweeper's events failed");
        }
        Ok(())
    }

    async fn measure_backlog(&self) {
        let gauge = |source| self.metrics.backlog.get_or_create(&BacklogLabels { source }).clone();
        match self.deps.store.pending_count().await {
            Ok(n) => {
                gauge(BacklogSource::Store).set(n);
            }
            Err(e) => tracing::debug!(error = %e, "counting pending messages failed"),
        }
        let consumer = self.deps.subjects.embedder_consumer();
        match self.deps.bus.consumer_state(StreamKind::Ingest, consumer).await {
            Ok(state) => {
                let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
                gauge(BacklogSource::Stream).set(n(state.pending + state.ack_pending));
                let labels = ConsumerLabels { consumer };
                self.metrics.consumer_pending.get_or_create(&labels).set(n(state.pending));
                self.metrics.consumer_ack_pending.get_or_create(&labels).set(n(state.ack_pending));
                self.metrics.consumer_redelivered.get_or_create(&labels).set(n(state.redelivered));
            }
            Err(e) => tracing::debug!(error = %e, "reading the ingest consumer failed"),
        }
    }
}
