//! Each role as its own process (`memory gateway|embedder|searcher|retention`), the operator's
//! commands, and how a bad configuration stops the binary.

use std::time::Duration;

use common::bus::Envelope;
use common::contract::{GetMessageRequest, GetMessageResponse, Reply, VERSION};
use common::domain::{MessageId, TenantId};
use common::testing::{Process, TestEnv, free_addr, http, http_get};
use serde_json::json;

use crate::MEMORY;

const KEY: &str = "test-admin-key-0123456789";

/// A fresh environment with `memory <role>` running on it, ready on its ops port.
async fn running(role: &str) -> anyhow::Result<(TestEnv, Process, std::net::SocketAddr)> {
    let ops = free_addr()?;
    let env = TestEnv::start_with(|vars| {
        vars.insert("MEMORY_METRICS_ADDR".into(), ops.to_string());
    })
    .await?;
    let process = Process::spawn(MEMORY, &[role], &env.vars)?;
    env.until_ready(ops).await?;
    Ok((env, process, ops))
}

#[tokio::test]
async fn the_embedder_stores_and_embeds_serves_ops_and_stops_cleanly_on_sigterm() -> anyhow::Result<()> {
    let (env, process, ops) = running("embedder").await?;

    let payload = json!({"v": 1, "tenant_id": "acme", "conversation_id": "c", "role": "user", "content": "hello"});
    let subject = format!("{}.v1.ingest.acme", env.subjects.prefix());
    env.deps.bus.publish(Envelope::new(subject, payload.to_string()), None).await?;
    env.eventually(|| async {
        let embedded: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE status = 'embedded'")
            .fetch_one(env.store.pool())
            .await?;
        anyhow::ensure!(embedded == 1, "not embedded yet");
        Ok(())
    })
    .await?;
    // The row commits before the events go out and the batch is counted.
    env.eventually(|| async {
        let (_, metrics) = http_get(ops, "/metrics").await?;
        anyhow::ensure!(metrics.contains("memory_embedder_messages_total{outcome=\"stored\"} 1"), "{metrics}");
        anyhow::ensure!(
            metrics.contains("memory_embedder_embeddings_total{provider=\"hash\",outcome=\"ok\"} 1"),
            "{metrics}"
        );
        anyhow::ensure!(metrics.contains("memory_embedder_breaker_state 0"), "{metrics}");
        anyhow::ensure!(metrics.contains("memory_build_info{"), "{metrics}");
        Ok(())
    })
    .await?;
    assert_eq!(http_get(ops, "/healthz").await?.0, 200);

    let status = process.terminate().await?;
    assert!(status.success(), "exit after SIGTERM: {status}");
    env.finish().await
}

#[tokio::test]
async fn the_searcher_answers_requests_serves_ops_and_stops_cleanly_on_sigterm() -> anyhow::Result<()> {
    let (env, process, ops) = running("searcher").await?;

    let request = GetMessageRequest { v: VERSION, tenant_id: TenantId::parse("acme")?, message_id: MessageId::new() };
    let envelope = Envelope::new(env.subjects.get_message(), serde_json::to_vec(&request)?);
    let reply = env.deps.bus.request(envelope, Duration::from_secs(5)).await?;
    match serde_json::from_slice::<Reply<GetMessageResponse>>(&reply)? {
        Reply::Ok(r) => assert!(r.message.is_none()),
        Reply::Error(e) => anyhow::bail!("{e}"),
    }
    let (_, metrics) = http_get(ops, "/metrics").await?;
    assert!(metrics.contains("memory_searcher_requests_total{endpoint=\"get\",outcome=\"ok\"} 1"), "{metrics}");

    let status = process.terminate().await?;
    assert!(status.success(), "exit after SIGTERM: {status}");
    env.finish().await
}

#[tokio::test]
async fn retention_serves_ops_and_stops_cleanly_on_sigterm() -> anyhow::Result<()> {
    let (env, process, ops) = running("retention").await?;
    let (_, metrics) = http_get(ops, "/metrics").await?;
    assert!(metrics.contains("memory_retention_runs_total"), "{metrics}");
    // Hourly by default: the longest gap between runs is an hour.
    assert!(metrics.contains("memory_retention_schedule_interval_seconds 3600"), "{metrics}");
    assert!(process.terminate().await?.success());
    env.finish().await
}

