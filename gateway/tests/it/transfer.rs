//! Export, erase and import: a tenant's memory leaves and comes back the same, through REST
//! and NATS.

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Method, StatusCode};
use common::contract::{Deleted, Reply, VERSION};
use common::domain::{MessageId, TenantId};
use serde_json::{Value, json};

use crate::harness::{App, KEY};
use crate::lifecycle::{code, delete, message, nats, stored};

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
    assert_eq!(
        app.post(&format!("/v1/messages/{}/archive?tenant_id=acme", ids[3]), &json!({})).await?.status,
        StatusCode::OK
    );
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
        app.embedded(&format!("/v1/messages/{id}?tenant_id=acme")).await?;
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
    app.embedded(&format!("/v1/messages/{fine}?tenant_id=acme")).await?;
    assert_eq!(code(&app.get("/v1/tenants/nobody/export").await?), (StatusCode::NOT_FOUND, "tenant_not_found"));
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

    let request = EraseTenantRequest { v: VERSION, tenant_id: acme, settings: false, operation_id: None };
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
async fn an_export_imports_whole_into_another_tenant_and_the_source_is_untouched() -> anyhow::Result<()> {
    let app = App::start().await?;
    let contents = [
        "I am flying to Lisbon on the 3rd of May",
        "Your hotel in Alfama is booked for four nights",
        "The quarterly report is due next Friday",
    ];
    let mut ids = Vec::new();
    for content in contents {
        ids.push(stored(&app, &message("acme", "trip", content)).await?);
    }
    let source = app.get("/v1/tenants/acme/export").await?.body.as_str().unwrap().to_owned();
    let searched = app.search("acme", "when is the flight to Lisbon").await?;
    assert_eq!(searched.first(), Some(&ids[0]));

    // A copy into a new tenant keeps every id: ids are unique within a tenant only.
    assert_eq!(app.post("/v1/admin/tenants", &json!({"id": "acme-copy"})).await?.status, StatusCode::CREATED);
    let r = app.send(Method::POST, "/v1/tenants/acme-copy/import", Some(Body::from(source.clone())), Some(KEY)).await?;
    assert_eq!((r.status, &r.body["queued"], &r.body["rejected"]), (StatusCode::OK, &json!(3), &json!(0)), "{r:?}");
    for id in &ids {
        app.embedded(&format!("/v1/messages/{id}?tenant_id=acme-copy")).await?;
    }
    assert_eq!(app.search("acme-copy", "when is the flight to Lisbon").await?, searched);
    let copy = app.get("/v1/tenants/acme-copy/export").await?.body.as_str().unwrap().to_owned();
    assert_eq!(essence(&copy), essence(&source), "the same messages under the same ids");
    assert_eq!(app.env.deps.bus.stream_state(common::contract::StreamKind::Dead).await?.last_sequence, 0);

    // The source is untouched, and the two copies live apart: deleting one leaves the other.
    assert_eq!(app.get("/v1/tenants/acme/export").await?.body.as_str().unwrap(), source);
    assert_eq!(
        delete(&app, &format!("/v1/messages/{}?tenant_id=acme-copy", ids[0])).await?.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(app.get(&format!("/v1/messages/{}?tenant_id=acme", ids[0])).await?.status, StatusCode::OK);
    assert_eq!(app.search("acme", "when is the flight to Lisbon").await?, searched);
    assert_eq!((app.count_rows("acme").await?, app.count_rows("acme-copy").await?), (3, 2));
    app.finish().await
}

#[tokio::test]
async fn two_tenants_may_send_the_same_message_id_and_each_keeps_its_own() -> anyhow::Result<()> {
    let app = App::start().await?;
    let id = MessageId::new();
    for (tenant, content) in [("acme", "the acme launch is on Monday"), ("globex", "globex ships in June")] {
        let mut body = message(tenant, "c", content);
        body["message_id"] = json!(id);
        let r = app.post("/v1/messages?wait=embedded", &body).await?;
        assert_eq!(r.status, StatusCode::CREATED, "{tenant}: {r:?}");
    }
    for (tenant, content) in [("acme", "the acme launch is on Monday"), ("globex", "globex ships in June")] {
        let r = app.get(&format!("/v1/messages/{id}?tenant_id={tenant}")).await?;
        assert_eq!((r.status, &r.body["content"]), (StatusCode::OK, &json!(content)), "{tenant}");
        assert_eq!(app.search(tenant, content).await?, [id.to_string()], "{tenant}");
    }
    // Edits and deletes of one leave the other alone.
    let r = app
        .send(
            Method::PUT,
            &format!("/v1/messages/{id}?tenant_id=acme"),
            Some(Body::from(json!({"content": "the acme launch moved to Tuesday"}).to_string())),
            Some(KEY),
        )
        .await?;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    app.embedded(&format!("/v1/messages/{id}?tenant_id=acme")).await?;
    assert_eq!(app.get(&format!("/v1/messages/{id}?tenant_id=globex")).await?.body["content"], "globex ships in June");
    assert_eq!(delete(&app, &format!("/v1/messages/{id}?tenant_id=globex")).await?.status, StatusCode::NO_CONTENT);
    let r = app.get(&format!("/v1/messages/{id}?tenant_id=acme")).await?;
    assert_eq!((r.status, &r.body["content"]), (StatusCode::OK, &json!("the acme launch moved to Tuesday")));
    assert_eq!(app.search("acme", "launch Tuesday").await?, [id.to_string()]);
    app.finish().await
}
