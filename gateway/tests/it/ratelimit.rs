//! Rate limits over REST: GCRA bursts and refill, headers, 429 bodies, batches costing their
//! items, tenant limits across keys and per-tenant overrides, IP limits for unauthenticated
//! requests, and a Redis that goes away and comes back.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::harness::{App, KEY, Resp};

async fn app(client: &str, tenant: &str, redis: Option<String>) -> anyhow::Result<App> {
    let redis = match redis {
        Some(url) => url,
        None => std::env::var("MEMORY_TEST_REDIS_URL")?,
    };
    let (client, tenant) = (client.to_owned(), tenant.to_owned());
    App::without_workers(move |vars| {
        vars.insert("MEMORY_REDIS_URL".into(), redis);
        vars.insert("MEMORY_RATE_LIMIT_CLIENT".into(), client);
        vars.insert("MEMORY_RATE_LIMIT_TENANT".into(), tenant);
    })
    .await
}

async fn probe(app: &App, key: &str) -> anyhow::Result<Resp> {
    app.send(Method::GET, "/v1/tenants/acme/ranking", None, Some(key)).await
}

fn header(r: &Resp, name: &str) -> u64 {
    r.headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(u64::MAX)
}

#[tokio::test]
async fn a_burst_is_allowed_then_refused_with_headers_then_refilled() -> anyhow::Result<()> {
    let app = app("3/minute", "1000/minute", None).await?;
    let key = app.tenant_key("acme", &["read", "write", "admin"]).await?;
    for (remaining, tenant_remaining) in [(2, 999), (1, 998), (0, 997)] {
        let r = probe(&app, &key).await?;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        assert_eq!(header(&r, "ratelimit-limit"), 3);
        assert_eq!(header(&r, "ratelimit-remaining"), remaining);
        assert_eq!(header(&r, "x-ratelimit-remaining"), remaining);
        assert!(header(&r, "x-ratelimit-reset") > 1_700_000_000, "epoch seconds");
        // The key's tenant was charged too: its own quota, as the original service showed it.
        assert_eq!(header(&r, "x-ratelimit-tenant-limit"), 1000);
        assert_eq!(header(&r, "x-ratelimit-tenant-remaining"), tenant_remaining);
        assert!(header(&r, "x-ratelimit-tenant-reset") > 1_700_000_000, "epoch seconds");
    }
    let r = probe(&app, &key).await?;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers["content-type"], "application/problem+json");
    assert_eq!(r.body["code"], "rate_limited");
    assert_eq!(r.body["detail"], "Rate limit exceeded: 3/minute", "the original's text: {r:?}");
    // One request every 20 s refills the quota.
    let retry = header(&r, "retry-after");
    assert!((19..=20).contains(&retry), "{retry}");
    assert_eq!(r.body["retry_after"], retry);
    assert_eq!(header(&r, "ratelimit-remaining"), 0);
    // Health, metrics and docs are never limited.
    assert_eq!(app.send(Method::GET, "/healthz", None, None).await?.status, StatusCode::OK);
    assert_eq!(app.send(Method::GET, "/metrics", None, None).await?.status, StatusCode::OK);

    // Refill, measured on a faster limit: 2 per second is one every 500 ms.
    let fast = self::app("2/second", "1000/minute", None).await?;
    let key = fast.tenant_key("acme", &["read", "write", "admin"]).await?;
    assert_eq!(probe(&fast, &key).await?.status, StatusCode::OK);
    assert_eq!(probe(&fast, &key).await?.status, StatusCode::OK);
    assert_eq!(probe(&fast, &key).await?.status, StatusCode::TOO_MANY_REQUESTS);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(probe(&fast, &key).await?.status, StatusCode::OK, "one request refilled");
    assert_eq!(probe(&fast, &key).await?.status, StatusCode::TOO_MANY_REQUESTS, "only one");
    fast.finish().await?;
    app.finish().await
}

