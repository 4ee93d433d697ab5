//! The embedder: the only writer of new messages. It pulls `MessageReceived` events from the
//! ingest stream in batches, re-validates them, stores them idempotently, embeds them, publishes
//! `MessageStored` / `MessageEmbedded`, and acks only after the commit. It answers query
//! embedding requests for its space (`mem.v1.embed.query.<space>`), sweeps up messages left
//! unembedded, and, when its provider's space is new, backfills it and switches to it.

pub mod backfill;
mod breaker;
mod cache;
mod embed;
mod ingest;
mod metrics;
pub mod provider;
mod query;
mod sweeper;
mod write;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::bus::{BusError, ConsumerSpec};
use common::config::{Config, ConfigError};
use common::contract::StreamKind;
use common::store::{Backfill, Health, IngestWrites, Locks, MessageReads, Space, Spaces, StoreError};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

pub use breaker::State as BreakerState;
pub use embed::Embeddings;
pub use metrics::Metrics;
pub use provider::{HashProvider, Provider, Purpose};

/// The storage roles the embedder uses. It is the only writer of new messages and vectors.
pub trait Store: Health + Locks + MessageReads + Spaces + IngestWrites + Backfill + 'static {}

impl<T: Health + Locks + MessageReads + Spaces + IngestWrites + Backfill + 'static> Store for T {}

/// The embedder's handles: its view of the store.
pub(crate) type Deps = common::Deps<dyn Store>;

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
        // Enough for the batches in flight of a few replicas, bounded so one slow replica does
        // not hoard the backlog.
        max_ack_pending: i64::try_from(config.embedder.batch_size * config.embedder.concurrency * 4)
            .unwrap_or(i64::MAX),
        // Past the embedder's own limit a message is dead-lettered, or terminated if even that
        // fails; the server stops a few deliveries later whatever happens.
        max_deliver: i64::try_from(config.embedder.max_deliveries + 5).unwrap_or(i64::MAX),
    }
}

/// What an embedder is doing, for readiness and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Starting,
    /// Its space is active: it pulls, stores and embeds new messages.
    Ingesting,
    /// Its space is new: it embeds every stored message into it, then activates it.
    Backfilling {
        done: i64,
        missing_at_start: i64,
    },
    /// Its space is not active and it waits (another replica backfills it, or automatic
    /// backfill is off, or the space was retired).
    Waiting(String),
}

pub struct Embedder {
    worker: Worker,
    query: query::QueryService,
}

/// Everything but the query service, which runs as a task of its own.
struct Worker {
    deps: Deps,
    config: common::config::EmbedderConfig,
    space: Space,
    ingest: ingest::IngestWorker,
    embeddings: Embeddings,
    metrics: Metrics,
    mode: Arc<Mutex<Mode>>,
}

impl Embedder {
    /// Registers the provider's space (the first one registered is active at once), creates the
    /// durable consumer and joins the space's query-embedding queue group.
    pub async fn build(
        config: &Config,
        deps: common::Deps<impl Store>,
        provider: Arc<dyn Provider>,
        registry: &mut Registry,
    ) -> Result<Self, EmbedderError> {
        let deps: Deps = deps.view(|s| s as Arc<dyn Store>);
        let metrics = Metrics::register(registry);
        let embeddings = Embeddings::new(provider, config.embedder.breaker.clone(), metrics.clone());
        let space: Space = deps.store.register_space(embeddings.space()).await?;
        let consumer = deps.bus.consumer(&consumer_spec(config, &deps.subjects)).await?;
        let requests =
            deps.bus.serve(deps.subjects.embed_query(space.id), deps.subjects.embedder_group().to_owned()).await?;
        // Every embedder (no queue group) drops an erased tenant's cached queries.
        let purges = deps.bus.subscribe(deps.subjects.cache_purge()).await?;
        let cache = cache::QueryCache::new(
            &config.embedder.cache,
            config.redis_url.as_ref(),
            deps.subjects.clone(),
            metrics.clone(),
        );
        tracing::info!(space = space.id, provider = %space.reference.provider, model = %space.reference.model, dimensions = space.reference.dimensions, active = space.active, "embedder built");
        Ok(Self {
            query: query::QueryService::new(
                deps.clone(),
                embeddings.clone(),
                cache,
                requests,
                purges,
                metrics.clone(),
                config.nats.max_in_flight,
            ),
            worker: Worker {
                ingest: ingest::IngestWorker::new(
                    config,
                    deps.clone(),
                    embeddings.clone(),
                    space.clone(),
                    consumer,
                    metrics.clone(),
                ),
                deps,
                config: config.embedder.clone(),
                space,
                embeddings,
                metrics,
                mode: Arc::new(Mutex::new(Mode::Starting)),
            },
        })
    }

