//! Tenants and keys: a key acts only for its tenant and within its scopes; revoked and expired
//! keys stop working; keys are kept only as hashes; the operator's commands.

use axum::body::Body;
use axum::http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{App, KEY, Resp};

async fn as_key(app: &App, method: Method, uri: &str, body: Option<Value>, key: &str) -> anyhow::Result<Resp> {
    app.send(method, uri, body.map(|b| Body::from(b.to_string())), Some(key)).await
}

fn code(r: &Resp) -> (StatusCode, &str) {
    (r.status, r.body["code"].as_str().unwrap_or(""))
}

#[tokio::test]
async fn a_key_acts_only_for_its_own_tenant() -> anyhow::Result<()> {
    let app = App::start().await?;
    let acme = app.tenant_key("acme", &["read", "write"]).await?;
    let globex = app.tenant_key("globex", &["read", "write"]).await?;

    // tenant_id may be left out: the key implies it.
    let body = json!({"conversation_id": "c", "role": "user", "content": "acme's secret plan"});
    let r = as_key(&app, Method::POST, "/v1/messages?wait=embedded", Some(body.clone()), &acme).await?;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    assert_eq!(r.body["tenant_id"], "acme");
    let id = r.body["id"].as_str().unwrap().to_owned();

    // Naming another tenant is forbidden, in every form.
    let mut other = body.clone();
    other["tenant_id"] = json!("acme");
    assert_eq!(
        code(&as_key(&app, Method::POST, "/v1/messages", Some(other.clone()), &globex).await?),
        (StatusCode::FORBIDDEN, "tenant_forbidden")
    );
    let batch = json!({"messages": [{"conversation_id": "c", "role": "user", "content": "mine"}, other]});
    let r = as_key(&app, Method::POST, "/v1/messages/batch", Some(batch), &globex).await?;
    assert_eq!(r.status, StatusCode::MULTI_STATUS, "{r:?}");
    assert_eq!(r.body["results"][1]["error"]["code"], "tenant_forbidden");
    let r = as_key(&app, Method::GET, "/v1/memory/search?tenant_id=acme&query=secret", None, &globex).await?;
    assert_eq!(code(&r), (StatusCode::FORBIDDEN, "tenant_forbidden"));
    let r = as_key(&app, Method::GET, &format!("/v1/messages/{id}?tenant_id=acme"), None, &globex).await?;
    assert_eq!(code(&r), (StatusCode::FORBIDDEN, "tenant_forbidden"));

    // Another tenant's message does not exist for this key.
    let r = as_key(&app, Method::GET, &format!("/v1/messages/{id}"), None, &globex).await?;
    assert_eq!(code(&r), (StatusCode::NOT_FOUND, "message_not_found"));
    assert!(!r.body.to_string().contains("secret"));
    let r = as_key(&app, Method::GET, "/v1/memory/search?query=secret%20plan", None, &globex).await?;
    assert_eq!(r.status, StatusCode::OK);
    assert!(!r.body.to_string().contains("secret"), "{r:?}");

    // The owner sees it.
    let r = as_key(&app, Method::GET, &format!("/v1/messages/{id}"), None, &acme).await?;
    assert_eq!(r.status, StatusCode::OK);
    let r = as_key(&app, Method::GET, "/v1/memory/search?query=secret%20plan", None, &acme).await?;
    assert_eq!(r.body["items"][0]["message_id"], id.as_str());
    // The batch's accepted item is stored before the test ends.
    app.env
        .eventually(|| async {
            anyhow::ensure!(app.count_rows("globex").await? == 1, "not stored yet");
            Ok(())
        })
        .await?;
    app.finish().await
}

