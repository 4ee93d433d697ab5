//! Edits, archive and restore, and the helpers the lifecycle tests share: through REST and NATS,
//! against the real pipeline.

use axum::body::Body;
use axum::http::{Method, StatusCode};
use common::bus::Envelope;
use common::contract::{MessageEdit, Reply, UpdateMessagesRequest, UpdateMessagesResponse, VERSION};
use common::domain::{MessageId, MessageUpdate, TenantId};
use serde_json::{Value, json};

use crate::harness::{App, KEY, Resp};

pub(crate) fn message(tenant: &str, conversation: &str, content: &str) -> Value {
    json!({"tenant_id": tenant, "conversation_id": conversation, "role": "user", "content": content})
}

pub(crate) async fn stored(app: &App, body: &Value) -> anyhow::Result<String> {
    let r = app.post("/v1/messages?wait=embedded", body).await?;
    anyhow::ensure!(r.status == StatusCode::CREATED, "{r:?}");
    Ok(r.body["id"].as_str().unwrap().to_owned())
}

pub(crate) async fn queued(app: &App, body: &Value) -> anyhow::Result<String> {
    let r = app.post("/v1/messages", body).await?;
    anyhow::ensure!(r.status == StatusCode::ACCEPTED, "{r:?}");
    Ok(r.body["id"].as_str().unwrap().to_owned())
}

pub(crate) async fn put(app: &App, uri: &str, body: &Value) -> anyhow::Result<Resp> {
    app.send(Method::PUT, uri, Some(Body::from(body.to_string())), Some(KEY)).await
}

pub(crate) async fn delete(app: &App, uri: &str) -> anyhow::Result<Resp> {
    app.send(Method::DELETE, uri, None, Some(KEY)).await
}

pub(crate) fn code(r: &Resp) -> (StatusCode, &str) {
    (r.status, r.body["code"].as_str().unwrap_or(""))
}

/// Vectors stored for a message, over every space.
pub(crate) async fn vectors_of(app: &App, id: &str) -> anyhow::Result<i64> {
    let spaces: Vec<i32> =
        sqlx::query_scalar("SELECT id FROM embedding_spaces").fetch_all(app.env.store.pool()).await?;
    let mut n = 0;
    for space in spaces {
        let sql = format!("SELECT count(*) FROM message_vectors_{space} WHERE message_id = $1::uuid");
        n += sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql)).bind(id).fetch_one(app.env.store.pool()).await?;
    }
    Ok(n)
}

/// Rows naming the tenant in every table with a `tenant_id` column (vector tables included),
/// and embedding failures of its messages, by table; tombstones are left out (they must stay
/// a while, holding only the id and a stream position).
pub(crate) async fn rows_of(app: &App, tenant: &str) -> anyhow::Result<Vec<(String, i64)>> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.columns
         WHERE column_name = 'tenant_id' AND table_schema = current_schema() AND table_name <> 'tombstones'",
    )
    .fetch_all(app.env.store.pool())
    .await?;
    let mut counts = Vec::new();
    for table in tables {
        let sql = format!("SELECT count(*) FROM {table} WHERE tenant_id = $1");
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(tenant).fetch_one(app.env.store.pool()).await?;
        counts.push((table, n));
    }
    Ok(counts)
}

