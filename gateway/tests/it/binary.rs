//! The `memory-gateway` binary.

use common::testing::{Process, TestEnv, free_addr, http_get};

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