#[tokio::test]
async fn scopes_limit_what_a_key_may_do() -> anyhow::Result<()> {
    let app = App::start().await?;
    let reader = app.tenant_key("acme", &["read"]).await?;
    let writer = app.tenant_key("acme", &["write"]).await?;
    let admin = app.tenant_key("acme", &["admin"]).await?;
    app.tenant_key("globex", &["read"]).await?;
    let message = json!({"conversation_id": "c", "role": "user", "content": "hello"});

    let forbidden = (StatusCode::FORBIDDEN, "insufficient_scope");
    assert_eq!(code(&as_key(&app, Method::POST, "/v1/messages", Some(message.clone()), &reader).await?), forbidden);
    assert_eq!(
        as_key(&app, Method::POST, "/v1/messages?wait=embedded", Some(message), &writer).await?.status,
        StatusCode::CREATED
    );
    assert_eq!(code(&as_key(&app, Method::GET, "/v1/memory/search?query=hello", None, &writer).await?), forbidden);
    assert_eq!(as_key(&app, Method::GET, "/v1/memory/search?query=hello", None, &reader).await?.status, StatusCode::OK);
    // Managing keys and settings takes admin; managing tenants takes the operator.
    assert_eq!(code(&as_key(&app, Method::GET, "/v1/admin/tenants/acme/keys", None, &writer).await?), forbidden);
    let put = Some(json!({"recency_weight": 0.2}));
    assert_eq!(code(&as_key(&app, Method::PUT, "/v1/tenants/acme/ranking", put.clone(), &reader).await?), forbidden);
    assert_eq!(as_key(&app, Method::PUT, "/v1/tenants/acme/ranking", put, &admin).await?.status, StatusCode::OK);
    let keys = as_key(&app, Method::GET, "/v1/admin/tenants/acme/keys", None, &admin).await?;
    assert_eq!(keys.body.as_array().unwrap().len(), 3);
    let created =
        as_key(&app, Method::POST, "/v1/admin/tenants/acme/keys", Some(json!({"scopes": ["read"]})), &admin).await?;
    assert_eq!(created.status, StatusCode::CREATED);
    let r =
        as_key(&app, Method::POST, "/v1/admin/tenants/globex/keys", Some(json!({"scopes": ["read"]})), &admin).await?;
    assert_eq!(code(&r), (StatusCode::FORBIDDEN, "tenant_forbidden"));
    let r = as_key(&app, Method::POST, "/v1/admin/tenants", Some(json!({"id": "initech"})), &admin).await?;
    assert_eq!(code(&r), (StatusCode::FORBIDDEN, "operator_only"));
    assert_eq!(
        code(&as_key(&app, Method::GET, "/v1/admin/tenants", None, &admin).await?),
        (StatusCode::FORBIDDEN, "operator_only")
    );
    app.finish().await
}

#[tokio::test]
async fn revoked_expired_and_unknown_keys_are_rejected() -> anyhow::Result<()> {
    let app = App::start_with(|vars| {
        vars.insert("MEMORY_AUTH_CACHE_TTL_SECS".into(), "0".into());
    })
    .await?;
    let key = app.tenant_key("acme", &["read"]).await?;
    let search = "/v1/memory/search?query=x";
    assert_eq!(as_key(&app, Method::GET, search, None, &key).await?.status, StatusCode::OK);
    let id = app.get("/v1/admin/tenants/acme/keys").await?.body[0]["id"].as_str().unwrap().to_owned();
    let r = app.send(Method::DELETE, &format!("/v1/admin/tenants/acme/keys/{id}"), None, Some(KEY)).await?;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(code(&as_key(&app, Method::GET, search, None, &key).await?), (StatusCode::UNAUTHORIZED, "unauthorized"));
    let listed = app.get("/v1/admin/tenants/acme/keys").await?;
    assert!(listed.body[0]["revoked_at"].is_string(), "{listed:?}");

    let expiring = app.tenant_key("acme", &["read"]).await?;
    assert_eq!(as_key(&app, Method::GET, search, None, &expiring).await?.status, StatusCode::OK);
    sqlx::query("UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE revoked_at IS NULL")
        .execute(app.env.store.pool())
        .await?;
    assert_eq!(as_key(&app, Method::GET, search, None, &expiring).await?.status, StatusCode::UNAUTHORIZED);

    for wrong in ["mk_nonsense", "not-a-key", &key[..key.len() - 1]] {
        assert_eq!(as_key(&app, Method::GET, search, None, wrong).await?.status, StatusCode::UNAUTHORIZED, "{wrong}");
    }
    // Deleting a tenant ends its keys.
    let live = app.tenant_key("globex", &["read"]).await?;
    let r = app.send(Method::DELETE, "/v1/admin/tenants/globex", None, Some(KEY)).await?;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(as_key(&app, Method::GET, search, None, &live).await?.status, StatusCode::UNAUTHORIZED);
    app.finish().await
}

