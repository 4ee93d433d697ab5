//! The ingest loop: pull a batch, store, publish `MessageStored`, embed, store vectors, publish
//! `MessageEmbedded`, ack. Every step only finishes what is missing, so a redelivery at any point
//! converges on the same rows and never duplicates one.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

mod fate;
mod insert;
mod parse;

use common::bus::{Consumer, Delivery, Disposition, KeepAlive, Rejection};
use common::config::Config;
use common::contract::{EventKind, MessageStored, REQUEST_ID_HEADER, VERSION};
use common::domain::MessageStatus;
use common::store::{Inserted, Origin, Space, StoreError, StoredMessage};
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info_span, warn};

use self::fate::{Fate, IngestError, retry_delay};
use self::parse::{Accepted, parse};
use crate::Deps;
use crate::breaker::State;
use crate::embed::Embeddings;
use crate::metrics::{Metrics, Outcome};
use crate::write::{self, WriteError};

/// Pause after a failed pull before the next.
const PULL_RETRY: Duration = Duration::from_secs(1);
/// Pause between pings of a store that failed a batch.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// Deliveries and what becomes of each.
type Settled = Vec<(Delivery, Fate)>;

/// A step failed for every delivery still in hand: they share its fate.
struct Halted {
    deliveries: Vec<Accepted>,
    error: IngestError,
}

impl Halted {
    fn store(deliveries: Vec<Accepted>, step: &'static str, source: StoreError) -> Self {
        Self { deliveries, error: IngestError::Store { step, source } }
    }
}

pub(crate) struct IngestWorker {
    deps: Deps,
    embeddings: Embeddings,
    space: Space,
    /// Only the loop pulls; the lock lets batches in hand be handled meanwhile.
    consumer: tokio::sync::Mutex<Box<dyn Consumer>>,
    metrics: Metrics,
    batch_size: usize,
    batch_wait: Duration,
    concurrency: usize,
    max_deliveries: u64,
    ack_wait: Duration,
    importance: common::config::ImportanceWeights,
    /// Set when a write found the space no longer active.
    retired: Arc<AtomicBool>,
    /// Set when a batch failed on the store: nothing is pulled until it answers again, so an
    /// outage of any length spends one delivery of the messages in hand, not all of them.
    store_down: AtomicBool,
}

/// Why the ingest loop returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    Shutdown,
    /// Another space became active: this embedder must stop writing.
    Retired,
}

impl IngestWorker {
    pub(crate) fn new(
        config: &Config,
        deps: Deps,
        embeddings: Embeddings,
        space: Space,
        consumer: Box<dyn Consumer>,
        metrics: Metrics,
    ) -> Self {
        Self {
            deps,
            embeddings,
            space,
            consumer: tokio::sync::Mutex::new(consumer),
            metrics,
            batch_size: config.embedder.batch_size,
            batch_wait: config.embedder.batch_wait,
            concurrency: config.embedder.concurrency,
            max_deliveries: config.embedder.max_deliveries,
            ack_wait: config.embedder.ack_wait,
            importance: config.embedder.importance,
            retired: Arc::new(AtomicBool::new(false)),
            store_down: AtomicBool::new(false),
        }
    }

