//! The vector index at scale: a small tenant in a large table still gets full result lists
//! (iterative scans), the planner takes HNSW for a large tenant and the exact per-tenant scan for
//! a small one; archived messages among the nearest never shorten a list; exact search is the true order.

use chrono::Utc;
use common::contract::SpaceRef;
use common::domain::{MessageId, MessageInput, SearchFilters, TenantId};
use common::store::{Backfill, IngestWrites, NewRow, NewVector, RetentionRuns, SearchReads, VectorQuery};
use common::testing::TestEnv;

const DIMENSIONS: usize = 32;

/// A deterministic pseudo-random unit vector.
fn vector(seed: u64) -> Vec<f32> {
    vector_of(seed, DIMENSIONS)
}

/// A deterministic pseudo-random unit vector of `dimensions`.
fn vector_of(seed: u64, dimensions: usize) -> Vec<f32> {
    let mut h = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<f32> = (0..dimensions)
        .map(|_| {
            h ^= h << 13;
            h ^= h >> 7;
            h ^= h << 17;
            (h >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / norm).collect()
}

/// The space the random vectors of these tests belong to.
async fn random_space(env: &TestEnv) -> anyhow::Result<common::store::Space> {
    let space = SpaceRef { provider: "test".into(), model: "random".into(), dimensions: DIMENSIONS as u32 };
    Ok(env.store.register_space(&space).await?)
}

async fn fill(env: &TestEnv, space: &common::store::Space, tenant: &str, n: usize, seed: u64) -> anyhow::Result<()> {
    let tenant_id = TenantId::parse(tenant)?;
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let rows: Vec<NewRow> = chunk
            .iter()
            .map(|i| {
                let message = MessageInput {
                    tenant_id: tenant.into(),
                    conversation_id: "c".into(),
                    role: "user".into(),
                    content: format!("message {i}"),
                    ..MessageInput::default()
                }
                .validate(Utc::now(), MessageId::new)
                .unwrap();
                NewRow { message, importance: 0.5, origin: None }
            })
            .collect();
        env.store.insert_messages(&rows).await?;
        let vectors: Vec<NewVector> = rows
            .iter()
            .enumerate()
            .map(|(j, r)| NewVector {
                message_id: r.message.message_id,
                tenant_id: tenant_id.clone(),
                vector: vector_of(seed + (chunk[0] + j) as u64, space.reference.dimensions as usize),
                revision: 0,
            })
            .collect();
        env.store.save_vectors(space, &vectors).await?;
    }
    Ok(())
}

#[tokio::test]
async fn small_tenants_get_full_lists_and_the_planner_picks_the_right_scan() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let space = random_space(&env).await?;
    // 20,000 rows: one tenant with 95%, one with 5%, one with 40.
    fill(&env, &space, "big", 19_000, 0).await?;
    fill(&env, &space, "small", 1_000, 1_000_000).await?;
    fill(&env, &space, "tiny", 40, 2_000_000).await?;
    // The planner's choice rests on statistics: collect them for both tables, as after any bulk load.
    sqlx::query("ANALYZE").execute(env.store.pool()).await?;

    let filters = SearchFilters::default();
    let query = vector(42);
    let search = |tenant: &'static TenantId, limit: u32, ef_search: u32| VectorQuery {
        tenant_id: tenant,
        vector: &query,
        limit,
        filters: &filters,
        ef_search: Some(ef_search),
        exact: false,
    };
    let small = Box::leak(Box::new(TenantId::parse("small")?));
    let big = Box::leak(Box::new(TenantId::parse("big")?));
    let tiny = Box::leak(Box::new(TenantId::parse("tiny")?));
    // ef_search 10 would give a 5% tenant about half a result without iterative scans.
    for (tenant, expected) in [(&*small, 50), (&*big, 50), (&*tiny, 40)] {
        let hits = env.store.search_vectors(&space, search(tenant, 50, 10)).await?;
        assert_eq!(hits.len(), expected, "tenant {tenant}");
        assert!(hits.iter().all(|h| h.message.tenant_id == *tenant));
        assert!(hits.windows(2).all(|w| w[0].similarity >= w[1].similarity), "best first");
    }

    // Each hash partition of the vector table has its own index, `message_vectors_<space>_p<n>_hnsw`.
    let hnsw = "_hnsw";
    let plan = env.store.explain_vector_search(&space, search(big, 50, 100)).await?;
    assert!(plan.contains(hnsw), "a large tenant uses the HNSW index:\n{plan}");
    let plan = env.store.explain_vector_search(&space, search(tiny, 50, 100)).await?;
    assert!(!plan.contains(hnsw), "a tiny tenant is scanned exactly:\n{plan}");
    println!("tiny tenant plan:\n{plan}");
    env.finish().await
}

