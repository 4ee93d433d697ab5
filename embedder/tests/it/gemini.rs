//! The `gemini` provider through the pipeline, against a fake Gemini API that plays the real
//! request and response shapes, errors and rate limits.

use std::time::Duration;

use common::testing::TestEnv;
use common::testing::gemini::{FakeGemini, Fault, KEY};
use embedder::BreakerState;

use crate::support::{norm, publish, spawn_embedder, status, until_status, vector, vector_rows};

/// An environment whose embedder calls `fake`, with fast retries and a small breaker.
async fn env(fake: &FakeGemini, extra: &[(&str, &str)]) -> anyhow::Result<TestEnv> {
    let extra: Vec<(String, String)> = extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    TestEnv::start_with(|vars| {
        vars.extend(fake.vars());
        vars.insert("MEMORY_GEMINI_RETRY_MIN_MS".into(), "10".into());
        vars.insert("MEMORY_GEMINI_RETRY_MAX_MS".into(), "5000".into());
        vars.extend(extra);
    })
    .await
}

#[tokio::test]
async fn requests_follow_the_documented_shape_and_vectors_are_normalised() -> anyhow::Result<()> {
    let fake = FakeGemini::start().await;
    let env = env(&fake, &[("MEMORY_GEMINI_DIMENSIONS", "256")]).await?;
    let _embedder = spawn_embedder(&env).await?;
    let named = publish(&env, Some("Alice"), "I moved to Lisbon in May").await?;
    let plain = publish(&env, None, "What is the weather like?").await?;
    until_status(&env, named, "embedded").await?;
    until_status(&env, plain, "embedded").await?;

    let calls = fake.calls();
    let texts: Vec<&String> = calls.iter().flat_map(|c| &c.texts).collect();
    assert!(texts.contains(&&"Alice: I moved to Lisbon in May".to_owned()), "{texts:?}");
    assert!(texts.contains(&&"What is the weather like?".to_owned()), "{texts:?}");
    for call in &calls {
        assert_eq!(call.key.as_deref(), Some(KEY), "the key travels in x-goog-api-key");
        for request in call.body["requests"].as_array().unwrap() {
            assert_eq!(request["model"], "models/gemini-embedding-001");
            assert_eq!(request["taskType"], "RETRIEVAL_DOCUMENT");
            assert_eq!(request["outputDimensionality"], 256);
            assert_eq!(request["content"]["parts"].as_array().unwrap().len(), 1);
        }
    }
    let stored = vector(&env, named).await?.expect("a vector");
    assert_eq!(stored.len(), 256);
    assert!((norm(&stored) - 1.0).abs() < 1e-4, "stored vectors are unit length");
    let raw = FakeGemini::raw_vector("Alice: I moved to Lisbon in May", 256);
    let cosine: f32 = raw.iter().zip(&stored).map(|(a, b)| a * b).sum::<f32>() / norm(&raw);
    assert!(cosine > 0.9999, "the stored vector is Gemini's, normalised: {cosine}");
    let space: (String, String, i32) =
        sqlx::query_as("SELECT provider, model, dimensions FROM embedding_spaces WHERE active")
            .fetch_one(env.store.pool())
            .await?;
    assert_eq!(space, ("gemini".into(), "gemini-embedding-001".into(), 256));

    // Queries are embedded as queries.
    let reply = crate::support::embed_query(&env, &["where does Alice live"]).await?;
    assert!(matches!(reply, common::contract::Reply::Ok(_)), "{reply:?}");
    let last = fake.calls().pop().unwrap();
    assert_eq!(last.body["requests"][0]["taskType"], "RETRIEVAL_QUERY");
    env.finish().await
}

#[tokio::test]
async fn a_rate_limit_is_waited_out_as_long_as_retry_after_says() -> anyhow::Result<()> {
    let fake = FakeGemini::start().await;
    fake.script([Fault::RateLimited { retry_after_secs: Some(1), retry_info: None }]);
    let env = env(&fake, &[]).await?;
    let _embedder = spawn_embedder(&env).await?;
    let id = publish(&env, None, "rate limited but patient").await?;
    until_status(&env, id, "embedded").await?;
    let calls = fake.calls();
    assert_eq!(calls.len(), 2, "one refused call, one retry");
    let waited = calls[1].at - calls[0].at;
    assert!(waited >= Duration::from_secs(1), "Retry-After: 1 honoured, waited {waited:?}");
    assert!(waited < Duration::from_secs(3), "and not much longer: {waited:?}");
    env.finish().await
}

#[tokio::test]
async fn retry_info_in_the_body_sets_the_delay_too() -> anyhow::Result<()> {
    let fake = FakeGemini::start().await;
    fake.script([Fault::RateLimited { retry_after_secs: None, retry_info: Some("0.8s") }]);
    let env = env(&fake, &[]).await?;
    let _embedder = spawn_embedder(&env).await?;
    let id = publish(&env, None, "quota exhausted for a moment").await?;
    until_status(&env, id, "embedded").await?;
    let calls = fake.calls();
    assert!(calls[1].at - calls[0].at >= Duration::from_millis(800), "{:?}", calls[1].at - calls[0].at);
    env.finish().await
}

