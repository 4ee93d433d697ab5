//! `mem.v1.embed.query`: embeds search queries in the embedder's space, for every searcher.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::Deps;
use common::bus::Request;
use common::contract::{EmbedQueryRequest, EmbedQueryResponse, RemoteError, RemoteErrorCode, Reply, VERSION};
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::metrics::Metrics;
use crate::provider::{Provider, Purpose};

/// Most texts in one query-embedding request.
const MAX_TEXTS: usize = 100;

pub(crate) struct QueryService {
    deps: Deps,
    provider: Arc<dyn Provider>,
    requests: BoxStream<'static, Request>,
    metrics: Metrics,
}

impl QueryService {
    pub(crate) fn new(
        deps: Deps,
        provider: Arc<dyn Provider>,
        requests: BoxStream<'static, Request>,
        metrics: Metrics,
    ) -> Self {
        Self { deps, provider, requests, metrics }
    }

    pub(crate) async fn run(mut self, shutdown: CancellationToken, grace: Duration) {
        let tasks = TaskTracker::new();
        loop {
            let request = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                next = self.requests.next() => match next {
                    Some(r) => r,
                    None => break,
                },
            };
            self.spawn(&tasks, request);
        }
        // Answer what has already arrived, then unsubscribe so new requests go to other replicas.
        while let Some(Some(request)) = self.requests.next().now_or_never() {
            self.spawn(&tasks, request);
        }
        drop(self.requests);
        tasks.close();
        if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
            warn!(in_flight = tasks.len(), "query-embedding requests still running at the end of the grace period");
        }
    }

    fn spawn(&self, tasks: &TaskTracker, request: Request) {
        let (deps, provider, metrics) = (self.deps.clone(), self.provider.clone(), self.metrics.clone());
        tasks.spawn(async move {
            metrics.query_requests.inc();
            let Some(reply) = request.reply else { return };
            let answer = answer(provider.as_ref(), &request.message.payload).await;
            let payload = Bytes::from(serde_json::to_vec(&answer).expect("replies serialise"));
            if let Err(e) = deps.bus.respond(&reply, payload).await {
                warn!(error = %e, "answering a query-embedding request failed");
            }
        });
    }
}

async fn answer(provider: &dyn Provider, payload: &[u8]) -> Reply<EmbedQueryResponse> {
    let request: EmbedQueryRequest = match serde_json::from_slice(payload) {
        Ok(r) => r,
        Err(e) => {
            return Reply::Error(RemoteError::new(RemoteErrorCode::BadRequest, format!("malformed request: {e}")));
        }
    };
    if request.v != VERSION {
        return Reply::Error(RemoteError::new(
            RemoteErrorCode::BadRequest,
            format!("unsupported version {}", request.v),
        ));
    }
    if request.texts.is_empty() || request.texts.len() > MAX_TEXTS {
        return Reply::Error(RemoteError::new(RemoteErrorCode::BadRequest, format!("send 1 to {MAX_TEXTS} texts")));
    }
    match provider.embed(&request.texts, Purpose::Query).await {
        Ok(vectors) => Reply::Ok(EmbedQueryResponse { space: provider.space(), vectors }),
        Err(e) => Reply::Error(RemoteError::new(RemoteErrorCode::Unavailable, e.to_string())),
    }
}