#[tokio::test]
async fn keys_are_kept_only_as_hashes_and_their_use_is_recorded() -> anyhow::Result<()> {
    let app = App::start().await?;
    let key = app.tenant_key("acme", &["read"]).await?;
    assert!(key.starts_with("mk_") && key.len() == 46, "{key}");
    let rows: Vec<(String, Vec<u8>, String)> =
        sqlx::query_as("SELECT prefix, hash, row_to_json(api_keys)::text FROM api_keys")
            .fetch_all(app.env.store.pool())
            .await?;
    assert_eq!(rows.len(), 1);
    let (prefix, hash, whole_row) = &rows[0];
    assert_eq!(prefix, &key[..11]);
    assert_eq!(hash.as_slice(), gateway::auth::hash(&key));
    assert!(!whole_row.contains(&key[11..]), "the key's secret part is not stored: {whole_row}");
    let listed = app.get("/v1/admin/tenants/acme/keys").await?;
    assert!(!listed.body.to_string().contains(&key[11..]));

    assert!(listed.body[0]["last_used_at"].is_null());
    app.send(Method::GET, "/v1/memory/search?query=x", None, Some(&key)).await?;
    app.state.keys.flush_last_used().await;
    let listed = app.get("/v1/admin/tenants/acme/keys").await?;
    assert!(listed.body[0]["last_used_at"].is_string(), "{listed:?}");
    app.finish().await
}

