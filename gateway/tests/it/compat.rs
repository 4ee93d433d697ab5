//! Compatibility with the original service's API (`original-service.md` §1): a client written
//! for it reads our answers unchanged.

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{App, message};

#[tokio::test]
async fn health_and_readiness_answer_at_the_original_paths_without_a_key_or_a_rate_limit() -> anyhow::Result<()> {
    let app = App::start_with(|vars| {
        vars.insert("MEMORY_RATE_LIMIT_CLIENT".into(), "2/minute".into());
        vars.insert("MEMORY_ENVIRONMENT".into(), "staging".into());
    })
    .await?;
    // Past the client's limit of 2 a minute: never limited.
    for _ in 0..5 {
        let r = app.send(Method::GET, "/v1/admin/health", None, None).await?;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        assert!(!r.headers.contains_key("x-ratelimit-limit"), "{r:?}");
        assert_eq!(r.headers["x-api-version"], "v1");
        let b = &r.body;
        assert_eq!((b["status"].as_str(), b["database"].as_str()), (Some("ok"), Some("ok")), "{b}");
        assert_eq!(b["environment"], "staging");
        assert_eq!(b["embedding"], "skipped");
        assert!(b["notes"].is_null());
        assert!(b["latency_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{b}");
        assert!(b["uptime_seconds"].as_f64().is_some_and(|s| s >= 0.0), "{b}");
        assert!(b["version"].as_str().is_some_and(|v| !v.is_empty()));
        assert!(b["timestamp"].as_str().is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok()), "{b}");

        let r = app.send(Method::GET, "/v1/admin/readiness", None, None).await?;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        let b = &r.body;
        assert_eq!(b["status"], "ok", "{b}");
        for (field, value) in [("database", "ok"), ("nats", "ok"), ("embedding", "skipped")] {
            assert_eq!(b[field], value, "{field}: {b}");
        }
        assert!(["ok", "skipped"].contains(&b["redis"].as_str().unwrap_or("")), "{b}");
    }
    // A stopping gateway reads down, with a 503 (the original answered 200 whatever its state).
    app.env.shutdown.cancel();
    let r = app.send(Method::GET, "/v1/admin/readiness", None, None).await?;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{r:?}");
    assert_eq!(r.body["status"], "down");
    assert_eq!(r.body["notes"], "shutting down");
    app.finish().await
}

#[tokio::test]
async fn v1_answers_carry_the_api_version_and_other_versions_are_refused() -> anyhow::Result<()> {
    let app = App::start().await?;
    let r = app.get("/v1/memory/search?tenant_id=acme&query=hello").await?;
    assert_eq!(r.headers["x-api-version"], "v1", "{r:?}");
    // A problem answer too (an unknown message).
    let r = app.get("/v1/messages/not-a-uuid?tenant_id=acme").await?;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.headers["x-api-version"], "v1");
    // Unversioned paths carry none.
    let r = app.send(Method::GET, "/healthz", None, None).await?;
    assert!(!r.headers.contains_key("x-api-version"));

    for path in ["/v2/messages", "/v3/memory/search?tenant_id=acme&query=x", "/v10"] {
        let r = app.send(Method::GET, path, None, Some(crate::harness::KEY)).await?;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}: {r:?}");
        let version = path.trim_start_matches('/').split(['/', '?']).next().unwrap();
        // The original's body, and ours around it.
        assert_eq!(r.body["error"], "Unsupported API version", "{path}");
        assert_eq!(r.body["version"], version);
        assert_eq!(r.body["supported_versions"], json!(["v1"]));
        assert_eq!(r.body["code"], "unsupported_api_version");
        assert_eq!(r.headers["content-type"], "application/problem+json");
    }
    // Not a version: a path that merely starts with a v.
    let r = app.send(Method::GET, "/vector", None, Some(crate::harness::KEY)).await?;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    app.finish().await
}

