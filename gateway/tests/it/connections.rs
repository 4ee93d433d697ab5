//! The HTTP server under hostile or careless clients, over real TCP: refusals keep keep-alive
//! connections usable, slow clients are cut off, and a burst beyond capacity is shed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{App, KEY};

/// One keep-alive connection, read one response at a time.
struct Conn {
    stream: TcpStream,
    buffer: Vec<u8>,
}

#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn closes(&self) -> bool {
        self.head.lines().any(|l| l.eq_ignore_ascii_case("connection: close"))
    }
}

impl Conn {
    async fn open(addr: SocketAddr) -> anyhow::Result<Self> {
        Ok(Self { stream: TcpStream::connect(addr).await?, buffer: Vec::new() })
    }

    /// Sends a request: `headers` as lines, and a JSON body of `body` bytes, if any.
    async fn send(&mut self, method: &str, path: &str, headers: &[&str], body: Option<&[u8]>) -> anyhow::Result<()> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: gateway\r\n");
        for h in headers {
            head.push_str(&format!("{h}\r\n"));
        }
        if let Some(body) = body {
            head.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body.unwrap_or_default());
        self.stream.write_all(&bytes).await?;
        Ok(())
    }

    /// The next response, or `None` if the server closed the connection first.
    async fn answer(&mut self) -> anyhow::Result<Option<Answer>> {
        let head_end = loop {
            if let Some(end) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            if !self.fill().await? {
                return Ok(None);
            }
        };
        let head = String::from_utf8_lossy(&self.buffer[..head_end]).into_owned();
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let length: usize = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while self.buffer.len() < head_end + length {
            anyhow::ensure!(self.fill().await?, "closed in the middle of a response");
        }
        let body = String::from_utf8_lossy(&self.buffer[head_end..head_end + length]).into_owned();
        self.buffer.drain(..head_end + length);
        Ok(Some(Answer { status, head, body }))
    }

    /// Reads more; false at the end of the stream (or a reset, which a client sees the same way).
    async fn fill(&mut self) -> anyhow::Result<bool> {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk)).await? {
            Ok(0) | Err(_) => Ok(false),
            Ok(n) => {
                self.buffer.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
        }
    }
}

/// A valid message padded with whitespace to about `size` bytes.
fn big_message(size: usize) -> Vec<u8> {
    let message = serde_json::json!({"tenant_id": "acme", "conversation_id": "c", "role": "user", "content": "hi"});
    format!("{message}{}", " ".repeat(size)).into_bytes()
}

#[tokio::test]
async fn refused_requests_leave_their_keep_alive_connection_usable() -> anyhow::Result<()> {
    let app = App::without_workers(|_| {}).await?;
    let key = app.tenant_key("acme", &["read", "write"]).await?;
    let addr = app
        .serve_http(|vars| {
            vars.insert("MEMORY_RATE_LIMIT_TENANT".into(), "3/minute".into());
        })
        .await?;
    // A body larger than one read, so it cannot already sit in the server's buffer.
    let body = big_message(200_000);
    let mut conn = Conn::open(addr).await?;
    let bad_key = "x-api-key: mk_madeupmadeupmadeupmadeupmadeup";
    let with_key = format!("x-api-key: {key}");
    let mut statuses = Vec::new();
    // Unauthenticated, then over the tenant's limit: each refusal is followed by another request
    // on the same connection, which must be answered.
    let keyed = [with_key.as_str()];
    for headers in [[bad_key], [bad_key], keyed, keyed, keyed, keyed, keyed] {
        conn.send("POST", "/v1/messages", &headers, Some(&body)).await?;
        let answer = conn.answer().await?.expect("an answer to every request");
        assert!(!answer.closes(), "a refusal keeps the connection: {answer:?}");
        statuses.push(answer.status);
    }
    conn.send("GET", "/healthz", &[], None).await?;
    assert_eq!(conn.answer().await?.expect("the connection still serves").status, 200);
    assert_eq!(statuses[..2], [401, 401], "{statuses:?}");
    assert!(statuses.contains(&429), "the tenant's limit refused some: {statuses:?}");

    // A body nobody reads (no such route) ends the connection, but says so first.
    conn.send("POST", "/v1/nowhere", &[&format!("x-api-key: {KEY}")], Some(&body)).await?;
    let answer = conn.answer().await?.expect("an answer");
    assert_eq!(answer.status, 404, "{answer:?}");
    assert!(answer.closes(), "an unread body → Connection: close: {answer:?}");
    app.finish().await
}