#[tokio::test]
async fn an_outage_opens_the_breaker_and_every_message_is_embedded_once_after_recovery() -> anyhow::Result<()> {
    let fake = FakeGemini::start().await;
    fake.always(Some(Fault::Status(500)));
    let cooldown = Duration::from_millis(1500);
    let env = env(
        &fake,
        &[
            ("MEMORY_GEMINI_MAX_RETRIES", "1"),
            ("MEMORY_BREAKER_FAILURES", "3"),
            ("MEMORY_BREAKER_COOLDOWN_MS", "1500"),
            ("MEMORY_BREAKER_SUCCESSES", "2"),
            // One batch at a time: redelivered messages may come back as two batches, and a
            // second one in flight when the circuit opens would make its calls too.
            ("MEMORY_EMBEDDER_CONCURRENCY", "1"),
        ],
    )
    .await?;
    let embedder = spawn_embedder(&env).await?;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(publish(&env, None, &format!("message number {i} during the outage")).await?);
    }
    env.eventually(|| async {
        anyhow::ensure!(embedder.embeddings.breaker().state() == BreakerState::Open, "not open yet");
        Ok(())
    })
    .await?;
    assert!(embedder.embeddings.readiness().is_err(), "an open circuit is not ready");
    let opened_at = tokio::time::Instant::now();
    let open_until = opened_at + embedder.embeddings.breaker().open_for().unwrap_or_default();
    let calls_when_opened = fake.calls().len();
    // Three failed calls (each retried once) opened it.
    assert_eq!(calls_when_opened, 6, "{:?}", fake.calls().iter().map(|c| &c.texts).collect::<Vec<_>>());

    // Still failing at the first probe: it opens again, and no message text is ever probed with.
    env.eventually(|| async {
        anyhow::ensure!(fake.calls().len() > calls_when_opened, "no probe yet");
        Ok(())
    })
    .await?;
    // The first call after opening came once the cool-down was over (less the clock's grain).
    let first_after = fake.calls()[calls_when_opened].at;
    assert!(first_after + Duration::from_millis(20) >= open_until, "no call while the circuit is open");
    fake.always(None);
    for id in &ids {
        until_status(&env, *id, "embedded").await?;
    }
    let calls = fake.calls();
    let probes: Vec<_> = calls[calls_when_opened..].iter().take_while(|c| c.texts == ["health check"]).collect();
    assert!(probes.len() >= 3, "a failed probe, then two good ones close the circuit: {probes:?}");
    assert!(probes[0].at - opened_at >= cooldown - Duration::from_millis(1100), "the first probe waits the cool-down");
    assert_eq!(embedder.embeddings.breaker().state(), BreakerState::Closed);

    // Each message embedded exactly once, with Gemini's vector, and nothing else was stored.
    assert_eq!(vector_rows(&env).await?, 5);
    for (i, id) in ids.iter().enumerate() {
        let stored = vector(&env, *id).await?.expect("a vector");
        let raw = FakeGemini::raw_vector(&format!("message number {i} during the outage"), 768);
        let cosine: f32 = raw.iter().zip(&stored).map(|(a, b)| a * b).sum::<f32>() / norm(&raw);
        assert!(cosine > 0.9999, "message {i} holds Gemini's vector");
    }
    let spaces: i64 = sqlx::query_scalar("SELECT count(*) FROM embedding_spaces").fetch_one(env.store.pool()).await?;
    assert_eq!(spaces, 1, "no fallback space was created");
    env.finish().await
}

#[tokio::test]
async fn a_text_gemini_refuses_fails_alone_and_the_rest_of_its_batch_embeds() -> anyhow::Result<()> {
    let fake = FakeGemini::start().await;
    fake.poison(Some("FORBIDDEN-WORD"));
    // A wide batch window, so the three arrive in one batch.
    let env = env(&fake, &[("MEMORY_EMBEDDER_BATCH_WAIT_MS", "500")]).await?;
    let good1 = publish(&env, None, "first good message").await?;
    let bad = publish(&env, None, "this one holds FORBIDDEN-WORD").await?;
    let good2 = publish(&env, None, "second good message").await?;
    let _embedder = spawn_embedder(&env).await?;
    let reason = until_status(&env, bad, "failed").await?;
    let reason = reason.expect("a failure reason");
    assert!(reason.contains("INVALID_ARGUMENT"), "{reason}");
    until_status(&env, good1, "embedded").await?;
    until_status(&env, good2, "embedded").await?;
    assert!(vector(&env, bad).await?.is_none());
    assert_eq!(fake.calls()[0].texts.len(), 3, "they went out as one batch");
    let recorded: String = sqlx::query_scalar("SELECT reason FROM embedding_failures WHERE message_id = $1")
        .bind(bad.0)
        .fetch_one(env.store.pool())
        .await?;
    assert_eq!(recorded, reason);
    env.finish().await
}