#[tokio::test]
async fn messages_carry_the_original_field_names_beside_ours() -> anyhow::Result<()> {
    let app = App::start().await?;
    let mut body = message("acme", "I moved to Lisbon in May");
    body["metadata"] = json!({"source": "web"});
    let r = app.post("/v1/messages", &body).await?;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{r:?}");
    assert_eq!(r.body["embedding_status"], "pending", "queued: {}", r.body);
    assert_eq!(r.body["message_metadata"], json!({"source": "web"}));
    let id = r.body["id"].as_str().unwrap().to_owned();

    let uri = format!("/v1/messages/{id}?tenant_id=acme");
    app.embedded(&uri).await?;
    let r = app.get(&uri).await?;
    let b = &r.body;
    assert_eq!(b["embedding_status"], "completed", "{b}");
    assert_eq!(b["status"], "embedded");
    assert_eq!(b["message_metadata"], b["metadata"]);
    assert_eq!(b["importance_score"], b["importance"]);
    assert!(b["importance_score"].as_f64().is_some_and(|i| (0.0..=1.0).contains(&i)), "{b}");
    let updated = chrono::DateTime::parse_from_rfc3339(b["updated_at"].as_str().expect("updated_at"))?;
    assert!(updated >= chrono::DateTime::parse_from_rfc3339(b["created_at"].as_str().unwrap())?);

    // An edit moves updated_at and shows in both names.
    let edit = json!({"metadata": {"source": "app"}});
    let r =
        app.send(Method::PUT, &uri, Some(axum::body::Body::from(edit.to_string())), Some(crate::harness::KEY)).await?;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body["message_metadata"], json!({"source": "app"}));
    let edited = chrono::DateTime::parse_from_rfc3339(r.body["updated_at"].as_str().unwrap())?;
    assert!(edited > updated, "{edited} after {updated}");
    app.finish().await
}

#[tokio::test]
async fn a_retention_run_for_a_tenant_with_nothing_stored_answers_zeros() -> anyhow::Result<()> {
    let app = App::start().await?;
    // Right after a tenant's first message (perhaps not stored yet), and for a tenant never seen.
    let r = app.post("/v1/messages", &message("fresh", "hello there")).await?;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    for tenant in ["fresh", "never-seen"] {
        for actions in [json!(["archive"]), json!(["archive", "delete"])] {
            let run = json!({"tenant_id": tenant, "actions": actions, "dry_run": true});
            let r = app.post("/v1/admin/retention/run", &run).await?;
            assert_eq!(r.status, StatusCode::OK, "{tenant}: {r:?}");
            assert_eq!((r.body["archived"].as_u64(), r.body["deleted"].as_u64()), (Some(0), Some(0)), "{}", r.body);
            assert_eq!(r.body["dry_run"], true);
        }
    }
    let r = app.post("/v1/admin/retention/run", &json!({"tenant_id": "never-seen", "actions": ["delete"]})).await?;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body["deleted"], 0);
    // Another tenant's key still may not name it.
    let key = app.tenant_key("acme", &["admin"]).await?;
    let run = json!({"tenant_id": "never-seen", "dry_run": true}).to_string();
    let r = app.send(Method::POST, "/v1/admin/retention/run", Some(axum::body::Body::from(run)), Some(&key)).await?;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{r:?}");
    app.finish().await
}

#[tokio::test]
async fn batches_answer_with_the_original_fields_beside_ours() -> anyhow::Result<()> {
    let app = App::start().await?;
    let mut bad = message("acme", "");
    bad["role"] = json!("narrator");
    let batch = json!({"messages": [message("acme", "first"), bad, message("acme", "third")]});
    let r = app.post("/v1/messages/batch", &batch).await?;
    assert_eq!(r.status, StatusCode::MULTI_STATUS, "{r:?}");
    let created = r.body["created"].as_array().unwrap();
    assert_eq!(created.len(), 2);
    assert_eq!(created[0]["content"], "first");
    assert_eq!(created[1]["content"], "third");
    assert!(created.iter().all(|m| m["embedding_status"] == "pending" && m["id"].is_string()));
    assert_eq!(created[0]["id"], r.body["results"][0]["id"], "the same ids as ours");
    assert_eq!(
        (r.body["updated"].as_array().map(Vec::len), r.body["deleted"].as_array().map(Vec::len)),
        (Some(0), Some(0))
    );
    let errors = r.body["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["message_index"], 1);
    assert_eq!(errors[0]["code"], "validation_failed");
    assert!(errors[0]["error"].as_str().is_some_and(|e| !e.is_empty()), "{}", errors[0]);

    // Batch deletes: our `deleted` and `not_found`, and the original's `errors` per id not found.
    let first = created[0]["id"].as_str().unwrap().to_owned();
    app.embedded(&format!("/v1/messages/{first}?tenant_id=acme")).await?;
    let missing = common::domain::MessageId::new().to_string();
    let r = app.post("/v1/messages/batch/delete?tenant_id=acme", &json!({"message_ids": [first, missing]})).await?;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body["deleted"], json!([first]));
    assert_eq!(r.body["not_found"], json!([missing]));
    assert_eq!(r.body["errors"][0]["message_id"], missing.as_str());
    assert_eq!(r.body["errors"][0]["code"], "message_not_found");
    assert_eq!(
        (r.body["created"].as_array().map(Vec::len), r.body["updated"].as_array().map(Vec::len)),
        (Some(0), Some(0))
    );
    app.finish().await
}

