//! The ingest loop: pull a batch, store, publish `MessageStored`, embed, store vectors, publish
//! `MessageEmbedded`, ack. Every step only finishes what is missing, so a redelivery at any point
//! converges on the same rows and never duplicates one.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use common::Deps;
use common::bus::{Consumer, Delivery, Disposition, KeepAlive, Rejection};
use common::config::Config;
use common::contract::{
    EventKind, MessageReceived, MessageStored, REEMBED_HEADER, REQUEST_ID_HEADER, StreamKind, Subjects, VERSION,
};
use common::domain::{MessageId, MessageStatus, NewMessage};
use common::store::{Inserted, NewRow, Origin, Space, StoreError, StoredMessage};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};

use crate::breaker::State;
use crate::embed::Embeddings;
use crate::metrics::{Metrics, Outcome};
use crate::write::{self, WriteError};

/// Transient failures (store, bus) are retried after a delay that doubles with every delivery,
/// up to this cap, so an outage of many minutes does not exhaust a message's deliveries.
const RETRY_DELAY_MAX: Duration = Duration::from_secs(60);
/// Pause after a failed pull before the next.
const PULL_RETRY: Duration = Duration::from_secs(1);

/// The delay before redelivering a message delivered `delivered` times: 1 s, 2 s, 4 s … 60 s.
fn retry_delay(delivered: u64) -> Duration {
    let exponent = u32::try_from(delivered.saturating_sub(1)).unwrap_or(u32::MAX).min(6);
    Duration::from_secs(1u64 << exponent).min(RETRY_DELAY_MAX)
}

pub(crate) struct IngestWorker {
    deps: Deps,
    embeddings: Embeddings,
    space: Space,
    consumer: Box<dyn Consumer>,
    metrics: Metrics,
    batch_size: usize,
    batch_wait: Duration,
    max_deliveries: u64,
    ack_wait: Duration,
    importance: common::config::ImportanceWeights,
    /// Set when a write found the space no longer active.
    retired: Arc<AtomicBool>,
}

/// Why the ingest loop returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    Shutdown,
    /// Another space became active: this embedder must stop writing.
    Retired,
}

