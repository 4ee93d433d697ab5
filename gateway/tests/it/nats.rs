//! Direct NATS publishers, dead letters and redelivery.

use std::time::Duration;

use axum::http::StatusCode;
use bytes::Bytes;
use common::bus::Envelope;
use common::contract::{DEAD_CODE_HEADER, DEAD_REASON_HEADER, DEAD_SUBJECT_HEADER, StreamKind};
use common::domain::MessageId;
use common::store::NewRow;
use serde_json::{Value, json};

use crate::harness::App;
use common::store::IngestWrites;

fn event(tenant: &str, content: &str) -> Value {
    json!({"v": 1, "tenant_id": tenant, "conversation_id": "direct", "role": "user", "content": content})
}

async fn publish(app: &App, subject: String, payload: impl Into<Bytes>, id: Option<&str>) -> anyhow::Result<()> {
    app.env.deps.bus.publish(Envelope::new(subject, payload.into()), id).await?;
    Ok(())
}

async fn dead_letter(app: &App, tenant_token: &str) -> anyhow::Result<Envelope> {
    let subject = app.env.subjects.dead(tenant_token);
    app.env
        .eventually(|| async {
            app.env
                .deps
                .bus
                .last_on_subject(StreamKind::Dead, &subject)
                .await?
                .map(|held| held.message)
                .ok_or_else(|| anyhow::anyhow!("no dead letter yet"))
        })
        .await
}

#[tokio::test]
async fn a_valid_event_published_straight_to_nats_is_stored_and_searchable() -> anyhow::Result<()> {
    let app = App::start().await?;
    // Without an id: the embedder derives one from the stream position.
    publish(
        &app,
        format!("{}.v1.ingest.acme", app.env.subjects.prefix()),
        event("acme", "direct publishers are welcome").to_string(),
        None,
    )
    .await?;
    // With an id in the subject, and a dotted tenant written with `~`.
    let id = MessageId::new();
    let tenant = common::domain::TenantId::parse("acme.eu")?;
    publish(
        &app,
        app.env.subjects.ingest(&tenant, id),
        event("acme.eu", "dotted tenants work too").to_string(),
        Some(&id.to_string()),
    )
    .await?;

    let hits = app
        .env
        .eventually(|| async {
            let hits = app.search("acme", "are direct publishers welcome").await?;
            anyhow::ensure!(!hits.is_empty(), "not searchable yet");
            Ok(hits)
        })
        .await?;
    let derived = app.get(&format!("/v1/messages/{}?tenant_id=acme", hits[0])).await?;
    assert_eq!(derived.body["content"], "direct publishers are welcome");
    app.embedded(&format!("/v1/messages/{id}?tenant_id=acme.eu")).await?;
    app.finish().await
}

#[tokio::test]
async fn malformed_and_invalid_events_are_dead_lettered_with_their_reason() -> anyhow::Result<()> {
    let app = App::start().await?;
    let prefix = app.env.subjects.prefix().to_owned();
    publish(&app, format!("{prefix}.v1.ingest.broken"), "{not json", None).await?;
    let dead = dead_letter(&app, "broken").await?;
    assert_eq!(dead.header(DEAD_CODE_HEADER), Some("malformed_json"));
    assert!(dead.header(DEAD_REASON_HEADER).unwrap().contains("MessageReceived"), "{dead:?}");
    assert_eq!(dead.header(DEAD_SUBJECT_HEADER), Some(format!("{prefix}.v1.ingest.broken").as_str()));
    assert_eq!(&dead.payload[..], b"{not json", "the original bytes are kept");

    publish(&app, format!("{prefix}.v1.ingest.mismatch"), event("someone-else", "hi").to_string(), None).await?;
    let dead = dead_letter(&app, "mismatch").await?;
    assert_eq!(dead.header(DEAD_CODE_HEADER), Some("tenant_mismatch"));

    let mut bad = event("invalid", "");
    bad["role"] = json!("robot");
    publish(&app, format!("{prefix}.v1.ingest.invalid"), bad.to_string(), None).await?;
    let dead = dead_letter(&app, "invalid").await?;
    assert_eq!(dead.header(DEAD_CODE_HEADER), Some("invalid_message"));
    let reason = dead.header(DEAD_REASON_HEADER).unwrap();
    assert!(reason.contains("role") && reason.contains("content"), "{reason}");

    let mut v2 = event("future", "hi");
    v2["v"] = json!(2);
    publish(&app, format!("{prefix}.v1.ingest.future"), v2.to_string(), None).await?;
    assert_eq!(dead_letter(&app, "future").await?.header(DEAD_CODE_HEADER), Some("unsupported_version"));

    // Client text with CR/LF quoted in the reason must not break the dead-lettering (a header
    // value cannot hold a line break), nor stop the embedder.
    let mut hostile = event("hostile", "hi");
    hostile["sneaky\r\nInjected: header"] = json!(1);
    publish(&app, format!("{prefix}.v1.ingest.hostile"), hostile.to_string(), None).await?;
    let dead = dead_letter(&app, "hostile").await?;
    assert_eq!(dead.header(DEAD_CODE_HEADER), Some("malformed_json"));
    assert!(dead.header(DEAD_REASON_HEADER).unwrap().contains("sneaky  Injected"), "{dead:?}");
    assert_eq!(dead.header("Injected"), None);
    let after = app.post("/v1/messages?wait=embedded", &crate::harness::message("acme", "still working")).await?;
    assert_eq!(after.status, axum::http::StatusCode::CREATED, "{after:?}");

    for tenant in ["broken", "mismatch", "invalid", "future", "someone-else", "hostile"] {
        assert_eq!(app.count_rows(tenant).await?, 0);
    }
    app.finish().await
}