#[tokio::test]
async fn tenants_are_created_listed_and_deleted_by_the_operator() -> anyhow::Result<()> {
    let app = App::without_workers(|_| {}).await?;
    app.spawn_retention().await?;
    for id in ["a1", "b2", "c3"] {
        let r = app.post("/v1/admin/tenants", &json!({"id": id, "name": format!("Tenant {id}")})).await?;
        assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    }
    assert_eq!(
        code(&app.post("/v1/admin/tenants", &json!({"id": "a1"})).await?),
        (StatusCode::CONFLICT, "tenant_exists")
    );
    assert_eq!(app.post("/v1/admin/tenants", &json!({"id": "bad id"})).await?.status, StatusCode::UNPROCESSABLE_ENTITY);
    // Found by the request fuzzer: a name Postgres cannot store was a 503.
    for name in ["nul\u{0}name", "bell\u{7}", " ", &"n".repeat(129)] {
        let r = app.post("/v1/admin/tenants", &json!({"id": "named", "name": name})).await?;
        assert_eq!(
            (r.status, &r.body["errors"][0]["field"]),
            (StatusCode::UNPROCESSABLE_ENTITY, &json!("name")),
            "{r:?}"
        );
        let r = app.post("/v1/admin/tenants/a1/keys", &json!({"scopes": ["read"], "name": name})).await?;
        assert_eq!(
            (r.status, &r.body["errors"][0]["field"]),
            (StatusCode::UNPROCESSABLE_ENTITY, &json!("name")),
            "{r:?}"
        );
    }
    let page = app.get("/v1/admin/tenants?limit=2").await?;
    let ids: Vec<&str> = page.body["items"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a1", "b2"]);
    let rest = app.get(&format!("/v1/admin/tenants?limit=2&after={}", page.body["next"].as_str().unwrap())).await?;
    assert_eq!(rest.body["items"][0]["id"], "c3");
    assert!(rest.body.get("next").is_none());
    assert_eq!(app.get("/v1/admin/tenants/b2").await?.body["name"], "Tenant b2");
    assert_eq!(code(&app.get("/v1/admin/tenants/zz").await?), (StatusCode::NOT_FOUND, "tenant_not_found"));
    let r = app.post("/v1/admin/tenants/zz/keys", &json!({"scopes": ["read"]})).await?;
    assert_eq!(code(&r), (StatusCode::NOT_FOUND, "tenant_not_found"));
    let r = app.post("/v1/admin/tenants/a1/keys", &json!({"scopes": []})).await?;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = app.post("/v1/admin/tenants/a1/keys", &json!({"scopes": ["root"]})).await?;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(app.send(Method::DELETE, "/v1/admin/tenants/b2", None, Some(KEY)).await?.status, StatusCode::NO_CONTENT);
    assert_eq!(app.send(Method::DELETE, "/v1/admin/tenants/b2", None, Some(KEY)).await?.status, StatusCode::NOT_FOUND);
    app.finish().await
}

#[tokio::test]
async fn retention_runs_over_rest_for_the_operator_or_a_tenants_admin() -> anyhow::Result<()> {
    let app = App::start().await?;
    let old = json!({"tenant_id": "acme", "conversation_id": "c", "role": "user", "content": "long ago",
        "created_at": (chrono::Utc::now() - chrono::Duration::days(60)).to_rfc3339(), "importance_override": 0.1});
    let r = app.post("/v1/messages?wait=embedded", &old).await?;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let id = r.body["id"].as_str().unwrap().to_owned();

    let dry = app.post("/v1/admin/retention/run", &json!({"tenant_id": "acme", "dry_run": true})).await?;
    assert_eq!(dry.status, StatusCode::OK, "{dry:?}");
    assert_eq!((dry.body["archived"].as_u64(), dry.body["dry_run"].as_bool()), (Some(1), Some(true)));
    assert_eq!(dry.body["tenants"][0]["sample_archived"][0], id.as_str());
    assert_eq!(
        app.post("/v1/admin/retention/run", &json!({"actions": []})).await?.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        app.post("/v1/admin/retention/run", &json!({"actions": ["shred"]})).await?.status,
        StatusCode::BAD_REQUEST
    );

    // A tenant's admin key runs its own tenant's retention, and no other's.
    let admin = app.tenant_key("acme", &["admin"]).await?;
    let reader = app.tenant_key("acme", &["read"]).await?;
    let run = json!({"actions": ["archive"]});
    assert_eq!(
        code(&as_key(&app, Method::POST, "/v1/admin/retention/run", Some(run.clone()), &reader).await?),
        (StatusCode::FORBIDDEN, "insufficient_scope")
    );
    let other = json!({"tenant_id": "globex"});
    assert_eq!(
        code(&as_key(&app, Method::POST, "/v1/admin/retention/run", Some(other), &admin).await?),
        (StatusCode::FORBIDDEN, "tenant_forbidden")
    );
    let r = as_key(&app, Method::POST, "/v1/admin/retention/run", Some(run), &admin).await?;
    assert_eq!((r.status, r.body["archived"].as_u64()), (StatusCode::OK, Some(1)), "{r:?}");
    // Archived: out of search, still readable by id.
    let hits = app.search("acme", "long ago").await?;
    assert!(!hits.contains(&id), "{hits:?}");
    assert_eq!(app.get(&format!("/v1/messages/{id}?tenant_id=acme")).await?.status, StatusCode::OK);
    app.finish().await
}

#[tokio::test]
async fn a_tenant_sets_its_own_retention_policy() -> anyhow::Result<()> {
    let app = App::start().await?;
    let recent = json!({"tenant_id": "acme", "conversation_id": "c", "role": "user", "content": "two days ago",
        "created_at": (chrono::Utc::now() - chrono::Duration::days(2)).to_rfc3339(), "importance_override": 0.9});
    assert_eq!(app.post("/v1/messages?wait=embedded", &recent).await?.status, StatusCode::CREATED);
    let dry = json!({"tenant_id": "acme", "dry_run": true});
    assert_eq!(app.post("/v1/admin/retention/run", &dry).await?.body["archived"], 0, "the default keeps it");

    let admin = app.tenant_key("acme", &["admin"]).await?;
    let strict = json!({"archive_after_days": 1, "archive_below_importance": 0.95, "max_age_days": null,
        "delete_archived_after_days": 30, "max_messages_per_conversation": null});
    let r = as_key(&app, Method::PUT, "/v1/tenants/acme/retention-policy", Some(strict), &admin).await?;
    assert_eq!((r.status, r.body["source"].as_str()), (StatusCode::OK, Some("tenant")), "{r:?}");
    assert_eq!(app.post("/v1/admin/retention/run", &dry).await?.body["archived"], 1, "its own policy applies");
    assert_eq!(app.get("/v1/tenants/globex/retention-policy").await?.body["source"], "deployment");

    let bad = json!({"archive_after_days": 0, "archive_below_importance": 2, "max_age_days": null,
        "delete_archived_after_days": null, "max_messages_per_conversation": null});
    let r = as_key(&app, Method::PUT, "/v1/tenants/acme/retention-policy", Some(bad), &admin).await?;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{r:?}");
    let fields: Vec<&str> = r.body["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["archive_after_days", "archive_below_importance"]);
    let r = as_key(&app, Method::DELETE, "/v1/tenants/acme/retention-policy", None, &admin).await?;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(app.post("/v1/admin/retention/run", &dry).await?.body["archived"], 0);
    app.finish().await
}

#[tokio::test]
async fn a_message_is_archived_and_restored_by_its_tenant_only() -> anyhow::Result<()> {
    let app = App::start().await?;
    let acme = app.tenant_key("acme", &["read", "write"]).await?;
    let globex = app.tenant_key("globex", &["read", "write"]).await?;
    let body = json!({"conversation_id": "c", "role": "user", "content": "the blue door code is 4417"});
    let r = as_key(&app, Method::POST, "/v1/messages?wait=embedded", Some(body), &acme).await?;
    let id = r.body["id"].as_str().unwrap().to_owned();
    let search = "/v1/memory/search?query=blue%20door%20code";
    let found =
        |r: &crate::harness::Resp| r.body["items"].as_array().unwrap().iter().any(|h| h["message_id"] == id.as_str());

    let r = as_key(&app, Method::POST, &format!("/v1/messages/{id}/archive"), None, &globex).await?;
    assert_eq!(code(&r), (StatusCode::NOT_FOUND, "message_not_found"), "another tenant's message does not exist");
    let r = as_key(&app, Method::POST, &format!("/v1/messages/{id}/archive"), None, &acme).await?;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert!(r.body["archived_at"].is_string());
    assert!(!found(&as_key(&app, Method::GET, search, None, &acme).await?), "archived: out of search");
    assert!(found(&as_key(&app, Method::GET, &format!("{search}&include_archived=true"), None, &acme).await?));
    assert_eq!(as_key(&app, Method::GET, &format!("/v1/messages/{id}"), None, &acme).await?.status, StatusCode::OK);
    let r = as_key(&app, Method::POST, &format!("/v1/messages/{id}/restore"), None, &acme).await?;
    assert!(r.body.get("archived_at").is_none(), "{r:?}");
    assert!(found(&as_key(&app, Method::GET, search, None, &acme).await?), "restored: back in search");
    app.finish().await
}

#[tokio::test]
async fn a_key_revoked_on_one_gateway_stops_on_every_gateway_at_once() -> anyhow::Result<()> {
    use common::testing::{http, http_get};
    let app = App::start().await?;
    // Two gateways serving HTTP, beside the harness's router; key caches last 10 s by default.
    let addrs = [app.serve_http(|_| {}).await?, app.serve_http(|_| {}).await?];
    let key = app.tenant_key("acme", &["read"]).await?;
    let ranking = |addr| {
        let key = key.clone();
        async move { http(addr, "GET", "/v1/tenants/acme/ranking", &[("x-api-key", &key)], None).await }
    };
    assert_eq!(ranking(addrs[1]).await?.0, 200, "the second gateway caches the key as valid");
    let id = app.get("/v1/admin/tenants/acme/keys").await?.body[0]["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/admin/tenants/acme/keys/{id}");
    let (status, body) = http(addrs[0], "DELETE", &path, &[("x-api-key", KEY)], None).await?;
    assert_eq!(status, 204, "{body}");
    app.env
        .eventually_within(std::time::Duration::from_secs(5), || async {
            let (status, _) = ranking(addrs[1]).await?;
            anyhow::ensure!(status == 401, "still {status} on the other gateway");
            Ok(())
        })
        .await?;
    assert_eq!(http_get(addrs[1], "/healthz").await?.0, 200);
    app.finish().await
}
