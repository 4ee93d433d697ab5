//! The cross-service harness: a `TestEnv` (own database, own subject prefix) with the real
//! embedder and searcher on it, and the gateway's router driven in-process.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use common::testing::TestEnv;
use prometheus_client::registry::Registry;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

pub(crate) const KEY: &str = "test-admin-key-0123456789";

pub(crate) struct App {
    pub(crate) env: TestEnv,
    pub(crate) state: gateway::AppState,
}

#[derive(Debug)]
pub(crate) struct Resp {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Value,
}

impl App {
    /// Gateway, embedder, searcher and retention on a fresh environment.
    pub(crate) async fn start() -> anyhow::Result<Self> {
        Self::start_with(|_| {}).await
    }

    /// The same, with extra `MEMORY_*` variables.
    pub(crate) async fn start_with(configure: impl FnOnce(&mut BTreeMap<String, String>)) -> anyhow::Result<Self> {
        let app = Self::without_workers(configure).await?;
        app.spawn_embedder().await?;
        app.spawn_searcher().await?;
        app.spawn_retention().await?;
        Ok(app)
    }

    /// Only the gateway; start workers with `spawn_*`.
    pub(crate) async fn without_workers(configure: impl FnOnce(&mut BTreeMap<String, String>)) -> anyhow::Result<Self> {
        let env = TestEnv::start_with(|vars| {
            vars.insert("MEMORY_ADMIN_API_KEY".into(), KEY.into());
            vars.insert("MEMORY_HTTP_ADDR".into(), "127.0.0.1:0".into());
            // Tests send many requests; the rate-limit tests set their own limits.
            vars.insert("MEMORY_RATE_LIMIT_CLIENT".into(), "100000/minute".into());
            vars.insert("MEMORY_RATE_LIMIT_TENANT".into(), "100000/minute".into());
            configure(vars);
        })
        .await?;
        let mut registry = Registry::with_prefix("memory");
        let mut gateway = gateway::Gateway::build(&env.config, env.deps.clone(), &mut registry).await?;
        gateway.expose_metrics(std::sync::Arc::new(registry));
        // The router is driven in-process, without `run`: readiness follows the test's token.
        let mut state = gateway.state();
        state.shutdown = env.shutdown.clone();
        Ok(Self { env, state })
    }

    /// Starts an embedder; cancel the returned token to stop just this one.
    pub(crate) async fn spawn_embedder(&self) -> anyhow::Result<CancellationToken> {
        self.spawn_embedder_with(&self.env.config).await
    }

    /// Starts an embedder with another configuration (another provider, say).
    pub(crate) async fn spawn_embedder_with(&self, config: &common::Config) -> anyhow::Result<CancellationToken> {
        self.spawn_embedder_registered(config, &mut Registry::default()).await
    }

    /// Starts an embedder whose metrics go to `registry`.
    pub(crate) async fn spawn_embedder_registered(
        &self,
        config: &common::Config,
        registry: &mut Registry,
    ) -> anyhow::Result<CancellationToken> {
        let token = self.env.shutdown.child_token();
        let provider = embedder::provider(config)?;
        let worker = embedder::Embedder::build(config, self.env.deps.clone(), provider, registry).await?;
        let (t, grace) = (token.clone(), config.shutdown_grace);
        self.env.tasks.spawn(async move { worker.run(t, grace).await });
        Ok(token)
    }

    pub(crate) async fn spawn_searcher(&self) -> anyhow::Result<CancellationToken> {
        let token = self.env.shutdown.child_token();
        let worker =
            searcher::Searcher::build(&self.env.config, self.env.deps.clone(), &mut Registry::default()).await?;
        let (t, grace) = (token.clone(), self.env.config.shutdown_grace);
        self.env.tasks.spawn(async move { worker.run(t, grace).await });
        Ok(token)
    }

    pub(crate) async fn send(
        &self,
        method: Method,
        uri: &str,
        body: Option<Body>,
        key: Option<&str>,
    ) -> anyhow::Result<Resp> {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(key) = key {
            req = req.header("x-api-key", key);
        }
        self.dispatch(req, body).await
    }

