//! Live connections over real TCP: a tenant's message events on a WebSocket and as Server-Sent
//! Events, searches on a WebSocket, their keys, caps, slow consumers and shutdown.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::bus::Envelope;
use common::contract::EventKind;
use common::domain::{MessageId, TenantId};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::harness::{App, KEY};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn request(addr: SocketAddr, path: &str, key: Option<&str>) -> anyhow::Result<tungstenite::handshake::client::Request> {
    let mut req = format!("ws://{addr}{path}").into_client_request()?;
    if let Some(key) = key {
        req.headers_mut().insert("x-api-key", key.parse()?);
    }
    Ok(req)
}

async fn connect(addr: SocketAddr, path: &str, key: Option<&str>) -> anyhow::Result<Ws> {
    let (ws, response) = tokio_tungstenite::connect_async(request(addr, path, key)?).await?;
    anyhow::ensure!(response.status() == StatusCode::SWITCHING_PROTOCOLS, "{response:?}");
    Ok(ws)
}

/// The handshake's refusal: its status and problem code.
async fn refused(addr: SocketAddr, path: &str, key: Option<&str>) -> anyhow::Result<(u16, String)> {
    match tokio_tungstenite::connect_async(request(addr, path, key)?).await {
        Ok(_) => anyhow::bail!("{path} accepted the socket"),
        Err(tungstenite::Error::Http(response)) => {
            let body = response.body().as_deref().unwrap_or_default();
            let problem: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            Ok((response.status().as_u16(), problem["code"].as_str().unwrap_or_default().to_owned()))
        }
        Err(e) => Err(e.into()),
    }
}

async fn send(ws: &mut Ws, frame: &Value) -> anyhow::Result<()> {
    ws.send(Message::text(frame.to_string())).await?;
    Ok(())
}

/// The next JSON frame (pings and pongs skipped); an error on a close.
async fn frame(ws: &mut Ws) -> anyhow::Result<Value> {
    loop {
        let next = tokio::time::timeout(Duration::from_secs(20), ws.next()).await.context("no frame in time")?;
        match next.context("the socket ended")?? {
            Message::Text(text) => return Ok(serde_json::from_str(text.as_str())?),
            Message::Close(close) => anyhow::bail!("closed: {close:?}"),
            _ => {}
        }
    }
}

/// Reads frames until the server closes; the JSON frames seen and the close code.
async fn until_closed(ws: &mut Ws) -> anyhow::Result<(Vec<Value>, Option<CloseCode>)> {
    let mut frames = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(30), ws.next()).await.context("no close in time")?;
        match next {
            Some(Ok(Message::Text(text))) => frames.push(serde_json::from_str(text.as_str())?),
            Some(Ok(Message::Close(close))) => return Ok((frames, close.map(|c| c.code))),
            Some(Ok(_)) => {}
            None | Some(Err(_)) => return Ok((frames, None)),
        }
    }
}

/// Message events until one of `kind` for `id` arrives; every one seen on the way.
async fn events_until(ws: &mut Ws, kind: &str, id: &str) -> anyhow::Result<Vec<Value>> {
    let mut seen = Vec::new();
    loop {
        let f = frame(ws).await?;
        anyhow::ensure!(f["type"] == "message_event", "not an event: {f}");
        let done = f["event"] == kind && f["data"]["message_id"] == id;
        seen.push(f);
        if done {
            return Ok(seen);
        }
    }
}

