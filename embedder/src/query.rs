//! `mem.v1.embed.query`: embeds search queries in the embedder's space, for every searcher.

use std::time::Duration;

use crate::Deps;
use bytes::Bytes;
use common::bus::{Envelope, Request};
use common::contract::{
    CachePurge, EmbedQueryRequest, EmbedQueryResponse, REQUEST_ID_HEADER, RemoteError, RemoteErrorCode, Reply, VERSION,
};
use common::domain::TenantId;
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument as _, warn};

use crate::cache::QueryCache;
use crate::embed::Embeddings;
use crate::metrics::Metrics;
use crate::provider::Purpose;

/// Most texts in one query-embedding request.
const MAX_TEXTS: usize = 100;

/// What the query service receives.
enum Incoming {
    Request(Request),
    Purge(Envelope),
}

pub(crate) struct QueryService {
    handler: Handler,
    requests: BoxStream<'static, Request>,
    purges: BoxStream<'static, Envelope>,
}

/// Answers one request at a time; cheap to clone.
#[derive(Clone)]
struct Handler {
    deps: Deps,
    embeddings: Embeddings,
    cache: QueryCache,
    metrics: Metrics,
}

impl QueryService {
    pub(crate) fn new(
        deps: Deps,
        embeddings: Embeddings,
        cache: QueryCache,
        requests: BoxStream<'static, Request>,
        purges: BoxStream<'static, Envelope>,
        metrics: Metrics,
    ) -> Self {
        Self { handler: Handler { deps, embeddings, cache, metrics }, requests, purges }
    }

    pub(crate) async fn run(self, shutdown: CancellationToken, grace: Duration) {
        // Cache purges arrive beside the requests and are handled at once.
        let incoming =
            futures::stream::select(self.requests.map(Incoming::Request), self.purges.map(Incoming::Purge)).boxed();
        let handler = self.handler;
        let handle = |tasks: &TaskTracker, incoming| match incoming {
            Incoming::Request(request) => handler.spawn(tasks, request),
            Incoming::Purge(purge) => handler.purge(&purge),
        };
        common::shutdown::serve(incoming, &shutdown, grace, "query-embedding requests", handle).await;
    }
}

impl Handler {
    fn purge(&self, purge: &Envelope) {
        match serde_json::from_slice::<CachePurge>(&purge.payload) {
            Ok(p) => {
                let dropped = self.cache.purge(&p.tenant_id);
                tracing::info!(tenant = %p.tenant_id, dropped, "dropped an erased tenant's cached queries");
            }
            Err(e) => warn!(error = %e, "ignoring a malformed cache purge"),
        }
    }

    fn spawn(&self, tasks: &TaskTracker, request: Request) {
        let (deps, embeddings, cache) = (self.deps.clone(), self.embeddings.clone(), self.cache.clone());
        self.metrics.query_requests.inc();
        let request_id = request.message.header(REQUEST_ID_HEADER).unwrap_or("-");
        let span = tracing::info_span!("embed_query", request_id = %request_id);
        tasks.spawn(
            async move {
                let Some(reply) = request.reply else { return };
                let (answer, tenant, fresh) = answer(&embeddings, &cache, &request.message.payload).await;
                tracing::debug!(ok = matches!(answer, Reply::Ok(_)), "query embedded");
                let payload = Bytes::from(serde_json::to_vec(&answer).expect("replies serialise"));
                if let Err(e) = deps.bus.respond(&reply, payload).await {
                    warn!(error = %e, "answering a query-embedding request failed");
                }
                // Fill the cache after answering: the caller does not wait for Redis.
                for (text, vector) in fresh {
                    cache.put(embeddings.space(), tenant.as_ref(), &text, &vector).await;
                }
            }
            .instrument(span),
        );
    }
}

/// The reply, and whose queries the provider computed vectors for (to cache).
async fn answer(
    embeddings: &Embeddings,
    cache: &QueryCache,
    payload: &[u8],
) -> (Reply<EmbedQueryResponse>, Option<TenantId>, Vec<(String, Vec<f32>)>) {
    match vectors(embeddings, cache, payload).await {
        Ok((vectors, tenant, fresh)) => {
            (Reply::Ok(EmbedQueryResponse { space: embeddings.space().clone(), vectors }), tenant, fresh)
        }
        Err(e) => (Reply::Error(e), None, Vec::new()),
    }
}

type Vectors = (Vec<Vec<f32>>, Option<TenantId>, Vec<(String, Vec<f32>)>);

async fn vectors(embeddings: &Embeddings, cache: &QueryCache, payload: &[u8]) -> Result<Vectors, RemoteError> {
    let bad_request = |message: String| RemoteError::new(RemoteErrorCode::BadRequest, message);
    let request: EmbedQueryRequest =
        serde_json::from_slice(payload).map_err(|e| bad_request(format!("malformed request: {e}")))?;
    if request.v != VERSION {
        return Err(bad_request(format!("unsupported version {}", request.v)));
    }
    if request.texts.is_empty() || request.texts.len() > MAX_TEXTS {
        return Err(bad_request(format!("send 1 to {MAX_TEXTS} texts")));
    }
    let space = embeddings.space();
    let mut vectors: Vec<Option<Vec<f32>>> = Vec::with_capacity(request.texts.len());
    for text in &request.texts {
        vectors.push(cache.get(space, request.tenant_id.as_ref(), text).await);
    }
    let missing: Vec<String> =
        request.texts.iter().zip(&vectors).filter(|(_, v)| v.is_none()).map(|(t, _)| t.clone()).collect();
    let mut fresh = Vec::with_capacity(missing.len());
    if !missing.is_empty() {
        let answers = embeddings
            .embed(&missing, Purpose::Query)
            .await
            .map_err(|e| RemoteError::new(RemoteErrorCode::Unavailable, e.to_string()))?;
        let mut answers = missing.into_iter().zip(answers);
        for slot in vectors.iter_mut().filter(|v| v.is_none()) {
            let (text, answer) = answers.next().expect("one answer per missing text");
            let vector = answer.map_err(|refused| bad_request(format!("the provider refused the text: {refused}")))?;
            *slot = Some(vector.clone());
            fresh.push((text, vector));
        }
    }
    Ok((vectors.into_iter().map(|v| v.expect("every slot is filled")).collect(), request.tenant_id, fresh))
}
