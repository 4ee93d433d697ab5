//! `memory all`: every role in one process, as `scripts/run-local.sh` and a laptop run it.

use std::net::SocketAddr;

use common::bus::Envelope;
use common::testing::{Process, TestEnv, free_addr, http, http_get};
use serde_json::{Value, json};

use crate::MEMORY;

const KEY: &str = "test-admin-key-0123456789";

/// A test environment for `memory all`: its HTTP and ops addresses and variables.
async fn env(extra: &[(&str, &str)]) -> anyhow::Result<(TestEnv, SocketAddr, SocketAddr)> {
    let (addr, ops) = (free_addr()?, free_addr()?);
    let env = TestEnv::start_with(|vars| {
        vars.insert("MEMORY_ADMIN_API_KEY".into(), KEY.into());
        vars.insert("MEMORY_HTTP_ADDR".into(), addr.to_string());
        vars.insert("MEMORY_METRICS_ADDR".into(), ops.to_string());
        for (k, v) in extra {
            vars.insert((*k).into(), (*v).into());
        }
    })
    .await?;
    Ok((env, addr, ops))
}

async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    request_id: &str,
    body: Option<&Value>,
) -> anyhow::Result<(u16, Value)> {
    call_as(addr, KEY, method, path, request_id, body).await
}

async fn call_as(
    addr: SocketAddr,
    key: &str,
    method: &str,
    path: &str,
    request_id: &str,
    body: Option<&Value>,
) -> anyhow::Result<(u16, Value)> {
    let body = body.map(Value::to_string);
    let headers = [("x-api-key", key), ("x-request-id", request_id)];
    let (status, text) = http(addr, method, path, &headers, body.as_deref()).await?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
}

/// The metric names the alert rules and the dashboard use (`deploy/prometheus/metrics.txt`).
fn documented_metrics() -> anyhow::Result<Vec<String>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/prometheus/metrics.txt");
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter(|l| l.starts_with("memory_") || l.starts_with("process_"))
        .map(str::to_owned)
        .collect())
}

