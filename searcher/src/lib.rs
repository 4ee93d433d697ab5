//! The searcher: the read side. It answers `mem.v1.search` and `mem.v1.messages.get` in the
//! queue group `searcher`, so any number of replicas share the load. Every request gets a reply,
//! failures included, as a typed error.

pub mod lexical;
mod metrics;
pub mod rank;
mod stats;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use common::bus::respond::{Answered, Responder, bad_request, unavailable};
use common::bus::{BusError, Envelope, Request};
use common::config::Config;
use common::contract::{
    CANDIDATES_MAX, EmbedQueryRequest, EmbedQueryResponse, GetMessageRequest, GetMessageResponse, MessageReceived,
    REQUEST_ID_HEADER, RemoteError, RemoteErrorCode, Reply, SearchRequest, SearchResponse, StreamKind, TIMEOUT_HEADER,
    VERSION,
};
use common::domain::{MessageId, MessageView, Ranking, SearchMode, TenantId};
use common::store::{
    LexicalHit, LexicalQuery, MessageReads, NewRow, Origin, SearchReads, Settings, Space, Spaces, TextQuery, VectorHit,
    VectorQuery,
};
use futures::StreamExt;
use futures::stream::{BoxStream, select};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use metrics::Endpoint;
pub use metrics::Metrics;

/// The `partial` of a hybrid search answered from words alone (fixed text; the cause is logged).
pub const PARTIAL_WORDS_ONLY: &str = "vector retrieval is unavailable: ranked by words only";
/// How long a tenant's ranking is reused before it is read again.
const RANKING_CACHE: Duration = Duration::from_secs(5);

/// Each tenant's own ranking (if any) and when it was read.
type RankingCache = HashMap<TenantId, (Instant, Option<Ranking>)>;

/// The storage roles the searcher uses: reads only.
pub trait Store: MessageReads + Spaces + SearchReads + Settings + 'static {}

impl<T: MessageReads + Spaces + SearchReads + Settings + 'static> Store for T {}

type Deps = common::Deps<dyn Store>;

#[derive(Debug, thiserror::Error)]
pub enum SearcherError {
    #[error("cannot subscribe to requests")]
    Bus(#[from] BusError),
}

#[derive(Clone)]
struct Handler {
    deps: Deps,
    metrics: Metrics,
    candidate_factor: u32,
    fusion_window: u32,
    ranking: Ranking,
    rankings: Arc<Mutex<RankingCache>>,
    stats: Arc<stats::WordStats>,
    request_timeout: Duration,
    responder: Responder,
}

pub struct Searcher {
    handler: Handler,
    requests: BoxStream<'static, (Endpoint, Request)>,
}

impl Searcher {
    /// Joins the queue group: once this returns, requests find a responder.
    pub async fn build(
        config: &Config,
        deps: common::Deps<impl Store>,
        registry: &mut Registry,
    ) -> Result<Self, SearcherError> {
        let deps: Deps = deps.view(|s| s as Arc<dyn Store>);
        let metrics = Metrics::register(registry);
        let group = deps.subjects.searcher_group().to_owned();
        let search = deps.bus.serve(deps.subjects.search(), group.clone()).await?;
        let get = deps.bus.serve(deps.subjects.get_message(), group).await?;
        let requests = select(search.map(|r| (Endpoint::Search, r)), get.map(|r| (Endpoint::Get, r))).boxed();
        let responder = Responder::new(deps.bus.clone(), config.nats.max_in_flight);
        Ok(Self {
            handler: Handler {
                deps,
                metrics,
                candidate_factor: config.searcher.candidate_factor,
                fusion_window: config.searcher.fusion_window,
                ranking: config.searcher.ranking,
                rankings: Arc::default(),
                stats: Arc::new(stats::WordStats::new()),
                request_timeout: config.nats.request_timeout,
                responder,
            },
            requests,
        })
    }

