//! The embedder's metrics, registered under `memory_embedder_*`.

use std::fmt::Write as _;

use common::metrics::{registered, seconds};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Newly stored and embedded.
    Stored,
    /// Already stored: a redelivery or a re-published id.
    Duplicate,
    /// Dead-lettered.
    Rejected,
    /// Left for redelivery after a transient failure.
    Retried,
    /// Stored, but the provider refused to embed it.
    Failed,
    /// Not stored: its message, conversation or tenant was deleted after it was accepted.
    Dropped,
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Self::Stored => "stored",
            Self::Duplicate => "duplicate",
            Self::Rejected => "rejected",
            Self::Retried => "retried",
            Self::Failed => "failed",
            Self::Dropped => "dropped",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: Outcome,
}

/// What became of one text sent to the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EmbedOutcome {
    Ok,
    /// The provider refused this text.
    Refused,
    /// The call failed (or the circuit was open): nothing came back.
    Failed,
}

impl EncodeLabelValue for EmbedOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Self::Ok => "ok",
            Self::Refused => "refused",
            Self::Failed => "failed",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct EmbedLabels {
    pub provider: &'static str,
    pub outcome: EmbedOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ProviderLabels {
    pub provider: &'static str,
}

/// Where a query vector came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheResult {
    /// The in-process cache.
    Memory,
    /// Redis.
    Redis,
    /// Neither: the provider embedded it.
    Miss,
}

impl EncodeLabelValue for CacheResult {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Self::Memory => "memory",
            Self::Redis => "redis",
            Self::Miss => "miss",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CacheLabels {
    pub result: CacheResult,
}

/// Where a backlog is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BacklogSource {
    /// Messages waiting in the ingest stream for this embedder's consumer.
    Stream,
    /// Stored messages without a vector yet (`pending`).
    Store,
}