#[tokio::test]
async fn a_batch_costs_one_request_per_item() -> anyhow::Result<()> {
    let app = app("10/minute", "1000/minute", None).await?;
    let key = app.tenant_key("acme", &["read", "write", "admin"]).await?;
    let batch = |n: usize| {
        let items: Vec<_> =
            (0..n).map(|i| json!({"conversation_id": "c", "role": "user", "content": format!("m{i}")})).collect();
        Body::from(json!({"messages": items}).to_string())
    };
    let r = app.send(Method::POST, "/v1/messages/batch", Some(batch(8)), Some(&key)).await?;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    assert_eq!(header(&r, "ratelimit-remaining"), 2);
    let r = app.send(Method::POST, "/v1/messages/batch", Some(batch(3)), Some(&key)).await?;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "3 items, 2 left: {r:?}");
    let r = app.send(Method::POST, "/v1/messages/batch", Some(batch(2)), Some(&key)).await?;
    assert_eq!(r.status, StatusCode::CREATED, "a refused batch charged nothing: {r:?}");
    app.finish().await?;

    // Batch edits and deletes cost their items too.
    let edits = self::app("10/minute", "1000/minute", None).await?;
    edits.spawn_retention().await?;
    let app = edits;
    let key = app.tenant_key("acme", &["read", "write", "admin"]).await?;
    let ids: Vec<String> = (0..4).map(|_| common::domain::MessageId::new().to_string()).collect();
    let body = Body::from(json!({"message_ids": ids}).to_string());
    let r = app.send(Method::POST, "/v1/messages/batch/delete", Some(body), Some(&key)).await?;
    assert_eq!((r.status, header(&r, "ratelimit-remaining")), (StatusCode::OK, 6), "{r:?}");
    let updates: Vec<_> = ids.iter().map(|id| json!({"message_id": id, "update": {"pinned": true}})).collect();
    let body = Body::from(json!({"updates": updates}).to_string());
    let r = app.send(Method::POST, "/v1/messages/batch/update", Some(body), Some(&key)).await?;
    assert_eq!((r.status, header(&r, "ratelimit-remaining")), (StatusCode::MULTI_STATUS, 2), "{r:?}");
    app.finish().await
}

#[tokio::test]
async fn a_tenant_limit_spans_its_keys_and_can_be_set_per_tenant() -> anyhow::Result<()> {
    let app = app("1000/minute", "4/minute", None).await?;
    let first = app.tenant_key("acme", &["read", "write", "admin"]).await?;
    let second = app.tenant_key("acme", &["read", "write", "admin"]).await?;
    for key in [&first, &second, &first, &second] {
        assert_eq!(probe(&app, key).await?.status, StatusCode::OK);
    }
    let r = probe(&app, &second).await?;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.body["detail"], "Tenant rate limit exceeded for acme: 4/minute", "the original's text: {r:?}");
    assert_eq!(header(&r, "x-ratelimit-tenant-remaining"), 0);
    assert!(r.body["retry_after"].as_u64().is_some_and(|s| s >= 1), "{r:?}");

    // The operator raises globex's limit; a tenant key may not.
    let initech = app.tenant_key("initech", &["read", "write", "admin"]).await?;
    assert_eq!(put(&app, &initech, "1000/minute").await?.status, StatusCode::FORBIDDEN);
    assert_eq!(put(&app, KEY, "one hundred").await?.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = put(&app, KEY, "6 per minute").await?;
    assert_eq!((r.status, r.body["limit"].as_str()), (StatusCode::OK, Some("6/minute")), "{r:?}");
    let globex = app.tenant_key("globex", &["read", "write", "admin"]).await?;
    for _ in 0..6 {
        let r = app.send(Method::GET, "/v1/tenants/globex/rate-limit", None, Some(&globex)).await?;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        assert_eq!(r.body["source"], "tenant");
    }
    let r = app.send(Method::GET, "/v1/tenants/globex/rate-limit", None, Some(&globex)).await?;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    app.finish().await
}

#[tokio::test]
async fn requests_without_a_valid_key_are_limited_by_ip() -> anyhow::Result<()> {
    let app = app("2/minute", "1000/minute", None).await?;
    for _ in 0..2 {
        assert_eq!(probe(&app, "mk_wrong").await?.status, StatusCode::UNAUTHORIZED);
    }
    let r = probe(&app, "mk_wrong").await?;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "guessing keys is limited too: {r:?}");
    assert_eq!(r.body["detail"], "Rate limit exceeded: 2/minute");
    assert!(!r.headers.contains_key("x-ratelimit-tenant-limit"), "no tenant was charged: {r:?}");
    app.finish().await
}

async fn put(app: &App, key: &str, limit: &str) -> anyhow::Result<Resp> {
    let body = Body::from(json!({"limit": limit}).to_string());
    app.send(Method::PUT, "/v1/tenants/globex/rate-limit", Some(body), Some(key)).await
}

/// A private Redis on a free port, so stopping it disturbs no other test.
struct PrivateRedis {
    port: u16,
    child: tokio::process::Child,
}

impl PrivateRedis {
    async fn start(port: u16) -> anyhow::Result<Self> {
        let child = tokio::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return Ok(Self { port, child });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        anyhow::bail!("redis-server did not start on port {port}")
    }

    async fn stop(mut self) -> anyhow::Result<u16> {
        self.child.kill().await?;
        Ok(self.port)
    }
}

