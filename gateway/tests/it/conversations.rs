//! Conversations at the original service's paths: made by their messages, counted by triggers
//! through every write path, edited, paged, isolated.

use axum::body::Body;
use axum::http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{App, KEY, Resp};

async fn store(app: &App, conversation: &str, role: &str, content: &str) -> anyhow::Result<Value> {
    let body = json!({"tenant_id": "acme", "conversation_id": conversation, "role": role, "content": content});
    let r = app.post("/v1/messages?wait=stored", &body).await?;
    anyhow::ensure!(r.status == StatusCode::CREATED, "{r:?}");
    Ok(r.body)
}

async fn put(app: &App, uri: &str, body: Value) -> anyhow::Result<Resp> {
    app.send(Method::PUT, uri, Some(Body::from(body.to_string())), Some(KEY)).await
}

fn ids(r: &Resp) -> Vec<&str> {
    r.body["conversations"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn messages_make_conversations_whose_counts_follow_every_write() -> anyhow::Result<()> {
    let app = App::start().await?;
    let first = store(&app, "trip", "user", "Book me a flight to Lisbon").await?;
    store(&app, "trip", "assistant", "Which dates?").await?;
    let system = store(&app, "trip", "system", "The user prefers window seats").await?;
    store(&app, "work", "user", "Move the budget meeting to Friday").await?;

    let r = app.get("/v1/conversations?tenant_id=acme").await?;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(ids(&r), ["work", "trip"], "most recently active first");
    assert_eq!(
        (r.body["total"].as_i64(), r.body["page"].as_u64(), r.body["page_size"].as_u64()),
        (Some(2), Some(1), Some(20))
    );
    let trip = &r.body["conversations"][1];
    assert_eq!(trip["message_count"], 3);
    assert_eq!(trip["tenant_id"], "acme");
    assert!(trip["user_id"].is_null());
    assert_eq!(trip["first_message_at"], first["created_at"]);
    assert_eq!(trip["last_message_at"], system["created_at"]);

    let r = app.get("/v1/conversations/trip/stats?tenant_id=acme").await?;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let counts =
        ["total_messages", "user_messages", "assistant_messages", "system_messages"].map(|f| r.body[f].as_i64());
    assert_eq!(counts, [Some(3), Some(1), Some(1), Some(1)]);
    // The mean of the three messages' importance, as stored.
    let mut sum = 0.0;
    for m in sqlx::query_scalar::<_, f64>(
        "SELECT importance FROM messages WHERE tenant_id = 'acme' AND conversation_id = 'trip'",
    )
    .fetch_all(app.env.store.pool())
    .await?
    {
        sum += m;
    }
    let avg = r.body["avg_importance"].as_f64().unwrap();
    assert!((avg - sum / 3.0).abs() < 1e-9, "{avg} against {}", sum / 3.0);

    // An edit of a message's importance moves the mean; a delete moves the counts and the last time.
    let before = avg;
    let uri = format!("/v1/messages/{}?tenant_id=acme", system["id"].as_str().unwrap());
    let r = put(&app, &uri, json!({"importance_override": 1.0})).await?;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let r = app.get("/v1/conversations/trip/stats?tenant_id=acme").await?;
    assert!(r.body["avg_importance"].as_f64().unwrap() > before, "{} after {before}", r.body);
    let r = app.send(Method::DELETE, &uri, None, Some(KEY)).await?;
    assert!(r.status.is_success(), "{r:?}");
    let r = app.get("/v1/conversations/trip/stats?tenant_id=acme").await?;
    assert_eq!(
        (r.body["total_messages"].as_i64(), r.body["system_messages"].as_i64()),
        (Some(2), Some(0)),
        "{}",
        r.body
    );
    assert_ne!(r.body["last_message_at"], system["created_at"]);

    // Deleting the conversation's messages ends a conversation no client made.
    let r = app.send(Method::DELETE, "/v1/conversations/work?tenant_id=acme", None, Some(KEY)).await?;
    assert!(r.status.is_success(), "{r:?}");
    assert_eq!(app.get("/v1/conversations/work?tenant_id=acme").await?.status, StatusCode::NOT_FOUND);
    assert_eq!(ids(&app.get("/v1/conversations?tenant_id=acme").await?), ["trip"]);
    app.finish().await
}

#[tokio::test]
async fn conversations_are_created_edited_filtered_and_paged() -> anyhow::Result<()> {
    let app = App::start().await?;
    let create = json!({"tenant_id": "acme", "conversation_id": "plans", "title": "Summer plans", "metadata": {"topic": "travel"}});
    let r = app.post("/v1/conversations", &create).await?;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    assert_eq!((&r.body["title"], r.body["message_count"].as_i64()), (&json!("Summer plans"), Some(0)));
    let again = json!({"tenant_id": "acme", "conversation_id": "plans", "title": "Other"});
    let r = app.post("/v1/conversations", &again).await?;
    assert_eq!((r.status, &r.body["title"]), (StatusCode::OK, &json!("Summer plans")), "returned as it is");
    assert_eq!(
        app.get("/v1/conversations/plans/stats?tenant_id=acme").await?.status,
        StatusCode::NOT_FOUND,
        "no messages yet"
    );

    store(&app, "plans", "user", "Let us go to Porto in July").await?;
    store(&app, "chat", "user", "hello").await?;
    let r = put(
        &app,
        "/v1/conversations/plans?tenant_id=acme",
        json!({"archived": true, "metadata": {"topic": "holidays"}}),
    )
    .await?;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(
        (&r.body["archived"], &r.body["metadata"], &r.body["title"]),
        (&json!(true), &json!({"topic": "holidays"}), &json!("Summer plans"))
    );
    assert_eq!(r.body["message_count"], 1);
    assert_eq!(ids(&app.get("/v1/conversations?tenant_id=acme&archived=true").await?), ["plans"]);
    assert_eq!(ids(&app.get("/v1/conversations?tenant_id=acme&archived=false").await?), ["chat"]);
    let r = put(&app, "/v1/conversations/plans?tenant_id=acme", json!({"title": null})).await?;
    assert!(r.body["title"].is_null(), "null clears the title: {r:?}");

    // Pages of one, most recently active first (the edit made `plans` the latest).
    let r = app.get("/v1/conversations?tenant_id=acme&page=2&page_size=1").await?;
    assert_eq!((ids(&r), r.body["total"].as_i64()), (vec!["chat"], Some(2)));
    assert!(ids(&app.get("/v1/conversations?tenant_id=acme&page=3&page_size=1").await?).is_empty());

    // A titled conversation outlives its messages, until it is deleted itself.
    let r = app.send(Method::DELETE, "/v1/conversations/plans?tenant_id=acme", None, Some(KEY)).await?;
    assert!(r.status.is_success(), "{r:?}");
    assert_eq!(app.get("/v1/conversations/plans?tenant_id=acme").await?.status, StatusCode::NOT_FOUND);

    for (uri, field) in [
        ("/v1/conversations?tenant_id=acme&page=0", "page"),
        ("/v1/conversations?tenant_id=acme&page_size=101", "page_size"),
    ] {
        let r = app.get(uri).await?;
        assert_eq!(
            (r.status, &r.body["errors"][0]["field"]),
            (StatusCode::UNPROCESSABLE_ENTITY, &json!(field)),
            "{uri}"
        );
    }
    let long = json!({"tenant_id": "acme", "conversation_id": "x", "title": "t".repeat(513)});
    assert_eq!(app.post("/v1/conversations", &long).await?.status, StatusCode::UNPROCESSABLE_ENTITY);
    let bad = json!({"tenant_id": "acme", "conversation_id": "not valid!"});
    assert_eq!(app.post("/v1/conversations", &bad).await?.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        put(&app, "/v1/conversations/none?tenant_id=acme", json!({"archived": true})).await?.status,
        StatusCode::NOT_FOUND
    );

    // Another tenant's key sees only its own.
    let key = app.tenant_key("globex", &["read", "write"]).await?;
    let r = app.send(Method::GET, "/v1/conversations", None, Some(&key)).await?;
    assert_eq!((r.status, r.body["total"].as_i64()), (StatusCode::OK, Some(0)), "{r:?}");
    let r = app.send(Method::GET, "/v1/conversations/chat", None, Some(&key)).await?;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    app.finish().await
}

#[tokio::test]
async fn titles_and_metadata_postgres_cannot_store_are_refused_with_422() -> anyhow::Result<()> {
    // Found by the fuzzer: a NUL character in a title was a 503.
    let app = App::without_workers(|_| {}).await?;
    let deep = json!({"a": {"b": {"c": {"d": {"e": 1}}}}});
    for body in [
        json!({"tenant_id": "acme", "conversation_id": "c", "title": "bell\u{0}"}),
        json!({"tenant_id": "acme", "conversation_id": "c", "metadata": {"k": "nul\u{0}"}}),
        json!({"tenant_id": "acme", "conversation_id": "c", "metadata": deep}),
    ] {
        let r = app.post("/v1/conversations", &body).await?;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {r:?}");
    }
    let r = app.post("/v1/conversations", &json!({"tenant_id": "acme", "conversation_id": "c"})).await?;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let r = put(&app, "/v1/conversations/c?tenant_id=acme", json!({"title": "\u{0}"})).await?;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{r:?}");
    app.finish().await
}
