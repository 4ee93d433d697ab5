//! Nothing acknowledged is lost when Postgres crashes, on a cluster with durable settings (the
//! ones `scripts/run-local.sh`, compose and Kubernetes use). The test cluster runs with fsync and
//! synchronous_commit off, where the same crashes lose acknowledged messages: the embedder acks an
//! event once its commit returns, and such a commit may not have reached the write-ahead log.

use std::time::Duration;

use common::bus::Envelope;
use common::testing::{Process, TestEnv, free_addr};
use serde_json::json;

use crate::MEMORY;
use crate::servers::Cluster;

#[tokio::test]
async fn acknowledged_messages_survive_postgres_crashes_on_a_durable_cluster() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let env = TestEnv::start().await?;
    let mut vars = env.vars.clone();
    vars.insert("MEMORY_DATABASE_URL".into(), cluster.url());
    vars.insert("MEMORY_METRICS_ADDR".into(), free_addr()?.to_string());
    vars.insert("MEMORY_EMBEDDER_BATCH_SIZE".into(), "32".into());
    let embedder = Process::spawn(MEMORY, &["embedder"], &vars)?;

    // Publish steadily (each publish returns once JetStream stored it: the gateway's 202) while
    // Postgres is crash-stopped and restarted under the embedder three times.
    const MESSAGES: usize = 3_000;
    let subject = format!("{}.v1.ingest.acme", env.subjects.prefix());
    let bus = env.deps.bus.clone();
    let publishing = tokio::spawn(async move {
        for i in 0..MESSAGES {
            let payload = json!({"v": 1, "tenant_id": "acme", "conversation_id": "c", "role": "user",
                "content": format!("durable message {i}")});
            bus.publish(Envelope::new(subject.clone(), payload.to_string()), None).await?;
            if i % 100 == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        anyhow::Ok(())
    });
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        cluster.crash()?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        cluster.up()?;
    }
    publishing.await??;

    let pool = sqlx::PgPool::connect(&cluster.url()).await?;
    // Redeliveries after the crashes back off for up to some seconds each.
    env.eventually_within(Duration::from_secs(120), || async {
        let (rows, distinct): (i64, i64) =
            sqlx::query_as("SELECT count(*), count(DISTINCT content) FROM messages").fetch_one(&pool).await?;
        anyhow::ensure!(rows == MESSAGES as i64, "{rows} of {MESSAGES} stored");
        anyhow::ensure!(distinct == rows, "duplicates: {rows} rows, {distinct} distinct");
        Ok(())
    })
    .await?;
    assert!(embedder.terminate().await?.success());
    pool.close().await;
    drop(cluster);
    env.finish().await
}