#[tokio::test]
async fn a_slow_answer_times_out_and_is_retried() -> anyhow::Result<()> {
    let fake = FakeGemini::start().await;
    fake.script([Fault::Delay(Duration::from_secs(2))]);
    let env = env(&fake, &[("MEMORY_GEMINI_TIMEOUT_MS", "300")]).await?;
    let _embedder = spawn_embedder(&env).await?;
    let id = publish(&env, None, "patience").await?;
    until_status(&env, id, "embedded").await?;
    let calls = fake.calls();
    assert_eq!(calls.len(), 2, "the timed-out call and its retry");
    assert!(calls[1].at - calls[0].at < Duration::from_secs(2), "the client gave up before the answer came");
    env.finish().await
}

#[tokio::test]
async fn vectors_of_the_wrong_dimension_are_never_stored() -> anyhow::Result<()> {
    let fake = FakeGemini::start().await;
    fake.always(Some(Fault::WrongDimension));
    let env = env(&fake, &[("MEMORY_BREAKER_FAILURES", "100")]).await?;
    let _embedder = spawn_embedder(&env).await?;
    let id = publish(&env, None, "short answer").await?;
    env.eventually(|| async {
        anyhow::ensure!(!fake.calls().is_empty(), "not called yet");
        Ok(())
    })
    .await?;
    until_status(&env, id, "pending").await?;
    // A second call means the first answer was handled (refused) and the message handed back.
    env.eventually(|| async {
        anyhow::ensure!(fake.calls().len() >= 2, "not called again yet");
        Ok(())
    })
    .await?;
    assert_eq!(vector_rows(&env).await?, 0, "the 767-dimension answer was rejected");
    assert_eq!(status(&env, id).await?.unwrap().0, "pending", "and the message is not failed: it is retried");
    fake.always(None);
    until_status(&env, id, "embedded").await?;
    assert_eq!(vector(&env, id).await?.unwrap().len(), 768);
    env.finish().await
}

#[tokio::test]
async fn a_bad_key_is_the_deployments_fault_so_messages_wait_instead_of_failing() -> anyhow::Result<()> {
    let fake = FakeGemini::start().await;
    let env = env(
        &fake,
        &[
            ("MEMORY_GEMINI_API_KEY", "wrong-key"),
            ("MEMORY_BREAKER_FAILURES", "1"),
            ("MEMORY_BREAKER_COOLDOWN_MS", "60000"),
        ],
    )
    .await?;
    let embedder = spawn_embedder(&env).await?;
    let id = publish(&env, None, "waiting for a good key").await?;
    env.eventually(|| async {
        anyhow::ensure!(embedder.embeddings.breaker().state() == BreakerState::Open, "not open yet");
        Ok(())
    })
    .await?;
    assert_eq!(fake.calls().len(), 1, "400 API_KEY_INVALID is not retried");
    assert_eq!(status(&env, id).await?.unwrap().0, "pending", "the message is not blamed");

    // The operator fixes the key and restarts the embedder: the message was waiting in the stream.
    embedder.stop.cancel();
    let mut vars = env.vars.clone();
    vars.insert("MEMORY_GEMINI_API_KEY".into(), KEY.into());
    let config = common::Config::from_map(&vars)?;
    let worker = embedder::Embedder::build(
        &config,
        env.deps.clone(),
        embedder::provider(&config)?,
        &mut prometheus_client::registry::Registry::default(),
    )
    .await?;
    let (t, grace) = (env.shutdown.child_token(), config.shutdown_grace);
    env.tasks.spawn(async move { worker.run(t, grace).await });
    until_status(&env, id, "embedded").await?;
    env.finish().await
}

#[tokio::test]
async fn a_400_for_every_request_is_the_deployments_fault_not_the_messages() -> anyhow::Result<()> {
    let fake = FakeGemini::start().await;
    // Gemini refuses everything as invalid (say, a dimensionality the model does not offer).
    fake.poison(Some(""));
    let env = env(&fake, &[("MEMORY_BREAKER_FAILURES", "1"), ("MEMORY_BREAKER_COOLDOWN_MS", "60000")]).await?;
    let embedder = spawn_embedder(&env).await?;
    let ids = [publish(&env, None, "one").await?, publish(&env, None, "two").await?];
    env.eventually(|| async {
        anyhow::ensure!(embedder.embeddings.breaker().state() == BreakerState::Open, "not open yet");
        Ok(())
    })
    .await?;
    for id in ids {
        assert_eq!(status(&env, id).await?.unwrap().0, "pending", "no message is blamed");
    }
    let calls = fake.calls();
    assert!(calls.len() <= 3, "one batch and one probe, not a split down to every text: {}", calls.len());
    assert!(calls.iter().any(|c| c.texts == ["hello"]), "the known-good text was tried");
    embedder.stop.cancel();
    let _ = env.nats.jetstream().delete_stream(env.subjects.stream(common::contract::StreamKind::Ingest)).await;
    env.finish().await
}
