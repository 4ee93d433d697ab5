//! Retention throughput on one large tenant, against the real services (`scripts/services.sh up`,
//! `export $(scripts/services.sh env)`): `cargo bench -p retention --bench archive`.
//! Loads `BENCH_MESSAGES` (default 100000) messages 60 days old and unimportant into one tenant,
//! then times a real run archiving all of them, and one deleting them 100 days after archiving.
//! Then loads them again and times erasing the tenant over NATS (`mem.v1.tenants.erase`), as the
//! gateway's `DELETE /v1/tenants/{id}/data` does.

use std::time::Instant;

use chrono::{Duration, Utc};
use common::bus::Envelope;
use common::contract::{Deleted, EraseTenantRequest, Reply, RetentionRunRequest, VERSION};
use common::domain::{MessageId, MessageInput, RetentionAction, TenantId};
use common::store::IngestWrites;
use common::store::NewRow;
use common::testing::TestEnv;
use prometheus_client::registry::Registry;

async fn load(env: &TestEnv, messages: usize) -> anyhow::Result<()> {
    for start in (0..messages).step_by(1000) {
        let rows: Vec<NewRow> = (start..(start + 1000).min(messages))
            .map(|i| {
                let message = MessageInput {
                    tenant_id: "bench".into(),
                    conversation_id: format!("c{}", i % 200),
                    role: "user".into(),
                    content: format!("message {i}"),
                    created_at: Some(Utc::now() - Duration::days(60)),
                    ..MessageInput::default()
                }
                .validate(Utc::now(), MessageId::new)
                .expect("valid");
                NewRow { message, importance: 0.1, origin: None }
            })
            .collect();
        env.store.insert_messages(&rows).await?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let messages: usize = std::env::var("BENCH_MESSAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let env = TestEnv::start().await?;
    let loading = Instant::now();
    load(&env, messages).await?;
    sqlx::query("ANALYZE messages").execute(env.store.pool()).await?;
    println!("machine: {} cores", std::thread::available_parallelism()?);
    println!("{messages} messages loaded in {:.1} s", loading.elapsed().as_secs_f64());

    let runner = retention::Retention::build(&env.config, env.deps.clone(), &mut Registry::default()).await?.runner();
    let run = |action| RetentionRunRequest {
        v: VERSION,
        tenant_id: Some(TenantId::parse("bench").expect("valid")),
        all_tenants: false,
        actions: vec![action],
        dry_run: false,
        operation_id: None,
    };
    let started = Instant::now();
    let report = runner.run(&run(RetentionAction::Archive)).await?;
    let took = started.elapsed().as_secs_f64();
    println!(
        "archived {} in {took:.2} s: {:.0} rows/s (batches of {})",
        report.archived,
        report.archived as f64 / took,
        env.config.retention.batch_size
    );

    sqlx::query("UPDATE messages SET archived_at = now() - interval '100 days'").execute(env.store.pool()).await?;
    let started = Instant::now();
    let report = runner.run(&run(RetentionAction::Delete)).await?;
    let took = started.elapsed().as_secs_f64();
    println!("deleted {} in {took:.2} s: {:.0} rows/s", report.deleted, report.deleted as f64 / took);

    load(&env, messages).await?;
    sqlx::query("ANALYZE messages").execute(env.store.pool()).await?;
    let service = retention::Retention::build(&env.config, env.deps.clone(), &mut Registry::default()).await?;
    let (t, grace) = (env.shutdown.clone(), env.config.shutdown_grace);
    env.tasks.spawn(async move { service.run(t, grace).await });
    let request =
        EraseTenantRequest { v: VERSION, tenant_id: TenantId::parse("bench")?, settings: false, operation_id: None };
    let envelope = Envelope::new(env.subjects.erase_tenant(), serde_json::to_vec(&request)?);
    let started = Instant::now();
    let reply = env.deps.bus.request(envelope, std::time::Duration::from_secs(600)).await?;
    let took = started.elapsed().as_secs_f64();
    let Reply::Ok(erased) = serde_json::from_slice::<Reply<Deleted>>(&reply)? else {
        anyhow::bail!("erase failed: {}", String::from_utf8_lossy(&reply))
    };
    println!(
        "erased {} in {took:.2} s: {:.0} rows/s (over NATS, no vectors)",
        erased.deleted,
        erased.deleted as f64 / took
    );
    env.finish().await
}
