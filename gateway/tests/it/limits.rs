//! Every validation limit of ARCHITECTURE §11 at its boundary (accepted) and one past it (4xx with
//! the field and a stable code), plus malformed requests.

use axum::body::Body;
use axum::http::{Method, StatusCode};
use serde_json::{Map, Value, json};

use crate::harness::{App, KEY, message};

async fn post_message(app: &App, edit: impl FnOnce(&mut Value)) -> anyhow::Result<crate::harness::Resp> {
    let mut body = message("acme", "hello");
    edit(&mut body);
    app.post("/v1/messages", &body).await
}

/// The (field, code) pairs of a 422.
fn field_errors(r: &crate::harness::Resp) -> Vec<(String, String)> {
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{r:?}");
    assert_eq!(r.body["code"], "validation_failed");
    assert_eq!(r.headers["content-type"], "application/problem+json");
    r.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["field"].as_str().unwrap().to_owned(), e["code"].as_str().unwrap().to_owned()))
        .collect()
}

async fn accepted_then_rejected(
    app: &App,
    field: &str,
    ok: Value,
    bad: Value,
    expected: (&str, &str),
) -> anyhow::Result<()> {
    let r = post_message(app, |b| b[field] = ok).await?;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{field} at its limit: {r:?}");
    let r = post_message(app, |b| b[field] = bad).await?;
    assert_eq!(field_errors(&r), vec![(expected.0.to_owned(), expected.1.to_owned())], "{field} past its limit");
    Ok(())
}

/// `depth` nested objects around a number.
fn nested(depth: usize) -> Value {
    (0..depth).fold(json!(1), |inner, _| json!({ "k": inner }))
}

fn object_with_keys(n: usize) -> Value {
    Value::Object((0..n).map(|i| (format!("k{i}"), json!(i))).collect::<Map<_, _>>())
}

#[tokio::test]
async fn message_fields_are_checked_at_their_limits() -> anyhow::Result<()> {
    let app = App::without_workers(|_| {}).await?;
    accepted_then_rejected(&app, "tenant_id", json!("t".repeat(64)), json!("t".repeat(65)), ("tenant_id", "too_long"))
        .await?;
    accepted_then_rejected(&app, "tenant_id", json!("a.b-c_D9"), json!("a/b"), ("tenant_id", "invalid_characters"))
        .await?;
    accepted_then_rejected(&app, "tenant_id", json!("t"), json!(""), ("tenant_id", "empty")).await?;
    accepted_then_rejected(
        &app,
        "conversation_id",
        json!("c".repeat(128)),
        json!("c".repeat(129)),
        ("conversation_id", "too_long"),
    )
    .await?;
    accepted_then_rejected(&app, "role", json!("system"), json!("bot"), ("role", "invalid_role")).await?;
    // Content is counted in characters, not bytes.
    accepted_then_rejected(
        &app,
        "content",
        json!("é".repeat(100_000)),
        json!("é".repeat(100_001)),
        ("content", "too_long"),
    )
    .await?;
    accepted_then_rejected(&app, "content", json!("x"), json!(" \n\t "), ("content", "empty")).await?;
    accepted_then_rejected(&app, "name", json!("n".repeat(128)), json!("n".repeat(129)), ("name", "too_long")).await?;
    accepted_then_rejected(
        &app,
        "importance_override",
        json!(1.0),
        json!(1.0001),
        ("importance_override", "out_of_range"),
    )
    .await?;
    accepted_then_rejected(
        &app,
        "importance_override",
        json!(0.0),
        json!(-0.0001),
        ("importance_override", "out_of_range"),
    )
    .await?;
    accepted_then_rejected(
        &app,
        "message_id",
        json!("0190f5c4-7a11-7cc0-8000-0000000000aa"),
        json!("not-a-uuid"),
        ("message_id", "invalid_uuid"),
    )
    .await?;
    let soon = (chrono::Utc::now() + chrono::Duration::seconds(60)).to_rfc3339();
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    accepted_then_rejected(&app, "created_at", json!(soon), json!(later), ("created_at", "in_future")).await?;
    app.finish().await
}

#[tokio::test]
async fn metadata_is_checked_at_its_limits() -> anyhow::Result<()> {
    let app = App::without_workers(|_| {}).await?;
    // The metadata object itself is depth 1.
    accepted_then_rejected(&app, "metadata", nested(4), nested(5), ("metadata.k.k.k.k", "too_deep")).await?;
    accepted_then_rejected(&app, "metadata", object_with_keys(50), object_with_keys(51), ("metadata", "too_many_keys"))
        .await?;
    let items = |n: usize| json!({ "list": (0..n).collect::<Vec<_>>() });
    accepted_then_rejected(&app, "metadata", items(50), items(51), ("metadata.list", "too_many_items")).await?;
    let string = |n: usize| json!({ "s": "s".repeat(n) });
    accepted_then_rejected(&app, "metadata", string(2048), string(2049), ("metadata.s", "too_long")).await?;
    accepted_then_rejected(&app, "metadata", Value::Null, json!([1, 2]), ("metadata", "invalid_type")).await?;
    app.finish().await
}