#[tokio::test]
async fn concurrent_keep_alive_clients_get_an_answer_to_every_request() -> anyhow::Result<()> {
    let app = App::without_workers(|_| {}).await?;
    let key = app.tenant_key("acme", &["read", "write"]).await?;
    let addr = app
        .serve_http(|vars| {
            vars.insert("MEMORY_RATE_LIMIT_TENANT".into(), "20/minute".into());
        })
        .await?;
    let body = big_message(100_000);
    let clients = (0..6).map(|_| {
        let (key, body) = (key.clone(), body.clone());
        tokio::spawn(async move {
            let mut conn = Conn::open(addr).await?;
            let mut statuses = Vec::new();
            for _ in 0..20 {
                conn.send("POST", "/v1/messages", &[&format!("x-api-key: {key}")], Some(&body)).await?;
                let answer = conn.answer().await?.context("the server dropped a kept-alive connection")?;
                statuses.push(answer.status);
            }
            anyhow::Ok(statuses)
        })
    });
    let mut statuses = Vec::new();
    for client in clients.collect::<Vec<_>>() {
        statuses.extend(client.await??);
    }
    assert_eq!(statuses.len(), 120);
    assert!(statuses.iter().all(|s| [202, 429].contains(s)), "{statuses:?}");
    assert_eq!(statuses.iter().filter(|&&s| s == 202).count(), 20, "the limit let 20 through: {statuses:?}");
    app.finish().await
}

#[tokio::test]
async fn slow_clients_are_cut_off() -> anyhow::Result<()> {
    let app = App::without_workers(|_| {}).await?;
    let addr = app
        .serve_http(|vars| {
            vars.insert("MEMORY_HTTP_HEADER_TIMEOUT_MS".into(), "400".into());
            vars.insert("MEMORY_HTTP_BODY_TIMEOUT_MS".into(), "400".into());
        })
        .await?;

    // Slow loris: headers trickle in, one line at a time, never ending.
    let started = Instant::now();
    let mut conn = Conn::open(addr).await?;
    conn.stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n").await?;
    let trickle = async {
        for i in 0.. {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if conn.stream.write_all(format!("X-Slow-{i}: y\r\n").as_bytes()).await.is_err() {
                break;
            }
            if started.elapsed() > Duration::from_secs(5) {
                break;
            }
        }
    };
    trickle.await;
    let cut = started.elapsed();
    assert!(cut < Duration::from_secs(3), "the connection stayed open for {cut:?}");
    assert!(conn.answer().await?.is_none_or(|a| a.status == 408), "closed, not served");

    // A connection that never says anything is closed too.
    let started = Instant::now();
    let mut idle = Conn::open(addr).await?;
    assert!(idle.answer().await?.is_none());
    assert!(started.elapsed() < Duration::from_secs(3), "an idle connection lasted {:?}", started.elapsed());

    // A body that stops arriving: 408, and the connection ends.
    let mut conn = Conn::open(addr).await?;
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: gateway\r\nx-api-key: {KEY}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"tenant_id\""
    );
    conn.stream.write_all(head.as_bytes()).await?;
    let started = Instant::now();
    let answer = conn.answer().await?.expect("an answer");
    assert_eq!(answer.status, 408, "{answer:?}");
    assert!(answer.body.contains("body_timeout") && answer.closes(), "{answer:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());

    // The server is fine.
    assert_eq!(common::testing::http_get(addr, "/healthz").await?.0, 200);
    app.finish().await
}