/// A delivery that passed validation.
struct Accepted {
    delivery: Delivery,
    message: NewMessage,
    /// The importance it had when exported (an import), if given.
    importance: Option<f64>,
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
            consumer,
            metrics,
            batch_size: config.embedder.batch_size,
            batch_wait: config.embedder.batch_wait,
            max_deliveries: config.embedder.max_deliveries,
            ack_wait: config.embedder.ack_wait,
            importance: config.embedder.importance,
            retired: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Pulls and handles batches while the space is active: until shutdown (finishing the batch
    /// in hand within `grace`) or until a write finds another space active.
    pub(crate) async fn run(&mut self, space: Space, shutdown: &CancellationToken, grace: Duration) -> Ended {
        self.space = space;
        self.retired.store(false, Ordering::Relaxed);
        loop {
            if self.retired.load(Ordering::Relaxed) {
                return Ended::Retired;
            }
            // While the provider is down, messages wait in the stream: none is pulled, so none
            // spends a delivery, and none is embedded by anything else.
            if !self.provider_ready(shutdown).await {
                return Ended::Shutdown;
            }
            let fetched = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ended::Shutdown,
                fetched = self.consumer.fetch(self.batch_size, self.batch_wait) => fetched,
            };
            let batch = match fetched {
                Ok(batch) => batch,
                Err(e) => {
                    warn!(error = %e, cause = ?std::error::Error::source(&e), "pulling from the ingest stream failed; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return Ended::Shutdown,
                        () = tokio::time::sleep(PULL_RETRY) => continue,
                    }
                }
            };
            if batch.is_empty() {
                continue;
            }
            // A batch in hand is finished even during shutdown (bounded by the grace period):
            // whatever is not acked by then is redelivered, and redelivery is harmless.
            let started = Instant::now();
            let n = batch.len();
            let deadline = async {
                shutdown.cancelled().await;
                tokio::time::sleep(grace).await;
            };
            tokio::select! {
                () = self.handle(batch) => {}
                () = deadline => {
                    warn!(messages = n, "batch did not finish within the grace period; it will be redelivered");
                    return Ended::Shutdown;
                }
            }
            self.metrics.batch_size.observe(n as f64);
            self.metrics.batch_duration.observe(started.elapsed().as_secs_f64());
        }
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
                // failure opens the circuit again.
                _ => {
                    if shutdown.is_cancelled() {
                        return false;
                    }
                    self.embeddings.probe().await;
                }
            }
        }
    }

    /// Dead-letters a delivery that can never succeed, counting it by its reason's code.
    async fn reject(&self, delivery: Delivery, rejection: Rejection) {
        let reason = rejection.code;
        // Counted once it is in the dead-letter stream: a failed publish means a redelivery.
        if settle(delivery, Disposition::Reject(rejection)).await {
            self.metrics.count(Outcome::Rejected, 1);
            self.metrics.dead_letters.get_or_create(&crate::metrics::ReasonLabels { reason }).inc();
        }
    }

    async fn handle(&self, mut batch: Vec<Delivery>) {
        // A message redelivered while the pull was open arrives twice: settle it once.
        batch.sort_by_key(|d| (d.stream_sequence, std::cmp::Reverse(d.delivered)));
        batch.dedup_by_key(|d| d.stream_sequence);
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
                Err(rejection) => {
                    warn!(subject = %delivery.message.subject, code = rejection.code, reason = %rejection.reason, "dead-lettering an invalid event");
                    self.reject(delivery, rejection).await;
                }
            }
        }
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
            self.store_and_embed(accepted).await;
            debug!(messages = n, "batch handled");
        };
        tokio::select! {
            () = handled.instrument(span) => {}
            () = heartbeat => {}
        }
    }

    /// Inserts the batch's rows. A row the database refuses (bad data) must not hold back the
    /// others: the batch is then inserted row by row and only the refused rows are dead-lettered.
    /// `None` when the batch was handed back for redelivery.
    async fn insert(&self, accepted: Vec<Accepted>) -> Option<(Vec<Accepted>, HashMap<MessageId, Inserted>)> {
        // Re-embeds after an edit only ever find a stored row: were the message deleted since,
        // inserting would bring it back.
        let (reembeds, accepted): (Vec<Accepted>, Vec<Accepted>) =
            accepted.into_iter().partition(|a| a.delivery.message.header(REEMBED_HEADER).is_some());
        let Some((mut kept, mut stored)) = self.insert_new(accepted).await else {
            // The new rows went back for redelivery: the re-embeds go with them.
            futures::future::join_all(reembeds.into_iter().map(|a| {
                let delay = retry_delay(a.delivery.delivered);
                settle(a.delivery, Disposition::Retry(Some(delay)))
            }))
            .await;
            return None;
        };
        let mut reembeds = reembeds.into_iter();
        while let Some(a) = reembeds.next() {
            match self.deps.store.get_message(a.message.message_id).await {
                Ok(Some(row)) if row.tenant_id == a.message.tenant_id => {
                    stored.insert(row.id, Inserted { row, new: false });
                    kept.push(a);
                }
                Ok(_) => {
                    debug!(message_id = %a.message.message_id, "dropping the re-embed of a deleted message");
                    self.metrics.count(Outcome::Dropped, 1);
                    settle(a.delivery, Disposition::Ack).await;
                }
                Err(e) => {
                    let rest = kept.into_iter().chain(std::iter::once(a)).chain(reembeds).collect();
                    self.retry_all(rest, "reading an edited message", &e, None).await;
                    return None;
                }
            }
        }
        Some((kept, stored))
    }

    async fn insert_new(&self, accepted: Vec<Accepted>) -> Option<(Vec<Accepted>, HashMap<MessageId, Inserted>)> {
        let now = Utc::now();
        let row = |a: &Accepted| NewRow {
            message: a.message.clone(),
            importance: match a.importance {
                Some(kept) if !a.message.pinned && a.message.importance_override.is_none() => kept,
                _ => common::domain::importance::score(&a.message, now, self.importance),
            },
            origin: Some(Origin { sequence: a.delivery.stream_sequence, published_at: a.delivery.published_at }),
        };
        let rows: Vec<NewRow> = accepted.iter().map(row).collect();
        let by_id = |inserted: Vec<Inserted>| inserted.into_iter().map(|r| (r.row.id, r)).collect::<HashMap<_, _>>();
        match self.deps.store.insert_messages(&rows).await {
            Ok(inserted) => return Some((accepted, by_id(inserted))),
            Err(e) if e.is_data_error() && accepted.len() > 1 => {
                warn!(error = %e, "the database refused a row; inserting the batch row by row");
            }
            Err(e) => {
                self.retry_all(accepted, "storing messages", &e, None).await;
                return None;
            }
        }
        let mut kept = Vec::with_capacity(accepted.len());
        let mut stored = HashMap::with_capacity(accepted.len());
        let mut pending = accepted.into_iter();
        while let Some(a) = pending.next() {
            match self.deps.store.insert_messages(&[row(&a)]).await {
                Ok(inserted) => {
                    stored.extend(by_id(inserted));
                    kept.push(a);
                }
                Err(e) if e.is_data_error() => {
                    let reason = format!(
                        "the database refused the message: {}",
                        std::error::Error::source(&e).map_or_else(|| e.to_string(), ToString::to_string)
                    );
                    self.reject(a.delivery, Rejection { code: "store_rejected", reason }).await;
                }
                Err(e) => {
                    let rest: Vec<Accepted> = kept.into_iter().chain(std::iter::once(a)).chain(pending).collect();
                    self.retry_all(rest, "storing messages", &e, None).await;
                    return None;
                }
            }
        }
        Some((kept, stored))
    }

    async fn store_and_embed(&self, accepted: Vec<Accepted>) {
        let Some((accepted, stored)) = self.insert(accepted).await else { return };
        let Some(accepted) = self.drop_deleted(accepted, &stored).await else { return };

        // An id already stored for another tenant (a client-chosen id colliding) is never valid.
        let mut ready = Vec::with_capacity(accepted.len());
        for a in accepted {
            match stored.get(&a.message.message_id) {
                Some(inserted) if inserted.row.tenant_id == a.message.tenant_id => ready.push((a, inserted)),
                Some(_) => {
                    let rejection = Rejection {
                        code: "id_conflict",
                        reason: format!("message id {} is already used", a.message.message_id),
                    };
                    self.reject(a.delivery, rejection).await;
                }
                None => {
                    // The insert committed, so the row must be there; redeliver rather than guess.
                    warn!(message_id = %a.message.message_id, "stored row not found after insert; retrying");
                    self.metrics.count(Outcome::Retried, 1);
                    let delay = retry_delay(a.delivery.delivered);
                    settle(a.delivery, Disposition::Retry(Some(delay))).await;
                }
            }
        }
        if ready.is_empty() {
            return;
        }

        // Events are at-least-once; their ids let the events stream drop a repeat within its window.
        let stored = futures::future::try_join_all(ready.iter().map(|(_, Inserted { row, .. })| {
            let event = MessageStored {
                v: VERSION,
                message_id: row.id,
                tenant_id: row.tenant_id.clone(),
                conversation_id: row.conversation_id.clone(),
                role: row.role,
                importance: row.importance,
                stored_at: row.stored_at,
            };
            write::publish(&self.deps, EventKind::Stored, row, serde_json::to_vec(&event).expect("events serialise"))
        }));
        if let Err(e) = stored.await {
            let accepted = ready.into_iter().map(|(a, _)| a).collect();
            return self.retry_all(accepted, "publishing MessageStored", &e, None).await;
        }

        // Two events may carry the same message id (a re-publish after the duplicate window):
        // embed it once.
        let mut seen = HashSet::new();
        let to_embed: Vec<&StoredMessage> = ready
            .iter()
            .map(|(_, i)| &i.row)
            .filter(|row| row.status != MessageStatus::Embedded && seen.insert(row.id))
            .collect();
        let refused = match write::embed_rows(&self.deps, &self.embeddings, &self.space, &to_embed).await {
            Ok(refused) => refused,
            Err(e) => {
                if let WriteError::Store(StoreError::SpaceInactive(_)) = e {
                    // Another space was activated: this embedder's provider is retired.
                    self.retired.store(true, Ordering::Relaxed);
                }
                let retry_after = match &e {
                    WriteError::Provider(p) => p.retry_after(),
                    WriteError::Store(_) => None,
                };
                let accepted = ready.into_iter().map(|(a, _)| a).collect();
                return self.retry_all(accepted, "embedding", &e, retry_after).await;
            }
        };
        let rows: Vec<&StoredMessage> = ready.iter().map(|(_, i)| &i.row).collect();
        if let Err(e) = write::publish_outcomes(&self.deps, &self.space, &rows, &refused).await {
            let accepted = ready.into_iter().map(|(a, _)| a).collect();
            return self.retry_all(accepted, "publishing MessageEmbedded", &e, None).await;
        }
        self.metrics.count(Outcome::Failed, refused.len());

        let fresh = ready.iter().filter(|(_, i)| i.new).count();
        self.metrics.count(Outcome::Stored, fresh);
        self.metrics.count(Outcome::Duplicate, ready.len() - fresh);
        debug!(stored = fresh, duplicates = ready.len() - fresh, "batch committed");
        // Ack only now: acking first loses the message if a commit fails, and a redelivery is
        // harmless because every step above skips what is already done.
        futures::future::join_all(ready.into_iter().map(|(a, _)| settle(a.delivery, Disposition::Ack))).await;
    }

    /// Acks, without storing, the events a tombstone stopped (their message, conversation or
    /// tenant was deleted after they were accepted) and returns the rest. `None` when the batch
    /// was handed back for redelivery.
    async fn drop_deleted(
        &self,
        accepted: Vec<Accepted>,
        stored: &HashMap<MessageId, Inserted>,
    ) -> Option<Vec<Accepted>> {
        let missing: Vec<NewRow> = accepted
            .iter()
            .filter(|a| !stored.contains_key(&a.message.message_id))
            .map(|a| NewRow {
                message: a.message.clone(),
                importance: 0.0,
                origin: Some(Origin { sequence: a.delivery.stream_sequence, published_at: a.delivery.published_at }),
            })
            .collect();
        if missing.is_empty() {
            return Some(accepted);
        }
        let dropped: HashSet<MessageId> = match self.deps.store.tombstoned(&missing).await {
            Ok(ids) => ids.into_iter().collect(),
            Err(e) => {
                self.retry_all(accepted, "checking tombstones", &e, None).await;
                return None;
            }
        };
        let mut kept = Vec::with_capacity(accepted.len());
        for a in accepted {
            if dropped.contains(&a.message.message_id) && !stored.contains_key(&a.message.message_id) {
                debug!(message_id = %a.message.message_id, "dropping an event of deleted data");
                self.metrics.count(Outcome::Dropped, 1);
                settle(a.delivery, Disposition::Ack).await;
            } else {
                kept.push(a);
            }
        }
        Some(kept)
    }

    /// Hands the batch back for redelivery after its backoff, or after `at_least` when the
    /// provider asked for more.
    async fn retry_all(
        &self,
        accepted: Vec<Accepted>,
        step: &str,
        error: &(dyn std::error::Error + Send + Sync),
        at_least: Option<Duration>,
    ) {
        warn!(step, error = %error, cause = ?error.source(), messages = accepted.len(), "batch failed; it will be redelivered");
        self.metrics.count(Outcome::Retried, accepted.len());
        futures::future::join_all(accepted.into_iter().map(|a| {
            let delay = retry_delay(a.delivery.delivered).max(at_least.unwrap_or_default());
            settle(a.delivery, Disposition::Retry(Some(delay)))
        }))
        .await;
    }
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

