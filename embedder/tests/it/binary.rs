//! The `memory-embedder` binary against real NATS and Postgres.

use common::bus::Envelope;
use common::testing::{Process, TestEnv, free_addr, http_get};
use serde_json::json;

#[tokio::test]
async fn the_binary_stores_and_embeds_serves_ops_and_stops_cleanly_on_sigterm() -> anyhow::Result<()> {
    let ops = free_addr()?;
    let env = TestEnv::start_with(|vars| {
        vars.insert("MEMORY_METRICS_ADDR".into(), ops.to_string());
    })
    .await?;
    let process = Process::spawn(env!("CARGO_BIN_EXE_memory-embedder"), &env.vars)?;
    env.until_ready(ops).await?;

    let payload = json!({"v": 1, "tenant_id": "acme", "conversation_id": "c", "role": "user", "content": "hello"});
    let subject = format!("{}.v1.ingest.acme", env.subjects.prefix());
    env.deps.bus.publish(Envelope::new(subject, payload.to_string()), None).await?;
    env.eventually(|| async {
        let embedded: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE status = 'embedded'")
            .fetch_one(env.store.pool())
            .await?;
        anyhow::ensure!(embedded == 1, "not embedded yet");
        Ok(())
    })
    .await?;
    // The row commits before the events go out and the batch is counted.
    env.eventually(|| async {
        let (_, metrics) = http_get(ops, "/metrics").await?;
        anyhow::ensure!(metrics.contains("memory_embedder_messages_total{outcome=\"stored\"} 1"), "{metrics}");
        anyhow::ensure!(
            metrics.contains("memory_embedder_embeddings_total{provider=\"hash\",outcome=\"ok\"} 1"),
            "{metrics}"
        );
        anyhow::ensure!(metrics.contains("memory_embedder_breaker_state 0"), "{metrics}");
        Ok(())
    })
    .await?;
    assert_eq!(http_get(ops, "/healthz").await?.0, 200);

    let status = process.terminate().await?;
    assert!(status.success(), "exit after SIGTERM: {status}");
    env.finish().await
}

#[tokio::test]
async fn the_binary_refuses_to_start_with_a_bad_variable_and_names_it() -> anyhow::Result<()> {
    let vars = [("MEMORY_EMBEDDER_BATCH_SIZE".to_owned(), "lots".to_owned())].into();
    let (status, stderr) = Process::spawn(env!("CARGO_BIN_EXE_memory-embedder"), &vars)?.exit().await?;
    assert!(!status.success());
    assert!(stderr.contains("MEMORY_EMBEDDER_BATCH_SIZE=\"lots\""), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn reembed_on_the_command_line_fills_the_new_space_and_activates_it() -> anyhow::Result<()> {
    let fake = common::testing::gemini::FakeGemini::start().await;
    let env = TestEnv::start().await?;
    for i in 0..30 {
        let payload = json!({"v": 1, "tenant_id": "acme", "conversation_id": "c", "role": "user", "content": format!("message {i}")});
        let subject = format!("{}.v1.ingest.acme", env.subjects.prefix());
        env.deps.bus.publish(Envelope::new(subject, payload.to_string()), None).await?;
    }
    let process = Process::spawn(env!("CARGO_BIN_EXE_memory-embedder"), &env.vars)?;
    env.eventually(|| async {
        let embedded: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE status = 'embedded'")
            .fetch_one(env.store.pool())
            .await?;
        anyhow::ensure!(embedded == 30, "{embedded} embedded");
        Ok(())
    })
    .await?;
    assert!(process.terminate().await?.success());

    let mut vars = env.vars.clone();
    vars.extend(fake.vars());
    vars.insert("MEMORY_EMBEDDER_BATCH_SIZE".into(), "10".into());
    let output = Process::spawn_with_args(env!("CARGO_BIN_EXE_memory-embedder"), &["reembed"], &vars)?.output().await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("reembed: done; the space is active"), "{stdout}");
    let active: String =
        sqlx::query_scalar("SELECT provider FROM embedding_spaces WHERE active").fetch_one(env.store.pool()).await?;
    assert_eq!(active, "gemini");
    assert_eq!(fake.calls().iter().map(|c| c.texts.len()).sum::<usize>(), 30);
    env.finish().await
}

#[tokio::test]
async fn the_binary_names_what_its_provider_lacks() -> anyhow::Result<()> {
    for (provider, missing) in [("local", "MEMORY_MODEL_DIR"), ("gemini", "MEMORY_GEMINI_API_KEY")] {
        let vars = [("MEMORY_EMBEDDING_PROVIDER".to_owned(), provider.to_owned())].into();
        let (status, stderr) = Process::spawn(env!("CARGO_BIN_EXE_memory-embedder"), &vars)?.exit().await?;
        assert!(!status.success());
        assert!(stderr.contains(missing), "{provider}: {stderr}");
    }
    let vars = [
        ("MEMORY_EMBEDDING_PROVIDER".to_owned(), "local".to_owned()),
        ("MEMORY_MODEL_DIR".to_owned(), "/nonexistent/model".to_owned()),
    ]
    .into();
    let (status, stderr) = Process::spawn(env!("CARGO_BIN_EXE_memory-embedder"), &vars)?.exit().await?;
    assert!(!status.success());
    assert!(stderr.contains("MEMORY_MODEL_DIR=/nonexistent/model") && stderr.contains("config.json"), "{stderr}");
    Ok(())
}