    /// The provider calls of this embedder.
    pub fn embeddings(&self) -> &Embeddings {
        &self.worker.embeddings
    }

    /// This embedder's metrics (handles on the registered series).
    pub fn metrics(&self) -> &Metrics {
        &self.worker.metrics
    }

    /// Ready means ingesting with a closed (or probing) circuit.
    pub fn readiness(&self) -> common::ops::Check {
        let (mode, embeddings) = (self.worker.mode.clone(), self.worker.embeddings.clone());
        Arc::new(move || {
            match &*mode.lock().expect("mode lock") {
                Mode::Ingesting => {}
                Mode::Starting => return Err("starting".into()),
                Mode::Backfilling { done, missing_at_start } => {
                    return Err(format!("backfilling a new embedding space: {done} of {missing_at_start} messages"));
                }
                Mode::Waiting(why) => return Err(why.clone()),
            }
            embeddings.readiness()
        })
    }

    /// Runs until `shutdown` is cancelled, then finishes the batch and requests in hand (up to the
    /// grace period: anything unacked is redelivered later) and returns. While its space is not
    /// active it backfills it (or waits), and it ingests once the space is active.
    pub async fn run(self, shutdown: CancellationToken, grace: Duration) -> Result<(), EmbedderError> {
        // The query service stops with the embedder, whatever ends it.
        let query_shutdown = shutdown.child_token();
        let query = tokio::spawn(self.query.run(query_shutdown.clone(), grace));
        self.worker.run(&shutdown, grace).await;
        query_shutdown.cancel();
        if let Err(e) = query.await {
            tracing::error!(error = %e, "the query-embedding service panicked");
        }
        Ok(())
    }
}

