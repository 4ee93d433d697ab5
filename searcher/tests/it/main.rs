//! The `memory-searcher` binary against real NATS and Postgres.

use std::time::Duration;

use common::bus::Envelope;
use common::contract::{GetMessageRequest, GetMessageResponse, Reply, VERSION};
use common::domain::MessageId;
use common::testing::{Process, TestEnv, free_addr, http_get};

#[tokio::test]
async fn the_binary_answers_requests_serves_ops_and_stops_cleanly_on_sigterm() -> anyhow::Result<()> {
    let ops = free_addr()?;
    let env = TestEnv::start_with(|vars| {
        vars.insert("MEMORY_METRICS_ADDR".into(), ops.to_string());
    })
    .await?;
    let process = Process::spawn(env!("CARGO_BIN_EXE_memory-searcher"), &env.vars)?;
    env.until_ready(ops).await?;

    let request = GetMessageRequest { v: VERSION, message_id: MessageId::new(), tenant_id: None };
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