    /// Serves until `shutdown` is cancelled, answers the requests in hand (up to `grace`), then returns.
    pub async fn run(self, shutdown: CancellationToken, grace: Duration) -> Result<(), SearcherError> {
        let handler = self.handler;
        common::shutdown::serve(self.requests, &shutdown, grace, "search requests", |tasks, (endpoint, request)| {
            handler.spawn(tasks, endpoint, request);
        })
        .await;
        Ok(())
    }
}

impl Handler {
    fn spawn(&self, tasks: &TaskTracker, endpoint: Endpoint, request: Request) {
        let metrics = self.metrics.clone();
        let answered = move |a: Answered| metrics.answered(endpoint, &a);
        let handler = self.clone();
        match endpoint {
            Endpoint::Search => self.responder.spawn(
                tasks,
                "search",
                request,
                move |q, cx| async move { handler.search(q, cx.request_id.as_deref()).await },
                answered,
            ),
            Endpoint::Get => {
                self.responder.spawn(tasks, "get", request, move |q, _| async move { handler.get(q).await }, answered);
            }
        }
    }

    async fn search(&self, request: SearchRequest, request_id: Option<&str>) -> Result<SearchResponse, RemoteError> {
        let started = Instant::now();
        common::domain::check_search(&request.query, request.top_k).map_err(|e| bad_request(e.to_string()))?;
        request.filters.check().map_err(|e| bad_request(e.to_string()))?;
        let ranking = self.ranking(&request.tenant_id).await?;
        // Vector mode re-ranks a deep candidate list; fusion takes a shallow window of each.
        let factor = if request.mode == SearchMode::Vector { self.candidate_factor } else { self.fusion_window };
        let limit = match request.candidate_limit {
            Some(asked) => asked.clamp(request.top_k, CANDIDATES_MAX),
            None => request.top_k.saturating_mul(factor).min(CANDIDATES_MAX),
        };
        let mut mode = request.mode;
        let mut partial = None;
        let (vector_hits, lexical) = match mode {
            SearchMode::Vector => {
                let (space, query) = self.query_vector(&request, request_id).await?;
                (self.vector_hits(&request, &space, &query, limit).await?, Vec::new())
            }
            SearchMode::Lexical => {
                let text = self.text_query(&request).await?;
                (Vec::new(), self.lexical_hits(&request, &text, limit, None).await?)
            }
            SearchMode::Hybrid => {
                // The query's vector and its words at once; then both retrievers at once, the
                // full-text hits read with their similarities.
                let (vector, text) = tokio::join!(self.query_vector(&request, request_id), self.text_query(&request));
                let text = text?;
                let (vectors, lexical) = match vector {
                    Ok((space, query)) => {
                        let (vectors, lexical) = tokio::join!(
                            self.vector_hits(&request, &space, &query, limit),
                            self.lexical_hits(&request, &text, limit, Some((&space, &query)))
                        );
                        (vectors, lexical?)
                    }
                    Err(e) if e.code == RemoteErrorCode::Unavailable => {
                        (Err(e), self.lexical_hits(&request, &text, limit, None).await?)
                    }
                    Err(e) => return Err(e),
                };
                match vectors {
                    Ok(vectors) => (vectors, lexical),
                    // Without query vectors (the provider is down, say), words still find messages.
                    Err(e) if e.code == RemoteErrorCode::Unavailable => {
                        warn!(error = %e, "vector retrieval failed; answering from full-text search alone");
                        self.metrics.degraded.inc();
                        partial = Some(PARTIAL_WORDS_ONLY.to_owned());
                        mode = SearchMode::Lexical;
                        (Vec::new(), lexical)
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        let candidates = rank::merge(vector_hits, lexical);
        let items = rank::rank(candidates, mode, &ranking, request.top_k as usize, Utc::now(), request.explain);
        self.metrics.observe_search(request.mode, started.elapsed());
        Ok(SearchResponse { total: items.len(), items, partial })
    }

    /// The tenant's own ranking, or the deployment's; cached briefly.
    async fn ranking(&self, tenant: &TenantId) -> Result<Ranking, RemoteError> {
        if let Some((at, ranking)) = self.rankings.lock().expect("ranking cache").get(tenant)
            && at.elapsed() < RANKING_CACHE
        {
            return Ok(ranking.unwrap_or(self.ranking));
        }
        let own = self
            .deps
            .store
            .tenant_ranking(tenant)
            .await
            .map_err(|e| unavailable("reading the tenant's ranking", &e))?;
        self.rankings.lock().expect("ranking cache").insert(tenant.clone(), (Instant::now(), own));
        Ok(own.unwrap_or(self.ranking))
    }

    /// The active space and the query's vector in it.
    async fn query_vector(
        &self,
        request: &SearchRequest,
        request_id: Option<&str>,
    ) -> Result<(Space, Vec<f32>), RemoteError> {
        let space = self
            .deps
            .store
            .active_space()
            .await
            .map_err(|e| unavailable("reading the active embedding space", &e))?
            .ok_or_else(|| RemoteError::new(RemoteErrorCode::NoActiveSpace, "no embedding space is active yet"))?;
        let embedded = self.embed_query(space.id, &request.tenant_id, &request.query, request_id).await?;
        if space.reference != embedded.space {
            // Never compare vectors of different models.
            warn!(query_space = ?embedded.space, active = ?space.reference, "the query was embedded in another space");
            return Err(RemoteError::new(RemoteErrorCode::Unavailable, "embedding the query failed"));
        }
        let query = embedded.vectors.into_iter().next().ok_or_else(|| {
            RemoteError::new(RemoteErrorCode::Unavailable, "the embedder returned no vector for the query")
        })?;
        Ok((space, query))
    }

    async fn vector_hits(
        &self,
        request: &SearchRequest,
        space: &Space,
        query: &[f32],
        limit: u32,
    ) -> Result<Vec<VectorHit>, RemoteError> {
        let query = VectorQuery {
            tenant_id: &request.tenant_id,
            vector: query,
            limit,
            filters: &request.filters,
            ef_search: None,
            exact: request.exact,
        };
        self.deps.store.search_vectors(space, query).await.map_err(|e| unavailable("searching vectors", &e))
    }

    /// What full-text search looks for: the query as typed, or its words weighted by rarity.
    async fn text_query(&self, request: &SearchRequest) -> Result<TextQuery, RemoteError> {
        let store = &self.deps.store;
        let tenant = &request.tenant_id;
        let lexemes = store.lexemes(&request.query).await.map_err(|e| unavailable("parsing the query", &e))?;
        let words = match lexical::words(&request.query, lexemes) {
            Err(typed) => return Ok(typed),
            Ok(words) => words,
        };
        let size = self.stats.size(tenant, || store.tenant_size(tenant)).await;
        let size = size.map_err(|e| unavailable("counting messages", &e))?;
        let frequencies = self
            .stats
            .frequencies(tenant, size, &words, |missing| async move {
                store.document_frequencies(tenant, &missing, lexical::SCORED_MAX).await
            })
            .await
            .map_err(|e| unavailable("counting words", &e))?;
        Ok(lexical::weighted(words, size, &frequencies))
    }

    async fn lexical_hits(
        &self,
        request: &SearchRequest,
        text: &TextQuery,
        limit: u32,
        similarity_to: Option<(&Space, &[f32])>,
    ) -> Result<Vec<LexicalHit>, RemoteError> {
        self.deps
            .store
            .search_lexical(LexicalQuery {
                tenant_id: &request.tenant_id,
                query: text,
                limit,
                filters: &request.filters,
                similarity_to,
            })
            .await
            .map_err(|e| unavailable("searching text", &e))
    }

    async fn embed_query(
        &self,
        space_id: i32,
        tenant: &TenantId,
        query: &str,
        request_id: Option<&str>,
    ) -> Result<EmbedQueryResponse, RemoteError> {
        let request = EmbedQueryRequest { v: VERSION, texts: vec![query.to_owned()], tenant_id: Some(tenant.clone()) };
        let mut envelope =
            Envelope::new(self.deps.subjects.embed_query(space_id), serde_json::to_vec(&request).expect("serialise"))
                .with_header(TIMEOUT_HEADER, self.request_timeout.as_millis().to_string());
        if let Some(id) = request_id {
            envelope = envelope.with_header(REQUEST_ID_HEADER, id);
        }
        let bytes = self.deps.bus.request(envelope, self.request_timeout).await.map_err(|e| match e {
            BusError::NoResponders { .. } => RemoteError::new(
                RemoteErrorCode::Unavailable,
                format!("no embedder of the active space ({space_id}) is running"),
            ),
            e => unavailable("embedding the query", &e),
        })?;
        match serde_json::from_slice::<Reply<EmbedQueryResponse>>(&bytes) {
            Ok(Reply::Ok(r)) => Ok(r),
            // The provider refused this query text: the caller's to change, not a fault of ours.
            Ok(Reply::Error(e)) if e.code == RemoteErrorCode::BadRequest => {
                tracing::info!(reason = %e.message, "the embedding provider refused a query");
                Err(bad_request("the embedding provider refused this query; rephrase it"))
            }
            Ok(Reply::Error(e)) => {
                warn!(error = %e, "the query embedder could not embed the query");
                Err(RemoteError::new(RemoteErrorCode::Unavailable, "embedding the query failed"))
            }
            Err(e) => Err(unavailable("reading the embedder's reply", &e)),
        }
    }

    async fn get(&self, request: GetMessageRequest) -> Result<GetMessageResponse, RemoteError> {
        let (tenant, id) = (&request.tenant_id, request.message_id);
        if let Some(view) = self.stored(tenant, id).await? {
            return Ok(GetMessageResponse { message: Some(view) });
        }
        // Not stored: it may still wait in the ingest stream, where the subject names it.
        let subject = self.deps.subjects.ingest(tenant, id);
        let queued = self
            .deps
            .bus
            .last_on_subject(StreamKind::Ingest, &subject)
            .await
            .map_err(|e| unavailable("reading the ingest stream", &e))?;
        if let Some(held) = queued {
            let message = serde_json::from_slice::<MessageReceived>(&held.message.payload)
                .ok()
                .and_then(|e| e.message.validate(Utc::now(), || id).ok())
                .filter(|m| m.tenant_id == *tenant && m.message_id == id);
            // It may have been stored between the two lookups; the store is the truth.
            if let Some(stored) = self.stored(tenant, id).await? {
                return Ok(GetMessageResponse { message: Some(stored) });
            }
            let Some(message) = message else { return Ok(GetMessageResponse { message: None }) };
            // Queued, but its message, conversation or tenant was deleted since: it will never
            // be stored, so it is not there.
            let origin = Origin { sequence: held.sequence, published_at: held.published_at };
            let row = NewRow { message, importance: 0.0, origin: Some(origin) };
            let dropped = self
                .deps
                .store
                .tombstoned(std::slice::from_ref(&row))
                .await
                .map_err(|e| unavailable("reading tombstones", &e))?;
            if !dropped.is_empty() {
                return Ok(GetMessageResponse { message: None });
            }
            return Ok(GetMessageResponse { message: Some(MessageView::queued(&row.message)) });
        }
        Ok(GetMessageResponse { message: self.stored(tenant, id).await? })
    }

    async fn stored(&self, tenant: &TenantId, id: MessageId) -> Result<Option<MessageView>, RemoteError> {
        self.deps
            .store
            .get_message(tenant, id)
            .await
            .map(|m| m.map(common::store::StoredMessage::view))
            .map_err(|e| unavailable("reading the message", &e))
    }
}