#[tokio::test]
async fn an_edit_changes_what_a_message_says_and_means() -> anyhow::Result<()> {
    let app = App::start().await?;
    let id = stored(&app, &message("acme", "c", "the cat sat on the mat all afternoon")).await?;
    stored(&app, &message("acme", "c", "we should buy more printer paper")).await?;
    let uri = format!("/v1/messages/{id}?tenant_id=acme");

    let r = put(&app, &uri, &json!({"content": "the Lisbon office budget doubled this quarter"})).await?;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body["content"], "the Lisbon office budget doubled this quarter");
    // Embedded again: by meaning, the new text is what is found.
    app.embedded(&uri).await?;
    let r = app.get("/v1/memory/search?tenant_id=acme&query=Lisbon%20budget&mode=vector&top_k=1").await?;
    assert_eq!(r.body["items"][0]["message_id"], id.as_str(), "{r:?}");
    assert_eq!(vectors_of(&app, &id).await?, 1);

    // Importance follows the override and the pin; metadata is replaced.
    let r = put(&app, &uri, &json!({"importance_override": 0.9, "metadata": {"topic": "budget"}})).await?;
    assert_eq!((r.body["importance"].as_f64(), &r.body["metadata"]), (Some(0.9), &json!({"topic": "budget"})));
    assert_eq!(r.body["status"], "embedded", "no content change, no re-embedding");
    let r = put(&app, &uri, &json!({"pinned": true})).await?;
    assert_eq!(r.body["importance"].as_f64(), Some(1.0));
    let r = put(&app, &uri, &json!({"pinned": false, "importance_override": null})).await?;
    assert!(r.body["importance"].as_f64().unwrap() < 0.9, "{r:?}");
    assert!(r.body.get("importance_override").is_none_or(Value::is_null), "{r:?}");
    let r = put(&app, &uri, &json!({"archived": true})).await?;
    assert!(r.body["archived_at"].is_string(), "{r:?}");

    // Bad edits.
    assert_eq!(code(&put(&app, &uri, &json!({})).await?), (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"));
    let r = put(&app, &uri, &json!({"importance_override": 2})).await?;
    assert_eq!(code(&r), (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"));
    assert_eq!(put(&app, &uri, &json!({"content": "  "})).await?.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(put(&app, &uri, &json!({"colour": "red"})).await?.status, StatusCode::BAD_REQUEST);
    let r = put(&app, &format!("/v1/messages/{}?tenant_id=acme", MessageId::new()), &json!({"pinned": true})).await?;
    assert_eq!(code(&r), (StatusCode::NOT_FOUND, "message_not_found"));
    assert_eq!(code(&put(&app, "/v1/messages/nope", &json!({"pinned": true})).await?).1, "invalid_message_id");

    // A batch: one edit made, one unknown id.
    let missing = MessageId::new();
    let body = json!({"updates": [
        {"message_id": id, "update": {"metadata": {"topic": "finance"}}},
        {"message_id": missing, "update": {"pinned": true}},
        {"message_id": id, "update": {"importance_override": -1}},
    ]});
    let r = app.post("/v1/messages/batch/update?tenant_id=acme", &body).await?;
    assert_eq!(r.status, StatusCode::MULTI_STATUS, "{r:?}");
    assert_eq!(r.body["updated"][0]["metadata"], json!({"topic": "finance"}));
    let codes: Vec<&str> = r.body["errors"].as_array().unwrap().iter().map(|e| e["code"].as_str().unwrap()).collect();
    assert_eq!(codes, ["message_not_found", "validation_failed"]);
    // The original's shape: `error` is text; the problem comes whole beside it.
    assert_eq!(r.body["errors"][0]["error"], format!("message {missing} was not found"));
    assert_eq!(r.body["errors"][1]["problem"]["code"], "validation_failed");
    assert_eq!(
        (r.body["created"].as_array().map(Vec::len), r.body["deleted"].as_array().map(Vec::len)),
        (Some(0), Some(0))
    );
    let r = app.post("/v1/messages/batch/update", &json!({"updates": []})).await?;
    assert_eq!(code(&r), (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"));

    // Through NATS, with a tenant that is not the message's: not found.
    let request = UpdateMessagesRequest {
        v: VERSION,
        tenant_id: TenantId::parse("globex")?,
        updates: vec![MessageEdit {
            message_id: MessageId::parse(&id)?,
            update: MessageUpdate { pinned: Some(true), ..MessageUpdate::default() },
        }],
    };
    let reply: Reply<UpdateMessagesResponse> = nats(&app, app.env.subjects.update_messages(), &request).await?;
    let Reply::Ok(response) = reply else { panic!("{reply:?}") };
    assert!(matches!(&response.results[0], Reply::Error(e) if e.code == common::contract::RemoteErrorCode::NotFound));
    app.finish().await
}

pub(crate) async fn nats<Q: serde::Serialize, A: serde::de::DeserializeOwned>(
    app: &App,
    subject: String,
    request: &Q,
) -> anyhow::Result<A> {
    let envelope = Envelope::new(subject, serde_json::to_vec(request)?);
    let bytes = app.env.deps.bus.request(envelope, std::time::Duration::from_secs(10)).await?;
    Ok(serde_json::from_slice(&bytes)?)
}

#[tokio::test]
async fn bad_lifecycle_and_retention_inputs_are_refused_with_4xx() -> anyhow::Result<()> {
    let app = App::start().await?;
    let run = |body: Value| {
        let app = &app;
        async move { app.post("/v1/admin/retention/run", &body).await }
    };
    assert_eq!(run(json!({"actions": ["shred"]})).await?.status, StatusCode::BAD_REQUEST);
    assert_eq!(code(&run(json!({"actions": []})).await?), (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"));
    // A tenant with nothing stored is no mistake: zeros (compat::a_retention_run_for_a_tenant_with_nothing_stored…).
    assert_eq!(run(json!({"tenant_id": "nobody"})).await?.status, StatusCode::OK);
    assert_eq!(code(&run(json!({"tenant_id": "bad id!"})).await?).0, StatusCode::UNPROCESSABLE_ENTITY);
    app.tenant_key("acme", &["read"]).await?;
    let policy = json!({"archive_after_days": -1, "archive_below_importance": 0.3, "max_age_days": null,
                        "delete_archived_after_days": 90, "max_messages_per_conversation": null});
    assert!(put(&app, "/v1/tenants/acme/retention-policy", &policy).await?.status.is_client_error());
    let policy = json!({"archive_after_days": 30, "archive_below_importance": 1.5, "max_age_days": null,
                        "delete_archived_after_days": 90, "max_messages_per_conversation": null});
    assert_eq!(
        code(&put(&app, "/v1/tenants/acme/retention-policy", &policy).await?).0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let many: Vec<String> = (0..101).map(|_| MessageId::new().to_string()).collect();
    let r = app.post("/v1/messages/batch/delete", &json!({"message_ids": many})).await?;
    assert_eq!(code(&r), (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"));
    assert_eq!(
        app.post("/v1/messages/batch/delete", &json!({"message_ids": ["x"]})).await?.status,
        StatusCode::BAD_REQUEST
    );
    // A conversation delete needs a tenant.
    assert_eq!(code(&delete(&app, "/v1/conversations/c").await?).0, StatusCode::UNPROCESSABLE_ENTITY);
    // Editing a message that is still queued: 409, not a silent loss.
    let app2 = App::without_workers(|_| {}).await?;
    app2.spawn_retention().await?;
    let id = queued(&app2, &message("acme", "c", "not stored yet")).await?;
    let r = put(&app2, &format!("/v1/messages/{id}?tenant_id=acme"), &json!({"pinned": true})).await?;
    assert_eq!(code(&r), (StatusCode::CONFLICT, "message_queued"));
    app2.finish().await?;
    app.finish().await
}

#[tokio::test]
async fn the_re_embed_of_an_edited_message_never_stores_a_deleted_one() -> anyhow::Result<()> {
    let app = App::start().await?;
    let id = stored(&app, &message("acme", "c", "edited and then deleted")).await?;
    // An edit's re-embed event that arrives after the message was deleted.
    assert_eq!(delete(&app, &format!("/v1/messages/{id}?tenant_id=acme")).await?.status, StatusCode::NO_CONTENT);
    let event = json!({"v": 1, "message_id": id, "tenant_id": "acme", "conversation_id": "c", "role": "user",
                       "content": "edited and then deleted"});
    let envelope =
        Envelope::new(app.env.subjects.ingest(&TenantId::parse("acme")?, MessageId::parse(&id)?), event.to_string())
            .with_header(common::contract::REEMBED_HEADER, "1");
    app.env.deps.bus.publish(envelope, Some(&format!("{id}.r1"))).await?;
    app.drained().await?;
    assert_eq!(app.count_rows("acme").await?, 0);
    assert_eq!(app.get(&format!("/v1/messages/{id}?tenant_id=acme")).await?.status, StatusCode::NOT_FOUND);
    app.finish().await
}

#[tokio::test]
async fn archive_restore_policy_and_import_work_over_nats() -> anyhow::Result<()> {
    use common::contract::{GetMessageRequest, GetMessageResponse, RetentionPolicyReply};
    let app = App::start().await?;
    let id = stored(&app, &message("acme", "c", "archive me over NATS")).await?;
    let acme = TenantId::parse("acme")?;
    let request = GetMessageRequest { v: VERSION, tenant_id: acme.clone(), message_id: MessageId::parse(&id)? };
    let reply: Reply<GetMessageResponse> = nats(&app, app.env.subjects.archive_message(), &request).await?;
    assert!(matches!(&reply, Reply::Ok(r) if r.message.as_ref().is_some_and(|m| m.archived_at.is_some())), "{reply:?}");
    assert_eq!(app.search("acme", "archive me").await?, Vec::<String>::new());
    let reply: Reply<GetMessageResponse> = nats(&app, app.env.subjects.restore_message(), &request).await?;
    assert!(matches!(&reply, Reply::Ok(r) if r.message.as_ref().is_some_and(|m| m.archived_at.is_none())), "{reply:?}");
    assert_eq!(app.search("acme", "archive me").await?, std::slice::from_ref(&id));

    // The retention policy: the deployment's, then the tenant's, refused when invalid, reset.
    let ask = |body: Value| {
        let app = &app;
        async move { nats::<_, Reply<RetentionPolicyReply>>(app, app.env.subjects.retention_policy(), &body).await }
    };
    let reply = ask(json!({"v": 1, "tenant_id": "acme"})).await?;
    assert!(matches!(&reply, Reply::Ok(p) if p.source == common::contract::SettingSource::Deployment), "{reply:?}");
    let policy = json!({"archive_after_days": 7, "archive_below_importance": 0.5, "max_age_days": null,
                        "delete_archived_after_days": 30, "max_messages_per_conversation": 100});
    let reply = ask(json!({"v": 1, "tenant_id": "acme", "policy": policy})).await?;
    assert!(
        matches!(&reply, Reply::Ok(p) if p.source == common::contract::SettingSource::Tenant && p.policy.archive_after_days == Some(7)),
        "{reply:?}"
    );
    assert_eq!(app.get("/v1/tenants/acme/retention-policy").await?.body["policy"]["archive_after_days"], 7);
    let mut bad = policy.clone();
    bad["archive_below_importance"] = json!(3);
    let reply = ask(json!({"v": 1, "tenant_id": "acme", "policy": bad})).await?;
    assert!(matches!(&reply, Reply::Error(e) if e.code == common::contract::RemoteErrorCode::BadRequest), "{reply:?}");
    let reply = ask(json!({"v": 1, "tenant_id": "acme", "reset": true})).await?;
    assert!(matches!(&reply, Reply::Ok(p) if p.source == common::contract::SettingSource::Deployment), "{reply:?}");

    // Importing by publishing straight to the ingest subject: archive state and importance kept.
    let imported = MessageId::new();
    let event = json!({"v": 1, "message_id": imported, "tenant_id": "acme", "conversation_id": "old", "role": "user",
                       "content": "an imported archived note", "created_at": "2024-05-01T00:00:00Z",
                       "archived_at": "2024-06-01T00:00:00Z", "importance": 0.77});
    let envelope = Envelope::new(app.env.subjects.ingest(&acme, imported), event.to_string());
    app.env.deps.bus.publish(envelope, Some(&imported.to_string())).await?;
    app.embedded(&format!("/v1/messages/{imported}?tenant_id=acme")).await?;
    let r = app.get(&format!("/v1/messages/{imported}?tenant_id=acme")).await?;
    assert_eq!((&r.body["archived_at"], r.body["importance"].as_f64()), (&json!("2024-06-01T00:00:00Z"), Some(0.77)));
    app.finish().await
}