#[tokio::test]
async fn the_same_message_id_delivered_twice_is_stored_once() -> anyhow::Result<()> {
    let app = App::start().await?;
    let id = MessageId::new();
    let tenant = common::domain::TenantId::parse("acme")?;
    let payload = event("acme", "said only once").to_string();
    // Two different stream messages (distinct Nats-Msg-Id, so the stream keeps both, as after its
    // duplicate window) carrying the same message id.
    publish(&app, app.env.subjects.ingest(&tenant, id), payload.clone(), Some("first")).await?;
    publish(&app, app.env.subjects.ingest(&tenant, id), payload, Some("second")).await?;
    app.env
        .eventually(|| async {
            let state = app.env.deps.bus.consumer_state(StreamKind::Ingest, "embedder").await?;
            anyhow::ensure!(state.pending == 0 && state.ack_pending == 0, "{state:?}");
            Ok(())
        })
        .await?;
    assert_eq!(app.count_rows("acme").await?, 1);
    let r = app.get(&format!("/v1/messages/{id}?tenant_id=acme")).await?;
    assert_eq!(r.body["status"], "embedded");
    app.finish().await
}

#[tokio::test]
async fn a_message_whose_worker_died_before_acking_is_stored_exactly_once_after_restart() -> anyhow::Result<()> {
    let app = App::without_workers(|vars| {
        vars.insert("MEMORY_EMBEDDER_ACK_WAIT_SECS".into(), "1".into());
    })
    .await?;
    app.spawn_searcher().await?;
    let r = app.post("/v1/messages", &crate::harness::message("acme", "survives a crash")).await?;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let id = r.body["id"].as_str().unwrap().to_owned();

    // A worker pulls the message, commits the row, then dies before its ack: the consumer handle
    // is dropped mid-batch.
    {
        let spec = embedder::consumer_spec(&app.env.config, &app.env.subjects);
        let mut consumer = app.env.deps.bus.consumer(&spec).await?;
        // Shorter than the 1 s ack wait, or the pull would collect redeliveries.
        let batch = consumer.fetch(10, Duration::from_millis(500)).await?;
        assert_eq!(batch.len(), 1);
        let event: common::contract::MessageReceived = serde_json::from_slice(&batch[0].message.payload)?;
        let message = event.message.validate(chrono::Utc::now(), MessageId::new).map_err(anyhow::Error::from)?;
        app.env.deps.store.insert_messages(&[NewRow { message, importance: 0.5, origin: None }]).await?;
        drop(batch);
    }
    assert_eq!(app.get(&format!("/v1/messages/{id}?tenant_id=acme")).await?.body["status"], "pending");

    app.spawn_embedder().await?;
    app.embedded(&format!("/v1/messages/{id}?tenant_id=acme")).await?;
    assert_eq!(app.count_rows("acme").await?, 1);
    let stats: (i64,) =
        sqlx::query_as("SELECT count(*) FROM message_vectors_1").fetch_one(app.env.store.pool()).await?;
    assert_eq!(stats.0, 1);
    app.finish().await
}