#[tokio::test]
async fn search_takes_the_original_parameters() -> anyhow::Result<()> {
    let app = App::start().await?;
    let mut low = message("acme", "the ferry to Porto leaves at nine");
    low["importance_override"] = json!(0.1);
    let mut high = message("acme", "the ferry to Lisbon leaves at ten");
    high["importance_override"] = json!(0.9);
    let mut ids = Vec::new();
    for body in [low, high] {
        let r = app.post("/v1/messages?wait=embedded", &body).await?;
        assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
        ids.push(r.body["id"].as_str().unwrap().to_owned());
    }
    let found = |r: &crate::harness::Resp| -> Vec<String> {
        r.body["items"].as_array().unwrap().iter().map(|i| i["message_id"].as_str().unwrap().to_owned()).collect()
    };
    let r = app.get("/v1/memory/search?tenant_id=acme&query=ferry&importance_min=0.5&candidate_limit=200").await?;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(found(&r), [ids[1].clone()], "importance_min filters as min_importance does");
    let r = app.get("/v1/memory/search?tenant_id=acme&query=ferry&candidate_limit=1&top_k=2").await?;
    assert_eq!(found(&r).len(), 2, "at least top_k candidates are read: {r:?}");

    for (query, field) in [
        ("importance_min=0.5&min_importance=0.5", "importance_min"),
        ("importance_min=high", "importance_min"),
        ("candidate_limit=0", "candidate_limit"),
        ("candidate_limit=1001", "candidate_limit"),
        ("candidate_limit=many", "candidate_limit"),
    ] {
        let r = app.get(&format!("/v1/memory/search?tenant_id=acme&query=ferry&{query}")).await?;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {r:?}");
        assert_eq!(r.body["errors"][0]["field"], field, "{query}");
    }
    let r =
        app.post("/v1/memory/search", &json!({"tenant_id": "acme", "query": "ferry", "candidate_limit": 2000})).await?;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{r:?}");
    app.finish().await
}

#[tokio::test]
async fn browsers_of_the_allowed_origins_may_call_the_api_and_no_others() -> anyhow::Result<()> {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;
    let app = App::without_workers(|vars| {
        vars.insert("MEMORY_ALLOWED_ORIGINS".into(), "https://app.example".into());
    })
    .await?;
    let send = |req: Request<Body>| {
        let router = gateway::router(app.state.clone());
        async move { router.oneshot(req).await }
    };
    // A preflight is answered before any key is asked for.
    let preflight = Request::builder()
        .method(Method::OPTIONS)
        .uri("/v1/memory/search?tenant_id=acme&query=x")
        .header("origin", "https://app.example")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "x-api-key")
        .body(Body::empty())?;
    let r = send(preflight).await?;
    assert!(r.status().is_success(), "{r:?}");
    assert_eq!(r.headers()["access-control-allow-origin"], "https://app.example");
    assert!(r.headers()["access-control-allow-headers"].to_str()?.contains("x-api-key"), "{r:?}");
    // The call itself: readable answers and headers.
    let call = Request::builder().uri("/v1/admin/health").header("origin", "https://app.example").body(Body::empty())?;
    let r = send(call).await?;
    assert_eq!(r.headers()["access-control-allow-origin"], "https://app.example");
    assert!(r.headers()["access-control-expose-headers"].to_str()?.contains("x-request-id"));
    // Another origin is not allowed.
    let call =
        Request::builder().uri("/v1/admin/health").header("origin", "https://evil.example").body(Body::empty())?;
    let r = send(call).await?;
    assert!(!r.headers().contains_key("access-control-allow-origin"), "{r:?}");
    app.finish().await?;

    // Without configured origins, no cross-origin access at all.
    let app = App::without_workers(|_| {}).await?;
    let call = Request::builder().uri("/v1/admin/health").header("origin", "https://app.example").body(Body::empty())?;
    let r = gateway::router(app.state.clone()).oneshot(call).await?;
    assert!(!r.headers().contains_key("access-control-allow-origin"), "{r:?}");
    app.finish().await
}

