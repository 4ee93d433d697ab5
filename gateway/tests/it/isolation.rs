//! The isolation matrix: every operation in the OpenAPI document, called with tenant A's key
//! (every scope) against tenant B's resources, must be refused (403, or 404 for B's message) and
//! no byte of B's content may appear in any answer. Operations are read from the document, so a
//! new route is covered as soon as it is documented; one without a case here fails the test.

use axum::body::Body;
use axum::http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::App;

const SECRET: &str = "globex-secret-7f3a9c";

async fn key(app: &App, tenant: &str) -> anyhow::Result<(String, String)> {
    let r = app.post("/v1/admin/tenants", &json!({"id": tenant})).await?;
    anyhow::ensure!(r.status == StatusCode::CREATED, "{r:?}");
    let r =
        app.post(&format!("/v1/admin/tenants/{tenant}/keys"), &json!({"scopes": ["read", "write", "admin"]})).await?;
    anyhow::ensure!(r.status == StatusCode::CREATED, "{r:?}");
    Ok((r.body["key"].as_str().unwrap().to_owned(), r.body["id"].as_str().unwrap().to_owned()))
}

/// Stores B's secret message with B's key (embedded, so searchable); its id.
async fn secret_message(app: &App, key: &str) -> anyhow::Result<String> {
    let body = json!({"conversation_id": "c", "role": "user", "content": SECRET}).to_string();
    let r = app.send(Method::POST, "/v1/messages?wait=embedded", Some(Body::from(body)), Some(key)).await?;
    anyhow::ensure!(r.status == StatusCode::CREATED, "{r:?}");
    Ok(r.body["id"].as_str().unwrap().to_owned())
}

/// How a key is presented.
enum Presented {
    Header,
    Bearer,
    Query,
}

/// A body for the operation that acts on tenant B, or `None` when it takes none.
fn body(method: &str, path: &str, message_id: &str) -> Option<Value> {
    let message = json!({"tenant_id": "globex", "conversation_id": "c", "role": "user", "content": "from acme"});
    match (method, path) {
        ("post", "/v1/messages") => Some(message),
        ("post", "/v1/messages/batch") => Some(json!({"messages": [message]})),
        ("post", "/v1/memory/search") => Some(json!({"tenant_id": "globex", "query": SECRET})),
        ("put", "/v1/tenants/{tenant_id}/ranking") => Some(json!({"recency_weight": 1})),
        ("put", "/v1/tenants/{tenant_id}/rate-limit") => Some(json!({"limit": "100000/minute"})),
        ("post", "/v1/admin/tenants") => Some(json!({"id": "globex-2"})),
        ("post", "/v1/admin/tenants/{tenant_id}/keys") => Some(json!({"scopes": ["read"]})),
        ("put", "/v1/tenants/{tenant_id}/retention-policy") => Some(json!({
            "archive_after_days": 1, "archive_below_importance": 1.0, "max_age_days": 1,
            "delete_archived_after_days": 1, "max_messages_per_conversation": 1})),
        ("post", "/v1/admin/retention/run") => Some(json!({"tenant_id": "globex", "dry_run": true})),
        ("put", "/v1/messages/{id}") => Some(json!({"content": "overwritten by acme"})),
        ("post", "/v1/messages/batch/update") => {
            Some(json!({"updates": [{"message_id": message_id, "update": {"content": "overwritten by acme"}}]}))
        }
        ("post", "/v1/messages/batch/delete") => Some(json!({"message_ids": [message_id]})),
        ("post", "/v1/tenants/{tenant_id}/import") => Some(message),
        ("post", "/v1/conversations") => {
            Some(json!({"tenant_id": "globex", "conversation_id": "c", "title": "by acme"}))
        }
        ("put", "/v1/conversations/{conversation_id}") => Some(json!({"title": "renamed by acme"})),
        (_, _) => None,
    }
}

