//! The embedder's metrics, registered under `memory_embedder_*`.

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

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
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Self::Stored => "stored",
            Self::Duplicate => "duplicate",
            Self::Rejected => "rejected",
            Self::Retried => "retried",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: Outcome,
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
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            messages: Family::default(),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            batch_duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            query_requests: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("embedder");
        r.register("messages", "Messages handled, by outcome", m.messages.clone());
        r.register("batch_size", "Messages per batch", m.batch_size.clone());
        r.register_with_unit("batch_duration", "Time to handle one batch", Unit::Seconds, m.batch_duration.clone());
        r.register("query_requests", "Query embedding requests served", m.query_requests.clone());
        m
    }

    pub fn count(&self, outcome: Outcome, n: usize) {
        self.messages.get_or_create(&OutcomeLabels { outcome }).inc_by(n as u64);
    }
}