impl EncodeLabelValue for BacklogSource {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Self::Stream => "stream",
            Self::Store => "store",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct BacklogLabels {
    pub source: BacklogSource,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabels {
    /// The rejection's code (`malformed_json`, `invalid_message`, `delivery_limit`,
    /// …; the README lists them): a closed set.
    pub reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ConsumerLabels {
    /// The durable consumer's name.
    pub consumer: &'static str,
}

#[derive(Clone)]
pub struct Metrics {
    /// Messages handled, by outcome: `memory_embedder_messages_total`.
    pub messages: Family<OutcomeLabels, Counter>,
    /// Messages per batch: `memory_embedder_batch_size`.
    pub batch_size: Histogram,
    /// Time to handle one batch, from pull to ack: `memory_embedder_batch_duration_seconds`.
    pub batch_duration: Histogram,
    /// Query embedding requests served: `memory_embedder_query_requests_total`.
    pub query_requests: Counter,
    /// Texts sent to the provider, by provider and outcome: `memory_embedder_embeddings_total`.
    pub embeddings: Family<EmbedLabels, Counter>,
    /// Texts per provider call: `memory_embedder_provider_batch_size`.
    pub provider_batch_size: Histogram,
    /// Time of one provider call, retries included: `memory_embedder_provider_duration_seconds`.
    pub provider_duration: Family<ProviderLabels, Histogram>,
    /// The circuit breaker: 0 closed, 1 open, 2 half-open (`memory_embedder_breaker_state`).
    pub breaker_state: Gauge,
    /// Query vectors by where they came from: `memory_embedder_query_cache_total`.
    pub query_cache: Family<CacheLabels, Counter>,
    /// Query-cache reads or writes that failed and were treated as misses:
    /// `memory_embedder_query_cache_errors_total`.
    pub query_cache_errors: Counter,
    /// Messages waiting to be embedded: `memory_embedder_backlog_messages`.
    pub backlog: Family<BacklogLabels, Gauge>,
    /// Messages swept (re-embedded after being left `pending` or `failed`):
    /// `memory_embedder_swept_messages_total`.
    pub swept: Counter,
    /// Sweeper rounds this replica finished holding the sweeper lock (a round with nothing to do
    /// included): `memory_embedder_sweeps_total`.
    pub sweeps: Counter,
    /// Messages embedded into a new space by backfills: `memory_embedder_backfilled_messages_total`.
    pub backfilled: Counter,
    /// Messages a running backfill still has to embed: `memory_embedder_backfill_remaining_messages`.
    pub backfill_remaining: Gauge,
    /// Deliveries of a message delivered before: `memory_embedder_redeliveries_total`.
    pub redeliveries: Counter,
    /// Events dead-lettered, by the rejection's code: `memory_embedder_dead_letters_total`.
    pub dead_letters: Family<ReasonLabels, Counter>,
    /// Events ended unsaved because not even their dead-letter copy could be published, by the
    /// rejection's code: `memory_embedder_terminated_events_total`. Each is logged as an error.
    pub terminated: Family<ReasonLabels, Counter>,
    /// The ingest consumer's messages not yet delivered (shared by every replica, so each reports
    /// the same): `memory_embedder_consumer_pending_messages`.
    pub consumer_pending: Family<ConsumerLabels, Gauge>,
    /// Delivered and not yet acknowledged: `memory_embedder_consumer_ack_pending_messages`.
    pub consumer_ack_pending: Family<ConsumerLabels, Gauge>,
    /// Redelivered and not yet acknowledged: `memory_embedder_consumer_redelivered_messages`.
    pub consumer_redelivered: Family<ConsumerLabels, Gauge>,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let r = registry.sub_registry_with_prefix("embedder");
        Self {
            messages: registered(r, "messages", "Messages handled, by outcome", Family::default()),
            batch_size: registered(
                r,
                "batch_size",
                "Messages per batch",
                Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            ),
            batch_duration: seconds(
                r,
                "batch_duration",
                "Time to handle one batch",
                Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            ),
            query_requests: registered(r, "query_requests", "Query embedding requests served", Counter::default()),
            embeddings: registered(
                r,
                "embeddings",
                "Texts sent to the embedding provider, by outcome",
                Family::default(),
            ),
            provider_batch_size: registered(
                r,
                "provider_batch_size",
                "Texts per provider call",
                Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            ),
            provider_duration: seconds(
                r,
                "provider_duration",
                "Time of one provider call, retries included",
                Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 16))),
            ),
            breaker_state: registered(
                r,
                "breaker_state",
                "Provider circuit: 0 closed, 1 open, 2 half-open",
                Gauge::default(),
            ),
            query_cache: registered(r, "query_cache", "Query vectors by where they came from", Family::default()),
            query_cache_errors: registered(
                r,
                "query_cache_errors",
                "Query-cache operations that failed (served as misses)",
                Counter::default(),
            ),
            backlog: registered(r, "backlog_messages", "Messages waiting to be embedded", Family::default()),
            swept: registered(r, "swept_messages", "Messages re-embedded by the sweeper", Counter::default()),
            sweeps: registered(r, "sweeps", "Sweeper rounds finished by this replica", Counter::default()),
            backfilled: registered(
                r,
                "backfilled_messages",
                "Messages embedded into a new space by backfills",
                Counter::default(),
            ),
            backfill_remaining: registered(
                r,
                "backfill_remaining_messages",
                "Messages a running backfill still has to embed",
                Gauge::default(),
            ),
            redeliveries: registered(r, "redeliveries", "Deliveries of messages delivered before", Counter::default()),
            dead_letters: registered(r, "dead_letters", "Events dead-lettered, by reason", Family::default()),
            terminated: registered(
                r,
                "terminated_events",
                "Events ended unsaved: their dead-letter copy could not be published",
                Family::default(),
            ),
            consumer_pending: registered(
                r,
                "consumer_pending_messages",
                "Messages the ingest consumer has not delivered yet",
                Family::default(),
            ),
            consumer_ack_pending: registered(
                r,
                "consumer_ack_pending_messages",
                "Messages delivered by the ingest consumer, not yet acknowledged",
                Family::default(),
            ),
            consumer_redelivered: registered(
                r,
                "consumer_redelivered_messages",
                "Messages redelivered by the ingest consumer, not yet acknowledged",
                Family::default(),
            ),
        }
    }

    pub fn count(&self, outcome: Outcome, n: usize) {
        self.messages.get_or_create(&OutcomeLabels { outcome }).inc_by(n as u64);
    }
}