/// Reads and validates one ingest event with the gateway's own rules.
fn parse(subjects: &Subjects, delivery: &Delivery) -> Result<(NewMessage, Option<f64>), Rejection> {
    let m = &delivery.message;
    let reject = |code: &'static str, reason: String| Rejection { code, reason };
    let (tenant_token, id_token) = subjects
        .parse_ingest(&m.subject)
        .ok_or_else(|| reject("bad_subject", format!("`{}` is not <prefix>.v1.ingest.<tenant>[.<id>]", m.subject)))?;
    let event: MessageReceived = serde_json::from_slice(&m.payload)
        .map_err(|e| reject("malformed_json", format!("payload is not a valid MessageReceived: {e}")))?;
    if event.v != VERSION {
        return Err(reject(
            "unsupported_version",
            format!("payload version {} is not supported (expected {VERSION})", event.v),
        ));
    }
    if let Some(i) = event.importance
        && !(0.0..=1.0).contains(&i)
    {
        return Err(reject("invalid_message", format!("importance must be between 0 and 1, got {i}")));
    }
    let mut input = event.message;
    if let Some(token) = id_token {
        let subject_id = MessageId::parse(token)
            .map_err(|_| reject("bad_subject", format!("`{token}` in the subject is not a UUID")))?;
        match input.message_id.as_deref().map(MessageId::parse) {
            Some(Ok(payload_id)) if payload_id != subject_id => {
                return Err(reject("id_mismatch", format!("subject names message {subject_id}, payload {payload_id}")));
            }
            None => input.message_id = Some(subject_id.to_string()),
            _ => {}
        }
    }
    if input.message_id.is_none()
        && let Some(header) = m.header("Nats-Msg-Id").filter(|h| MessageId::parse(h).is_ok())
    {
        input.message_id = Some(header.to_owned());
    }
    let stream_name = subjects.stream(StreamKind::Ingest);
    let seed = format!("{stream_name}:{}", delivery.stream_sequence);
    let message = input
        .validate(delivery.published_at, || MessageId::derived(delivery.published_at, seed.as_bytes()))
        .map_err(|e| reject("invalid_message", e.to_string()))?;
    let subject_tenant = Subjects::tenant_of(tenant_token);
    if message.tenant_id.as_str() != subject_tenant {
        return Err(reject(
            "tenant_mismatch",
            format!("subject tenant `{subject_tenant}` differs from payload tenant `{}`", message.tenant_id),
        ));
    }
    Ok((message, event.importance))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_double_up_to_a_minute() {
        let delays: Vec<u64> = (1..=9).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        // The default twenty deliveries ride out 14 minutes of outage before a dead letter.
        assert!((1..20).map(|n| retry_delay(n).as_secs()).sum::<u64>() > 14 * 60);
    }
}
