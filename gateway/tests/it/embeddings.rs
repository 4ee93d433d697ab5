//! Every embedding provider through REST: the local model finds meaning, a message Gemini refuses
//! is `failed` with the reason, and switching providers moves searches only once the new space
//! is complete.

use std::time::Duration;

use axum::http::StatusCode;
use common::testing::gemini::{FakeGemini, Fault};

use crate::harness::{App, message};
use common::store::Spaces;

#[tokio::test]
async fn local_embeddings_find_a_message_by_meaning() -> anyhow::Result<()> {
    let dir = std::env::var("MEMORY_TEST_MODEL_DIR")
        .map_err(|_| anyhow::anyhow!("MEMORY_TEST_MODEL_DIR is not set: run scripts/test.sh"))?;
    let app = App::start_with(|vars| {
        vars.insert("MEMORY_EMBEDDING_PROVIDER".into(), "local".into());
        vars.insert("MEMORY_MODEL_DIR".into(), dir);
    })
    .await?;
    let mut ids = Vec::new();
    for content in
        ["The quarterly budget review is on Friday", "I relocated to Lisbon last spring", "My cat is called Whiskers"]
    {
        let r = app.post("/v1/messages?wait=embedded", &message("acme", content)).await?;
        assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
        ids.push(r.body["id"].as_str().unwrap().to_owned());
    }
    // No word in common with the answer: only meaning connects them.
    let hits = app.search("acme", "Which city do I live in now?").await?;
    assert_eq!(hits[0], ids[1], "{hits:?}");
    let hits = app.search("acme", "pet names").await?;
    assert_eq!(hits[0], ids[2], "{hits:?}");
    app.finish().await
}

#[tokio::test]
async fn a_message_gemini_refuses_is_failed_with_its_reason_and_not_searchable() -> anyhow::Result<()> {
    let fake = FakeGemini::start().await;
    fake.poison(Some("BLOCKED"));
    let app = App::start_with(|vars| vars.extend(fake.vars())).await?;
    let ok = app.post("/v1/messages?wait=embedded", &message("acme", "a perfectly fine message")).await?;
    assert_eq!(ok.body["status"], "embedded", "{ok:?}");
    let r = app.post("/v1/messages?wait=embedded", &message("acme", "a BLOCKED message")).await?;
    assert_eq!(r.status, StatusCode::CREATED, "the wait ends on the failure too: {r:?}");
    assert_eq!(r.body["status"], "failed");
    assert!(r.body["failure_reason"].as_str().unwrap().contains("INVALID_ARGUMENT"), "{r:?}");
    let id = r.body["id"].as_str().unwrap();
    let got = app.get(&format!("/v1/messages/{id}?tenant_id=acme")).await?;
    assert_eq!(got.body["status"], "failed");
    assert_eq!(got.body["failure_reason"], r.body["failure_reason"]);
    // No vector, so vector search cannot find it; its words still can.
    let vector = app.get("/v1/memory/search?tenant_id=acme&query=a%20message&mode=vector&top_k=10").await?;
    let ids: Vec<&str> =
        vector.body["items"].as_array().unwrap().iter().map(|h| h["message_id"].as_str().unwrap()).collect();
    assert!(!ids.contains(&id), "{vector:?}");
    let hybrid = app.get("/v1/memory/search?tenant_id=acme&query=a%20message&top_k=10").await?;
    let hit =
        hybrid.body["items"].as_array().unwrap().iter().find(|h| h["message_id"] == id).expect("found by its words");
    assert!(hit["similarity"].is_null(), "{hit}");
    // A query the provider refuses is the caller's to change: 400, not 503.
    let refused = app.get("/v1/memory/search?tenant_id=acme&query=BLOCKED&top_k=5").await?;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{refused:?}");
    // Fixed text: the provider's own message is logged, never passed on.
    let detail = refused.body["detail"].as_str().unwrap();
    assert!(detail.contains("refused this query") && !detail.contains("INVALID_ARGUMENT"), "{refused:?}");
    app.finish().await
}

#[tokio::test]
async fn searches_move_to_a_new_provider_only_when_its_space_is_complete() -> anyhow::Result<()> {
    let fake = FakeGemini::start().await;
    let app = App::start_with(|vars| {
        vars.insert("MEMORY_EMBEDDER_STANDBY_POLL_MS".into(), "50".into());
    })
    .await?;
    let mut lisbon = String::new();
    for i in 0..16 {
        let content = if i == 7 { "I moved to Lisbon in May".to_owned() } else { format!("small talk number {i}") };
        let r = app.post("/v1/messages?wait=embedded", &message("acme", &content)).await?;
        if i == 7 {
            lisbon = r.body["id"].as_str().unwrap().to_owned();
        }
    }
    assert_eq!(app.search("acme", "moved to Lisbon").await?[0], lisbon);

    fake.always(Some(Fault::Delay(Duration::from_millis(100))));
    let mut vars = app.env.vars.clone();
    vars.extend(fake.vars());
    vars.insert("MEMORY_EMBEDDER_BATCH_SIZE".into(), "2".into());
    let config = common::Config::from_map(&vars)?;
    app.spawn_embedder_with(&config).await?;
    // While Gemini's space fills, searches keep using the complete hash space.
    let mut searched_during = 0;
    let hash_active =
        || async { anyhow::Ok(app.env.deps.store.active_space().await?.unwrap().reference.provider == "hash") };
    while hash_active().await? {
        assert_eq!(app.search("acme", "moved to Lisbon").await?[0], lisbon);
        // Only if the switch did not happen during this search (then it may have used Gemini).
        if hash_active().await? {
            assert!(fake.calls().iter().all(|c| c.body["requests"][0]["taskType"] == "RETRIEVAL_DOCUMENT"));
            searched_during += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(searched_during > 0, "the backfill finished before any search could run during it");
    fake.always(None);
    // Now the query is embedded by Gemini and compared with Gemini's vectors.
    let hits = app.search("acme", "moved to Lisbon").await?;
    assert_eq!(hits[0], lisbon);
    assert_eq!(hits.len(), 10);
    let query_call = fake.calls().into_iter().rev().find(|c| c.body["requests"][0]["taskType"] == "RETRIEVAL_QUERY");
    assert_eq!(query_call.expect("a query embedding from Gemini").texts, ["moved to Lisbon"]);
    app.finish().await
}