/// Asserts that `body` has every one of `fields` (null allowed: the key must be there).
fn has_fields(body: &Value, fields: &[&str], what: &str) {
    for field in fields {
        assert!(body.get(field).is_some(), "{what} lacks the original's `{field}`: {body}");
    }
}

/// A request with the operator key and a JSON body, if any.
async fn call(app: &App, method: Method, uri: &str, body: Option<Value>) -> anyhow::Result<crate::harness::Resp> {
    app.send(method, uri, body.map(|b| axum::body::Body::from(b.to_string())), Some(crate::harness::KEY)).await
}

const MESSAGE_FIELDS: [&str; 10] = [
    "id",
    "tenant_id",
    "conversation_id",
    "role",
    "content",
    "message_metadata",
    "importance_score",
    "embedding_status",
    "created_at",
    "updated_at",
];

#[tokio::test]
async fn an_original_client_walks_messages_conversations_and_analytics_with_its_names_and_statuses()
-> anyhow::Result<()> {
    let app = App::start().await?;
    // Ingest with the body the original documented (`importance`, its docs' name for the override).
    let body = json!({"tenant_id": "acme", "conversation_id": "trip", "role": "user",
        "content": "book the night train to Vienna", "metadata": {"channel": "web"}, "importance": 0.9});
    let r = app.post("/v1/messages", &body).await?;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{r:?}");
    let id = r.body["id"].as_str().unwrap().to_owned();
    let uri = format!("/v1/messages/{id}?tenant_id=acme");
    app.embedded(&uri).await?;
    let r = app.get(&uri).await?;
    has_fields(&r.body, &MESSAGE_FIELDS, "GET /v1/messages/{id}");
    assert_eq!(
        (r.body["importance_score"].as_f64(), &r.body["message_metadata"]),
        (Some(0.9), &json!({"channel": "web"}))
    );

    // PUT with content and importance_override together (a 500 in the original), then archived.
    let r = call(
        &app,
        Method::PUT,
        &uri,
        Some(json!({"content": "book the sleeper to Vienna", "importance_override": 0.2})),
    )
    .await?;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    has_fields(&r.body, &MESSAGE_FIELDS, "PUT /v1/messages/{id}");
    assert_eq!(
        (r.body["content"].as_str(), r.body["importance_score"].as_f64()),
        (Some("book the sleeper to Vienna"), Some(0.2))
    );
    let r = call(&app, Method::PUT, &uri, Some(json!({"archived": true}))).await?;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert!(r.body["archived_at"].is_string(), "{r:?}");
    let r = call(&app, Method::PUT, &uri, Some(json!({"archived": false}))).await?;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");

    // Batch edit of an id that does not exist: the original's `errors` entry.
    let missing = common::domain::MessageId::new().to_string();
    let edits = json!({"updates": [{"message_id": missing, "update": {"content": "x"}}]});
    let r = call(&app, Method::POST, "/v1/messages/batch/update?tenant_id=acme", Some(edits)).await?;
    assert!(r.status.is_success(), "{r:?}");
    assert_eq!(r.body["errors"][0]["message_id"], missing.as_str());
    assert!(r.body["errors"][0]["error"].is_string(), "{r:?}");
    has_fields(&r.body, &["created", "updated", "deleted", "errors"], "batch update");

    // Conversations: the one messages made, and one created empty.
    let conversation_fields = [
        "id",
        "tenant_id",
        "user_id",
        "title",
        "metadata",
        "message_count",
        "last_message_at",
        "created_at",
        "updated_at",
        "archived",
    ];
    let r = app
        .post("/v1/conversations", &json!({"conversation_id": "plans", "tenant_id": "acme", "title": "Plans"}))
        .await?;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    has_fields(&r.body, &conversation_fields, "POST /v1/conversations");
    let r = call(
        &app,
        Method::PUT,
        "/v1/conversations/trip?tenant_id=acme",
        Some(json!({"title": "Vienna", "metadata": {"k": 1}})),
    )
    .await?;
    assert_eq!(
        (r.status, &r.body["title"], &r.body["metadata"]),
        (StatusCode::OK, &json!("Vienna"), &json!({"k": 1})),
        "{r:?}"
    );
    let r = app.get("/v1/conversations?tenant_id=acme&archived=false&page=1&page_size=20").await?;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    has_fields(&r.body, &["conversations", "total", "page", "page_size"], "GET /v1/conversations");
    assert_eq!(r.body["total"], 2);
    has_fields(&r.body["conversations"][0], &conversation_fields, "a listed conversation");
    let r = app.get("/v1/conversations/trip/stats?tenant_id=acme").await?;
    has_fields(
        &r.body,
        &[
            "conversation_id",
            "tenant_id",
            "total_messages",
            "user_messages",
            "assistant_messages",
            "system_messages",
            "avg_importance",
            "first_message_at",
            "last_message_at",
        ],
        "stats",
    );
    let r = app.get("/v1/conversations/plans/stats?tenant_id=acme").await?;
    assert_eq!(
        (r.status, r.body["detail"].as_str()),
        (StatusCode::NOT_FOUND, Some("No messages found for this conversation"))
    );

    // Analytics, each with the original's fields.
    let r = app.get("/v1/analytics/usage?tenant_id=acme").await?;
    has_fields(
        &r.body,
        &[
            "tenant_id",
            "total_messages",
            "total_conversations",
            "active_conversations",
            "archived_conversations",
            "messages_today",
            "messages_this_week",
            "messages_this_month",
            "avg_importance_score",
            "total_embeddings",
            "pending_embeddings",
            "failed_embeddings",
        ],
        "usage",
    );
    let r = app.get("/v1/analytics/trends?tenant_id=acme&days=7").await?;
    assert_eq!(r.body.as_array().map(Vec::len), Some(7), "{r:?}");
    has_fields(&r.body[6], &["date", "count", "role_breakdown"], "a trend day");
    let r = app.get("/v1/analytics/top-conversations?tenant_id=acme&limit=10").await?;
    has_fields(
        &r.body[0],
        &["conversation_id", "tenant_id", "message_count", "last_activity", "avg_importance"],
        "top",
    );
    let r = app.get("/v1/analytics/embeddings?tenant_id=acme").await?;
    has_fields(
        &r.body,
        &["total_embeddings", "completed", "pending", "failed", "avg_processing_time_seconds", "success_rate"],
        "embeddings",
    );
    let r = app.get("/v1/analytics/tenants").await?;
    let acme = r.body.as_array().unwrap().iter().find(|t| t["tenant_id"] == "acme").cloned().unwrap_or_default();
    has_fields(
        &acme,
        &["tenant_id", "total_messages", "total_conversations", "storage_size_mb", "last_activity"],
        "tenants",
    );

    // The original's DELETE of a conversation keeps its messages unless told otherwise.
    let r = call(&app, Method::DELETE, "/v1/conversations/trip?tenant_id=acme&delete_messages=false", None).await?;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{r:?}");
    assert_eq!(app.get(&uri).await?.status, StatusCode::OK, "the message stays");
    let r = app.get("/v1/conversations/trip?tenant_id=acme").await?;
    assert_eq!(
        (&r.body["title"], &r.body["metadata"], &r.body["message_count"]),
        (&Value::Null, &json!({}), &json!(1))
    );
    let r = call(&app, Method::DELETE, "/v1/conversations/plans?tenant_id=acme&delete_messages=false", None).await?;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{r:?}");
    assert_eq!(app.get("/v1/conversations/plans?tenant_id=acme").await?.status, StatusCode::NOT_FOUND);
    let r = call(&app, Method::DELETE, "/v1/conversations/plans?tenant_id=acme&delete_messages=false", None).await?;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{r:?}");

    // DELETE of a message: 204, then 404.
    let r = call(&app, Method::DELETE, &uri, None).await?;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{r:?}");
    assert_eq!(app.get(&uri).await?.status, StatusCode::NOT_FOUND);
    let r = call(&app, Method::DELETE, "/v1/conversations/trip?tenant_id=acme&delete_messages=true", None).await?;
    assert_eq!((r.status, &r.body["deleted"]), (StatusCode::OK, &json!(0)), "{r:?}");
    app.finish().await
}