#[tokio::test]
async fn the_gateway_serves_http_and_ops_and_stops_cleanly_on_sigterm() -> anyhow::Result<()> {
    let (addr, ops) = (free_addr()?, free_addr()?);
    let env = TestEnv::start_with(|vars| {
        vars.insert("MEMORY_ADMIN_API_KEY".into(), KEY.into());
        vars.insert("MEMORY_HTTP_ADDR".into(), addr.to_string());
        vars.insert("MEMORY_METRICS_ADDR".into(), ops.to_string());
    })
    .await?;
    let process = Process::spawn(MEMORY, &["gateway"], &env.vars)?;
    env.until_ready(addr).await?;
    env.until_ready(ops).await?;
    let (status, body) = http_get(addr, "/v1/memory/search?tenant_id=a&query=b").await?;
    assert_eq!(status, 401, "{body}");
    // The same registry on both ports.
    for port in [addr, ops] {
        let (status, metrics) = http_get(port, "/metrics").await?;
        assert_eq!(status, 200);
        assert!(metrics.contains("route=\"/v1/memory/search\",status=\"401\"} 1"), "{metrics}");
        assert!(metrics.contains("memory_db_pool_max_connections"), "{metrics}");
    }
    let status = process.terminate().await?;
    assert!(status.success(), "exit after SIGTERM: {status}");
    env.finish().await
}

#[tokio::test]
async fn the_gateway_refuses_to_start_without_an_admin_key() -> anyhow::Result<()> {
    let env = TestEnv::start_with(|vars| {
        vars.remove("MEMORY_ADMIN_API_KEY");
        vars.insert("MEMORY_METRICS_ADDR".into(), "127.0.0.1:0".into());
    })
    .await?;
    let (status, stderr) = Process::spawn(MEMORY, &["gateway"], &env.vars)?.exit().await?;
    assert_eq!(status.code(), Some(2), "a configuration error: {stderr}");
    assert!(stderr.contains("MEMORY_ADMIN_API_KEY is not set"), "{stderr}");
    env.finish().await
}

