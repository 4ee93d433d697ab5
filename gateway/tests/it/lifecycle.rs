//! Edits, real deletes, tombstones, tenant erasure, export and import: through REST and NATS,
//! against the real pipeline.

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Method, StatusCode};
use common::bus::Envelope;
use common::contract::{
    DeleteConversationRequest, DeleteMessagesRequest, DeleteMessagesResponse, Deleted, MessageEdit, Reply,
    UpdateMessagesRequest, UpdateMessagesResponse, VERSION,
};
use common::domain::{ConversationId, MessageId, MessageUpdate, TenantId};
use serde_json::{Value, json};

use crate::harness::{App, KEY, Resp};

fn message(tenant: &str, conversation: &str, content: &str) -> Value {
    json!({"tenant_id": tenant, "conversation_id": conversation, "role": "user", "content": content})
}

async fn stored(app: &App, body: &Value) -> anyhow::Result<String> {
    let r = app.post("/v1/messages?wait=embedded", body).await?;
    anyhow::ensure!(r.status == StatusCode::CREATED, "{r:?}");
    Ok(r.body["id"].as_str().unwrap().to_owned())
}

async fn queued(app: &App, body: &Value) -> anyhow::Result<String> {
    let r = app.post("/v1/messages", body).await?;
    anyhow::ensure!(r.status == StatusCode::ACCEPTED, "{r:?}");
    Ok(r.body["id"].as_str().unwrap().to_owned())
}

async fn put(app: &App, uri: &str, body: &Value) -> anyhow::Result<Resp> {
    app.send(Method::PUT, uri, Some(Body::from(body.to_string())), Some(KEY)).await
}

async fn delete(app: &App, uri: &str) -> anyhow::Result<Resp> {
    app.send(Method::DELETE, uri, None, Some(KEY)).await
}

fn code(r: &Resp) -> (StatusCode, &str) {
    (r.status, r.body["code"].as_str().unwrap_or(""))
}

