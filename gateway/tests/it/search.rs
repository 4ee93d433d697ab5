//! Search over REST: modes, filters (each in every mode, never across tenants), explain, the
//! JSON form, per-tenant ranking, and full-text answers while query embeddings are unavailable.

use axum::http::{Method, StatusCode};
use chrono::{Duration, Utc};
use serde_json::{Value, json};

use crate::harness::{App, KEY, urlencode};

const MODES: [&str; 3] = ["vector", "lexical", "hybrid"];

/// Stores a message and waits until it is embedded; returns its id.
async fn store(app: &App, body: Value) -> anyhow::Result<String> {
    let r = app.post("/v1/messages?wait=embedded", &body).await?;
    anyhow::ensure!(r.status == StatusCode::CREATED, "{r:?}");
    Ok(r.body["id"].as_str().unwrap().to_owned())
}

/// The ids a search returns (top 50), asserting it succeeded.
async fn ids(app: &App, params: &str) -> anyhow::Result<Vec<String>> {
    let r = app.get(&format!("/v1/memory/search?top_k=50&{params}")).await?;
    anyhow::ensure!(r.status == StatusCode::OK, "{params}: {r:?}");
    Ok(r.body["items"].as_array().unwrap().iter().map(|h| h["message_id"].as_str().unwrap().to_owned()).collect())
}