#[tokio::test]
async fn requests_beyond_capacity_are_shed_and_slow_ones_end_at_their_deadline() -> anyhow::Result<()> {
    let app = App::without_workers(|_| {}).await?;
    let addr = app
        .serve_http(|vars| {
            vars.insert("MEMORY_HTTP_MAX_IN_FLIGHT".into(), "1".into());
            vars.insert("MEMORY_HTTP_REQUEST_TIMEOUT_MS".into(), "500".into());
            vars.insert("MEMORY_NATS_REQUEST_TIMEOUT_MS".into(), "30000".into());
        })
        .await?;
    // A searcher that never answers: the search holds the only slot until its deadline.
    let subjects = app.env.deps.subjects.clone();
    let silent = app.env.deps.bus.serve(subjects.search(), subjects.searcher_group().into()).await?;
    let held = tokio::spawn(async move {
        let _silent = silent;
        let path = "/v1/memory/search?tenant_id=acme&query=hello";
        common::testing::http(addr, "GET", path, &[("x-api-key", KEY)], None).await
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (status, body) = common::testing::http(addr, "GET", "/v1/admin/tenants", &[("x-api-key", KEY)], None).await?;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"overloaded\""), "{body}");
    assert_eq!(common::testing::http_get(addr, "/readyz").await?.0, 200, "probes are never shed");

    let started = Instant::now();
    let (status, body) = held.await??;
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("\"request_timeout\""), "{body}");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    // The slot is free again.
    let (status, _) = common::testing::http(addr, "GET", "/v1/admin/tenants", &[("x-api-key", KEY)], None).await?;
    assert_eq!(status, 200);
    app.finish().await
}

#[tokio::test]
async fn a_slow_import_is_not_cut_off_and_changes_are_never_dropped_halfway() -> anyhow::Result<()> {
    use axum::body::Body;
    use futures::StreamExt as _;
    use tower::ServiceExt as _;
    let app = App::start_with(|vars| {
        vars.insert("MEMORY_HTTP_REQUEST_TIMEOUT_MS".into(), "300".into());
    })
    .await?;
    app.post("/v1/admin/tenants", &serde_json::json!({"id": "acme"})).await?;
    // An import arriving over a second, in steady pieces: longer than any request deadline.
    let lines: Vec<String> = (0..5)
        .map(|i| {
            format!("{}\n", serde_json::json!({"conversation_id": "c", "role": "user", "content": format!("line {i}")}))
        })
        .collect();
    let pieces = futures::stream::iter(lines).then(|line| async move {
        tokio::time::sleep(Duration::from_millis(250)).await;
        Ok::<_, std::io::Error>(line)
    });
    let request = axum::http::Request::post("/v1/tenants/acme/import")
        .header("x-api-key", KEY)
        .header("content-type", "application/x-ndjson")
        .body(Body::from_stream(pieces))?;
    let response = gateway::router(app.state.clone()).oneshot(request).await?;
    assert_eq!(response.status(), 200);

    // A change goes to its worker without a deadline (it finishes and announces what it did);
    // a read carries one, so its work is dropped with the caller.
    let subjects = app.env.deps.subjects.clone();
    let mut deletes = app.env.deps.bus.serve(subjects.delete_messages(), "probe".into()).await?;
    let mut gets = app.env.deps.bus.serve(subjects.get_message(), "probe".into()).await?;
    let id = common::domain::MessageId::new();
    let _ = app.post("/v1/messages/batch/delete?tenant_id=acme", &serde_json::json!({"message_ids": [id]})).await;
    let _ = app.get(&format!("/v1/messages/{id}?tenant_id=acme")).await;
    let header = |r: Option<common::bus::Request>| {
        r.and_then(|r| r.message.header(common::contract::TIMEOUT_HEADER).map(str::to_owned))
    };
    assert_eq!(header(futures::FutureExt::now_or_never(deletes.next()).flatten()), None, "a delete has no deadline");
    assert!(header(futures::FutureExt::now_or_never(gets.next()).flatten()).is_some(), "a read has one");
    app.finish().await
}
