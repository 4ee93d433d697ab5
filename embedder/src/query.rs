//! `mem.v1.embed.query`: embeds search queries in the embedder's space, for every searcher.

use std::time::Duration;

use crate::Deps;
use common::bus::respond::{Answered, Responder, bad_request, unavailable};
use common::bus::{Envelope, Request};
use common::contract::{CachePurge, EmbedQueryRequest, EmbedQueryResponse, RemoteError};
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

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

/// Answers requests; cheap to clone.
#[derive(Clone)]
struct Handler {
    responder: Responder,
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
        max_in_flight: usize,
    ) -> Self {
        let responder = Responder::new(deps.bus.clone(), max_in_flight);
        Self { handler: Handler { responder, embeddings, cache, metrics }, requests, purges }
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
        let (embeddings, cache) = (self.embeddings.clone(), self.cache.clone());
        let metrics = self.metrics.clone();
        let answered = move |a: Answered| {
            tracing::debug!(error = ?a.error, took = ?a.took, "query answered");
            metrics.query_requests.inc();
        };
        let handle = move |request: EmbedQueryRequest, _| async move {
            let tenant = request.tenant_id.clone();
            let (vectors, fresh) = vectors(&embeddings, &cache, request).await?;
            // Fill the cache after answering: the caller does not wait for Redis.
            let space = embeddings.space().clone();
            tokio::spawn(async move {
                for (text, vector) in fresh {
                    cache.put(&space, tenant.as_ref(), &text, &vector).await;
                }
            });
            Ok(EmbedQueryResponse { space: embeddings.space().clone(), vectors })
        };
        self.responder.spawn(tasks, "embed_query", request, handle, answered);
    }
}

/// The query vectors, and those the provider computed (to cache).
type Vectors = (Vec<Vec<f32>>, Vec<(String, Vec<f32>)>);

async fn vectors(
    embeddings: &Embeddings,
    cache: &QueryCache,
    request: EmbedQueryRequest,
) -> Result<Vectors, RemoteError> {
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
        let answers =
            embeddings.embed(&missing, Purpose::Query).await.map_err(|e| unavailable("embedding the query", &e))?;
        let mut answers = missing.into_iter().zip(answers);
        for slot in vectors.iter_mut().filter(|v| v.is_none()) {
            let (text, answer) = answers.next().expect("one answer per missing text");
            let vector = answer.map_err(|refused| bad_request(format!("the provider refused the text: {refused}")))?;
            *slot = Some(vector.clone());
            fresh.push((text, vector));
        }
    }
    Ok((vectors.into_iter().map(|v| v.expect("every slot is filled")).collect(), fresh))
}