#[tokio::test]
async fn every_filter_narrows_every_mode_and_no_search_crosses_tenants() -> anyhow::Result<()> {
    let app = App::start().await?;
    let now = Utc::now();
    let base =
        |content: &str| json!({"tenant_id": "acme", "conversation_id": "trip", "role": "user", "content": content});
    let plain = store(&app, base("zebra crossing near the harbour")).await?;
    let other_conv = store(&app, json!({"tenant_id": "acme", "conversation_id": "work", "role": "user", "content": "zebra stripes on the harbour wall"})).await?;
    let assistant = store(&app, json!({"tenant_id": "acme", "conversation_id": "trip", "role": "assistant", "content": "the zebra exhibit opens at noon"})).await?;
    let old = store(&app, json!({"tenant_id": "acme", "conversation_id": "trip", "role": "user", "content": "zebra photos from last month",
        "created_at": (now - Duration::days(30)).to_rfc3339()})).await?;
    let tagged = store(
        &app,
        json!({"tenant_id": "acme", "conversation_id": "trip", "role": "user", "content": "zebra tickets booked",
        "metadata": {"topic": "travel", "tags": ["booking"]}}),
    )
    .await?;
    let important = store(
        &app,
        json!({"tenant_id": "acme", "conversation_id": "trip", "role": "user", "content": "zebra allergy: never forget",
        "importance_override": 0.95}),
    )
    .await?;
    // Another tenant with the very same words.
    let foreign = store(&app, json!({"tenant_id": "globex", "conversation_id": "trip", "role": "user", "content": "zebra crossing near the harbour"})).await?;
    let archived = store(&app, base("zebra archive entry")).await?;
    sqlx::query("UPDATE messages SET archived_at = now() WHERE id = $1::uuid")
        .bind(&archived)
        .execute(app.env.store.pool())
        .await?;
    let all_acme = [&plain, &other_conv, &assistant, &old, &tagged, &important];

    let q = "tenant_id=acme&query=zebra";
    let after = urlencode(&(now - Duration::days(1)).to_rfc3339());
    let before = urlencode(&(now - Duration::days(1)).to_rfc3339());
    let metadata = urlencode(r#"{"topic":"travel"}"#);
    let cases: Vec<(String, Vec<&String>)> = vec![
        (String::new(), all_acme.to_vec()),
        ("&conversation_id=work".into(), vec![&other_conv]),
        ("&role=assistant".into(), vec![&assistant]),
        (format!("&created_after={after}"), vec![&plain, &other_conv, &assistant, &tagged, &important]),
        (format!("&created_before={before}"), vec![&old]),
        (format!("&metadata={metadata}"), vec![&tagged]),
        ("&min_importance=0.9".into(), vec![&important]),
        ("&include_archived=true".into(), all_acme.iter().copied().chain([&archived]).collect()),
    ];
    for mode in MODES {
        for (filter, expected) in &cases {
            let mut got = ids(&app, &format!("{q}&mode={mode}{filter}")).await?;
            let mut want: Vec<String> = expected.iter().map(|s| (*s).clone()).collect();
            got.sort();
            want.sort();
            assert_eq!(got, want, "mode={mode}{filter}");
        }
        // The other tenant sees only its own message, whatever the words.
        assert_eq!(
            ids(&app, &format!("tenant_id=globex&query=zebra%20crossing%20harbour&mode={mode}")).await?,
            std::slice::from_ref(&foreign)
        );
    }
    app.finish().await
}

#[tokio::test]
async fn bad_filters_are_refused_with_the_field_named() -> anyhow::Result<()> {
    let app = App::without_workers(|_| {}).await?;
    let now = urlencode(&Utc::now().to_rfc3339());
    for (params, field) in [
        ("&role=robot", "role"),
        ("&mode=fuzzy", "mode"),
        ("&explain=maybe", "explain"),
        ("&created_after=yesterday", "created_after"),
        (&format!("&created_after={now}&created_before={now}") as &str, "created_before"),
        ("&metadata=%5B1%2C2%5D", "metadata"),
        ("&min_importance=2", "min_importance"),
        ("&min_importance=high", "min_importance"),
        ("&include_archived=yes", "include_archived"),
        ("&conversation_id=a%20b", "conversation_id"),
    ] {
        let r = app.get(&format!("/v1/memory/search?tenant_id=acme&query=x{params}")).await?;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{params}: {r:?}");
        let fields: Vec<&str> =
            r.body["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
        assert_eq!(fields, [field], "{params}");
    }
    let r = app
        .post("/v1/memory/search", &json!({"tenant_id": "acme", "query": "x", "filters": {"min_importance": -1}}))
        .await?;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{r:?}");
    let r = app
        .post("/v1/memory/search", &json!({"tenant_id": "acme", "query": "x", "filters": {"colour": "red"}}))
        .await?;
    assert_eq!((r.status, r.body["code"].as_str()), (StatusCode::BAD_REQUEST, Some("malformed_body")), "{r:?}");
    // Found by the request fuzzer: Postgres takes no NUL, so such a query is the client's to fix.
    let r = app.post("/v1/memory/search", &json!({"tenant_id": "acme", "query": "a\u{0}b"})).await?;
    assert_eq!(
        (r.status, &r.body["errors"][0]["code"]),
        (StatusCode::UNPROCESSABLE_ENTITY, &json!("invalid_characters"))
    );
    app.finish().await
}

#[tokio::test]
async fn explain_shows_every_part_of_the_score() -> anyhow::Result<()> {
    let app = App::start().await?;
    let both = store(&app, crate::harness::message("acme", "The Lisbon flat has blue tiles")).await?;
    store(&app, crate::harness::message("acme", "Budget meeting moved to Friday")).await?;
    let r = app.get("/v1/memory/search?tenant_id=acme&query=Lisbon%20tiles&explain=true&top_k=2").await?;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let top = &r.body["items"][0];
    assert_eq!(top["message_id"], both.as_str());
    let e = &top["explain"];
    assert_eq!(e["mode"], "hybrid");
    assert_eq!((e["vector_rank"].as_u64(), e["lexical_rank"].as_u64()), (Some(1), Some(1)), "{e}");
    assert!((e["fused"].as_f64().unwrap() - 2.0 / 61.0).abs() < 1e-9, "{e}");
    assert!((e["relevance"].as_f64().unwrap() - 1.0).abs() < 1e-9, "{e}");
    let expected = 0.6 * e["relevance"].as_f64().unwrap()
        + 0.3 * e["importance"].as_f64().unwrap()
        + 0.1 * e["decay"].as_f64().unwrap();
    assert!((e["score"].as_f64().unwrap() - expected).abs() < 1e-6, "{e}");
    assert_eq!(e["score"], top["score"]);
    assert!(e["similarity"].as_f64().is_some());
    assert_eq!(e["ranking"]["rrf_k"], 60.0);
    // Without explain, no explanation.
    let plain = app.get("/v1/memory/search?tenant_id=acme&query=Lisbon").await?;
    assert!(plain.body["items"][0].get("explain").is_none());
    app.finish().await
}

#[tokio::test]
async fn the_json_form_takes_the_same_search() -> anyhow::Result<()> {
    let app = App::start().await?;
    let tagged = store(
        &app,
        json!({"tenant_id": "acme", "conversation_id": "c", "role": "user",
        "content": "ferry to the islands at nine", "metadata": {"trip": {"leg": 2}}}),
    )
    .await?;
    store(
        &app,
        json!({"tenant_id": "acme", "conversation_id": "c", "role": "user", "content": "ferry timetable changed"}),
    )
    .await?;
    let r = app
        .post(
            "/v1/memory/search",
            &json!({"tenant_id": "acme", "query": "ferry", "mode": "lexical", "top_k": 5,
                    "filters": {"metadata": {"trip": {"leg": 2}}}}),
        )
        .await?;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let items = r.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["message_id"], tagged.as_str());
    app.finish().await
}

#[tokio::test]
async fn a_tenant_can_set_its_own_ranking() -> anyhow::Result<()> {
    let app = App::start().await?;
    let relevant = store(
        &app,
        json!({"tenant_id": "acme", "conversation_id": "c", "role": "user",
        "content": "the harbour ferry leaves at nine", "importance_override": 0.5}),
    )
    .await?;
    let important = store(
        &app,
        json!({"tenant_id": "acme", "conversation_id": "c", "role": "user",
        "content": "remember to pack snacks", "importance_override": 1.0}),
    )
    .await?;
    let query = "tenant_id=acme&query=when%20does%20the%20harbour%20ferry%20leave&mode=vector";
    assert_eq!(ids(&app, query).await?[0], relevant);

    let r = app.get("/v1/tenants/acme/ranking").await?;
    assert_eq!((r.status, r.body["source"].as_str()), (StatusCode::OK, Some("deployment")), "{r:?}");
    let put = |body: Value| app.send(Method::PUT, "/v1/tenants/acme/ranking", Some(body.to_string().into()), Some(KEY));
    let r = put(json!({"relevance_weight": 0, "importance_weight": 1, "recency_weight": 0})).await?;
    assert_eq!((r.status, r.body["source"].as_str()), (StatusCode::OK, Some("tenant")), "{r:?}");
    app.env
        .eventually(|| async {
            anyhow::ensure!(ids(&app, query).await?[0] == important, "the old ranking is still cached");
            Ok(())
        })
        .await?;
    // Another tenant keeps the deployment's ranking.
    assert_eq!(app.get("/v1/tenants/globex/ranking").await?.body["source"], "deployment");

    let r = put(json!({"relevance_weight": -1, "decay_days": 0})).await?;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{r:?}");
    let fields: Vec<&str> = r.body["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["relevance_weight", "decay_days"]);
    assert_eq!(put(json!({"colour": 1})).await?.status, StatusCode::BAD_REQUEST);

    let r = app.send(Method::DELETE, "/v1/tenants/acme/ranking", None, Some(KEY)).await?;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(app.get("/v1/tenants/acme/ranking").await?.body["source"], "deployment");
    app.env
        .eventually(|| async {
            anyhow::ensure!(ids(&app, query).await?[0] == relevant, "still ranked by importance");
            Ok(())
        })
        .await?;
    app.finish().await
}

#[tokio::test]
async fn hybrid_search_answers_by_words_while_query_embeddings_are_unavailable() -> anyhow::Result<()> {
    let app = App::without_workers(|_| {}).await?;
    let embedder = app.spawn_embedder().await?;
    app.spawn_searcher().await?;
    let id = store(&app, crate::harness::message("acme", "the spare key is under the blue flowerpot")).await?;
    // The only embedder stops: no query vectors.
    embedder.cancel();
    app.env
        .eventually(|| async {
            let r = app.get("/v1/memory/search?tenant_id=acme&query=spare%20key").await?;
            anyhow::ensure!(r.status == StatusCode::OK, "{r:?}");
            anyhow::ensure!(r.body["partial"].as_str().is_some_and(|p| p.contains("words only")), "{r:?}");
            anyhow::ensure!(r.body["items"][0]["message_id"] == id.as_str(), "{r:?}");
            Ok(())
        })
        .await?;
    let r = app.get("/v1/memory/search?tenant_id=acme&query=spare%20key&mode=vector").await?;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "vector mode has nothing to fall back on: {r:?}");
    app.finish().await
}

#[tokio::test]
async fn a_pasted_page_as_query_over_a_large_tenant_is_answered_and_leaves_the_pool_usable() -> anyhow::Result<()> {
    let app = App::start().await?;
    let marker = store(
        &app,
        json!({"tenant_id": "big", "conversation_id": "c", "role": "user", "content": "the zeppelin manifest w77"}),
    )
    .await?;
    // 20,000 messages of eight words each from a vocabulary of 2,000.
    sqlx::query(
        "INSERT INTO messages (id, tenant_id, conversation_id, role, content, importance, created_at)
         SELECT gen_random_uuid(), 'big', 'c' || (i % 50), 'user',
                (SELECT string_agg('w' || ((i * 7919 + j * 104729) % 2000), ' ') FROM generate_series(1, 8) j),
                0.5, now() - make_interval(secs => i)
         FROM generate_series(1, 20000) i",
    )
    .execute(app.env.store.pool())
    .await?;
    // Every word of the vocabulary, up to the longest query allowed: over 1,400 distinct words.
    let mut page = String::new();
    for word in (0..2000).map(|i| format!("w{i} ")) {
        if page.len() + word.len() > common::domain::QUERY_MAX {
            break;
        }
        page.push_str(&word);
    }
    for mode in MODES {
        let r = app.post("/v1/memory/search", &json!({"tenant_id": "big", "query": page, "mode": mode})).await?;
        assert_eq!(r.status, StatusCode::OK, "{mode}: {r:?}");
        assert!(!r.body["items"].as_array().unwrap().is_empty(), "{mode}");
    }
    // The pool serves ordinary searches afterwards.
    let r = app.post("/v1/memory/search", &json!({"tenant_id": "big", "query": "zeppelin", "mode": "lexical"})).await?;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body["items"][0]["message_id"], marker.as_str());
    app.finish().await
}

