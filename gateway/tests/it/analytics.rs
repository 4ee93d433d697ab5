//! Usage analytics at the original service's paths, from counters kept by triggers.

use axum::http::{Method, StatusCode};
use chrono::{Duration, Utc};
use serde_json::json;

use crate::harness::{App, KEY};

#[tokio::test]
async fn usage_trends_top_conversations_and_embeddings_follow_the_messages() -> anyhow::Result<()> {
    let app = App::start().await?;
    let now = Utc::now();
    for (conversation, role, content, age_days) in [
        ("old", "user", "from last month", 40),
        ("trip", "user", "three days ago", 3),
        ("trip", "user", "Book a flight to Lisbon", 0),
        ("trip", "assistant", "Which dates?", 0),
    ] {
        let body = json!({"tenant_id": "acme", "conversation_id": conversation, "role": role, "content": content,
                          "created_at": (now - Duration::days(age_days)).to_rfc3339()});
        let r = app.post("/v1/messages?wait=embedded", &body).await?;
        assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    }
    app.post(
        "/v1/messages?wait=stored",
        &json!({"tenant_id": "globex", "conversation_id": "x", "role": "user", "content": "elsewhere"}),
    )
    .await?;

    let r = app.get("/v1/analytics/usage?tenant_id=acme").await?;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let b = &r.body;
    let counts = [
        "total_messages",
        "total_conversations",
        "active_conversations",
        "archived_conversations",
        "messages_today",
        "messages_this_week",
        "messages_this_month",
        "total_embeddings",
        "pending_embeddings",
        "failed_embeddings",
    ]
    .map(|f| b[f].as_i64());
    assert_eq!(counts, [4, 2, 2, 0, 2, 3, 3, 4, 0, 0].map(Some), "{b}");
    let importance: f64 = sqlx::query_scalar("SELECT avg(importance) FROM messages WHERE tenant_id = 'acme'")
        .fetch_one(app.env.store.pool())
        .await?;
    assert!((b["avg_importance_score"].as_f64().unwrap() - importance).abs() < 1e-9, "{b}");

    let r = app.get("/v1/analytics/trends?tenant_id=acme&days=7").await?;
    let days = r.body.as_array().unwrap();
    assert_eq!(days.len(), 7, "every day, empty ones too: {}", r.body);
    let today = &days[6];
    assert_eq!(today["date"], now.date_naive().to_string());
    assert_eq!((today["count"].as_i64(), &today["role_breakdown"]), (Some(2), &json!({"user": 1, "assistant": 1})));
    assert_eq!(days[3]["count"], 1, "three days ago");
    assert_eq!(days.iter().map(|d| d["count"].as_i64().unwrap()).sum::<i64>(), 3);

    let r = app.get("/v1/analytics/top-conversations?tenant_id=acme&limit=1").await?;
    assert_eq!(r.body.as_array().map(Vec::len), Some(1));
    assert_eq!((&r.body[0]["conversation_id"], r.body[0]["message_count"].as_i64()), (&json!("trip"), Some(3)));

    let r = app.get("/v1/analytics/embeddings?tenant_id=acme").await?;
    assert_eq!((r.body["completed"].as_i64(), r.body["success_rate"].as_f64()), (Some(4), Some(100.0)), "{}", r.body);

    // A delete moves the counters.
    let r = app.send(Method::DELETE, "/v1/conversations/old?tenant_id=acme", None, Some(KEY)).await?;
    assert!(r.status.is_success(), "{r:?}");
    let r = app.get("/v1/analytics/usage?tenant_id=acme").await?;
    assert_eq!((r.body["total_messages"].as_i64(), r.body["total_conversations"].as_i64()), (Some(3), Some(1)));

    // The operator sees every tenant; a tenant key may not.
    let r = app.get("/v1/analytics/tenants").await?;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let tenants: Vec<(&str, i64)> = r
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["tenant_id"].as_str().unwrap(), t["total_messages"].as_i64().unwrap()))
        .collect();
    assert_eq!(tenants, [("acme", 3), ("globex", 1)]);
    let key = app.tenant_key("acme", &["read"]).await?;
    let r = app.send(Method::GET, "/v1/analytics/tenants", None, Some(&key)).await?;
    assert_eq!((r.status, &r.body["code"]), (StatusCode::FORBIDDEN, &json!("operator_only")));
    let r = app.send(Method::GET, "/v1/analytics/usage", None, Some(&key)).await?;
    assert_eq!(r.body["total_messages"], 3, "a tenant key reads its own: {r:?}");

    for (uri, field) in [
        ("/v1/analytics/trends?tenant_id=acme&days=0", "days"),
        ("/v1/analytics/trends?tenant_id=acme&days=366", "days"),
        ("/v1/analytics/top-conversations?tenant_id=acme&limit=101", "limit"),
    ] {
        let r = app.get(uri).await?;
        assert_eq!(
            (r.status, &r.body["errors"][0]["field"]),
            (StatusCode::UNPROCESSABLE_ENTITY, &json!(field)),
            "{uri}"
        );
    }
    let r = app.get("/v1/analytics/usage").await?;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "the operator names a tenant: {r:?}");
    app.finish().await
}
