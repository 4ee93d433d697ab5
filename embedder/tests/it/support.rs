//! Helpers: run an embedder in process, publish messages, read what it stored.

use std::time::Duration;

use common::bus::Envelope;
use common::contract::{EmbedQueryRequest, EmbedQueryResponse, Reply, VERSION};
use common::domain::{MessageId, TenantId};
use common::store::Spaces;
use common::testing::TestEnv;
use embedder::{Embedder, Embeddings};
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio_util::sync::CancellationToken;

pub(crate) struct Running {
    pub(crate) embeddings: Embeddings,
    pub(crate) metrics: embedder::Metrics,
    pub(crate) readiness: common::ops::Check,
    pub(crate) stop: CancellationToken,
}

/// Builds an embedder from the environment's configuration and runs it until the test ends
/// (or `stop` is cancelled).
pub(crate) async fn spawn_embedder(env: &TestEnv) -> anyhow::Result<Running> {
    spawn_embedder_with(env, &env.config).await
}

/// The same, with another configuration (another provider, say).
pub(crate) async fn spawn_embedder_with(env: &TestEnv, config: &common::Config) -> anyhow::Result<Running> {
    let provider = embedder::provider(config)?;
    let worker = Embedder::build(config, env.deps.clone(), provider, &mut Registry::default()).await?;
    let embeddings = worker.embeddings().clone();
    let metrics = worker.metrics().clone();
    let readiness = worker.readiness();
    let stop = env.shutdown.child_token();
    let (t, grace) = (stop.clone(), config.shutdown_grace);
    env.tasks.spawn(async move { worker.run(t, grace).await });
    Ok(Running { embeddings, metrics, readiness, stop })
}

/// The environment's configuration with some variables changed.
pub(crate) fn config_with(
    env: &TestEnv,
    vars: impl IntoIterator<Item = (String, String)>,
) -> anyhow::Result<common::Config> {
    let mut all = env.vars.clone();
    all.extend(vars);
    Ok(common::Config::from_map(&all)?)
}

/// Waits until the embedder is ready (ingesting with a closed circuit).
pub(crate) async fn until_ingesting(env: &TestEnv, running: &Running) -> anyhow::Result<()> {
    env.eventually(|| async { (running.readiness)().map_err(anyhow::Error::msg) }).await
}

/// Publishes a message to the ingest stream as a direct NATS client would.
pub(crate) async fn publish(env: &TestEnv, name: Option<&str>, content: &str) -> anyhow::Result<MessageId> {
    let id = MessageId::new();
    let tenant = TenantId::parse("acme".to_owned())?;
    let payload = json!({
        "v": 1, "message_id": id, "tenant_id": "acme", "conversation_id": "c1",
        "role": "user", "name": name, "content": content,
    });
    env.deps
        .bus
        .publish(Envelope::new(env.subjects.ingest(&tenant, id), payload.to_string()), Some(&id.to_string()))
        .await?;
    Ok(id)
}

/// A message's status and failure reason.
pub(crate) async fn status(env: &TestEnv, id: MessageId) -> anyhow::Result<Option<(String, Option<String>)>> {
    Ok(sqlx::query_as("SELECT status, failure_reason FROM messages WHERE id = $1")
        .bind(id.0)
        .fetch_optional(env.store.pool())
        .await?)
}

/// Waits until the message has `expected` status.
pub(crate) async fn until_status(env: &TestEnv, id: MessageId, expected: &str) -> anyhow::Result<Option<String>> {
    env.eventually(|| async {
        match status(env, id).await? {
            Some((s, reason)) if s == expected => Ok(reason),
            other => anyhow::bail!("message {id} is {other:?}, not {expected}"),
        }
    })
    .await
}

/// The vector stored for a message in the active space.
pub(crate) async fn vector(env: &TestEnv, id: MessageId) -> anyhow::Result<Option<Vec<f32>>> {
    let space = env.deps.store.active_space().await?.ok_or_else(|| anyhow::anyhow!("no active space"))?;
    let row: Option<(pgvector::Vector,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT embedding::vector FROM message_vectors_{} WHERE message_id = $1",
        space.id
    )))
    .bind(id.0)
    .fetch_optional(env.store.pool())
    .await?;
    Ok(row.map(|(v,)| v.to_vec()))
}

/// Rows in the vector table of the space of `provider`.
pub(crate) async fn vectors_in(env: &TestEnv, provider: &str) -> anyhow::Result<i64> {
    let id: i32 = sqlx::query_scalar("SELECT id FROM embedding_spaces WHERE provider = $1")
        .bind(provider)
        .fetch_one(env.store.pool())
        .await?;
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM message_vectors_{id}")))
        .fetch_one(env.store.pool())
        .await?)
}

/// The provider of the active space.
pub(crate) async fn active_provider(env: &TestEnv) -> anyhow::Result<String> {
    Ok(env.deps.store.active_space().await?.map(|s| s.reference.provider).unwrap_or_default())
}

/// Rows in every vector table.
pub(crate) async fn vector_rows(env: &TestEnv) -> anyhow::Result<i64> {
    let ids: Vec<i32> = sqlx::query_scalar("SELECT id FROM embedding_spaces").fetch_all(env.store.pool()).await?;
    let mut total = 0;
    for id in ids {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM message_vectors_{id}")))
            .fetch_one(env.store.pool())
            .await?;
        total += n;
    }
    Ok(total)
}

/// Asks the embedder for query vectors over NATS.
pub(crate) async fn embed_query(env: &TestEnv, texts: &[&str]) -> anyhow::Result<Reply<EmbedQueryResponse>> {
    let request =
        EmbedQueryRequest { v: VERSION, texts: texts.iter().map(|t| (*t).to_owned()).collect(), tenant_id: None };
    let space = env.deps.store.active_space().await?.ok_or_else(|| anyhow::anyhow!("no active space"))?;
    let envelope = Envelope::new(env.subjects.embed_query(space.id), serde_json::to_vec(&request)?);
    let bytes = env.deps.bus.request(envelope, Duration::from_secs(10)).await?;
    Ok(serde_json::from_slice(&bytes)?)
}

pub(crate) fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}
