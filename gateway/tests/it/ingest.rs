//! The REST ingest path end to end.

use axum::http::StatusCode;
use serde_json::json;

use crate::harness::{App, message};

#[tokio::test]
async fn a_message_posted_over_rest_becomes_the_top_search_hit() -> anyhow::Result<()> {
    let app = App::start().await?;
    let budget = app.post("/v1/messages", &message("acme", "The quarterly budget review is on Friday")).await?;
    let r = app.post("/v1/messages", &message("acme", "I moved to Lisbon in May")).await?;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{r:?}");
    assert_eq!(r.body["status"], "queued");
    let id = r.body["id"].as_str().unwrap().to_owned();
    assert_eq!(r.headers["location"], format!("/v1/messages/{id}?tenant_id=acme").as_str());

    // Both embedded, then searched: a search while only one has a vector ranks on words alone for
    // the other.
    for embedded in [budget.body["id"].as_str().unwrap(), id.as_str()] {
        app.env
            .eventually(|| async {
                let r = app.get(&format!("/v1/messages/{embedded}?tenant_id=acme")).await?;
                anyhow::ensure!(r.body["status"] == "embedded", "{r:?}");
                Ok(())
            })
            .await?;
    }
    let hits = app.search("acme", "When did I move to Lisbon?").await?;
    assert_eq!(hits.len(), 2, "{hits:?}");
    assert_eq!(hits[0], id);

    let stored = app.get(&format!("/v1/messages/{id}?tenant_id=acme")).await?;
    assert_eq!(stored.status, StatusCode::OK);
    assert_eq!(stored.body["status"], "embedded");
    assert_eq!(stored.body["content"], "I moved to Lisbon in May");
    assert!((stored.body["importance"].as_f64().unwrap() - 0.54).abs() < 0.01, "{:?}", stored.body);
    app.finish().await
}

#[tokio::test]
async fn wait_embedded_answers_201_once_the_message_is_searchable() -> anyhow::Result<()> {
    let app = App::start().await?;
    let body = json!({
        "tenant_id": "acme", "conversation_id": "c", "role": "assistant", "name": "Ada",
        "content": "Your order ships on Tuesday", "metadata": {"channel": "web", "tags": ["order"]},
        "importance_override": 0.9
    });
    let r = app.post("/v1/messages?wait=embedded", &body).await?;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    assert_eq!(r.body["status"], "embedded");
    assert_eq!(r.body["importance"], 0.9);
    assert_eq!(r.body["metadata"], json!({"channel": "web", "tags": ["order"]}));
    // Searchable at once: no polling needed after a 201.
    let search = app.get("/v1/memory/search?tenant_id=acme&query=when%20does%20my%20order%20ship").await?;
    assert_eq!(search.status, StatusCode::OK);
    assert_eq!(search.body["total"], 1);
    let hit = &search.body["items"][0];
    assert_eq!(hit["message_id"], r.body["id"]);
    assert_eq!(hit["name"], "Ada");
    assert_eq!(hit["importance"], 0.9);
    for field in ["score", "similarity", "decay", "content", "role", "metadata", "created_at", "conversation_id"] {
        assert!(!hit[field].is_null(), "missing {field} in {hit}");
    }
    app.finish().await
}

#[tokio::test]
async fn wait_stored_times_out_with_504_when_no_embedder_runs_and_the_message_stays_queued() -> anyhow::Result<()> {
    let app = App::without_workers(|vars| {
        vars.insert("MEMORY_HTTP_WAIT_TIMEOUT_MS".into(), "300".into());
    })
    .await?;
    app.spawn_searcher().await?;
    let r = app.post("/v1/messages?wait=stored", &message("acme", "hello there")).await?;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{r:?}");
    assert_eq!(r.body["code"], "wait_timeout");
    let id = r.body["message_id"].as_str().unwrap().to_owned();

    let queued = app.get(&format!("/v1/messages/{id}?tenant_id=acme")).await?;
    assert_eq!(queued.status, StatusCode::OK, "{queued:?}");
    assert_eq!(queued.body["status"], "queued");
    // Ids are unique within a tenant: the operator key names the tenant.
    let unnamed = app.get(&format!("/v1/messages/{id}")).await?;
    assert_eq!(unnamed.status, StatusCode::UNPROCESSABLE_ENTITY, "{unnamed:?}");
    assert_eq!(
        (&unnamed.body["errors"][0]["field"], &unnamed.body["errors"][0]["code"]),
        (&json!("tenant_id"), &json!("required"))
    );

    app.spawn_embedder().await?;
    app.embedded(&format!("/v1/messages/{id}?tenant_id=acme")).await?;
    app.finish().await
}