#[tokio::test]
async fn keys_never_appear_in_the_log() -> anyhow::Result<()> {
    let addr = free_addr()?;
    let env = TestEnv::start_with(|vars| {
        vars.insert("MEMORY_ADMIN_API_KEY".into(), KEY.into());
        vars.insert("MEMORY_HTTP_ADDR".into(), addr.to_string());
        vars.insert("MEMORY_METRICS_ADDR".into(), "127.0.0.1:0".into());
        vars.insert("MEMORY_LOG".into(), "debug,sqlx=info,async_nats=info,hyper=info".into());
    })
    .await?;
    let process = Process::spawn_logging(MEMORY, &["gateway"], &env.vars)?;
    env.until_ready(addr).await?;
    let operator = [("x-api-key", KEY)];
    let (status, body) = http(addr, "POST", "/v1/admin/tenants", &operator, Some(r#"{"id":"acme"}"#)).await?;
    assert_eq!(status, 201, "{body}");
    let (status, body) =
        http(addr, "POST", "/v1/admin/tenants/acme/keys", &operator, Some(r#"{"scopes":["read"]}"#)).await?;
    assert_eq!(status, 201, "{body}");
    let key = serde_json::from_str::<serde_json::Value>(&body)?["key"].as_str().unwrap().to_owned();
    let bearer = format!("Bearer {key}");
    let (status, _) = http(addr, "GET", "/v1/tenants/acme/ranking", &[("authorization", &bearer)], None).await?;
    assert_eq!(status, 200);
    let (status, _) =
        http(addr, "GET", "/v1/tenants/acme/ranking", &[("x-api-key", "mk_wrongwrongwrong")], None).await?;
    assert_eq!(status, 401);
    let (status, log) = process.terminate_logged().await?;
    assert!(status.success());
    assert!(log.contains("/v1/admin/tenants/acme/keys"), "the log holds the requests: {log}");
    assert!(!log.contains(&key[3..]), "a tenant key appears in the log");
    assert!(!log.contains(KEY), "the operator key appears in the log");
    assert!(!log.contains("mk_wrongwrongwrong"), "a presented key appears in the log");
    env.finish().await
}

#[tokio::test]
async fn a_bad_or_missing_variable_stops_the_binary_with_exit_code_2_naming_it() -> anyhow::Result<()> {
    let vars = [("MEMORY_EMBEDDER_BATCH_SIZE".to_owned(), "lots".to_owned())].into();
    let (status, stderr) = Process::spawn(MEMORY, &["embedder"], &vars)?.exit().await?;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("MEMORY_EMBEDDER_BATCH_SIZE=\"lots\""), "{stderr}");
    for command in ["searcher", "migrate"] {
        let (status, stderr) = Process::spawn(MEMORY, &[command], &Default::default())?.exit().await?;
        assert_eq!(status.code(), Some(2), "{command}: {stderr}");
        assert!(stderr.contains("MEMORY_DATABASE_URL is not set"), "{command}: {stderr}");
    }

    // Found once connected: a schedule retention cannot use.
    let env = TestEnv::start_with(|vars| {
        vars.insert("MEMORY_METRICS_ADDR".into(), "127.0.0.1:0".into());
        vars.insert("MEMORY_RETENTION_SCHEDULE".into(), "every full moon".into());
    })
    .await?;
    let (status, stderr) = Process::spawn(MEMORY, &["retention"], &env.vars)?.exit().await?;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("MEMORY_RETENTION_SCHEDULE=\"every full moon\""), "{stderr}");
    env.finish().await
}

#[tokio::test]
async fn the_embedder_names_what_its_provider_lacks() -> anyhow::Result<()> {
    for (provider, missing) in [("local", "MEMORY_MODEL_DIR"), ("gemini", "MEMORY_GEMINI_API_KEY")] {
        let vars = [("MEMORY_EMBEDDING_PROVIDER".to_owned(), provider.to_owned())].into();
        let (status, stderr) = Process::spawn(MEMORY, &["embedder"], &vars)?.exit().await?;
        assert_eq!(status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(missing), "{provider}: {stderr}");
    }
    let vars = [
        ("MEMORY_EMBEDDING_PROVIDER".to_owned(), "local".to_owned()),
        ("MEMORY_MODEL_DIR".to_owned(), "/nonexistent/model".to_owned()),
    ]
    .into();
    let (status, stderr) = Process::spawn(MEMORY, &["embedder"], &vars)?.exit().await?;
    assert!(!status.success());
    assert!(stderr.contains("MEMORY_MODEL_DIR=/nonexistent/model") && stderr.contains("config.json"), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn reembed_fills_the_new_space_and_activates_it() -> anyhow::Result<()> {
    let fake = common::testing::gemini::FakeGemini::start().await;
    let env = TestEnv::start_with(|vars| {
        vars.insert("MEMORY_METRICS_ADDR".into(), "127.0.0.1:0".into());
    })
    .await?;
    for i in 0..30 {
        let payload = json!({"v": 1, "tenant_id": "acme", "conversation_id": "c", "role": "user", "content": format!("message {i}")});
        let subject = format!("{}.v1.ingest.acme", env.subjects.prefix());
        env.deps.bus.publish(Envelope::new(subject, payload.to_string()), None).await?;
    }
    let process = Process::spawn(MEMORY, &["embedder"], &env.vars)?;
    env.eventually(|| async {
        let embedded: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE status = 'embedded'")
            .fetch_one(env.store.pool())
            .await?;
        anyhow::ensure!(embedded == 30, "{embedded} embedded");
        Ok(())
    })
    .await?;
    assert!(process.terminate().await?.success());

    let mut vars = env.vars.clone();
    vars.extend(fake.vars());
    vars.insert("MEMORY_EMBEDDER_BATCH_SIZE".into(), "10".into());
    let output = Process::spawn_with_args(MEMORY, &["reembed"], &vars)?.output().await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("reembed: done; the space is active"), "{stdout}");
    let active: String =
        sqlx::query_scalar("SELECT provider FROM embedding_spaces WHERE active").fetch_one(env.store.pool()).await?;
    assert_eq!(active, "gemini");
    assert_eq!(fake.calls().iter().map(|c| c.texts.len()).sum::<usize>(), 30);
    env.finish().await
}

#[tokio::test]
async fn without_migrating_a_role_waits_for_memory_migrate() -> anyhow::Result<()> {
    let ops = free_addr()?;
    let env = TestEnv::start_with(|vars| {
        vars.insert("MEMORY_METRICS_ADDR".into(), ops.to_string());
    })
    .await?;
    // A database of its own with nothing in it yet.
    let fresh = format!("t_{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{fresh}\""))).execute(env.store.pool()).await?;
    let mut vars = env.vars.clone();
    let url = common::testing::with_database(&vars["MEMORY_DATABASE_URL"], &fresh);
    vars.insert("MEMORY_DATABASE_URL".into(), url);
    vars.insert("MEMORY_DATABASE_MIGRATE".into(), "false".into());

    let migrated = || async {
        let url = common::testing::with_database(&env.vars["MEMORY_DATABASE_URL"], &fresh);
        let mut db = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await?;
        let exists: bool =
            sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL").fetch_one(&mut db).await?;
        anyhow::Ok(exists)
    };

    // Given a second to find the schema, it never makes it: it gives up, naming the step to run.
    let mut impatient = vars.clone();
    impatient.insert("MEMORY_STARTUP_TIMEOUT_SECS".into(), "1".into());
    let (status, stderr) = Process::spawn(MEMORY, &["searcher"], &impatient)?.exit().await?;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("run `memory migrate`"), "{stderr}");
    assert!(!migrated().await?, "a role with MEMORY_DATABASE_MIGRATE=false migrated");

    // Given time, it waits alive and not ready until `memory migrate` has run.
    let searcher = Process::spawn(MEMORY, &["searcher"], &vars)?;
    env.eventually(|| async {
        anyhow::ensure!(http_get(ops, "/healthz").await?.0 == 200, "not up yet");
        Ok(())
    })
    .await?;
    let (status, body) = http_get(ops, "/readyz").await?;
    assert_eq!((status, body.as_str()), (503, "starting: connecting to Postgres and NATS"));
    let output = Process::spawn_with_args(MEMORY, &["migrate"], &vars)?.output().await?;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(migrated().await?);
    env.until_ready(ops).await?;
    assert!(searcher.terminate().await?.success());
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE \"{fresh}\" WITH (FORCE)")))
        .execute(env.store.pool())
        .await?;
    env.finish().await
}