#[tokio::test]
async fn all_roles_in_one_process_serve_the_walk_through_log_request_ids_and_export_every_documented_metric()
-> anyhow::Result<()> {
    let (env, addr, ops) =
        env(&[("MEMORY_LOG_FORMAT", "json"), ("MEMORY_LOG", "info,embedder=debug,searcher=debug,retention=debug")])
            .await?;
    let process = Process::spawn_logging(MEMORY, &["all"], &env.vars)?;
    env.until_ready(addr).await?;
    env.until_ready(ops).await?;

    // The README's walk-through.
    let ingest_id = format!("ingest-{}", uuid::Uuid::new_v4());
    let lisbon = json!({"tenant_id": "my-app", "conversation_id": "user-123", "role": "user",
        "content": "I moved to Lisbon in May and I love the tiles"});
    let (status, body) = call(addr, "POST", "/v1/messages", &ingest_id, Some(&lisbon)).await?;
    assert_eq!(status, 202, "{body}");
    let lisbon_id = body["id"].as_str().unwrap().to_owned();
    let budget = json!({"tenant_id": "my-app", "conversation_id": "user-123", "role": "assistant",
        "content": "Noted! Anything else about your budget for the trip?"});
    let (status, body) = call(addr, "POST", "/v1/messages?wait=embedded", "wait-1", Some(&budget)).await?;
    assert_eq!(status, 201, "{body}");
    let budget_id = body["id"].as_str().unwrap().to_owned();
    let search_id = format!("search-{}", uuid::Uuid::new_v4());
    for mode in ["vector", "lexical", "hybrid"] {
        env.eventually(|| async {
            let path = format!("/v1/memory/search?tenant_id=my-app&query=Lisbon%20tiles&top_k=3&mode={mode}");
            let (status, body) = call(addr, "GET", &path, &search_id, None).await?;
            anyhow::ensure!(status == 200, "{status} {body}");
            anyhow::ensure!(body["items"][0]["message_id"] == lisbon_id.as_str(), "{mode}: {body}");
            Ok(())
        })
        .await?;
    }
    let (status, body) =
        call(addr, "GET", &format!("/v1/messages/{lisbon_id}?tenant_id=my-app"), "read-1", None).await?;
    assert_eq!((status, body["status"].as_str()), (200, Some("embedded")), "{body}");

    // What the alerts and the dashboard need to see at least once: a dead letter, a refused
    // request, a retention run.
    let subject = format!("{}.v1.ingest.my-app", env.subjects.prefix());
    env.deps.bus.publish(Envelope::new(subject, "not json"), None).await?;
    let (status, _) = call(addr, "POST", "/v1/admin/tenants", "limit-1", Some(&json!({"id": "tiny"}))).await?;
    assert_eq!(status, 201);
    let (status, key) =
        call(addr, "POST", "/v1/admin/tenants/tiny/keys", "limit-2", Some(&json!({"scopes": ["write"]}))).await?;
    assert_eq!(status, 201, "{key}");
    let limit = json!({"limit": "1/minute"});
    let (status, _) = call(addr, "PUT", "/v1/tenants/tiny/rate-limit", "limit-3", Some(&limit)).await?;
    assert_eq!(status, 200);
    let tiny = json!({"conversation_id": "c", "role": "user", "content": "one"});
    let key = key["key"].as_str().unwrap();
    let mut refused = false;
    for _ in 0..3 {
        refused |= call_as(addr, key, "POST", "/v1/messages", "limit-4", Some(&tiny)).await?.0 == 429;
    }
    assert!(refused, "a tenant limited to 1/minute was never refused");
    let run = json!({"tenant_id": "my-app", "dry_run": true});
    let (status, body) = call(addr, "POST", "/v1/admin/retention/run", "retention-1", Some(&run)).await?;
    assert_eq!(status, 200, "{body}");
    let (status, body) =
        call(addr, "DELETE", &format!("/v1/messages/{budget_id}?tenant_id=my-app"), "delete-1", None).await?;
    assert_eq!(status, 204, "{body}");

    let documented = documented_metrics()?;
    assert!(documented.len() > 20, "{documented:?}");
    env.eventually(|| async {
        let (status, scrape) = http_get(ops, "/metrics").await?;
        anyhow::ensure!(status == 200, "/metrics: {status}");
        let missing: Vec<&String> = documented
            .iter()
            .filter(|name| {
                !scrape.lines().any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            })
            .collect();
        anyhow::ensure!(missing.is_empty(), "documented but not exported: {missing:?}");
        Ok(())
    })
    .await?;

    let (status, log) = process.terminate_logged().await?;
    assert!(status.success(), "exit after SIGTERM: {status}");
    let lines: Vec<Value> = log.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(!lines.is_empty(), "no JSON log lines: {log}");
    let logged = |target: &str, id: &str| {
        lines.iter().any(|l| l["target"].as_str().is_some_and(|t| t.starts_with(target)) && l.to_string().contains(id))
    };
    assert!(logged("embedder::ingest", &ingest_id), "the ingest request id is not in the embedder's log");
    assert!(logged("searcher", &search_id), "the search request id is not in the searcher's log");
    assert!(logged("embedder::query", &search_id), "the search request id is not in the query embedder's log");
    assert!(logged("retention", "retention-1"), "the retention request id is not in retention's log");
    env.finish().await
}