#[tokio::test]
async fn without_redis_limits_hold_in_process_and_shared_limits_resume_when_it_returns() -> anyhow::Result<()> {
    let port = common::testing::free_addr()?.port();
    let redis = PrivateRedis::start(port).await?;
    let app = app("4/minute", "1000/minute", Some(format!("redis://127.0.0.1:{port}"))).await?;
    let key = app.tenant_key("acme", &["read", "write", "admin"]).await?;
    let r = probe(&app, &key).await?;
    assert_eq!((r.status, header(&r, "ratelimit-remaining")), (StatusCode::OK, 3));
    assert_eq!(app.state.metrics.limiter_backend.get(), 1);

    redis.stop().await?;
    // Never a 5xx: the in-process limiter holds the same limit (its own count, from zero).
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(probe(&app, &key).await?.status);
    }
    assert_eq!(statuses[..4], [StatusCode::OK; 4], "{statuses:?}");
    assert_eq!(statuses[4], StatusCode::TOO_MANY_REQUESTS, "{statuses:?}");
    assert_eq!(app.state.metrics.limiter_backend.get(), 0);
    assert!(app.state.metrics.limiter_fallbacks.get() >= 1);

    // Redis is back (empty): the shared count resumes there.
    let _redis = PrivateRedis::start(port).await?;
    app.env
        .eventually(|| async {
            let r = probe(&app, &key).await?;
            anyhow::ensure!(r.status == StatusCode::OK && app.state.metrics.limiter_backend.get() == 1, "{r:?}");
            Ok(())
        })
        .await?;
    app.finish().await
}

#[tokio::test]
async fn a_batch_larger_than_the_quota_is_refused_for_good() -> anyhow::Result<()> {
    let app = app("5/minute", "1000/minute", None).await?;
    let key = app.tenant_key("acme", &["read", "write", "admin"]).await?;
    let items: Vec<_> =
        (0..6).map(|i| json!({"conversation_id": "c", "role": "user", "content": format!("m{i}")})).collect();
    let body = Body::from(json!({"messages": items}).to_string());
    let r = app.send(Method::POST, "/v1/messages/batch", Some(body), Some(&key)).await?;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "retrying could never help: {r:?}");
    assert_eq!(r.body["errors"][0]["code"], "exceeds_rate_limit");
    assert!(r.headers.get("retry-after").is_none());
    // Nothing was charged.
    assert_eq!(header(&probe(&app, &key).await?, "ratelimit-remaining"), 4);
    app.finish().await
}

#[tokio::test]
async fn an_import_costs_one_request_per_message() -> anyhow::Result<()> {
    let app = app("1000/minute", "10/minute", None).await?;
    let key = app.tenant_key("acme", &["read", "write", "admin"]).await?;
    let lines = |from: usize, n: usize| {
        let lines: Vec<String> = (from..from + n)
            .map(|i| json!({"conversation_id": "c", "role": "user", "content": format!("m{i}")}).to_string())
            .collect();
        Body::from(lines.join("\n"))
    };
    let r = app.send(Method::POST, "/v1/tenants/acme/import", Some(lines(0, 5)), Some(&key)).await?;
    assert_eq!(
        (r.status, header(&r, "ratelimit-remaining")),
        (StatusCode::OK, 5),
        "five messages, five requests: {r:?}"
    );
    let r = app.send(Method::POST, "/v1/tenants/acme/import", Some(lines(5, 11)), Some(&key)).await?;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "eleven messages, five left: {r:?}");
    assert_eq!(r.body["code"], "rate_limited");
    app.finish().await
}

#[tokio::test]
async fn made_up_keys_cost_their_ip_before_any_lookup() -> anyhow::Result<()> {
    let app = app("20/minute", "1000/minute", None).await?;
    let lookups = || async {
        let text = app.send(Method::GET, "/metrics", None, None).await?.body.as_str().unwrap_or_default().to_owned();
        let line = text.lines().find(|l| l.starts_with("memory_gateway_key_lookups_total ")).unwrap_or_default();
        anyhow::Ok(line.rsplit(' ').next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0))
    };
    let before = lookups().await?;
    // Two hundred well-formed keys nobody issued, from one address.
    let started = std::time::Instant::now();
    let mut refused = 0;
    for i in 0..200 {
        let r = probe(&app, &format!("mk_{i:0>43}")).await?;
        assert!(matches!(r.status, StatusCode::UNAUTHORIZED | StatusCode::TOO_MANY_REQUESTS), "{r:?}");
        refused += usize::from(r.status == StatusCode::TOO_MANY_REQUESTS);
    }
    let flooded = lookups().await? - before;
    // The quota refills one request every 3 s: a slow run earns that many more.
    let refilled = (started.elapsed().as_secs() / 3) as usize;
    assert!(flooded as usize <= 20 + refilled, "{flooded} database lookups for 200 made-up keys");
    assert!(
        (200 - 20 - refilled..=200 - 20).contains(&refused),
        "the address's budget paid for the lookups, then it was refused: {refused} refused"
    );

    // One made-up key, again and again: looked up once, then known not to exist.
    let other = self::app("1000/minute", "1000/minute", None).await?;
    for _ in 0..50 {
        assert_eq!(probe(&other, &format!("mk_{:0>43}", "repeat")).await?.status, StatusCode::UNAUTHORIZED);
    }
    let text = other.send(Method::GET, "/metrics", None, None).await?.body.as_str().unwrap_or_default().to_owned();
    assert!(text.contains("memory_gateway_key_lookups_total 1\n"), "{text}");
    other.finish().await?;
    app.finish().await
}
