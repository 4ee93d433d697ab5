//! The `memory-gateway` binary.

use common::testing::{Process, TestEnv, free_addr, http, http_get};

#[tokio::test]
async fn the_binary_serves_http_and_stops_cleanly_on_sigterm() -> anyhow::Result<()> {
    let addr = free_addr()?;
    let env = TestEnv::start_with(|vars| {
        vars.insert("MEMORY_ADMIN_API_KEY".into(), crate::harness::KEY.into());
        vars.insert("MEMORY_HTTP_ADDR".into(), addr.to_string());
    })
    .await?;
    let process = Process::spawn(env!("CARGO_BIN_EXE_memory-gateway"), &env.vars)?;
    env.until_ready(addr).await?;
    let (status, body) = http_get(addr, "/v1/memory/search?tenant_id=a&query=b").await?;
    assert_eq!(status, 401, "{body}");
    let status = process.terminate().await?;
    assert!(status.success(), "exit after SIGTERM: {status}");
    env.finish().await
}

#[tokio::test]
async fn the_binary_refuses_to_start_without_an_admin_key() -> anyhow::Result<()> {
    let env = TestEnv::start_with(|vars| {
        vars.remove("MEMORY_ADMIN_API_KEY");
    })
    .await?;
    let (status, stderr) = Process::spawn(env!("CARGO_BIN_EXE_memory-gateway"), &env.vars)?.exit().await?;
    assert!(!status.success());
    assert!(stderr.contains("MEMORY_ADMIN_API_KEY is not set"), "{stderr}");
    env.finish().await
}

#[tokio::test]
async fn keys_never_appear_in_the_log() -> anyhow::Result<()> {
    let addr = free_addr()?;
    let env = TestEnv::start_with(|vars| {
        vars.insert("MEMORY_ADMIN_API_KEY".into(), crate::harness::KEY.into());
        vars.insert("MEMORY_HTTP_ADDR".into(), addr.to_string());
        vars.insert("MEMORY_LOG".into(), "debug,sqlx=info,async_nats=info,hyper=info".into());
    })
    .await?;
    let process = Process::spawn_logging(env!("CARGO_BIN_EXE_memory-gateway"), &env.vars)?;
    env.until_ready(addr).await?;
    let operator = [("x-api-key", crate::harness::KEY)];
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
    assert!(!log.contains(crate::harness::KEY), "the operator key appears in the log");
    assert!(!log.contains("mk_wrongwrongwrong"), "a presented key appears in the log");
    env.finish().await
}