#[tokio::test]
async fn the_operator_manages_tenants_and_keys_on_the_command_line() -> anyhow::Result<()> {
    let addr = free_addr()?;
    let env = TestEnv::start_with(|vars| {
        vars.insert("MEMORY_ADMIN_API_KEY".into(), KEY.into());
        vars.insert("MEMORY_HTTP_ADDR".into(), addr.to_string());
        vars.insert("MEMORY_METRICS_ADDR".into(), "127.0.0.1:0".into());
        vars.insert("MEMORY_AUTH_CACHE_TTL_SECS".into(), "0".into());
    })
    .await?;
    let memory = |args: &'static [&'static str]| {
        let vars = env.vars.clone();
        async move {
            let output = Process::spawn_with_args(MEMORY, args, &vars)?.output().await?;
            let stdout = String::from_utf8(output.stdout)?;
            anyhow::ensure!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
            Ok(stdout)
        }
    };
    memory(&["tenants", "create", "named", "--name", "A named tenant"]).await?;
    let key = memory(&["keys", "create", "--tenant", "cli-tenant", "--scopes", "read,write", "--name", "ci"]).await?;
    let key = key.trim().to_owned();
    assert!(key.starts_with("mk_"), "{key}");
    let tenants = memory(&["tenants", "list"]).await?;
    assert!(tenants.contains("named\tA named tenant") && tenants.contains("cli-tenant"), "{tenants}");
    let listed: serde_json::Value =
        serde_json::from_str(memory(&["keys", "list", "--tenant", "cli-tenant"]).await?.trim())?;
    assert_eq!((listed["name"].as_str(), listed["scopes"].clone()), (Some("ci"), json!(["read", "write"])));

    let process = Process::spawn(MEMORY, &["gateway"], &env.vars)?;
    env.until_ready(addr).await?;
    let with_key = [("x-api-key", key.as_str())];
    assert_eq!(http(addr, "GET", "/v1/tenants/cli-tenant/ranking", &with_key, None).await?.0, 200);
    let id = listed["id"].as_str().unwrap().to_owned();
    let output =
        Process::spawn_with_args(MEMORY, &["keys", "revoke", "--tenant", "cli-tenant", "--id", &id], &env.vars)?
            .output()
            .await?;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(http(addr, "GET", "/v1/tenants/cli-tenant/ranking", &with_key, None).await?.0, 401);
    assert!(process.terminate().await?.success());
    env.finish().await
}