impl Worker {
    async fn run(mut self, shutdown: &CancellationToken, grace: Duration) {
        loop {
            let space = match self.deps.store.space(self.space.id).await {
                Ok(Some(space)) => space,
                Ok(None) => {
                    self.set_mode(Mode::Waiting(format!("embedding space {} no longer exists", self.space.id)));
                    if !self.pause(shutdown).await {
                        break;
                    }
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading the embedding space failed; retrying");
                    if !self.pause(shutdown).await {
                        break;
                    }
                    continue;
                }
            };
            if space.active {
                self.set_mode(Mode::Ingesting);
                let sweeper_stop = shutdown.child_token();
                let sweeper = sweeper::Sweeper {
                    deps: self.deps.clone(),
                    embeddings: self.embeddings.clone(),
                    metrics: self.metrics.clone(),
                    config: self.config.sweeper.clone(),
                    space_id: space.id,
                };
                let sweeping = tokio::spawn(sweeper.run(sweeper_stop.clone()));
                let ended = self.ingest.run(space, shutdown, grace).await;
                sweeper_stop.cancel();
                let _ = sweeping.await;
                match ended {
                    ingest::Ended::Shutdown => break,
                    ingest::Ended::Retired => {
                        tracing::warn!(
                            space = self.space.id,
                            "another embedding space became active; this embedder stops ingesting"
                        );
                    }
                }
            } else if space.is_retired() || !self.config.auto_backfill {
                let why = if space.is_retired() {
                    format!(
                        "embedding space {} ({}/{}) was replaced by another; this embedder no longer ingests (run `memory reembed` to switch back)",
                        space.id, space.reference.provider, space.reference.model
                    )
                } else {
                    format!(
                        "embedding space {} is not active and MEMORY_EMBEDDER_AUTO_BACKFILL is off: run `memory reembed`",
                        space.id
                    )
                };
                self.wait(why, shutdown).await;
                if shutdown.is_cancelled() {
                    break;
                }
            } else {
                match self.backfill(&space, shutdown).await {
                    Ok(backfill::Outcome::Activated | backfill::Outcome::Complete) => {}
                    Ok(backfill::Outcome::Stopped) => break,
                    Ok(backfill::Outcome::Busy) => {
                        self.wait(format!("another replica is backfilling embedding space {}", space.id), shutdown)
                            .await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "backfill failed; resuming shortly");
                        if !self.pause(shutdown).await {
                            break;
                        }
                    }
                }
            }
        }
    }

    async fn backfill(&self, space: &Space, shutdown: &CancellationToken) -> Result<backfill::Outcome, StoreError> {
        let job = backfill::Backfill {
            deps: self.deps.clone(),
            embeddings: self.embeddings.clone(),
            metrics: self.metrics.clone(),
            batch_size: u32::try_from(self.config.batch_size).unwrap_or(u32::MAX),
            activate: true,
        };
        let mut logged = std::time::Instant::now();
        job.run(space, shutdown, |p| {
            self.set_mode(Mode::Backfilling { done: p.done, missing_at_start: p.missing_at_start });
            if logged.elapsed() >= Duration::from_secs(5) {
                logged = std::time::Instant::now();
                tracing::info!(
                    space = p.space_id,
                    done = p.done,
                    of = p.missing_at_start,
                    per_second = p.per_second(),
                    "backfilling"
                );
            }
        })
        .await
    }

    /// Logs `why` (once per change) and pauses. Returns on shutdown too.
    async fn wait(&self, why: String, shutdown: &CancellationToken) {
        let changed = *self.mode.lock().expect("mode lock") != Mode::Waiting(why.clone());
        if changed {
            tracing::warn!("{why}");
        }
        self.set_mode(Mode::Waiting(why));
        self.pause(shutdown).await;
    }

    /// Sleeps one standby poll; `false` on shutdown.
    async fn pause(&self, shutdown: &CancellationToken) -> bool {
        tokio::select! {
            () = shutdown.cancelled() => false,
            () = tokio::time::sleep(self.config.standby_poll) => true,
        }
    }

    fn set_mode(&self, mode: Mode) {
        *self.mode.lock().expect("mode lock") = mode;
    }
}

/// `memory reembed`: embeds every stored message into the configured provider's space,
/// reporting progress, and (with `activate`) makes it the active space when complete. Resumes an
/// interrupted run; waits while another process backfills the same space.
pub async fn reembed(
    config: &Config,
    deps: common::Deps<impl Store>,
    provider: Arc<dyn Provider>,
    activate: bool,
    shutdown: &CancellationToken,
    mut progress: impl FnMut(&backfill::Progress),
) -> Result<backfill::Outcome, EmbedderError> {
    let deps: Deps = deps.view(|s| s as Arc<dyn Store>);
    let metrics = Metrics::register(&mut Registry::default());
    let embeddings = Embeddings::new(provider, config.embedder.breaker.clone(), metrics.clone());
    let space = deps.store.register_space(embeddings.space()).await?;
    let job = backfill::Backfill {
        deps: deps.clone(),
        embeddings,
        metrics,
        batch_size: u32::try_from(config.embedder.batch_size).unwrap_or(u32::MAX),
        activate,
    };
    loop {
        let current = deps.store.space(space.id).await?.unwrap_or_else(|| space.clone());
        if current.active {
            return Ok(backfill::Outcome::Activated);
        }
        match job.run(&current, shutdown, &mut progress).await? {
            backfill::Outcome::Busy => {
                tracing::info!(space = space.id, "another process is backfilling this space; waiting");
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(backfill::Outcome::Stopped),
                    () = tokio::time::sleep(config.embedder.standby_poll) => {}
                }
            }
            outcome => return Ok(outcome),
        }
    }
}
