//! Real deletes of messages, conversations and tenants: what is deleted stays deleted, queued
//! or in flight, and nothing of another tenant goes with it.

use std::collections::BTreeSet;

use axum::http::StatusCode;
use common::bus::Envelope;
use common::contract::{
    DeleteConversationRequest, DeleteMessagesRequest, DeleteMessagesResponse, Deleted, Reply, VERSION,
};
use common::domain::{ConversationId, MessageId, TenantId};
use serde_json::json;

use crate::harness::App;
use crate::lifecycle::{code, delete, message, nats, put, queued, rows_of, stored, vectors_of};

#[tokio::test]
async fn deletes_are_real_and_answer_for_what_is_gone() -> anyhow::Result<()> {
    let app = App::start().await?;
    let a = stored(&app, &message("acme", "c", "first")).await?;
    let b = stored(&app, &message("acme", "c", "second")).await?;
    let c = stored(&app, &message("acme", "c", "third")).await?;
    assert_eq!(vectors_of(&app, &a).await?, 1);

    assert_eq!(delete(&app, &format!("/v1/messages/{a}?tenant_id=acme")).await?.status, StatusCode::NO_CONTENT);
    assert_eq!(
        code(&app.get(&format!("/v1/messages/{a}?tenant_id=acme")).await?),
        (StatusCode::NOT_FOUND, "message_not_found")
    );
    assert_eq!(vectors_of(&app, &a).await?, 0, "its vector went with it");
    assert_eq!(code(&delete(&app, &format!("/v1/messages/{a}?tenant_id=acme")).await?).0, StatusCode::NOT_FOUND);
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
    let request = DeleteMessagesRequest {
        v: VERSION,
        tenant_id: TenantId::parse("acme")?,
        message_ids: vec![MessageId::parse(&c)?],
    };
    let reply: Reply<DeleteMessagesResponse> = nats(&app, app.env.subjects.delete_messages(), &request).await?;
    assert!(matches!(&reply, Reply::Ok(r) if r.deleted == [MessageId::parse(&c)?]), "{reply:?}");
    assert_eq!(app.count_rows("acme").await?, 0);
    assert_eq!(app.search("acme", "first second third").await?, Vec::<String>::new());

    // Sent again under its old id (within the stream's duplicate window), a deleted message is a
    // new one, not a duplicate.
    let mut again = message("acme", "c", "first, once more");
    again["message_id"] = json!(a);
    assert_eq!(stored(&app, &again).await?, a);
    assert_eq!(app.get(&format!("/v1/messages/{a}?tenant_id=acme")).await?.body["content"], "first, once more");
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
    assert_eq!(delete(&app, &format!("/v1/messages/{single}?tenant_id=acme")).await?.status, StatusCode::NO_CONTENT);
    // A message sent to the same conversation after the delete is a new one, and is kept.
    let after = queued(&app, &message("acme", "secret-chat", "a fresh start")).await?;
    // Still in the stream, but already gone for readers.
    for id in doomed.iter().chain([&single]) {
        assert_eq!(
            app.get(&format!("/v1/messages/{id}?tenant_id=acme")).await?.status,
            StatusCode::NOT_FOUND,
            "{id} is readable"
        );
    }
    assert_eq!(app.get(&format!("/v1/messages/{after}?tenant_id=acme")).await?.body["status"], "queued");

    app.spawn_embedder().await?;
    for id in [&kept, &after] {
        app.embedded(&format!("/v1/messages/{id}?tenant_id=acme")).await?;
    }
    app.embedded(&format!("/v1/messages/{elsewhere}?tenant_id=globex")).await?;
    for id in doomed.iter().chain([&single]) {
        assert_eq!(
            app.get(&format!("/v1/messages/{id}?tenant_id=acme")).await?.status,
            StatusCode::NOT_FOUND,
            "{id} came back"
        );
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
        operation_id: None,
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
        // The tenant, its keys and settings stay; so does the record of this erasure (its kind and
        // counts, no content), to be read back, until it is pruned after a week.
        let allowed =
            if matches!(table.as_str(), "tenants" | "api_keys" | "tenant_settings" | "operations") { 1 } else { 0 };
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
            let r = app.get(&format!("/v1/messages/{id}?tenant_id=acme")).await?;
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
    assert_eq!(app.get(&format!("/v1/messages/{id}?tenant_id=acme")).await?.status, StatusCode::NOT_FOUND);
    assert_eq!(vectors_of(&app, &id).await?, 0);
    assert_eq!(app.count_rows("acme").await?, 0);
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
            operation_id: None,
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

/// Polls an operation until it is no longer running; its last state.
async fn finished(app: &App, location: &str) -> anyhow::Result<serde_json::Value> {
    app.env
        .eventually(|| async {
            let r = app.get(location).await?;
            anyhow::ensure!(r.status == StatusCode::OK, "{r:?}");
            anyhow::ensure!(r.body["status"] != "running", "still running: {}", r.body);
            Ok(r.body)
        })
        .await
}

#[tokio::test]
async fn long_work_asked_not_to_wait_answers_202_with_an_operation_to_follow() -> anyhow::Result<()> {
    let app = App::start().await?;
    for n in 0..20 {
        let r = app.post("/v1/messages", &message("acme", "conv-1", &format!("trip note {n}"))).await?;
        anyhow::ensure!(r.status == StatusCode::ACCEPTED, "{r:?}");
    }
    app.drained().await?;
    let prefer = [("prefer", "respond-async")];
    let r = app.send_with(axum::http::Method::DELETE, "/v1/conversations/conv-1?tenant_id=acme", None, &prefer).await?;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{r:?}");
    assert_eq!((r.headers["preference-applied"].to_str()?, r.headers["retry-after"].to_str()?), ("respond-async", "5"));
    let location = r.headers["location"].to_str()?.to_owned();
    assert_eq!(location, format!("/v1/operations/{}", r.body["id"].as_str().unwrap()));
    assert_eq!((&r.body["kind"], &r.body["tenant_id"]), (&json!("delete_conversation"), &json!("acme")));
    let done = finished(&app, &location).await?;
    assert_eq!((&done["status"], &done["result"]["deleted"]), (&json!("succeeded"), &json!(20)), "{done}");
    assert!(done["finished_at"].is_string() && done["error"].is_null(), "{done}");
    assert_eq!(app.count_rows("acme").await?, 0);

    // Another tenant's key does not see it; a key of its tenant does.
    let globex = app.tenant_key("globex", &["read"]).await?;
    let r = app.send(axum::http::Method::GET, &location, None, Some(&globex)).await?;
    assert_eq!((r.status, r.body["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")), "{r:?}");
    let acme = app.tenant_key("acme", &["read"]).await?;
    let r = app.send(axum::http::Method::GET, &location, None, Some(&acme)).await?;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    for bad in ["/v1/operations/nope", &format!("/v1/operations/{}", MessageId::new())] {
        assert_eq!(app.get(bad).await?.status, StatusCode::NOT_FOUND, "{bad}");
    }

    // An erasure and a retention run, the same way; without the preference, the answer itself.
    let r = app.send_with(axum::http::Method::DELETE, "/v1/tenants/acme/data", None, &prefer).await?;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{r:?}");
    let done = finished(&app, r.headers["location"].to_str()?).await?;
    assert_eq!((&done["kind"], &done["status"]), (&json!("erase_tenant"), &json!("succeeded")), "{done}");
    let run = json!({"tenant_id": "acme", "dry_run": true}).to_string();
    let r = app
        .send_with(
            axum::http::Method::POST,
            "/v1/admin/retention/run",
            Some(run.clone().into()),
            &[("prefer", "respond-async"), ("content-type", "application/json")],
        )
        .await?;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{r:?}");
    let done = finished(&app, r.headers["location"].to_str()?).await?;
    assert_eq!((&done["status"], &done["result"]["dry_run"]), (&json!("succeeded"), &json!(true)), "{done}");
    let r = app.post("/v1/admin/retention/run", &serde_json::from_str(&run)?).await?;
    assert_eq!((r.status, &r.body["archived"]), (StatusCode::OK, &json!(0)), "{r:?}");

    // A running operation whose worker went silent is reported interrupted.
    let stale = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO operations (id, kind, tenant_id, updated_at) VALUES ($1, 'erase_tenant', 'acme', now() - interval '5 minutes')",
    )
    .bind(stale)
    .execute(app.env.store.pool())
    .await?;
    let r = app.get(&format!("/v1/operations/{stale}")).await?;
    assert_eq!(r.body["status"], "failed", "{r:?}");
    assert!(r.body["error"].as_str().unwrap().starts_with("interrupted"), "{r:?}");
    app.finish().await
}