#[tokio::test]
async fn no_route_lets_one_tenant_reach_another() -> anyhow::Result<()> {
    let app = App::start().await?;
    let (acme, _) = key(&app, "acme").await?;
    let (globex, globex_key_id) = key(&app, "globex").await?;
    // B's data: a message, a ranking, a rate limit.
    let message_id = secret_message(&app, &globex).await?;
    let r = app
        .send(Method::PUT, "/v1/tenants/globex/ranking", Some(Body::from(r#"{"importance_weight":2}"#)), Some(&globex))
        .await?;
    anyhow::ensure!(r.status == StatusCode::OK, "{r:?}");

    let spec = app.send(Method::GET, "/openapi.json", None, None).await?.body;
    let mut cases = 0;
    for (path, operations) in spec["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            // Unauthenticated operations (health, metrics) hold no tenant data.
            if operation.get("security").is_none() {
                continue;
            }
            let concrete = path
                .replace("{tenant_id}", "globex")
                .replace("{id}", &message_id)
                .replace("{key_id}", &globex_key_id)
                .replace("{conversation_id}", "c");
            let takes_tenant = operation["parameters"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["name"] == "tenant_id" && p["in"] == "query"));
            let needs_query = operation["parameters"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["name"] == "query" && p["in"] == "query"));
            let body = if operation.get("requestBody").is_some() {
                Some(
                    body(method, path, &message_id)
                        .unwrap_or_else(|| panic!("no isolation case for {method} {path}: add one")),
                )
            } else {
                None
            };
            let mut uris = vec![concrete.clone()];
            if takes_tenant {
                let q = if needs_query { format!("&query={SECRET}") } else { String::new() };
                uris = vec![format!("{concrete}?tenant_id=globex{q}")];
            } else if needs_query {
                uris = vec![format!("{concrete}?query={SECRET}")];
            }
            // Every way of presenting a key: two headers, and on live routes the query.
            let live = path.starts_with("/v1/ws/") || path.ends_with("/events");
            let mut presented: Vec<(String, Presented)> =
                uris.iter().flat_map(|u| [(u.clone(), Presented::Header), (u.clone(), Presented::Bearer)]).collect();
            if live {
                presented.extend(uris.iter().map(|u| (format!("{u}?token={acme}"), Presented::Query)));
            }
            for (uri, how) in presented {
                let method = Method::from_bytes(method.to_uppercase().as_bytes())?;
                let payload = body.clone().map(|b| Body::from(b.to_string()));
                let r = match how {
                    Presented::Bearer => app.send_bearer(method.clone(), &uri, payload, &acme).await?,
                    Presented::Header => app.send(method.clone(), &uri, payload, Some(&acme)).await?,
                    Presented::Query => app.send(method.clone(), &uri, payload, None).await?,
                };
                cases += 1;
                let text = r.body.to_string();
                assert!(!text.contains(SECRET), "{method} {uri} leaked B's content: {text}");
                assert!(!text.contains(&globex[11..]), "{method} {uri} leaked B's key");
                if r.status == StatusCode::MULTI_STATUS {
                    // A batch: every item naming B is refused on its own.
                    let items = r.body["results"].as_array().unwrap();
                    assert!(items.iter().all(|i| i["error"]["code"] == "tenant_forbidden"), "{method} {uri}: {r:?}");
                    continue;
                }
                assert!(
                    r.status == StatusCode::FORBIDDEN || r.status == StatusCode::NOT_FOUND,
                    "{method} {uri} answered {}: {text}",
                    r.status
                );
            }
        }
    }
    println!("isolation matrix: {cases} route x tenant cases");
    assert!(cases >= 36, "only {cases} cases: is the document complete?");

    // B's data is untouched.
    let r = app.send(Method::GET, &format!("/v1/messages/{message_id}"), None, Some(&globex)).await?;
    assert_eq!(r.body["content"], SECRET);
    let r = app.send(Method::GET, "/v1/tenants/globex/ranking", None, Some(&globex)).await?;
    assert_eq!(r.body["source"], "tenant");
    assert_eq!(app.get("/v1/admin/tenants/globex/keys").await?.body[0]["revoked_at"], Value::Null);
    let r = app.send(Method::GET, "/v1/conversations/c", None, Some(&globex)).await?;
    assert_eq!((r.status, &r.body["title"]), (StatusCode::OK, &Value::Null), "B's conversation is untouched: {r:?}");
    app.finish().await
}

/// The matrix names tenant B in each request; here tenant A's key names no tenant at all and
/// gives B's message id, as a client guessing or reusing ids would.
#[tokio::test]
async fn a_key_naming_no_tenant_cannot_touch_another_tenants_message() -> anyhow::Result<()> {
    let app = App::start().await?;
    let (acme, _) = key(&app, "acme").await?;
    let (globex, _) = key(&app, "globex").await?;
    let id = secret_message(&app, &globex).await?;
    let edit = json!({"content": "overwritten by acme", "pinned": true});
    let single = [
        (Method::GET, format!("/v1/messages/{id}"), None),
        (Method::PUT, format!("/v1/messages/{id}"), Some(edit.clone())),
        (Method::POST, format!("/v1/messages/{id}/archive"), None),
        (Method::POST, format!("/v1/messages/{id}/restore"), None),
        (Method::DELETE, format!("/v1/messages/{id}"), None),
    ];
    for (method, uri, body) in single {
        let r = app.send(method.clone(), &uri, body.map(|b| Body::from(b.to_string())), Some(&acme)).await?;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{method} {uri}: {r:?}");
        assert!(!r.body.to_string().contains(SECRET), "{method} {uri} leaked B's content");
    }
    let batches = [
        ("/v1/messages/batch/update", json!({"updates": [{"message_id": id, "update": edit}]})),
        ("/v1/messages/batch/delete", json!({"message_ids": [id]})),
    ];
    for (uri, body) in batches {
        let r = app.send(Method::POST, uri, Some(Body::from(body.to_string())), Some(&acme)).await?;
        let text = r.body.to_string();
        assert!(!text.contains(SECRET), "{uri} leaked B's content: {text}");
        assert!(!text.contains("overwritten"), "{uri}: {text}");
    }
    // B's message is as B left it.
    let r = app.send(Method::GET, &format!("/v1/messages/{id}"), None, Some(&globex)).await?;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!((r.body["content"].as_str(), r.body["pinned"].as_bool()), (Some(SECRET), Some(false)));
    assert!(r.body.get("archived_at").is_none(), "{r:?}");
    app.finish().await
}