#[tokio::test]
async fn sigterm_mid_ingest_loses_nothing_a_restart_stores_the_rest_once() -> anyhow::Result<()> {
    let (env, addr, ops) = env(&[
        ("MEMORY_RATE_LIMIT_CLIENT", "100000/minute"),
        ("MEMORY_RATE_LIMIT_TENANT", "100000/minute"),
        // One message per transaction: slow enough that the stop comes mid-ingest.
        ("MEMORY_EMBEDDER_BATCH_SIZE", "1"),
    ])
    .await?;
    let process = Process::spawn(MEMORY, &["all"], &env.vars)?;
    env.until_ready(addr).await?;
    let mut accepted = Vec::new();
    for batch in 0..20 {
        let messages: Vec<Value> = (0..100)
            .map(|i| json!({"tenant_id": "acme", "conversation_id": "c", "role": "user", "content": format!("message {batch}-{i}")}))
            .collect();
        let (status, body) =
            call(addr, "POST", "/v1/messages/batch", "batch", Some(&json!({"messages": messages}))).await?;
        assert_eq!(status, 201, "{body}");
        accepted.extend(body["results"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_owned()));
    }
    let status = process.terminate().await?;
    assert!(status.success(), "exit after SIGTERM: {status}");
    let embedded = || async {
        let ids: Vec<String> = sqlx::query_scalar("SELECT id::text FROM messages WHERE status = 'embedded'")
            .fetch_all(env.store.pool())
            .await?;
        anyhow::Ok(ids)
    };
    let before = embedded().await?.len();
    assert!(before < accepted.len(), "the stop came after ingest had finished: the test tests nothing");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM messages").fetch_one(env.store.pool()).await?;
    assert_eq!(rows as usize, before, "a message was stored but left unembedded by the drain");

    // What was not acknowledged is redelivered to the next embedder, and stored once.
    let embedder = Process::spawn(MEMORY, &["embedder"], &env.vars)?;
    env.until_ready(ops).await?;
    env.eventually(|| async {
        let ids = embedded().await?;
        anyhow::ensure!(ids.len() == accepted.len(), "{} of {} embedded", ids.len(), accepted.len());
        let ids: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
        anyhow::ensure!(accepted.iter().all(|id| ids.contains(id.as_str())), "an accepted message is missing");
        Ok(())
    })
    .await?;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM messages").fetch_one(env.store.pool()).await?;
    assert_eq!(rows as usize, accepted.len());
    assert!(embedder.terminate().await?.success());
    env.finish().await
}

/// A smoke run of `memory bench` against `memory all`: it loads through REST and straight through
/// NATS, waits, searches every mode and writes its report (no timing is asserted: figures belong to benchmarks).
#[tokio::test]
async fn the_bench_tool_loads_searches_and_reports() -> anyhow::Result<()> {
    let limits = [("MEMORY_RATE_LIMIT_CLIENT", "1000000/second"), ("MEMORY_RATE_LIMIT_TENANT", "1000000/second")];
    let (env, addr, ops) = env(&limits).await?;
    let process = Process::spawn(MEMORY, &["all"], &env.vars)?;
    env.until_ready(addr).await?;
    env.until_ready(ops).await?;
    let report = std::env::temp_dir().join(format!("bench-{}.json", uuid::Uuid::now_v7().simple()));
    let url = format!("http://{addr}");
    let nats = env.vars["MEMORY_NATS_URL"].clone();
    let args = [
        "bench",
        "--nats",
        &nats,
        "--subject-prefix",
        env.subjects.prefix(),
        "--url",
        &url,
        "--key",
        KEY,
        "--messages",
        "300",
        "--tenants",
        "2",
        "--batch",
        "50",
        "--queries",
        "10",
        "--concurrency",
        "4",
        "--json",
        report.to_str().unwrap_or_default(),
        "--search-while-loading",
    ];
    let output = Process::spawn_with_args(MEMORY, &args, &env.vars)?.output().await?;
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{printed}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(printed.contains("hybrid") && printed.contains("searchable"), "{printed}");
    let json: Value = serde_json::from_slice(&std::fs::read(&report)?)?;
    let _ = std::fs::remove_file(&report);
    assert_eq!(json["load"]["messages"], 300);
    let vias: Vec<&str> = json["ingest"].as_array().into_iter().flatten().filter_map(|p| p["via"].as_str()).collect();
    assert_eq!(vias, ["rest", "nats"], "{json}");
    assert_eq!(json["ingest"][1]["messages"], 150, "half of each tenant's messages published straight to NATS");
    for phase in json["ingest"].as_array().into_iter().flatten() {
        let meanwhile = &phase["searches_meanwhile"];
        assert!(meanwhile["searches"].as_u64().is_some_and(|n| n >= 1), "searched while loading: {json}");
        assert!(meanwhile["p50_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{json}");
    }
    assert_eq!(json["search"].as_array().map(Vec::len), Some(3), "{json}");
    assert!(json["search"][0]["p50_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{json}");
    for mode in json["search"].as_array().into_iter().flatten() {
        assert_eq!(mode["failed"], 0, "{json}");
    }
    // The recall phase ran every query twice, the second time as an exact scan (operator only).
    assert_eq!(json["vector_recall"]["queries"], 10, "{json}");
    assert!(json["vector_recall"]["recall"].as_f64().is_some_and(|r| (0.0..=1.0).contains(&r)), "{json}");
    assert!(process.terminate().await?.success());
    env.finish().await
}
