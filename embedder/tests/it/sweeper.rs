//! The sweeper: messages left `pending` or `failed` are embedded again once the provider is
//! healthy; a text the provider keeps refusing is tried a bounded number of times.

use std::time::Duration;

use common::testing::TestEnv;
use common::testing::gemini::FakeGemini;

use crate::support::{publish, spawn_embedder, until_status};
use common::store::Spaces;

/// How old a `pending` or `failed` message must be before the sweeper takes it.
const SWEEP_AFTER: Duration = Duration::from_millis(300);

async fn env(fake: &FakeGemini) -> anyhow::Result<TestEnv> {
    TestEnv::start_with(|vars| {
        vars.extend(fake.vars());
        vars.insert("MEMORY_SWEEP_INTERVAL_MS".into(), "100".into());
        vars.insert("MEMORY_SWEEP_AFTER_MS".into(), SWEEP_AFTER.as_millis().to_string());
        vars.insert("MEMORY_SWEEP_MAX_ATTEMPTS".into(), "3".into());
    })
    .await
}

#[tokio::test]
async fn a_failed_message_is_embedded_once_the_provider_accepts_it() -> anyhow::Result<()> {
    let fake = FakeGemini::start().await;
    fake.poison(Some("TEMPORARILY-REFUSED"));
    let env = env(&fake).await?;
    let _embedder = spawn_embedder(&env).await?;
    let id = publish(&env, None, "TEMPORARILY-REFUSED at first").await?;
    until_status(&env, id, "failed").await?;
    fake.poison(None);
    until_status(&env, id, "embedded").await?;
    let reason: Option<String> = sqlx::query_scalar("SELECT failure_reason FROM messages WHERE id = $1")
        .bind(id.0)
        .fetch_one(env.store.pool())
        .await?;
    assert_eq!(reason, None, "the old reason is cleared");
    let counted: i32 = sqlx::query_scalar("SELECT embed_failures FROM messages WHERE id = $1")
        .bind(id.0)
        .fetch_one(env.store.pool())
        .await?;
    assert_eq!(counted, 0, "the failures are forgotten once it is embedded: a later refusal gets every retry");
    let failures: i64 =
        sqlx::query_scalar("SELECT count(*) FROM embedding_failures").fetch_one(env.store.pool()).await?;
    assert_eq!(failures, 0);
    env.finish().await
}

#[tokio::test]
async fn a_text_refused_for_good_is_tried_a_bounded_number_of_times() -> anyhow::Result<()> {
    let fake = FakeGemini::start().await;
    fake.poison(Some("ALWAYS-REFUSED"));
    let env = env(&fake).await?;
    let embedder = spawn_embedder(&env).await?;
    let id = publish(&env, None, "ALWAYS-REFUSED text").await?;
    until_status(&env, id, "failed").await?;
    env.eventually(|| async {
        let failures: i32 = sqlx::query_scalar("SELECT embed_failures FROM messages WHERE id = $1")
            .bind(id.0)
            .fetch_one(env.store.pool())
            .await?;
        anyhow::ensure!(failures == 3, "{failures} failures so far");
        Ok(())
    })
    .await?;
    let tried = || fake.calls().iter().filter(|c| c.texts == ["ALWAYS-REFUSED text"]).count();
    let after_three = tried();
    // Once it is old enough to be swept again (`MEMORY_SWEEP_AFTER_MS`), two whole rounds pass it by.
    tokio::time::sleep(SWEEP_AFTER).await;
    let rounds = embedder.metrics.sweeps.get();
    env.eventually(|| async {
        anyhow::ensure!(embedder.metrics.sweeps.get() >= rounds + 2, "fewer than two rounds since");
        Ok(())
    })
    .await?;
    assert_eq!(tried(), after_three, "no fourth attempt");
    assert_eq!(after_three, 3, "the ingest attempt and two sweeps");
    env.finish().await
}

#[tokio::test]
async fn a_message_left_pending_is_swept_up() -> anyhow::Result<()> {
    let fake = FakeGemini::start().await;
    let env = env(&fake).await?;
    let _embedder = spawn_embedder(&env).await?;
    let id = publish(&env, None, "stored, then its event was lost").await?;
    until_status(&env, id, "embedded").await?;
    // As if the vector never came: an outage long enough to dead-letter the event.
    let space = env.deps.store.active_space().await?.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM message_vectors_{} WHERE message_id = $1", space.id)))
        .bind(id.0)
        .execute(env.store.pool())
        .await?;
    sqlx::query("UPDATE messages SET status = 'pending', updated_at = now() - interval '1 hour' WHERE id = $1")
        .bind(id.0)
        .execute(env.store.pool())
        .await?;
    until_status(&env, id, "embedded").await?;
    assert!(crate::support::vector(&env, id).await?.is_some());
    env.finish().await
}