#[tokio::test]
async fn provider_failures_reach_clients_as_fixed_text() -> anyhow::Result<()> {
    use common::testing::gemini::{FakeGemini, Fault};
    let fake = FakeGemini::start().await;
    let app = App::start_with(|vars| vars.extend(fake.vars())).await?;
    let id = store(&app, crate::harness::message("acme", "the spare key is under the blue flowerpot")).await?;
    // Gemini now refuses every call (a revoked key, say), with its own error text.
    fake.always(Some(Fault::Status(403)));
    let r = app.get("/v1/memory/search?tenant_id=acme&query=spare%20key&mode=vector").await?;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{r:?}");
    assert_eq!(r.body["detail"], "the service is temporarily unavailable: embedding the query failed");
    let r = app.get("/v1/memory/search?tenant_id=acme&query=spare%20key").await?;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body["partial"], searcher::PARTIAL_WORDS_ONLY);
    assert_eq!(r.body["items"][0]["message_id"], id.as_str());
    for text in
        [r.body.to_string(), r.headers.get("x-request-id").map(|v| v.to_str().unwrap_or("")).unwrap_or("").into()]
    {
        assert!(!text.contains("fake failure") && !text.contains("PERMISSION_DENIED"), "{text}");
    }
    app.finish().await
}

#[tokio::test]
async fn a_searcher_at_capacity_answers_busy_and_the_gateway_sheds_with_503() -> anyhow::Result<()> {
    use common::store::Backfill;
    let app = App::without_workers(|vars| {
        vars.insert("MEMORY_NATS_MAX_IN_FLIGHT".into(), "1".into());
        vars.insert("MEMORY_NATS_REQUEST_TIMEOUT_MS".into(), "3000".into());
    })
    .await?;
    app.spawn_searcher().await?;
    // An active space whose query embedder never answers: a vector search holds the only slot.
    let space = app
        .env
        .store
        .register_space(&common::contract::SpaceRef { provider: "hash".into(), model: "silent".into(), dimensions: 8 })
        .await?;
    let _silent = app.env.deps.bus.serve(app.env.subjects.embed_query(space.id), "embedder".into()).await?;
    let held = {
        let state = app.state.clone();
        tokio::spawn(async move {
            let req = axum::http::Request::get("/v1/memory/search?tenant_id=acme&query=hello&mode=vector")
                .header("x-api-key", crate::harness::KEY)
                .body(axum::body::Body::empty())?;
            let r = tower::ServiceExt::oneshot(gateway::router(state), req).await?;
            anyhow::Ok(r.status())
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let r = app.get("/v1/memory/search?tenant_id=acme&query=hello&mode=lexical").await?;
    assert_eq!((r.status, &r.body["code"]), (StatusCode::SERVICE_UNAVAILABLE, &json!("overloaded")), "{r:?}");
    assert_eq!(r.headers["retry-after"], "1");
    assert!(held.await??.is_server_error(), "the held search ends when its embedder does not answer");
    // The slot is free again.
    let r = app.get("/v1/memory/search?tenant_id=acme&query=hello&mode=lexical").await?;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    app.finish().await
}

#[tokio::test]
async fn exact_search_is_for_the_operator_and_agrees_with_the_index_on_a_small_tenant() -> anyhow::Result<()> {
    let app = App::start().await?;
    for content in ["the ferry leaves at nine", "ferry tickets are sold out", "lunch at the harbour"] {
        store(&app, json!({"tenant_id": "acme", "conversation_id": "c", "role": "user", "content": content})).await?;
    }
    let indexed = ids(&app, "tenant_id=acme&query=ferry&mode=vector").await?;
    let exact = ids(&app, "tenant_id=acme&query=ferry&mode=vector&exact=true").await?;
    assert_eq!(exact.len(), 3);
    assert_eq!(indexed, exact);
    let json = app.post("/v1/memory/search", &json!({"tenant_id": "acme", "query": "ferry", "exact": true})).await?;
    assert_eq!(json.status, StatusCode::OK, "{json:?}");
    // A tenant's key may not ask for a scan of every vector, by either form.
    let reader = app.tenant_key("acme", &["read"]).await?;
    let r = app.send(Method::GET, "/v1/memory/search?query=ferry&exact=true", None, Some(&reader)).await?;
    assert_eq!((r.status, r.body["code"].as_str()), (StatusCode::FORBIDDEN, Some("operator_only")), "{r:?}");
    let body = json!({"query": "ferry", "exact": true}).to_string();
    let r = app.send(Method::POST, "/v1/memory/search", Some(body.into()), Some(&reader)).await?;
    assert_eq!((r.status, r.body["code"].as_str()), (StatusCode::FORBIDDEN, Some("operator_only")), "{r:?}");
    let r = app.get("/v1/memory/search?tenant_id=acme&query=ferry&exact=maybe").await?;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{r:?}");
    app.finish().await
}