#[tokio::test]
async fn a_batch_with_invalid_items_answers_207_and_stores_only_the_valid_ones() -> anyhow::Result<()> {
    let app = App::start().await?;
    let body = json!({"messages": [
        message("acme", "first valid"),
        {"tenant_id": "acme", "conversation_id": "c", "role": "robot", "content": ""},
        message("acme", "second valid"),
        {"tenant_id": "acme", "conversation_id": "c", "role": "user", "content": "x", "colour": "red"},
        {"tenant_id": "bad tenant!", "conversation_id": "c", "role": "user", "content": "x"},
    ]});
    let r = app.post("/v1/messages/batch", &body).await?;
    assert_eq!(r.status, StatusCode::MULTI_STATUS, "{r:?}");
    assert_eq!(r.body["queued"], 2);
    assert_eq!(r.body["rejected"], 3);
    let results = r.body["results"].as_array().unwrap();
    let statuses: Vec<&str> = results.iter().map(|i| i["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["queued", "rejected", "queued", "rejected", "rejected"]);
    let item1 = &results[1]["error"];
    assert_eq!(item1["code"], "validation_failed");
    let fields: Vec<(&str, &str)> = item1["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["field"].as_str().unwrap(), e["code"].as_str().unwrap()))
        .collect();
    assert_eq!(fields, [("role", "invalid_role"), ("content", "empty")]);
    assert_eq!(results[3]["error"]["code"], "malformed_body");
    assert!(results[3]["error"]["detail"].as_str().unwrap().contains("colour"), "{}", results[3]);
    assert_eq!(results[4]["error"]["errors"][0]["field"], "tenant_id");

    let valid: Vec<String> = [0, 2].iter().map(|&i| results[i]["id"].as_str().unwrap().to_owned()).collect();
    for id in &valid {
        app.embedded(&format!("/v1/messages/{id}?tenant_id=acme")).await?;
    }
    assert_eq!(app.count_rows("acme").await?, 2);

    let all_good = json!({"messages": [message("acme", "third"), message("acme", "fourth")]});
    let r = app.post("/v1/messages/batch", &all_good).await?;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    assert_eq!(r.body["queued"], 2);
    app.env
        .eventually(|| async {
            anyhow::ensure!(app.count_rows("acme").await? == 4);
            Ok(())
        })
        .await?;
    app.finish().await
}

#[tokio::test]
async fn resending_a_message_id_over_rest_stores_one_row() -> anyhow::Result<()> {
    let app = App::start().await?;
    let id = "0190f5c4-7a11-7cc0-8000-000000000001";
    let mut body = message("acme", "idempotent hello");
    body["message_id"] = json!(id);
    let first = app.post("/v1/messages?wait=embedded", &body).await?;
    assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
    assert_eq!(first.body["id"], id);
    // A retry (same id) is answered from the stored row, not a second write.
    let again = app.post("/v1/messages?wait=embedded", &body).await?;
    assert_eq!(again.status, StatusCode::CREATED, "{again:?}");
    assert_eq!(again.body["id"], id);
    let queued = app.post("/v1/messages", &body).await?;
    assert_eq!(queued.status, StatusCode::ACCEPTED);
    assert_eq!(app.count_rows("acme").await?, 1);
    app.finish().await
}

#[tokio::test]
async fn tenants_never_see_each_others_messages() -> anyhow::Result<()> {
    let app = App::start().await?;
    let a = app.post("/v1/messages?wait=embedded", &message("tenant-a", "secret plans for Lisbon")).await?;
    app.post("/v1/messages?wait=embedded", &message("tenant-b", "other plans for Porto")).await?;
    let hits = app.search("tenant-b", "secret plans for Lisbon").await?;
    assert_eq!(hits.len(), 1);
    assert_ne!(hits[0], a.body["id"].as_str().unwrap());
    let id = a.body["id"].as_str().unwrap();
    let other = app.get(&format!("/v1/messages/{id}?tenant_id=tenant-b")).await?;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
    assert_eq!(other.body["code"], "message_not_found");
    app.finish().await
}
