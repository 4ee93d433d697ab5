//! The embedder: the only writer of new messages. It pulls `MessageReceived` events from the
//! ingest stream in batches, re-validates them, stores them idempotently, embeds them, publishes
//! `MessageStored` / `MessageEmbedded`, and acks only after the commit. It also answers query
//! embedding requests (`mem.v1.embed.query`) so searchers embed in the same space.

mod breaker;
mod cache;
mod embed;
pub mod importance;
mod ingest;
mod metrics;
pub mod provider;
mod query;

use std::sync::Arc;

use common::Deps;
use common::bus::{BusError, ConsumerSpec};
use common::config::{Config, ConfigError};
use common::contract::StreamKind;
use common::store::{Space, StoreError};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

pub use breaker::State as BreakerState;
pub use embed::Embeddings;
pub use metrics::Metrics;
pub use provider::{HashProvider, Provider, Purpose};

#[derive(Debug, thiserror::Error)]
pub enum EmbedderError {
    #[error("cannot register the embedding space")]
    Store(#[from] StoreError),
    #[error("cannot set up the bus")]
    Bus(#[from] BusError),
}

/// The provider named by the configuration (loading the local model, if that is the one).
pub fn provider(config: &Config) -> Result<Arc<dyn Provider>, ConfigError> {
    provider::from_config(config)
}

/// The embedder's durable consumer on the ingest stream.
pub fn consumer_spec(config: &Config, subjects: &common::contract::Subjects) -> ConsumerSpec {
    ConsumerSpec {
        stream: StreamKind::Ingest,
        durable: subjects.embedder_consumer().to_owned(),
        filter: subjects.ingest_all(),
        ack_wait: config.embedder.ack_wait,
        // Enough for a few batches in flight at once, bounded so one slow replica does not
        // hoard the backlog.
        max_ack_pending: i64::try_from(config.embedder.batch_size * 4).unwrap_or(i64::MAX),
    }
}

pub struct Embedder {
    ingest: ingest::IngestWorker,
    query: query::QueryService,
    embeddings: Embeddings,
}

impl Embedder {
    /// Registers the provider's space, creates the durable consumer and joins the query-embedding
    /// queue group: once this returns, messages flow and query requests find a responder.
    pub async fn build(
        config: &Config,
        deps: Deps,
        provider: Arc<dyn Provider>,
        registry: &mut Registry,
    ) -> Result<Self, EmbedderError> {
        let metrics = Metrics::register(registry);
        let embeddings = Embeddings::new(provider, config.embedder.breaker.clone(), metrics.clone());
        let space: Space = deps.store.register_space(embeddings.space()).await?;
        let consumer = deps.bus.consumer(&consumer_spec(config, &deps.subjects)).await?;
        let requests = deps.bus.serve(deps.subjects.embed_query(), deps.subjects.embedder_group().to_owned()).await?;
        let cache = cache::QueryCache::new(&config.embedder.cache, deps.subjects.prefix(), metrics.clone());
        tracing::info!(space = space.id, provider = %space.reference.provider, model = %space.reference.model, "embedder ready");
        Ok(Self {
            ingest: ingest::IngestWorker::new(
                config,
                deps.clone(),
                embeddings.clone(),
                space,
                consumer,
                metrics.clone(),
            ),
            query: query::QueryService::new(deps, embeddings.clone(), cache, requests, metrics),
            embeddings,
        })
    }

    /// The provider calls of this embedder, for readiness (an open circuit is not ready).
    pub fn embeddings(&self) -> &Embeddings {
        &self.embeddings
    }

    /// Runs until `shutdown` is cancelled, then finishes the batch and requests in hand (up to the
    /// grace period: anything unacked is redelivered later) and returns.
    pub async fn run(self, shutdown: CancellationToken, grace: std::time::Duration) -> Result<(), EmbedderError> {
        // The query service stops with the ingest loop, whatever ends it.
        let query_shutdown = shutdown.child_token();
        let query = tokio::spawn(self.query.run(query_shutdown.clone(), grace));
        let result = self.ingest.run(shutdown, grace).await;
        query_shutdown.cancel();
        if let Err(e) = query.await {
            tracing::error!(error = %e, "the query-embedding service panicked");
        }
        result
    }
}