    /// Sends with the operator key and extra headers.
    pub(crate) async fn send_with(
        &self,
        method: Method,
        uri: &str,
        body: Option<Body>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Resp> {
        let mut req = Request::builder().method(method).uri(uri).header("x-api-key", KEY);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        self.dispatch(req, body).await
    }

    /// Sends with the key as `Authorization: Bearer`.
    pub(crate) async fn send_bearer(
        &self,
        method: Method,
        uri: &str,
        body: Option<Body>,
        key: &str,
    ) -> anyhow::Result<Resp> {
        let req = Request::builder().method(method).uri(uri).header("authorization", format!("Bearer {key}"));
        self.dispatch(req, body).await
    }

    /// Sends a request (a JSON body, if any) through the gateway's router.
    async fn dispatch(&self, mut req: axum::http::request::Builder, body: Option<Body>) -> anyhow::Result<Resp> {
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let response = gateway::router(self.state.clone()).oneshot(req.body(body.unwrap_or_else(Body::empty))?).await?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await?;
        let body =
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        Ok(Resp { status, headers, body })
    }

    pub(crate) async fn post(&self, uri: &str, body: &Value) -> anyhow::Result<Resp> {
        self.send(Method::POST, uri, Some(Body::from(body.to_string())), Some(KEY)).await
    }

    pub(crate) async fn get(&self, uri: &str) -> anyhow::Result<Resp> {
        self.send(Method::GET, uri, None, Some(KEY)).await
    }

    /// Searches and returns the hits' message ids, best first.
    pub(crate) async fn search(&self, tenant: &str, query: &str) -> anyhow::Result<Vec<String>> {
        let uri = format!("/v1/memory/search?tenant_id={tenant}&query={}&top_k=10", urlencode(query));
        let r = self.get(&uri).await?;
        anyhow::ensure!(r.status == StatusCode::OK, "search failed: {r:?}");
        Ok(r.body["items"].as_array().unwrap().iter().map(|h| h["message_id"].as_str().unwrap().to_owned()).collect())
    }

    /// Waits until `GET uri` shows the message embedded.
    pub(crate) async fn embedded(&self, uri: &str) -> anyhow::Result<()> {
        self.env
            .eventually(|| async {
                let r = self.get(uri).await?;
                anyhow::ensure!(r.body["status"] == "embedded", "{r:?}");
                Ok(())
            })
            .await
    }

    /// Waits until the embedder has settled every ingest event.
    pub(crate) async fn drained(&self) -> anyhow::Result<()> {
        self.env
            .eventually(|| async {
                let state = self.env.deps.bus.consumer_state(common::contract::StreamKind::Ingest, "embedder").await?;
                anyhow::ensure!((state.pending, state.ack_pending) == (0, 0), "{state:?}");
                Ok(())
            })
            .await
    }

    /// Creates the tenant (if new) and a key for it with these scopes; returns the key.
    pub(crate) async fn tenant_key(&self, tenant: &str, scopes: &[&str]) -> anyhow::Result<String> {
        let r = self.post("/v1/admin/tenants", &serde_json::json!({"id": tenant})).await?;
        anyhow::ensure!(r.status == StatusCode::CREATED || r.status == StatusCode::CONFLICT, "{r:?}");
        let r = self.post(&format!("/v1/admin/tenants/{tenant}/keys"), &serde_json::json!({"scopes": scopes})).await?;
        anyhow::ensure!(r.status == StatusCode::CREATED, "{r:?}");
        Ok(r.body["key"].as_str().unwrap().to_owned())
    }

    /// Another gateway on this environment, serving HTTP on a free port (with extra `MEMORY_*`
    /// variables); returns its address once it is ready.
    pub(crate) async fn serve_http(
        &self,
        configure: impl FnOnce(&mut BTreeMap<String, String>),
    ) -> anyhow::Result<std::net::SocketAddr> {
        let (addr, _) = self.serve_http_until(self.env.shutdown.clone(), configure).await?;
        Ok(addr)
    }

    /// [`Self::serve_http`] until `stop` is cancelled; the handle ends when the gateway has.
    pub(crate) async fn serve_http_until(
        &self,
        stop: CancellationToken,
        configure: impl FnOnce(&mut BTreeMap<String, String>),
    ) -> anyhow::Result<(std::net::SocketAddr, tokio::task::JoinHandle<Result<(), gateway::GatewayError>>)> {
        let mut vars = self.env.vars.clone();
        vars.insert("MEMORY_HTTP_ADDR".into(), "127.0.0.1:0".into());
        configure(&mut vars);
        let config = common::Config::from_map(&vars)?;
        let gateway = gateway::Gateway::build(&config, self.env.deps.clone(), &mut Registry::default()).await?;
        let addr = gateway.local_addr();
        let handle = self.env.tasks.spawn(gateway.run(stop, config.shutdown_grace));
        self.env.until_ready(addr).await?;
        Ok((addr, handle))
    }

    /// Starts a retention service on this environment.
    pub(crate) async fn spawn_retention(&self) -> anyhow::Result<()> {
        let service =
            retention::Retention::build(&self.env.config, self.env.deps.clone(), &mut Registry::default()).await?;
        let (t, grace) = (self.env.shutdown.child_token(), self.env.config.shutdown_grace);
        self.env.tasks.spawn(async move { service.run(t, grace).await });
        Ok(())
    }

    /// Rows stored for a tenant.
    pub(crate) async fn count_rows(&self, tenant: &str) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM messages WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_one(self.env.store.pool())
            .await?)
    }

    pub(crate) async fn finish(self) -> anyhow::Result<()> {
        self.env.finish().await
    }
}

pub(crate) fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub(crate) fn message(tenant: &str, content: &str) -> Value {
    serde_json::json!({"tenant_id": tenant, "conversation_id": "conv-1", "role": "user", "content": content})
}