async fn store(app: &App, tenant: &str, content: &str) -> anyhow::Result<String> {
    let r = app.post("/v1/messages", &crate::harness::message(tenant, content)).await?;
    anyhow::ensure!(r.status == StatusCode::ACCEPTED, "{r:?}");
    Ok(r.body["id"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn a_subscriber_sees_its_own_messages_stored_then_embedded_and_resumes_after_an_event() -> anyhow::Result<()> {
    let app = App::start().await?;
    let acme = app.tenant_key("acme", &["read"]).await?;
    let globex = app.tenant_key("globex", &["read"]).await?;
    let addr = app.serve_http(|_| {}).await?;

    let mut ws = connect(addr, "/v1/ws/messages/acme", Some(&acme)).await?;
    // The original's frames, before and after subscribing.
    send(&mut ws, &json!({"action": "ping"})).await?;
    assert_eq!(frame(&mut ws).await?, json!({"type": "pong"}));
    ws.send(Message::text("not json")).await?;
    let f = frame(&mut ws).await?;
    assert_eq!(
        (&f["type"], &f["message"], &f["code"]),
        (&json!("error"), &json!("Invalid JSON"), &json!("invalid_json"))
    );
    send(&mut ws, &json!({"action": "dance"})).await?;
    assert_eq!(frame(&mut ws).await?["message"], "Unknown action: dance");
    send(&mut ws, &json!({"action": "subscribe", "events": ["stored", "nonsense"]})).await?;
    let f = frame(&mut ws).await?;
    assert_eq!((&f["type"], &f["code"]), (&json!("error"), &json!("validation_failed")), "{f}");
    // The largest id there is: nothing after it, and no overflow on the way.
    send(&mut ws, &json!({"action": "subscribe", "since": u64::MAX})).await?;
    assert_eq!(frame(&mut ws).await?["type"], "subscribed");
    send(&mut ws, &json!({"action": "subscribe"})).await?;
    let f = frame(&mut ws).await?;
    assert_eq!((&f["type"], &f["tenant_id"]), (&json!("subscribed"), &json!("acme")), "{f}");
    // Globex subscribes as a browser would: its key in the query.
    let mut other = connect(addr, &format!("/v1/ws/messages/globex?token={globex}"), None).await?;
    send(&mut other, &json!({"action": "subscribe"})).await?;
    assert_eq!(frame(&mut other).await?["type"], "subscribed");

    let theirs = store(&app, "globex", "globex's private note").await?;
    let ours = store(&app, "acme", "acme's note about live events").await?;
    let seen = events_until(&mut ws, "embedded", &ours).await?;
    assert!(seen.iter().all(|e| e["tenant_id"] == "acme" && e["data"]["tenant_id"] == "acme"), "{seen:?}");
    assert!(!seen.iter().any(|e| e.to_string().contains(&theirs)), "another tenant's event: {seen:?}");
    let stored = seen.iter().find(|e| e["event"] == "stored").context("no stored event")?;
    let embedded = seen.last().unwrap();
    assert_eq!(stored["data"]["message_id"], ours.as_str());
    assert_eq!(stored["data"]["conversation_id"], "conv-1");
    let (stored_id, embedded_id) = (stored["event_id"].as_u64().unwrap(), embedded["event_id"].as_u64().unwrap());
    assert!(stored_id < embedded_id, "{stored} {embedded}");
    let theirs_seen = events_until(&mut other, "embedded", &theirs).await?;
    assert!(theirs_seen.iter().all(|e| e["tenant_id"] == "globex"), "{theirs_seen:?}");

    // A new connection resumes after the stored event: the embedded one comes again, first.
    let mut again = connect(addr, "/v1/ws/messages/acme", Some(&acme)).await?;
    send(&mut again, &json!({"action": "subscribe", "since": stored_id, "events": ["embedded"]})).await?;
    let f = frame(&mut again).await?;
    assert_eq!((&f["type"], &f["since"], &f["gap"]), (&json!("subscribed"), &json!(stored_id), &json!(false)), "{f}");
    let f = frame(&mut again).await?;
    assert_eq!((&f["event"], &f["event_id"]), (&json!("embedded"), &json!(embedded_id)), "{f}");
    // Unsubscribed, nothing more comes.
    send(&mut again, &json!({"action": "unsubscribe"})).await?;
    assert_eq!(frame(&mut again).await?["type"], "unsubscribed");
    let late = store(&app, "acme", "after unsubscribing").await?;
    events_until(&mut ws, "embedded", &late).await?;
    send(&mut again, &json!({"action": "ping"})).await?;
    let f = frame(&mut again).await?;
    assert_eq!(f, json!({"type": "pong"}), "an event after unsubscribing: {f}");
    drop((ws, other, again));
    app.finish().await
}

#[tokio::test]
async fn both_sockets_and_the_event_stream_refuse_a_missing_wrong_or_other_tenants_key() -> anyhow::Result<()> {
    let app = App::start().await?;
    let acme = app.tenant_key("acme", &["read"]).await?;
    let writer = app.tenant_key("acme", &["write"]).await?;
    app.tenant_key("globex", &["read"]).await?;
    let addr = app.serve_http(|_| {}).await?;
    for path in ["/v1/ws/messages/globex", "/v1/ws/stream/globex"] {
        let own = path.replace("globex", "acme");
        assert_eq!(refused(addr, &own, None).await?, (401, "unauthorized".into()), "{own}");
        let made_up = format!("mk_{}", "x".repeat(43));
        assert_eq!(refused(addr, &own, Some(&made_up)).await?, (401, "unauthorized".into()), "{own}");
        assert_eq!(refused(addr, &format!("{own}?token=wrong"), None).await?, (401, "unauthorized".into()), "{own}");
        assert_eq!(refused(addr, path, Some(&acme)).await?, (403, "tenant_forbidden".into()), "{path}");
        assert_eq!(refused(addr, &format!("{path}?api_key={acme}"), None).await?, (403, "tenant_forbidden".into()));
        assert_eq!(refused(addr, &own, Some(&writer)).await?, (403, "insufficient_scope".into()), "{own}");
        // The operator may follow any tenant.
        drop(connect(addr, path, Some(KEY)).await?);
    }
    // A key in the query is taken on live routes only.
    let r = app.send(Method::GET, &format!("/v1/conversations?token={acme}"), None, None).await?;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{r:?}");
    // The event stream, in process.
    for (uri, key, status) in [
        ("/v1/tenants/acme/events", None, StatusCode::UNAUTHORIZED),
        ("/v1/tenants/globex/events", Some(acme.as_str()), StatusCode::FORBIDDEN),
        ("/v1/tenants/acme/events?since=soon", Some(acme.as_str()), StatusCode::UNPROCESSABLE_ENTITY),
        ("/v1/tenants/acme/events?events=stored,lunch", Some(acme.as_str()), StatusCode::UNPROCESSABLE_ENTITY),
    ] {
        let r = app.send(Method::GET, uri, None, key).await?;
        assert_eq!(r.status, status, "{uri}: {r:?}");
    }
    // Not a handshake: 426 with the header that says what to do.
    let r = app.send(Method::GET, "/v1/ws/messages/acme", None, Some(&acme)).await?;
    assert_eq!((r.status, r.body["code"].as_str()), (StatusCode::UPGRADE_REQUIRED, Some("websocket_required")));
    assert_eq!(r.headers["upgrade"], "websocket");
    app.finish().await
}

#[tokio::test]
async fn searches_over_a_socket_are_answered_in_order_charged_and_stop_with_the_key() -> anyhow::Result<()> {
    let app = App::start().await?;
    let acme = app.tenant_key("acme", &["read"]).await?;
    for (conversation, content) in
        [("trip", "we booked the ferry to Hydra for May"), ("work", "the ferry budget meeting")]
    {
        let body = json!({"tenant_id": "acme", "conversation_id": conversation, "role": "user", "content": content});
        let r = app.post("/v1/messages?wait=embedded", &body).await?;
        anyhow::ensure!(r.status == StatusCode::CREATED, "{r:?}");
    }
    // Six requests an hour for the tenant: the handshake and five searches.
    let addr = app
        .serve_http(|vars| {
            vars.insert("MEMORY_RATE_LIMIT_TENANT".into(), "6/hour".into());
        })
        .await?;
    let mut ws = connect(addr, "/v1/ws/stream/acme?conversation_id=trip", Some(&acme)).await?;
    // The original's frame: a query and top_k; the URL's conversation applies.
    send(&mut ws, &json!({"query": "ferry", "top_k": 5})).await?;
    let f = frame(&mut ws).await?;
    assert_eq!((&f["type"], &f["query"], &f["total"]), (&json!("search_results"), &json!("ferry"), &json!(1)), "{f}");
    let hit = &f["results"][0];
    assert_eq!(hit["content"], "we booked the ferry to Hydra for May");
    for field in ["message_id", "role", "score", "importance"] {
        assert!(!hit[field].is_null(), "{field} missing: {hit}");
    }
    // Our fields too, and an id to match answers; a query's own filters win over the URL's.
    send(&mut ws, &json!({"id": "q2", "query": "ferry", "mode": "lexical", "filters": {"conversation_id": "work"}}))
        .await?;
    let f = frame(&mut ws).await?;
    assert_eq!((&f["id"], &f["results"][0]["content"]), (&json!("q2"), &json!("the ferry budget meeting")), "{f}");
    // Mistakes get the original's texts and the socket stays open.
    send(&mut ws, &json!({"top_k": 5})).await?;
    assert_eq!(frame(&mut ws).await?["message"], "Query is required");
    ws.send(Message::text("{")).await?;
    assert_eq!(frame(&mut ws).await?["message"], "Invalid JSON");
    send(&mut ws, &json!({"query": "ferry", "top_k": 500})).await?;
    let f = frame(&mut ws).await?;
    assert_eq!((&f["code"], &f["status"]), (&json!("validation_failed"), &json!(422)), "{f}");
    send(&mut ws, &json!({"query": "ferry", "colour": "blue"})).await?;
    assert_eq!(frame(&mut ws).await?["code"], "malformed_body");
    // Searches are charged like requests, invalid ones too (frames that are no search are not):
    // three so far, two more pass, the sixth is refused.
    for _ in 0..2 {
        send(&mut ws, &json!({"query": "ferry"})).await?;
        assert_eq!(frame(&mut ws).await?["type"], "search_results");
    }
    send(&mut ws, &json!({"query": "ferry"})).await?;
    let f = frame(&mut ws).await?;
    assert_eq!((&f["code"], &f["status"]), (&json!("rate_limited"), &json!(429)), "{f}");
    assert!(f["message"].as_str().unwrap().starts_with("Tenant rate limit exceeded for acme"), "{f}");
    assert!(f["retry_after"].as_u64().is_some_and(|s| s >= 1), "{f}");

    // A revoked key's socket is closed on its next frame, with the reason.
    let keys = app.get("/v1/admin/tenants/acme/keys").await?.body;
    let id = keys.as_array().unwrap().iter().find(|k| acme.starts_with(k["prefix"].as_str().unwrap())).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = app.send(Method::DELETE, &format!("/v1/admin/tenants/acme/keys/{id}"), None, Some(KEY)).await?;
    anyhow::ensure!(r.status == StatusCode::NO_CONTENT, "{r:?}");
    // Until the broadcast reaches the serving gateway, searches are still refused by the limit.
    let mut tries = 0;
    let (frames, code) = loop {
        send(&mut ws, &json!({"query": "ferry"})).await?;
        let (frames, code) = match ws.next().await.context("the socket ended")?? {
            Message::Text(text) => {
                let f: Value = serde_json::from_str(text.as_str())?;
                if f["code"] == "rate_limited" && tries < 50 {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                let (mut rest, code) = until_closed(&mut ws).await?;
                rest.insert(0, f);
                (rest, code)
            }
            other => anyhow::bail!("not a frame: {other:?}"),
        };
        break (frames, code);
    };
    assert_eq!(frames.last().map(|f| f["code"].clone()), Some(json!("unauthorized")), "{frames:?}");
    assert_eq!(code, Some(CloseCode::Policy));
    app.finish().await
}

#[tokio::test]
async fn a_slow_consumer_is_cut_off_with_the_reason_and_where_to_resume() -> anyhow::Result<()> {
    let app = App::start().await?;
    let acme = app.tenant_key("acme", &["read"]).await?;
    let addr = app
        .serve_http(|vars| {
            vars.insert("MEMORY_LIVE_BUFFER".into(), "8".into());
        })
        .await?;
    // A client that reads slowly: a small receive window, and no reads while events pile up.
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let stream = socket.connect(addr).await?;
    let (mut ws, _) = tokio_tungstenite::client_async(
        request(addr, "/v1/ws/messages/acme", Some(&acme))?,
        MaybeTlsStream::Plain(stream),
    )
    .await?;
    send(&mut ws, &json!({"action": "subscribe"})).await?;
    assert_eq!(frame(&mut ws).await?["type"], "subscribed");
    // More than every buffer on the way can hold (the kernel's send buffer is at most 4 MiB).
    let tenant = TenantId::parse("acme")?;
    let padding = "x".repeat(16 * 1024);
    let published = 600;
    for _ in 0..published {
        let id = MessageId::new();
        let event = json!({"v": 1, "message_id": id, "tenant_id": "acme", "padding": padding});
        let subject = app.env.subjects.event(&tenant, EventKind::Updated, id);
        app.env.deps.bus.publish(Envelope::new(subject, event.to_string()), None).await?;
    }
    let (frames, code) = until_closed(&mut ws).await?;
    let (end, events) = frames.split_last().context("no frames")?;
    assert_eq!(end["code"], "slow_consumer", "{end}");
    assert!(events.len() < published, "every event arrived: the buffer was not bounded");
    assert_eq!(end["last_event_id"], events.last().context("no event before the cut")?["event_id"], "{end}");
    assert!(events.iter().all(|e| e["event"] == "updated"), "{events:?}");
    assert_eq!(code, Some(CloseCode::Policy));
    app.finish().await
}

#[tokio::test]
async fn each_tenant_holds_at_most_its_cap_of_live_connections() -> anyhow::Result<()> {
    let app = App::start().await?;
    let acme = app.tenant_key("acme", &["read"]).await?;
    let globex = app.tenant_key("globex", &["read"]).await?;
    let addr = app
        .serve_http(|vars| {
            vars.insert("MEMORY_LIVE_MAX_PER_TENANT".into(), "2".into());
        })
        .await?;
    let first = connect(addr, "/v1/ws/messages/acme", Some(&acme)).await?;
    let _second = connect(addr, "/v1/ws/stream/acme", Some(&acme)).await?;
    assert_eq!(refused(addr, "/v1/ws/messages/acme", Some(&acme)).await?, (429, "too_many_live_connections".into()));
    // Another tenant is not affected.
    let _theirs = connect(addr, "/v1/ws/messages/globex", Some(&globex)).await?;
    // A closed connection frees its place.
    let mut first = first;
    first.close(None).await?;
    drop(first);
    app.env
        .eventually(|| async {
            let ws = connect(addr, "/v1/ws/messages/acme", Some(&acme)).await?;
            drop(ws);
            Ok(())
        })
        .await?;
    app.finish().await
}

#[tokio::test]
async fn a_stopping_gateway_closes_its_sockets_as_going_away_and_ends_its_event_streams() -> anyhow::Result<()> {
    let app = App::start().await?;
    let acme = app.tenant_key("acme", &["read"]).await?;
    let stop = CancellationToken::new();
    let (addr, gateway) = app.serve_http_until(stop.clone(), |_| {}).await?;
    let mut ws = connect(addr, "/v1/ws/messages/acme", Some(&acme)).await?;
    send(&mut ws, &json!({"action": "subscribe"})).await?;
    assert_eq!(frame(&mut ws).await?["type"], "subscribed");
    let mut search = connect(addr, "/v1/ws/stream/acme", Some(&acme)).await?;
    stop.cancel();
    assert_eq!(until_closed(&mut ws).await?.1, Some(CloseCode::Away));
    assert_eq!(until_closed(&mut search).await?.1, Some(CloseCode::Away));
    tokio::time::timeout(Duration::from_secs(10), gateway).await.context("the gateway did not stop")???;
    app.finish().await
}

/// An SSE event: its name, id and JSON data.
#[derive(Debug)]
struct Sent {
    event: String,
    id: Option<String>,
    data: Value,
}

/// Reads SSE events from a response body until `done` says stop.
async fn read_events(body: Body, mut done: impl FnMut(&Sent) -> bool) -> anyhow::Result<Vec<Sent>> {
    let mut chunks = body.into_data_stream();
    let (mut text, mut sent) = (String::new(), Vec::new());
    loop {
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let mut event = Sent { event: "message".into(), id: None, data: Value::Null };
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event.event = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("id:") {
                    event.id = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("data:") {
                    event.data = serde_json::from_str(v.trim())?;
                }
            }
            if event.data.is_null() {
                continue;
            }
            let stop = done(&event);
            sent.push(event);
            if stop {
                return Ok(sent);
            }
        }
        let chunk = tokio::time::timeout(Duration::from_secs(20), chunks.next()).await.context("no event in time")?;
        match chunk {
            Some(bytes) => text.push_str(std::str::from_utf8(&bytes?)?),
            None => return Ok(sent),
        }
    }
}

#[tokio::test]
async fn the_event_stream_sends_ids_to_resume_from_and_only_the_kinds_asked_for() -> anyhow::Result<()> {
    let app = App::start().await?;
    let acme = app.tenant_key("acme", &["read"]).await?;
    let open = |uri: String, last: Option<String>| {
        let mut req = Request::get(uri).header("x-api-key", acme.as_str());
        if let Some(last) = last {
            req = req.header("last-event-id", last);
        }
        gateway::router(app.state.clone()).oneshot(req.body(Body::empty()).unwrap())
    };
    let response = open("/v1/tenants/acme/events".into(), None).await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let body = response.into_body();
    // The subscription is confirmed first; then the message's events.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let reader = tokio::spawn(async move {
        let mut tx = Some(tx);
        read_events(body, |e| {
            if e.event == "subscribed" {
                let _ = tx.take().map(|tx| tx.send(()));
            }
            e.event == "embedded"
        })
        .await
    });
    rx.await?;
    let id = store(&app, "acme", "an event stream's message").await?;
    let sent = reader.await??;
    let kinds: Vec<&str> = sent.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(kinds, ["subscribed", "stored", "embedded"], "{sent:?}");
    assert!(sent[1..].iter().all(|e| e.data["data"]["message_id"] == id.as_str()), "{sent:?}");
    let stored_id = sent[1].id.clone().context("no id")?;
    assert_eq!(sent[1].data["event_id"].to_string(), stored_id);

    // An EventSource reconnecting with Last-Event-ID gets what came after, of the kinds asked.
    let response = open("/v1/tenants/acme/events?events=embedded,stored".into(), Some(stored_id.clone())).await?;
    let sent = read_events(response.into_body(), |e| e.event == "embedded").await?;
    assert_eq!(sent[0].data["gap"], false, "{sent:?}");
    assert_eq!(sent.iter().map(|e| e.event.as_str()).collect::<Vec<_>>(), ["subscribed", "embedded"]);
    let response =
        open(format!("/v1/tenants/acme/events?events=stored&since={}", stored_id.parse::<u64>()? - 1), None).await?;
    let sent = read_events(response.into_body(), |e| e.event == "stored").await?;
    assert_eq!(sent[1].id.as_deref(), Some(stored_id.as_str()));
    app.finish().await
}