#[tokio::test]
async fn batches_hold_one_to_a_hundred_items() -> anyhow::Result<()> {
    let app = App::without_workers(|_| {}).await?;
    let batch = |n: usize| json!({ "messages": (0..n).map(|i| message("acme", &format!("m{i}"))).collect::<Vec<_>>() });
    let r = app.post("/v1/messages/batch", &batch(100)).await?;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    assert_eq!(r.body["queued"], 100);
    assert_eq!(
        field_errors(&app.post("/v1/messages/batch", &batch(101)).await?),
        [("messages".into(), "batch_size".into())]
    );
    assert_eq!(
        field_errors(&app.post("/v1/messages/batch", &batch(0)).await?),
        [("messages".into(), "batch_size".into())]
    );
    app.finish().await
}

#[tokio::test]
async fn search_parameters_are_checked_at_their_limits() -> anyhow::Result<()> {
    let app = App::start().await?;
    app.post("/v1/messages?wait=embedded", &message("acme", "hello world")).await?;
    let search = |q: String, k: &str| format!("/v1/memory/search?tenant_id=acme&query={q}&top_k={k}");
    let ok = app.get(&search("hello".into(), "50")).await?;
    assert_eq!(ok.status, StatusCode::OK, "{ok:?}");
    assert_eq!(field_errors(&app.get(&search("hello".into(), "51")).await?), [("top_k".into(), "out_of_range".into())]);
    assert_eq!(field_errors(&app.get(&search("hello".into(), "0")).await?), [("top_k".into(), "out_of_range".into())]);
    assert_eq!(app.get(&search("q".repeat(10_000), "5")).await?.status, StatusCode::OK);
    assert_eq!(field_errors(&app.get(&search("q".repeat(10_001), "5")).await?), [("query".into(), "too_long".into())]);
    assert_eq!(field_errors(&app.get("/v1/memory/search?query=hello").await?), [("tenant_id".into(), "empty".into())]);
    assert_eq!(
        field_errors(&app.get("/v1/memory/search?tenant_id=acme&query=hi&top_k=many").await?),
        [("top_k".into(), "invalid".into())]
    );
    let r = app.get("/v1/memory/search?tenant_id=acme&query=hi&colour=red").await?;
    assert_eq!((r.status, r.body["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_query")));
    app.finish().await
}

#[tokio::test]
async fn malformed_requests_get_problem_responses() -> anyhow::Result<()> {
    let app = App::without_workers(|_| {}).await?;
    // A field of answers sent in a request is unknown there.
    let r = post_message(&app, |b| b["importance_score"] = json!(0.5)).await?;
    assert_eq!((r.status, r.body["code"].as_str()), (StatusCode::BAD_REQUEST, Some("malformed_body")));
    assert!(r.body["detail"].as_str().unwrap().contains("importance_score"), "{r:?}");

    let r = app.send(Method::POST, "/v1/messages", Some(Body::from("{nope")), Some(KEY)).await?;
    assert_eq!((r.status, r.body["code"].as_str()), (StatusCode::BAD_REQUEST, Some("malformed_body")));

    let req = axum::http::Request::post("/v1/messages")
        .header("x-api-key", KEY)
        .body(Body::from(message("a", "b").to_string()))?;
    let response = tower::ServiceExt::oneshot(gateway::router(app.state.clone()), req).await?;
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // 1 MiB is the default body limit.
    let huge = json!({"messages": vec![message("acme", &"x".repeat(60_000)); 20]});
    let r = app.post("/v1/messages/batch", &huge).await?;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large")),
        "{r:?}"
    );

    let r = app.get("/v1/messages/not-a-uuid").await?;
    assert_eq!((r.status, r.body["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_message_id")));
    let r = app.post("/v1/messages?wait=forever", &message("acme", "x")).await?;
    assert_eq!((r.status, r.body["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_query")));
    let r = app.get("/v1/nothing-here").await?;
    assert_eq!((r.status, r.body["code"].as_str()), (StatusCode::NOT_FOUND, Some("route_not_found")));
    app.finish().await
}

#[tokio::test]
async fn problems_stay_small_whatever_the_input() -> anyhow::Result<()> {
    let app = App::start().await?;
    // Four hundred keys, each too long: four hundred field errors, each quoting its key.
    let keys: Map<String, Value> = (0..400).map(|i| (format!("{i:04}{}", "k".repeat(2_100)), json!(1))).collect();
    let r = post_message(&app, |m| m["metadata"] = Value::Object(keys)).await?;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.body.to_string().len() < 64 * 1024, "a {}-byte problem", r.body.to_string().len());
    let listed = r.body["errors"].as_array().unwrap().len();
    assert_eq!(listed, gateway::error::FIELD_ERRORS_MAX);
    assert!(r.body["errors_omitted"].as_u64().unwrap() >= 380, "{}", r.body["errors_omitted"]);
    // An unknown field with a huge name, quoted back in the detail.
    let mut body = message("acme", "hi");
    body[&"x".repeat(200_000)] = json!(1);
    let r = app.send(Method::POST, "/v1/messages", Some(Body::from(body.to_string())), Some(KEY)).await?;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.to_string().len() < 64 * 1024, "a {}-byte problem", r.body.to_string().len());
    app.finish().await
}
