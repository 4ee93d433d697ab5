//! Embedding spaces: switching the provider backfills every message into the new space, and
//! searches switch to it only when it is complete. Spaces never mix.

use std::time::Duration;

use common::testing::TestEnv;
use common::testing::gemini::{FakeGemini, Fault};
use tokio_util::sync::CancellationToken;

use crate::support::{
    active_provider, config_with, publish, spawn_embedder, spawn_embedder_with, status, until_ingesting, until_status,
    vectors_in,
};

#[tokio::test]
async fn a_new_provider_backfills_every_message_and_takes_over_only_when_complete() -> anyhow::Result<()> {
    let fake = FakeGemini::start().await;
    fake.poison(Some("UNEMBEDDABLE"));
    let env = TestEnv::start_with(|vars| {
        vars.insert("MEMORY_EMBEDDER_STANDBY_POLL_MS".into(), "50".into());
    })
    .await?;
    // The old provider (hash) ingests the history.
    let old = spawn_embedder(&env).await?;
    until_ingesting(&env, &old).await?;
    let mut ids = Vec::new();
    for i in 0..24 {
        ids.push(publish(&env, None, &format!("history message {i}")).await?);
    }
    let refused = publish(&env, None, "an UNEMBEDDABLE text").await?;
    for id in ids.iter().chain([&refused]) {
        until_status(&env, *id, "embedded").await?;
    }

    // The new provider starts; Gemini is slow, so the backfill takes a while.
    fake.always(Some(Fault::Delay(Duration::from_millis(150))));
    let config =
        config_with(&env, fake.vars().into_iter().chain([("MEMORY_EMBEDDER_BATCH_SIZE".to_owned(), "4".to_owned())]))?;
    let new = spawn_embedder_with(&env, &config).await?;
    // Meanwhile the old embedder keeps ingesting, and search stays on the old space.
    let during = publish(&env, None, "arrived during the backfill").await?;
    until_status(&env, during, "embedded").await?;
    let mut saw_backfill_in_progress = false;
    while active_provider(&env).await? == "hash" {
        let gemini_rows = vectors_in(&env, "gemini").await?;
        if gemini_rows > 0 && gemini_rows < 20 {
            saw_backfill_in_progress = true;
            let readiness = (new.readiness)().unwrap_err();
            assert!(readiness.contains("backfilling"), "{readiness}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(saw_backfill_in_progress, "the old space stayed active while the new one filled");
    fake.always(None);

    // Complete: every message has a Gemini vector or a Gemini refusal, and statuses say so.
    assert_eq!(vectors_in(&env, "gemini").await?, 25, "24 history messages and the one from during");
    let (state, reason) = status(&env, refused).await?.unwrap();
    assert_eq!(state, "failed", "Gemini refused it, whatever hash did");
    assert!(reason.unwrap().contains("INVALID_ARGUMENT"));
    for id in ids.iter().chain([&during]) {
        assert_eq!(status(&env, *id).await?.unwrap().0, "embedded");
    }

    // New messages now go to the new space; the old embedder stands down.
    until_ingesting(&env, &new).await?;
    let after = publish(&env, None, "arrived after the switch").await?;
    until_status(&env, after, "embedded").await?;
    assert_eq!(vectors_in(&env, "gemini").await?, 26);
    env.eventually(|| async {
        let after_rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(
            "SELECT count(*) FROM embedding_spaces WHERE provider = 'hash' AND NOT active AND activated_at IS NOT NULL",
        ))
        .fetch_one(env.store.pool())
        .await?;
        anyhow::ensure!(after_rows == 1, "the hash space is not retired");
        Ok(())
    })
    .await?;
    let hash_rows = vectors_in(&env, "hash").await?;
    assert!(hash_rows <= 26, "no message is embedded twice into the old space");
    old.stop.cancel();
    env.finish().await
}

#[tokio::test]
async fn an_interrupted_reembed_resumes_from_its_cursor() -> anyhow::Result<()> {
    let fake = FakeGemini::start().await;
    let env = TestEnv::start().await?;
    let old = spawn_embedder(&env).await?;
    let mut texts = Vec::new();
    for i in 0..20 {
        let text = format!("message {i} to re-embed");
        let id = publish(&env, None, &text).await?;
        until_status(&env, id, "embedded").await?;
        texts.push(text);
    }
    old.stop.cancel();

    let config =
        config_with(&env, fake.vars().into_iter().chain([("MEMORY_EMBEDDER_BATCH_SIZE".to_owned(), "5".to_owned())]))?;
    // Interrupted after the second batch.
    let stop = CancellationToken::new();
    let first = embedder::reembed(&config, env.deps.clone(), embedder::provider(&config)?, true, &stop, |p| {
        if p.done >= 10 {
            stop.cancel();
        }
    })
    .await?;
    assert_eq!(first, embedder::backfill::Outcome::Stopped);
    assert_eq!(active_provider(&env).await?, "hash", "not activated when stopped");
    let sent_first: Vec<String> = fake.calls().into_iter().flat_map(|c| c.texts).collect();
    assert_eq!(sent_first.len(), 10);

    let mut progress = Vec::new();
    let second = embedder::reembed(
        &config,
        env.deps.clone(),
        embedder::provider(&config)?,
        true,
        &CancellationToken::new(),
        |p| {
            progress.push((p.done, p.missing_at_start));
        },
    )
    .await?;
    assert_eq!(second, embedder::backfill::Outcome::Activated);
    assert_eq!(progress.last(), Some(&(10, 10)), "the second run had only the other half to do");
    let mut sent: Vec<String> = fake.calls().into_iter().flat_map(|c| c.texts).collect();
    sent.sort();
    let mut expected = texts.clone();
    expected.sort();
    assert_eq!(sent, expected, "every message was sent once, none twice");
    assert_eq!(active_provider(&env).await?, "gemini");
    env.finish().await
}

#[tokio::test]
async fn with_automatic_backfill_off_a_new_provider_waits_for_reembed() -> anyhow::Result<()> {
    let fake = FakeGemini::start().await;
    let env = TestEnv::start_with(|vars| {
        vars.insert("MEMORY_EMBEDDER_STANDBY_POLL_MS".into(), "50".into());
    })
    .await?;
    let old = spawn_embedder(&env).await?;
    let id = publish(&env, None, "kept in the old space").await?;
    until_status(&env, id, "embedded").await?;
    let config = config_with(
        &env,
        fake.vars().into_iter().chain([("MEMORY_EMBEDDER_AUTO_BACKFILL".to_owned(), "false".to_owned())]),
    )?;
    let new = spawn_embedder_with(&env, &config).await?;
    env.eventually(|| async {
        let why = (new.readiness)().unwrap_err();
        anyhow::ensure!(why.contains("memory reembed"), "{why}");
        Ok(())
    })
    .await?;
    // A message arriving now is embedded by the old provider, never the waiting one.
    let later = publish(&env, None, "arrives while the new provider waits").await?;
    until_status(&env, later, "embedded").await?;
    assert!(fake.calls().is_empty(), "nothing was embedded with the new provider");
    assert_eq!(active_provider(&env).await?, "hash");
    old.stop.cancel();
    env.finish().await
}
