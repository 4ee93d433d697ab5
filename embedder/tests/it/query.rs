//! Query embeddings (`mem.v1.embed.query`) and their cache: in process, in Redis, and a Redis
//! that is down (a miss, never an error).

use common::contract::Reply;
use common::testing::TestEnv;
use common::testing::gemini::FakeGemini;

use crate::support::{embed_query, spawn_embedder};

async fn env(fake: &FakeGemini, extra: &[(&str, String)]) -> anyhow::Result<TestEnv> {
    let extra: Vec<(String, String)> = extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
    TestEnv::start_with(|vars| {
        vars.extend(fake.vars());
        vars.extend(extra);
    })
    .await
}

fn vectors(reply: Reply<common::contract::EmbedQueryResponse>) -> anyhow::Result<Vec<Vec<f32>>> {
    match reply {
        Reply::Ok(r) => Ok(r.vectors),
        Reply::Error(e) => anyhow::bail!("{e:?}"),
    }
}

#[tokio::test]
async fn a_repeated_query_is_answered_from_the_process_cache() -> anyhow::Result<()> {
    let fake = FakeGemini::start().await;
    let env = env(&fake, &[]).await?;
    let _embedder = spawn_embedder(&env).await?;
    let first = vectors(embed_query(&env, &["where did Alice move"]).await?)?;
    let second = vectors(embed_query(&env, &["where did Alice move", "a new one"]).await?)?;
    assert_eq!(first[0], second[0]);
    let calls = fake.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].texts, ["a new one"], "only the uncached text went to the provider");
    env.finish().await
}

#[tokio::test]
async fn redis_shares_query_vectors_between_embedders() -> anyhow::Result<()> {
    let fake = FakeGemini::start().await;
    let redis = std::env::var("MEMORY_TEST_REDIS_URL")?;
    // No process cache: every hit below comes from Redis.
    let env = env(&fake, &[("MEMORY_REDIS_URL", redis), ("MEMORY_QUERY_CACHE_CAPACITY", "0".into())]).await?;
    let first = spawn_embedder(&env).await?;
    let a = vectors(embed_query(&env, &["shared query"]).await?)?;
    assert_eq!(fake.calls().len(), 1);
    // The cache is filled after the reply: ask until Redis answers (each miss costs a call).
    env.eventually(|| async {
        let before = fake.calls().len();
        let b = vectors(embed_query(&env, &["shared query"]).await?)?;
        anyhow::ensure!(fake.calls().len() == before, "answered by the provider again");
        anyhow::ensure!(a == b);
        Ok(())
    })
    .await?;
    first.stop.cancel();
    let calls_before = fake.calls().len();
    let _second = spawn_embedder(&env).await?;
    let b = vectors(embed_query(&env, &["shared query"]).await?)?;
    assert_eq!(a, b);
    assert_eq!(fake.calls().len(), calls_before, "another embedder found it in Redis");
    env.finish().await
}

#[tokio::test]
async fn a_redis_that_is_down_is_a_miss_not_an_error() -> anyhow::Result<()> {
    let fake = FakeGemini::start().await;
    let closed = common::testing::free_addr()?;
    let env =
        env(&fake, &[("MEMORY_REDIS_URL", format!("redis://{closed}")), ("MEMORY_QUERY_CACHE_CAPACITY", "0".into())])
            .await?;
    let _embedder = spawn_embedder(&env).await?;
    for _ in 0..3 {
        vectors(embed_query(&env, &["still answered"]).await?)?;
    }
    assert_eq!(fake.calls().len(), 3, "every query went to the provider");
    env.finish().await
}

#[tokio::test]
async fn bad_query_requests_are_refused_with_a_reason() -> anyhow::Result<()> {
    let fake = FakeGemini::start().await;
    let env = env(&fake, &[]).await?;
    let _embedder = spawn_embedder(&env).await?;
    match embed_query(&env, &[]).await? {
        Reply::Error(e) => assert!(e.message.contains("1 to 100"), "{e:?}"),
        Reply::Ok(_) => anyhow::bail!("an empty request was answered"),
    }
    assert!(fake.calls().is_empty());
    env.finish().await
}