#[tokio::test]
async fn every_role_works_as_its_own_nats_user_with_only_its_permissions() -> anyhow::Result<()> {
    use common::testing::nats::ConfiguredNats;
    let nats = ConfiguredNats::start().await?;
    let env = TestEnv::start().await?;
    let http_addr = free_addr()?;
    let mut processes = Vec::new();
    let mut ops = Vec::new();
    for role in ["embedder", "searcher", "retention", "gateway"] {
        let mut vars = env.vars.clone();
        let metrics = free_addr()?;
        vars.extend([
            ("MEMORY_NATS_URL".to_owned(), nats.url.clone()),
            ("MEMORY_SUBJECT_PREFIX".to_owned(), "mem".to_owned()),
            ("MEMORY_NATS_USER".to_owned(), role.to_owned()),
            ("MEMORY_NATS_PASSWORD".to_owned(), ConfiguredNats::password(role)),
            ("MEMORY_METRICS_ADDR".to_owned(), metrics.to_string()),
            ("MEMORY_HTTP_ADDR".to_owned(), http_addr.to_string()),
            ("MEMORY_ADMIN_API_KEY".to_owned(), KEY.to_owned()),
        ]);
        processes.push(Process::spawn_logging(MEMORY, &[role], &vars)?);
        ops.push(metrics);
    }
    for addr in ops.iter().copied().chain([http_addr]) {
        env.until_ready(addr).await?;
    }
    let key = [("x-api-key", KEY)];
    let call = |method: &'static str, path: String, body: Option<serde_json::Value>| async move {
        let body = body.map(|b| b.to_string());
        http(http_addr, method, &path, &key, body.as_deref()).await
    };
    // The whole life of a message, each step through the role that owns it.
    let (status, body) = call("POST", "/v1/admin/tenants".into(), Some(json!({"id": "acme"}))).await?;
    assert_eq!(status, 201, "{body}");
    let message = json!({"tenant_id": "acme", "conversation_id": "c", "role": "user", "content": "the red door"});
    let (status, body) = call("POST", "/v1/messages?wait=embedded".into(), Some(message)).await?;
    assert_eq!(status, 201, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body)?["id"].as_str().unwrap_or_default().to_owned();
    let (status, body) = call("GET", "/v1/memory/search?tenant_id=acme&query=red%20door".into(), None).await?;
    assert!(status == 200 && body.contains(&id), "{status} {body}");
    let (status, body) = call("GET", format!("/v1/messages/{id}?tenant_id=acme"), None).await?;
    assert_eq!(status, 200, "{body}");
    let (status, body) = call("POST", format!("/v1/messages/{id}/archive?tenant_id=acme"), Some(json!({}))).await?;
    assert_eq!(status, 200, "{body}");
    let edit = json!({"content": "the blue door", "archived": false});
    let (status, body) = call("PUT", format!("/v1/messages/{id}?tenant_id=acme"), Some(edit)).await?;
    assert_eq!(status, 200, "{body}");
    env.eventually(|| async {
        let (_, body) = call("GET", format!("/v1/messages/{id}?tenant_id=acme"), None).await?;
        anyhow::ensure!(body.contains("\"embedded\"") && body.contains("blue"), "{body}");
        Ok(())
    })
    .await?;
    let run = json!({"tenant_id": "acme", "dry_run": true});
    let (status, body) = call("POST", "/v1/admin/retention/run".into(), Some(run)).await?;
    assert_eq!(status, 200, "{body}");
    let (status, body) = call("GET", "/v1/tenants/acme/export".into(), None).await?;
    assert!(status == 200 && body.contains("blue"), "{status} {body}");
    let (status, body) = call("DELETE", format!("/v1/messages/{id}?tenant_id=acme"), None).await?;
    assert_eq!(status, 204, "{body}");
    let (status, body) = call("DELETE", "/v1/tenants/acme/data".into(), None).await?;
    assert_eq!(status, 200, "{body}");
    for process in processes {
        let (status, log) = process.terminate_logged().await?;
        assert!(status.success(), "{status}: {log}");
        assert!(!log.contains("Permissions Violation"), "a role lacks a permission:\n{log}");
    }
    env.finish().await
}