#[tokio::test]
async fn archived_nearest_messages_do_not_shorten_lists_and_exact_search_is_the_true_order() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let space = random_space(&env).await?;
    fill(&env, &space, "acme", 300, 0).await?;
    let acme = TenantId::parse("acme")?;
    let query = vector(4242);
    let filters = SearchFilters::default();
    let search = |limit: u32, exact: bool| VectorQuery {
        tenant_id: &acme,
        vector: &query,
        limit,
        filters: &filters,
        ef_search: None,
        exact,
    };

    // The truth, computed here: cosine similarity of unit vectors is their dot product.
    let exact = env.store.search_vectors(&space, search(300, true)).await?;
    assert_eq!(exact.len(), 300);
    let truth: Vec<f64> = (0..300u64)
        .map(|i| vector(i).iter().zip(&query).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum())
        .collect::<Vec<f64>>();
    let mut sorted = truth.clone();
    sorted.sort_by(|a, b| b.total_cmp(a));
    // Vectors are stored in half precision: a similarity moves by well under 2e-3.
    for (hit, expected) in exact.iter().zip(&sorted) {
        assert!((hit.similarity - expected).abs() < 2e-3, "{} against {expected}", hit.similarity);
    }

    // Archive the 30 nearest: a list of 10 then comes from beyond the few extra vectors read for
    // it, and is still full, in order, without archived messages.
    let nearest: Vec<MessageId> = exact.iter().take(30).map(|h| h.message.message_id).collect();
    assert_eq!(env.store.archive_messages(&acme, &nearest, Utc::now()).await?, 30);
    let hits = env.store.search_vectors(&space, search(10, false)).await?;
    let expected: Vec<MessageId> = exact.iter().skip(30).take(10).map(|h| h.message.message_id).collect();
    assert_eq!(hits.iter().map(|h| h.message.message_id).collect::<Vec<_>>(), expected);
    let hits = env.store.search_vectors(&space, search(10, true)).await?;
    assert_eq!(hits.iter().map(|h| h.message.message_id).collect::<Vec<_>>(), expected, "exact, too");

    // A tenant with fewer vectors than asked for gets them all, in one statement or two.
    let all = env.store.search_vectors(&space, search(500, false)).await?;
    assert_eq!(all.len(), 270);
    env.finish().await
}

#[tokio::test]
async fn vectors_of_3072_dimensions_are_indexed_and_found() -> anyhow::Result<()> {
    // Gemini's full size, past the 2,000 dimensions HNSW indexes in single precision.
    let env = TestEnv::start().await?;
    let space = SpaceRef { provider: "test".into(), model: "wide".into(), dimensions: 3072 };
    let space = env.store.register_space(&space).await?;
    fill(&env, &space, "acme", 200, 0).await?;
    fill(&env, &space, "globex", 200, 0).await?;
    sqlx::query("ANALYZE").execute(env.store.pool()).await?;
    let acme = TenantId::parse("acme")?;
    let filters = SearchFilters::default();
    let query = vector_of(17, 3072);
    let search =
        VectorQuery { tenant_id: &acme, vector: &query, limit: 5, filters: &filters, ef_search: None, exact: false };
    let hits = env.store.search_vectors(&space, search).await?;
    assert_eq!(hits.len(), 5);
    assert!(hits.iter().all(|h| h.message.tenant_id == acme), "only the tenant's own");
    assert_eq!(hits[0].message.content, "message 17", "the same vector first");
    assert!((hits[0].similarity - 1.0).abs() < 1e-3, "{}", hits[0].similarity);
    // Registering the space built them (pgvector refuses HNSW on `vector` past 2,000 dimensions).
    let indexes: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_indexes WHERE indexname LIKE 'message_vectors_' || $1 || '_p%_hnsw'",
    )
    .bind(space.id.to_string())
    .fetch_one(env.store.pool())
    .await?;
    assert_eq!(indexes, 16, "one HNSW index per partition");
    env.finish().await
}