/// Vectors stored for a message, over every space.
async fn vectors_of(app: &App, id: &str) -> anyhow::Result<i64> {
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
async fn rows_of(app: &App, tenant: &str) -> anyhow::Result<Vec<(String, i64)>> {
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
    let uri = format!("/v1/messages/{id}");

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
    let r = put(&app, &format!("/v1/messages/{}", MessageId::new()), &json!({"pinned": true})).await?;
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
    let codes: Vec<&str> =
        r.body["errors"].as_array().unwrap().iter().map(|e| e["error"]["code"].as_str().unwrap()).collect();
    assert_eq!(codes, ["message_not_found", "validation_failed"]);
    let r = app.post("/v1/messages/batch/update", &json!({"updates": []})).await?;
    assert_eq!(code(&r), (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"));

    // Through NATS, with a tenant that is not the message's: not found.
    let request = UpdateMessagesRequest {
        v: VERSION,
        tenant_id: Some(TenantId::parse("globex")?),
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

async fn nats<Q: serde::Serialize, A: serde::de::DeserializeOwned>(
    app: &App,
    subject: String,
    request: &Q,
) -> anyhow::Result<A> {
    let envelope = Envelope::new(subject, serde_json::to_vec(request)?);
    let bytes = app.env.deps.bus.request(envelope, std::time::Duration::from_secs(10)).await?;
    Ok(serde_json::from_slice(&bytes)?)
}

#[tokio::test]
async fn deletes_are_real_and_answer_for_what_is_gone() -> anyhow::Result<()> {
    let app = App::start().await?;
    let a = stored(&app, &message("acme", "c", "first")).await?;
    let b = stored(&app, &message("acme", "c", "second")).await?;
    let c = stored(&app, &message("acme", "c", "third")).await?;
    assert_eq!(vectors_of(&app, &a).await?, 1);

    assert_eq!(delete(&app, &format!("/v1/messages/{a}")).await?.status, StatusCode::NO_CONTENT);
    assert_eq!(code(&app.get(&format!("/v1/messages/{a}")).await?), (StatusCode::NOT_FOUND, "message_not_found"));
    assert_eq!(vectors_of(&app, &a).await?, 0, "its vector went with it");
    assert_eq!(code(&delete(&app, &format!("/v1/messages/{a}")).await?).0, StatusCode::NOT_FOUND);
    // Another tenant's message is not found, and stays.
    assert_eq!(delete(&app, &format!("/v1/messages/{b}?tenant_id=globex")).await?.status, StatusCode::NOT_FOUND);

    let unknown = MessageId::new().to_string();
    // A repeated id counts once.
    let r = app.post("/v1/messages/batch/delete?tenant_id=acme", &json!({"message_ids": [b, b, unknown]})).await?;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!((&r.body["deleted"], &r.body["not_found"]), (&json!([b]), &json!([unknown])));
    let r = app.post("/v1/messages/batch/delete", &json!({"message_ids": []})).await?;
    assert_eq!(code(&r), (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"));

    // Through NATS.
    let request = DeleteMessagesRequest { v: VERSION, tenant_id: None, message_ids: vec![MessageId::parse(&c)?] };
    let reply: Reply<DeleteMessagesResponse> = nats(&app, app.env.subjects.delete_messages(), &request).await?;
    assert!(matches!(&reply, Reply::Ok(r) if r.deleted == [MessageId::parse(&c)?]), "{reply:?}");
    assert_eq!(app.count_rows("acme").await?, 0);
    assert_eq!(app.search("acme", "first second third").await?, Vec::<String>::new());

    // Sent again under its old id (within the stream's duplicate window), a deleted message is a
    // new one, not a duplicate.
    let mut again = message("acme", "c", "first, once more");
    again["message_id"] = json!(a);
    assert_eq!(stored(&app, &again).await?, a);
    assert_eq!(app.get(&format!("/v1/messages/{a}")).await?.body["content"], "first, once more");
    app.finish().await
}

#[tokio::test]
async fn messages_queued_when_their_conversation_is_deleted_never_appear() -> anyhow::Result<()> {
    // No embedder yet: everything waits in the ingest stream.
    let app = App::without_workers(|_| {}).await?;
    app.spawn_searcher().await?;
    app.spawn_retention().await?;
    let mut doomed = Vec::new();
    for i in 0..5 {
        doomed.push(queued(&app, &message("acme", "secret-chat", &format!("secret number {i}"))).await?);
    }
    let single = queued(&app, &message("acme", "other", "delete me while queued")).await?;
    let kept = queued(&app, &message("acme", "other", "keep me")).await?;
    let elsewhere = queued(&app, &message("globex", "secret-chat", "another tenant's chat of the same name")).await?;

    let r = delete(&app, "/v1/conversations/secret-chat?tenant_id=acme").await?;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(delete(&app, &format!("/v1/messages/{single}")).await?.status, StatusCode::NO_CONTENT);
    // A message sent to the same conversation after the delete is a new one, and is kept.
    let after = queued(&app, &message("acme", "secret-chat", "a fresh start")).await?;
    // Still in the stream, but already gone for readers.
    for id in doomed.iter().chain([&single]) {
        assert_eq!(app.get(&format!("/v1/messages/{id}")).await?.status, StatusCode::NOT_FOUND, "{id} is readable");
    }
    assert_eq!(app.get(&format!("/v1/messages/{after}")).await?.body["status"], "queued");

    app.spawn_embedder().await?;
    for id in [&kept, &elsewhere, &after] {
        app.embedded(&format!("/v1/messages/{id}")).await?;
    }
    for id in doomed.iter().chain([&single]) {
        assert_eq!(app.get(&format!("/v1/messages/{id}")).await?.status, StatusCode::NOT_FOUND, "{id} came back");
    }
    let stored: Vec<String> =
        sqlx::query_scalar("SELECT content FROM messages WHERE tenant_id = 'acme' ORDER BY content")
            .fetch_all(app.env.store.pool())
            .await?;
    assert_eq!(stored, ["a fresh start", "keep me"]);
    // Nothing is left waiting: the dropped events were acked, not retried.
    let state = app.env.deps.bus.consumer_state(common::contract::StreamKind::Ingest, "embedder").await?;
    assert_eq!((state.pending, state.ack_pending), (0, 0));

    // Through NATS: a stored conversation.
    let request = DeleteConversationRequest {
        v: VERSION,
        tenant_id: TenantId::parse("acme")?,
        conversation_id: ConversationId::parse("other")?,
    };
    let reply: Reply<Deleted> = nats(&app, app.env.subjects.delete_conversation(), &request).await?;
    assert!(matches!(reply, Reply::Ok(Deleted { deleted: 1, .. })), "{reply:?}");
    assert_eq!(
        code(&delete(&app, "/v1/conversations/bad%20id?tenant_id=acme").await?).0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    app.finish().await
}

#[tokio::test]
async fn erasing_a_tenant_leaves_nothing_of_it_and_spares_the_others() -> anyhow::Result<()> {
    let redis_url = std::env::var("MEMORY_TEST_REDIS_URL")?;
    let url = redis_url.clone();
    let app = App::start_with(move |vars| {
        vars.insert("MEMORY_REDIS_URL".into(), url);
    })
    .await?;
    app.tenant_key("acme", &["read"]).await?;
    let r = put(&app, "/v1/tenants/acme/ranking", &json!({"recency_weight": 1})).await?;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    for i in 0..4 {
        stored(&app, &message("acme", &format!("c{i}"), &format!("acme private note {i}"))).await?;
    }
    let globex = stored(&app, &message("globex", "c", "globex private note")).await?;
    // Searches fill the query cache (in process and in Redis).
    assert_eq!(app.search("acme", "private note").await?.len(), 4);
    assert_eq!(app.search("globex", "private note").await?, std::slice::from_ref(&globex));
    let mut redis = redis::Client::open(redis_url)?.get_multiplexed_async_connection().await?;
    let pattern = |t: &str| format!("{}:query-vector:{t}:*", app.env.subjects.prefix());

    let keys: Vec<String> = redis::cmd("KEYS").arg(pattern("acme")).query_async(&mut redis).await?;
    assert_eq!(keys.len(), 1, "acme's query is cached in Redis");

    let r = delete(&app, "/v1/tenants/acme/data").await?;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body["deleted"], 4);
    for (table, n) in rows_of(&app, "acme").await? {
        let allowed = if matches!(table.as_str(), "tenants" | "api_keys" | "tenant_settings") { 1 } else { 0 };
        assert!(n <= allowed, "{table} still holds {n} rows of acme");
    }
    let failures: i64 =
        sqlx::query_scalar("SELECT count(*) FROM embedding_failures").fetch_one(app.env.store.pool()).await?;
    assert_eq!(failures, 0);
    let keys: Vec<String> = redis::cmd("KEYS").arg(pattern("acme")).query_async(&mut redis).await?;
    assert_eq!(keys, Vec::<String>::new(), "acme's cached queries are gone");
    assert_eq!(app.search("acme", "private note").await?, Vec::<String>::new());
    // The other tenant is untouched, cache included.
    assert_eq!(app.search("globex", "private note").await?, [globex]);
    let keys: Vec<String> = redis::cmd("KEYS").arg(pattern("globex")).query_async(&mut redis).await?;
    assert_eq!(keys.len(), 1);
    // Erasure keeps the tenant: it can start over.
    stored(&app, &message("acme", "c", "a new beginning")).await?;
    assert_eq!(app.count_rows("acme").await?, 1);

    // Deleting the tenant erases its data, settings and keys: nothing of it is left.
    assert_eq!(delete(&app, "/v1/admin/tenants/acme").await?.status, StatusCode::NO_CONTENT);
    for (table, n) in rows_of(&app, "acme").await? {
        assert_eq!(n, 0, "{table} still holds rows of the deleted tenant");
    }
    assert_eq!(code(&delete(&app, "/v1/tenants/nobody/data").await?), (StatusCode::NOT_FOUND, "tenant_not_found"));
    app.finish().await?;

    // A tenant known only by messages still queued can be erased too.
    let app = App::without_workers(|_| {}).await?;
    app.spawn_retention().await?;
    queued(&app, &message("initech", "c", "only ever queued")).await?;
    let r = delete(&app, "/v1/tenants/initech/data").await?;
    assert_eq!((r.status, &r.body["dropped_queued"]), (StatusCode::OK, &json!(1)), "{r:?}");
    app.finish().await
}

/// Messages as an export shows them, without what the pipeline computes.
fn essence(ndjson: &str) -> BTreeSet<String> {
    ndjson
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap();
            json!([
                v["id"],
                v["conversation_id"],
                v["role"],
                v["name"],
                v["content"],
                v["metadata"],
                v["importance"],
                v["importance_override"],
                v["pinned"],
                v["created_at"],
                v["archived_at"]
            ])
            .to_string()
        })
        .collect()
}

#[tokio::test]
async fn export_erase_import_brings_back_the_same_memory() -> anyhow::Result<()> {
    let app = App::start().await?;
    app.tenant_key("acme", &["read"]).await?;
    let inputs = [
        json!({"conversation_id": "trip", "role": "user", "name": "Ana", "content": "I am flying to Lisbon on the 3rd of May",
               "metadata": {"topic": "travel", "tags": ["flight"]}}),
        json!({"conversation_id": "trip", "role": "assistant", "content": "Your hotel in Alfama is booked for four nights",
               "importance_override": 0.8}),
        json!({"conversation_id": "work", "role": "user", "content": "The quarterly report is due next Friday", "pinned": true}),
        json!({"conversation_id": "work", "role": "system", "content": "Old policy text that was archived",
               "created_at": "2024-01-01T00:00:00Z"}),
    ];
    let mut ids = Vec::new();
    for mut input in inputs {
        input["tenant_id"] = json!("acme");
        ids.push(stored(&app, &input).await?);
    }
    assert_eq!(app.post(&format!("/v1/messages/{}/archive", ids[3]), &json!({})).await?.status, StatusCode::OK);
    let before = app.search("acme", "when is the flight to Lisbon").await?;
    assert_eq!(before.first(), Some(&ids[0]));

    let export = app.get("/v1/tenants/acme/export").await?;
    assert_eq!(export.status, StatusCode::OK);
    assert_eq!(export.headers["content-type"], "application/x-ndjson");
    let ndjson = export.body.as_str().unwrap().to_owned();
    assert_eq!(ndjson.lines().count(), 4);
    let with_vectors = app.get("/v1/tenants/acme/export?include_vectors=true").await?;
    let first: Value = serde_json::from_str(with_vectors.body.as_str().unwrap().lines().next().unwrap())?;
    assert_eq!(
        first["vector"]["values"].as_array().map(Vec::len),
        Some(first["vector"]["space"]["dimensions"].as_u64().unwrap() as usize)
    );

    assert_eq!(delete(&app, "/v1/tenants/acme/data").await?.status, StatusCode::OK);
    assert_eq!(app.search("acme", "when is the flight to Lisbon").await?, Vec::<String>::new());

    for _ in 0..2 {
        // Twice: an import is idempotent by message id.
        let r = app.send(Method::POST, "/v1/tenants/acme/import", Some(Body::from(ndjson.clone())), Some(KEY)).await?;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        assert_eq!(r.body["queued"], 4);
    }
    for id in &ids {
        app.embedded(&format!("/v1/messages/{id}")).await?;
    }
    assert_eq!(app.count_rows("acme").await?, 4);
    let again = app.get("/v1/tenants/acme/export").await?.body.as_str().unwrap().to_owned();
    assert_eq!(essence(&again), essence(&ndjson), "the same messages, archive state included");
    assert_eq!(app.search("acme", "when is the flight to Lisbon").await?, before);

    // Bad lines are reported by number; good ones still go in.
    let fine = MessageId::new();
    let mixed = format!(
        "{}\nnot json\n\n{}\n",
        json!({"message_id": fine, "conversation_id": "c", "role": "user", "content": "fine"}),
        json!({"conversation_id": "c", "role": "robot", "content": "bad role"})
    );
    let r = app.send(Method::POST, "/v1/tenants/acme/import", Some(Body::from(mixed)), Some(KEY)).await?;
    assert_eq!(r.status, StatusCode::MULTI_STATUS, "{r:?}");
    assert_eq!((r.body["queued"].as_u64(), r.body["rejected"].as_u64()), (Some(1), Some(2)));
    let lines: Vec<u64> = r.body["errors"].as_array().unwrap().iter().map(|e| e["line"].as_u64().unwrap()).collect();
    assert_eq!(lines, [2, 4]);
    app.embedded(&format!("/v1/messages/{fine}")).await?;
    assert_eq!(code(&app.get("/v1/tenants/nobody/export").await?), (StatusCode::NOT_FOUND, "tenant_not_found"));
    app.finish().await
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
    assert_eq!(code(&run(json!({"tenant_id": "nobody"})).await?), (StatusCode::NOT_FOUND, "tenant_not_found"));
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
    let r = put(&app2, &format!("/v1/messages/{id}"), &json!({"pinned": true})).await?;
    assert_eq!(code(&r), (StatusCode::CONFLICT, "message_queued"));
    app2.finish().await?;
    app.finish().await
}

#[tokio::test]
async fn a_message_deleted_while_it_is_being_embedded_stays_deleted() -> anyhow::Result<()> {
    use common::testing::gemini::{FakeGemini, Fault};
    let fake = FakeGemini::start().await;
    let app = App::start_with(|vars| vars.extend(fake.vars())).await?;
    // The provider is slow: the message is stored, and its vector is still being computed when
    // its conversation is deleted.
    fake.always(Some(Fault::Delay(std::time::Duration::from_secs(3))));
    let id = queued(&app, &message("acme", "c", "delete me mid-flight")).await?;
    app.env
        .eventually(|| async {
            let r = app.get(&format!("/v1/messages/{id}")).await?;
            anyhow::ensure!(r.body["status"] == "pending", "{r:?}");
            Ok(())
        })
        .await?;
    let r = delete(&app, "/v1/conversations/c?tenant_id=acme").await?;
    assert_eq!((r.status, &r.body["deleted"]), (StatusCode::OK, &json!(1)), "{r:?}");
    fake.always(None);
    // The embedding finishes, finds nothing to attach to, and the event is settled.
    app.drained().await?;
    assert!(fake.calls().iter().any(|c| c.texts.iter().any(|t| t.contains("mid-flight"))));
    assert_eq!(app.get(&format!("/v1/messages/{id}")).await?.status, StatusCode::NOT_FOUND);
    assert_eq!(vectors_of(&app, &id).await?, 0);
    assert_eq!(app.count_rows("acme").await?, 0);
    app.finish().await
}

#[tokio::test]
async fn export_and_erase_answer_over_nats_too() -> anyhow::Result<()> {
    use common::contract::{EraseTenantRequest, ExportPage, ExportRequest};
    let app = App::start().await?;
    let mut ids = BTreeSet::new();
    for i in 0..3 {
        ids.insert(stored(&app, &message("acme", "c", &format!("note {i}"))).await?);
    }
    let acme = TenantId::parse("acme")?;
    // Pages of two: the cursor walks the whole tenant.
    let (mut seen, mut after) = (BTreeSet::new(), None);
    loop {
        let request = ExportRequest { v: VERSION, tenant_id: acme.clone(), after, limit: 2, include_vectors: false };
        let reply: Reply<ExportPage> = nats(&app, app.env.subjects.export_tenant(), &request).await?;
        let Reply::Ok(page) = reply else { panic!("{reply:?}") };
        seen.extend(page.records.iter().map(|r| r.message.id.to_string()));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    let request = ExportRequest { v: VERSION, tenant_id: acme.clone(), after: None, limit: 0, include_vectors: false };
    let reply: Reply<ExportPage> = nats(&app, app.env.subjects.export_tenant(), &request).await?;
    assert!(matches!(&reply, Reply::Error(e) if e.code == common::contract::RemoteErrorCode::BadRequest));

    let request = EraseTenantRequest { v: VERSION, tenant_id: acme, settings: false };
    let reply: Reply<Deleted> = nats(&app, app.env.subjects.erase_tenant(), &request).await?;
    assert!(matches!(reply, Reply::Ok(Deleted { deleted: 3, .. })), "{reply:?}");
    assert_eq!(app.count_rows("acme").await?, 0);
    app.finish().await
}

#[tokio::test]
async fn an_import_may_be_larger_than_the_json_body_limit_but_not_its_lines() -> anyhow::Result<()> {
    let app = App::without_workers(|_| {}).await?;
    let line = |i: usize| {
        let content = format!("{i} {}", "lorem ipsum dolor sit amet ".repeat(3_000));
        json!({"conversation_id": "big", "role": "user", "content": content}).to_string()
    };
    let body: String = (0..40).map(|i| line(i) + "\n").collect();
    assert!(body.len() > 2 * app.state.body_limit, "{} bytes", body.len());
    let r = app.send(Method::POST, "/v1/tenants/acme/import", Some(Body::from(body)), Some(KEY)).await?;
    assert_eq!((r.status, &r.body["queued"]), (StatusCode::OK, &json!(40)), "{r:?}");

    // An over-long line is refused on its own; the lines around it go in.
    let long = json!({"conversation_id": "c", "role": "user", "content": "x".repeat(1_100_000)});
    let body = format!("{}\n{long}\n{}\n", line(40), line(41)).into_bytes();
    // In pieces, as a network delivers it: the long line spans many of them.
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> = body.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let body = Body::from_stream(futures::stream::iter(pieces));
    let r = app.send(Method::POST, "/v1/tenants/acme/import", Some(body), Some(KEY)).await?;
    assert_eq!((r.status, &r.body["queued"]), (StatusCode::MULTI_STATUS, &json!(2)), "{r:?}");
    assert_eq!(
        (&r.body["errors"][0]["line"], &r.body["errors"][0]["error"]["errors"][0]["code"]),
        (&json!(2), &json!("too_long"))
    );
    // A plain JSON route still has the ordinary limit.
    let big = json!({"tenant_id": "acme", "conversation_id": "c", "role": "user", "content": "x".repeat(2 << 20)});
    assert_eq!(code(&app.post("/v1/messages", &big).await?), (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"));
    app.finish().await
}

#[tokio::test]
async fn the_re_embed_of_an_edited_message_never_stores_a_deleted_one() -> anyhow::Result<()> {
    let app = App::start().await?;
    let id = stored(&app, &message("acme", "c", "edited and then deleted")).await?;
    // An edit's re-embed event that arrives after the message was deleted.
    assert_eq!(delete(&app, &format!("/v1/messages/{id}")).await?.status, StatusCode::NO_CONTENT);
    let event = json!({"v": 1, "message_id": id, "tenant_id": "acme", "conversation_id": "c", "role": "user",
                       "content": "edited and then deleted"});
    let envelope =
        Envelope::new(app.env.subjects.ingest(&TenantId::parse("acme")?, MessageId::parse(&id)?), event.to_string())
            .with_header(common::contract::REEMBED_HEADER, "1");
    app.env.deps.bus.publish(envelope, Some(&format!("{id}.r1"))).await?;
    app.drained().await?;
    assert_eq!(app.count_rows("acme").await?, 0);
    assert_eq!(app.get(&format!("/v1/messages/{id}")).await?.status, StatusCode::NOT_FOUND);
    app.finish().await
}

#[tokio::test]
async fn archive_restore_policy_and_import_work_over_nats() -> anyhow::Result<()> {
    use common::contract::{GetMessageRequest, GetMessageResponse, RetentionPolicyReply};
    let app = App::start().await?;
    let id = stored(&app, &message("acme", "c", "archive me over NATS")).await?;
    let acme = TenantId::parse("acme")?;
    let request = GetMessageRequest { v: VERSION, message_id: MessageId::parse(&id)?, tenant_id: Some(acme.clone()) };
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
    app.embedded(&format!("/v1/messages/{imported}")).await?;
    let r = app.get(&format!("/v1/messages/{imported}")).await?;
    assert_eq!((&r.body["archived_at"], r.body["importance"].as_f64()), (&json!("2024-06-01T00:00:00Z"), Some(0.77)));
    app.finish().await
}

#[tokio::test]
async fn a_conversation_deleted_during_a_stream_of_messages_keeps_exactly_the_later_ones() -> anyhow::Result<()> {
    use std::time::Instant;
    let app = App::start().await?;
    let acme = TenantId::parse("acme")?;
    // Messages published one after another while the embedder stores them; the conversation is
    // deleted midway.
    let deleted = std::sync::atomic::AtomicBool::new(false);
    let publisher = async {
        let (mut sent, mut after) = (Vec::new(), 0);
        // Until well after the delete has answered, however slow the machine.
        for i in 0..5_000 {
            if after == 20 {
                break;
            }
            if deleted.load(std::sync::atomic::Ordering::Acquire) {
                after += 1;
            }
            let id = MessageId::new();
            let event = json!({"v": 1, "message_id": id, "tenant_id": "acme", "conversation_id": "busy",
                               "role": "user", "content": format!("message {i}")});
            let started = Instant::now();
            let envelope = Envelope::new(app.env.subjects.ingest(&acme, id), event.to_string());
            app.env.deps.bus.publish(envelope, Some(&id.to_string())).await?;
            sent.push((id, started, Instant::now()));
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        anyhow::Ok(sent)
    };
    let deleter = async {
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        let started = Instant::now();
        let request = DeleteConversationRequest {
            v: VERSION,
            tenant_id: acme.clone(),
            conversation_id: ConversationId::parse("busy")?,
        };
        let reply: Reply<Deleted> = nats(&app, app.env.subjects.delete_conversation(), &request).await?;
        anyhow::ensure!(matches!(reply, Reply::Ok(_)), "{reply:?}");
        let ended = Instant::now();
        deleted.store(true, std::sync::atomic::Ordering::Release);
        anyhow::Ok((started, ended))
    };
    let (sent, (delete_started, delete_ended)) = tokio::try_join!(publisher, deleter)?;
    app.drained().await?;
    let stored: BTreeSet<uuid::Uuid> =
        sqlx::query_scalar("SELECT id FROM messages WHERE tenant_id = 'acme' AND conversation_id = 'busy'")
            .fetch_all(app.env.store.pool())
            .await?
            .into_iter()
            .collect();
    let (mut before, mut after) = (0, 0);
    for (id, published_from, published_by) in sent {
        if published_by < delete_started {
            before += 1;
            assert!(!stored.contains(&id.0), "{id}, accepted before the delete, was stored");
        } else if published_from > delete_ended {
            after += 1;
            assert!(stored.contains(&id.0), "{id}, sent after the delete, was lost");
        }
    }
    assert!(before > 0 && after > 0, "the delete did not fall inside the stream: {before} before, {after} after");
    app.finish().await
}