    /// Pulls and handles batches while the space is active, up to `concurrency` at once: until
    /// shutdown (finishing the batches in hand within `grace`) or until a write finds another
    /// space active.
    pub(crate) async fn run(&mut self, space: Space, shutdown: &CancellationToken, grace: Duration) -> Ended {
        self.space = space;
        self.retired.store(false, Ordering::Relaxed);
        let this = &*self;
        let mut handling = FuturesUnordered::new();
        let ended = loop {
            if this.retired.load(Ordering::Relaxed) {
                break Ended::Retired;
            }
            if handling.len() >= this.concurrency {
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => break Ended::Shutdown,
                    _ = handling.next() => continue,
                }
            }
            // While the provider is down, messages wait in the stream: none is pulled, so none
            // spends a delivery, and none is embedded by anything else.
            let ready = async {
                if !this.store_ready(shutdown).await || !this.provider_ready(shutdown).await {
                    return None;
                }
                let mut consumer = this.consumer.lock().await;
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => None,
                    fetched = consumer.fetch(this.batch_size, this.batch_wait) => Some(fetched),
                }
            };
            tokio::pin!(ready);
            // The batches in hand go on while the next is awaited.
            let fetched = loop {
                tokio::select! {
                    biased;
                    fetched = &mut ready => break fetched,
                    Some(()) = handling.next(), if !handling.is_empty() => {}
                }
            };
            let batch = match fetched {
                None => break Ended::Shutdown,
                Some(Ok(batch)) => batch,
                Some(Err(e)) => {
                    warn!(error = %e, cause = ?std::error::Error::source(&e), "pulling from the ingest stream failed; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => break Ended::Shutdown,
                        () = tokio::time::sleep(PULL_RETRY) => continue,
                    }
                }
            };
            if !batch.is_empty() {
                handling.push(this.handle_timed(batch));
            }
        };
        // Batches in hand are finished even during shutdown (bounded by the grace period):
        // whatever is not acked by then is redelivered, and redelivery is harmless.
        let n = handling.len();
        let finish = async { while handling.next().await.is_some() {} };
        if ended == Ended::Shutdown {
            if tokio::time::timeout(grace, finish).await.is_err() {
                warn!(batches = n, "batches did not finish within the grace period; they will be redelivered");
            }
        } else {
            finish.await;
        }
        ended
    }

    async fn handle_timed(&self, batch: Vec<Delivery>) {
        let started = Instant::now();
        let n = batch.len();
        self.handle(batch).await;
        self.metrics.batch_size.observe(n as f64);
        self.metrics.batch_duration.observe(started.elapsed().as_secs_f64());
    }

    /// Waits, after a batch failed on the store, until the store answers again. `false` on
    /// shutdown.
    async fn store_ready(&self, shutdown: &CancellationToken) -> bool {
        while self.store_down.load(Ordering::Relaxed) {
            match self.deps.store.ping().await {
                Ok(()) => {
                    self.store_down.store(false, Ordering::Relaxed);
                    tracing::info!("the store answers again: pulling resumes");
                }
                Err(e) => {
                    debug!(error = %e, "the store does not answer yet; nothing is pulled");
                    tokio::select! {
                        () = shutdown.cancelled() => return false,
                        () = tokio::time::sleep(STORE_RETRY) => {}
                    }
                }
            }
        }
        true
    }

    /// Waits out an open circuit and probes the provider until it closes. `false` on shutdown.
    async fn provider_ready(&self, shutdown: &CancellationToken) -> bool {
        let breaker = self.embeddings.breaker();
        loop {
            if breaker.state() == State::Closed {
                return true;
            }
            match breaker.open_for() {
                Some(wait) if !wait.is_zero() => {
                    tokio::select! {
                        () = shutdown.cancelled() => return false,
                        () = tokio::time::sleep(wait) => {}
                    }
                }
                // Cool-down over (or half-open): probe. Success counts towards closing,
                // failure opens the circuit again; while another caller's probe is out, wait.
                _ => {
                    if shutdown.is_cancelled() {
                        return false;
                    }
                    if !self.embeddings.probe().await && breaker.state() == State::HalfOpen {
                        tokio::select! {
                            () = shutdown.cancelled() => return false,
                            () = tokio::time::sleep(crate::breaker::PROBE_WAIT) => {}
                        }
                    }
                }
            }
        }
    }

    async fn handle(&self, mut batch: Vec<Delivery>) {
        // A message redelivered while the pull was open arrives twice: settle it once.
        batch.sort_by_key(|d| (d.stream_sequence, std::cmp::Reverse(d.delivered)));
        batch.dedup_by_key(|d| d.stream_sequence);
        let mut settled = Settled::with_capacity(batch.len());
        let mut accepted = Vec::with_capacity(batch.len());
        for delivery in batch {
            if delivery.delivered > 1 {
                self.metrics.redeliveries.inc();
            }
            let parsed = if delivery.delivered > self.max_deliveries {
                Err(Rejection {
                    code: "delivery_limit",
                    reason: format!("delivered {} times without success", delivery.delivered),
                })
            } else {
                parse(&self.deps.subjects, &delivery)
            };
            match parsed {
                Ok((message, importance)) => accepted.push(Accepted { delivery, message, importance }),
                Err(rejection) => settled.push((delivery, IngestError::Invalid(rejection).fate())),
            }
        }
        // Invalid events are dead-lettered at once: nothing keeps them alive while the rest works.
        self.settle_all(std::mem::take(&mut settled)).await;
        if accepted.is_empty() {
            return;
        }
        let span = info_span!(
            "ingest_batch",
            messages = accepted.len(),
            request_ids = %accepted.iter().filter_map(|a| a.delivery.message.header(REQUEST_ID_HEADER)).collect::<Vec<_>>().join(","),
        );
        // A slow provider (retries, backoff) may take longer than the ack wait: keep the
        // batch's messages from being redelivered to another replica while we work on them.
        let keepalives: Vec<KeepAlive> = accepted.iter().map(|a| a.delivery.keepalive()).collect();
        let heartbeat = async {
            loop {
                tokio::time::sleep(self.ack_wait / 3).await;
                futures::future::join_all(keepalives.iter().map(KeepAlive::in_progress)).await;
            }
        };
        let n = accepted.len();
        let handled = async {
            let outcome = self.store_and_embed(accepted, &mut settled).await;
            debug!(messages = n, "batch handled");
            outcome
        };
        let outcome = tokio::select! {
            outcome = handled.instrument(span.clone()) => outcome,
            () = heartbeat => Ok(()),
        };
        if let Err(Halted { deliveries, error }) = outcome {
            span.in_scope(|| warn!(error = %error, cause = ?std::error::Error::source(&error), messages = deliveries.len(), "batch failed; it will be redelivered"));
            if matches!(error, IngestError::Store { .. } | IngestError::Embed(WriteError::Store(_))) {
                self.store_down.store(true, Ordering::Relaxed);
            }
            let fate = error.fate();
            settled.extend(deliveries.into_iter().map(|a| (a.delivery, fate.clone())));
        }
        self.settle_all(settled).instrument(span).await;
    }

    /// Settles every delivery as its fate says, counting each: the ingest loop's one decision.
    async fn settle_all(&self, settled: Settled) {
        futures::future::join_all(settled.into_iter().map(|(delivery, fate)| async move {
            match fate {
                Fate::Done(outcome) => {
                    self.metrics.count(outcome, 1);
                    settle(delivery, Disposition::Ack).await;
                }
                Fate::Retry(at_least) => {
                    self.metrics.count(Outcome::Retried, 1);
                    let delay = retry_delay(delivery.delivered).max(at_least.unwrap_or_default());
                    settle(delivery, Disposition::Retry(Some(delay))).await;
                }
                Fate::DeadLetter(rejection) => self.dead_letter(delivery, rejection).await,
            }
        }))
        .await;
    }

    /// Dead-letters an event, counted once it is in the dead-letter stream. If that publish
    /// fails, the event is tried again later; once it has used up its deliveries it is
    /// terminated (never redelivered), counted and logged, so no poison event circles forever.
    async fn dead_letter(&self, delivery: Delivery, rejection: Rejection) {
        let reason = rejection.code;
        let labels = crate::metrics::ReasonLabels { reason };
        let subject = delivery.message.subject.clone();
        warn!(%subject, code = reason, reason = %rejection.reason, "dead-lettering an event");
        let Err(e) = delivery.settle(Disposition::Reject(rejection)).await else {
            self.metrics.count(Outcome::Rejected, 1);
            self.metrics.dead_letters.get_or_create(&labels).inc();
            return;
        };
        if delivery.delivered < self.max_deliveries {
            warn!(%subject, error = %e, "publishing a dead letter failed; it will be tried again");
            self.metrics.count(Outcome::Retried, 1);
            let delay = retry_delay(delivery.delivered);
            settle(delivery, Disposition::Retry(Some(delay))).await;
            return;
        }
        error!(%subject, code = reason, error = %e, delivered = delivery.delivered, "publishing a dead letter keeps failing; the event is terminated unsaved");
        if settle(delivery, Disposition::Terminate).await {
            self.metrics.terminated.get_or_create(&labels).inc();
        }
    }

    async fn store_and_embed(&self, accepted: Vec<Accepted>, settled: &mut Settled) -> Result<(), Halted> {
        let (accepted, stored) = self.insert(accepted, settled).await?;
        let accepted = self.drop_deleted(accepted, &stored, settled).await?;

        let mut ready = Vec::with_capacity(accepted.len());
        for a in accepted {
            let key = a.message.key();
            match stored.get(&key) {
                Some(inserted) => ready.push((a, inserted)),
                // The insert committed, so the row must be there; redeliver rather than guess.
                None => {
                    warn!(message = %key, "stored row not found after insert; retrying");
                    settled.push((a.delivery, IngestError::Vanished(key).fate()));
                }
            }
        }
        if ready.is_empty() {
            return Ok(());
        }
        let halt = |ready: Vec<(Accepted, &Inserted)>, error| Halted {
            deliveries: ready.into_iter().map(|(a, _)| a).collect(),
            error,
        };

        // Events are at-least-once; their ids let the events stream drop a repeat within its window.
        let published = futures::future::try_join_all(ready.iter().map(|(_, Inserted { row, .. })| {
            let event = MessageStored {
                v: VERSION,
                message_id: row.message_id,
                tenant_id: row.tenant_id.clone(),
                conversation_id: row.conversation_id.clone(),
                role: row.role,
                importance: row.importance,
                stored_at: row.stored_at,
            };
            write::publish(&self.deps, EventKind::Stored, row, serde_json::to_vec(&event).expect("events serialise"))
        }));
        if let Err(source) = published.await {
            return Err(halt(ready, IngestError::Bus { step: "publishing MessageStored", source }));
        }

        // Two events may carry the same message id (a re-publish after the duplicate window):
        // embed it once.
        let mut seen = HashSet::new();
        let to_embed: Vec<&StoredMessage> = ready
            .iter()
            .map(|(_, i)| &i.row)
            .filter(|row| row.status != MessageStatus::Embedded && seen.insert(row.key()))
            .collect();
        let refused = match write::embed_rows(&self.deps, &self.embeddings, &self.space, &to_embed).await {
            Ok(refused) => refused,
            Err(e) => {
                if let WriteError::Store(StoreError::SpaceInactive(_)) = e {
                    // Another space was activated: this embedder's provider is retired.
                    self.retired.store(true, Ordering::Relaxed);
                }
                return Err(halt(ready, IngestError::Embed(e)));
            }
        };
        let rows: Vec<&StoredMessage> = ready.iter().map(|(_, i)| &i.row).collect();
        if let Err(source) = write::publish_outcomes(&self.deps, &self.space, &rows, &refused).await {
            return Err(halt(ready, IngestError::Bus { step: "publishing MessageEmbedded", source }));
        }
        self.metrics.count(Outcome::Failed, refused.len());
        let fresh = ready.iter().filter(|(_, i)| i.new).count();
        debug!(stored = fresh, duplicates = ready.len() - fresh, "batch committed");
        // Acked only now: acking first loses the message if a commit fails, and a redelivery is
        // harmless because every step above skips what is already done.
        settled.extend(
            ready
                .into_iter()
                .map(|(a, i)| (a.delivery, Fate::Done(if i.new { Outcome::Stored } else { Outcome::Duplicate }))),
        );
        Ok(())
    }
}

/// Where a delivery sits in the ingest stream.
fn origin(delivery: &Delivery) -> Origin {
    Origin { sequence: delivery.stream_sequence, published_at: delivery.published_at }
}

/// Settles a delivery; `false` if that failed (it will be redelivered).
async fn settle(delivery: Delivery, disposition: Disposition) -> bool {
    let subject = delivery.message.subject.clone();
    match delivery.settle(disposition).await {
        Ok(()) => true,
        Err(e) => {
            // Not acked means redelivered after the ack wait: nothing is lost.
            warn!(%subject, error = %e, "settling a delivery failed; it will be redelivered");
            false
        }
    }
}
