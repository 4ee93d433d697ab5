//! Retention against a real Postgres and NATS: the policy's rules with controlled timestamps, dry
//! runs that match real runs, concurrent runs, and the NATS service.

use std::time::Duration;

use chrono::{Duration as Days, Utc};
use common::contract::{Reply, RetentionRunRequest, RetentionRunResponse, VERSION};
use common::domain::{MessageId, MessageInput, RetentionAction, TenantId};
use common::store::IngestWrites;
use common::store::NewRow;
use common::testing::TestEnv;
use prometheus_client::registry::Registry;

/// Stores a message `age_days` old with this importance, in `conversation`.
async fn message(
    env: &TestEnv,
    conversation: &str,
    age_days: i64,
    importance: f64,
    pinned: bool,
) -> anyhow::Result<MessageId> {
    let message = MessageInput {
        tenant_id: "acme".into(),
        conversation_id: conversation.into(),
        role: "user".into(),
        content: format!("{age_days} days old, importance {importance}"),
        created_at: Some(Utc::now() - Days::days(age_days) - Days::minutes(1)),
        pinned: Some(pinned),
        ..MessageInput::default()
    }
    .validate(Utc::now(), MessageId::new)
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let id = message.message_id;
    env.store.insert_messages(&[NewRow { message, importance, origin: None }]).await?;
    Ok(id)
}

async fn archived(env: &TestEnv, id: MessageId) -> anyhow::Result<Option<bool>> {
    let row: Option<(Option<chrono::DateTime<Utc>>,)> =
        sqlx::query_as("SELECT archived_at FROM messages WHERE id = $1")
            .bind(id.0)
            .fetch_optional(env.store.pool())
            .await?;
    Ok(row.map(|(at,)| at.is_some()))
}

fn request(dry_run: bool) -> RetentionRunRequest {
    RetentionRunRequest {
        v: VERSION,
        tenant_id: Some(TenantId::parse("acme").unwrap()),
        all_tenants: false,
        actions: vec![RetentionAction::Archive, RetentionAction::Delete],
        dry_run,
        operation_id: None,
    }
}

async fn runner(env: &TestEnv, vars: &[(&str, &str)]) -> anyhow::Result<retention::Runner> {
    let mut all = env.vars.clone();
    all.extend(vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    let config = common::Config::from_map(&all)?;
    Ok(retention::Retention::build(&config, env.deps.clone(), &mut Registry::default()).await?.runner())
}

#[tokio::test]
async fn the_policy_archives_old_unimportant_messages_and_deletes_long_archived_ones() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    // Defaults: archive after 30 days below importance 0.3; delete 90 days after archiving.
    let old_low = message(&env, "c", 40, 0.1, false).await?;
    let old_high = message(&env, "c", 40, 0.8, false).await?;
    let fresh_low = message(&env, "c", 1, 0.1, false).await?;
    let pinned = message(&env, "c", 400, 0.0, true).await?;
    let long_archived = message(&env, "c", 200, 0.1, false).await?;
    sqlx::query("UPDATE messages SET archived_at = now() - interval '100 days' WHERE id = $1")
        .bind(long_archived.0)
        .execute(env.store.pool())
        .await?;
    let runner = runner(&env, &[]).await?;

    let dry = runner.run(&request(true)).await?;
    assert_eq!((dry.archived, dry.deleted), (1, 1), "{dry:?}");
    assert_eq!(dry.tenants[0].sample_archived, [old_low]);
    assert_eq!(dry.tenants[0].sample_deleted, [long_archived]);
    assert_eq!(archived(&env, old_low).await?, Some(false), "a dry run changes nothing");
    assert_eq!(archived(&env, long_archived).await?, Some(true));

    let mut events = env.deps.bus.subscribe(format!("{}.v1.events.acme.>", env.subjects.prefix())).await?;
    let real = runner.run(&request(false)).await?;
    assert_eq!((real.archived, real.deleted), (dry.archived, dry.deleted), "the real run does what the dry run said");
    // Each change is announced.
    for (kind, id) in [("archived", old_low), ("deleted", long_archived)] {
        let event = tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut events)).await?.unwrap();
        assert!(event.subject.contains(&format!(".{kind}.")), "{}", event.subject);
        let body: serde_json::Value = serde_json::from_slice(&event.payload)?;
        assert_eq!(body["message_ids"], serde_json::json!([id]));
    }
    assert_eq!(real.tenants[0].sample_archived, dry.tenants[0].sample_archived);
    assert_eq!(archived(&env, old_low).await?, Some(true));
    assert_eq!(archived(&env, old_high).await?, Some(false), "old but important: kept (AND, not OR)");
    assert_eq!(archived(&env, fresh_low).await?, Some(false), "unimportant but fresh: kept");
    assert_eq!(archived(&env, pinned).await?, Some(false), "pinned: exempt");
    assert_eq!(archived(&env, long_archived).await?, None, "deleted for real");
    let again = runner.run(&request(false)).await?;
    assert_eq!((again.archived, again.deleted), (0, 0), "nothing left to do");
    env.finish().await
}

#[tokio::test]
async fn max_age_and_the_conversation_cap_archive_regardless_of_importance() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let ancient = message(&env, "a", 200, 0.9, false).await?;
    let mut chatty = Vec::new();
    for age in [5, 4, 3, 2, 1] {
        chatty.push(message(&env, "b", age, 0.9, false).await?);
    }
    let pinned_old = message(&env, "b", 10, 0.9, true).await?;
    let runner = runner(
        &env,
        &[("MEMORY_RETENTION_MAX_AGE_DAYS", "100"), ("MEMORY_RETENTION_MAX_MESSAGES_PER_CONVERSATION", "3")],
    )
    .await?;
    let report = runner.run(&request(false)).await?;
    assert_eq!(report.archived, 3, "{report:?}");
    assert_eq!(archived(&env, ancient).await?, Some(true), "older than max_age");
    assert_eq!(archived(&env, chatty[0]).await?, Some(true), "the oldest beyond the cap");
    assert_eq!(archived(&env, chatty[1]).await?, Some(true));
    for id in &chatty[2..] {
        assert_eq!(archived(&env, *id).await?, Some(false), "the newest three stay");
    }
    assert_eq!(archived(&env, pinned_old).await?, Some(false), "pinned: exempt, and not counted");
    env.finish().await
}

#[tokio::test]
async fn concurrent_runs_archive_each_message_once() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    for _ in 0..300 {
        message(&env, "c", 60, 0.05, false).await?;
    }
    let a = runner(&env, &[("MEMORY_RETENTION_BATCH_SIZE", "25")]).await?;
    let b = runner(&env, &[("MEMORY_RETENTION_BATCH_SIZE", "25")]).await?;
    let run = request(false);
    let (ra, rb) = tokio::join!(a.run(&run), b.run(&run));
    let (ra, rb) = (ra?, rb?);
    assert_eq!(ra.archived + rb.archived, 300, "{ra:?} {rb:?}");
    assert!(ra.tenants[0].busy || rb.tenants[0].busy || ra.archived == 0 || rb.archived == 0);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE archived_at IS NOT NULL")
        .fetch_one(env.store.pool())
        .await?;
    assert_eq!(count, 300);
    env.finish().await
}

#[tokio::test]
async fn the_nats_service_runs_retention_for_the_tenants_named_and_refuses_bad_requests() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let old = message(&env, "c", 45, 0.1, false).await?;
    let service = retention::Retention::build(&env.config, env.deps.clone(), &mut Registry::default()).await?;
    let (t, grace) = (env.shutdown.clone(), env.config.shutdown_grace);
    env.tasks.spawn(async move { service.run(t, grace).await });
    let ask = |payload: serde_json::Value| {
        let envelope = common::bus::Envelope::new(env.subjects.retention_run(), payload.to_string());
        env.deps.bus.request(envelope, Duration::from_secs(10))
    };
    // Naming no tenant is not "every tenant": that takes an explicit `all_tenants`.
    let reply: Reply<RetentionRunResponse> =
        serde_json::from_slice(&ask(serde_json::json!({"v": 1, "actions": ["archive"], "dry_run": false})).await?)?;
    assert!(matches!(&reply, Reply::Error(e) if e.message.contains("all_tenants")), "{reply:?}");
    assert_eq!(archived(&env, old).await?, Some(false));
    let all = serde_json::json!({"v": 1, "all_tenants": true, "actions": ["archive"], "dry_run": false});
    let reply: Reply<RetentionRunResponse> = serde_json::from_slice(&ask(all).await?)?;
    let Reply::Ok(report) = reply else { anyhow::bail!("{reply:?}") };
    assert_eq!(report.archived, 1, "every tenant when asked for");
    assert_eq!(archived(&env, old).await?, Some(true));
    let reply: Reply<RetentionRunResponse> =
        serde_json::from_slice(&ask(serde_json::json!({"v": 1, "actions": []})).await?)?;
    assert!(matches!(reply, Reply::Error(e) if e.message.contains("at least one action")));
    let reply: Reply<RetentionRunResponse> =
        serde_json::from_slice(&ask(serde_json::json!({"v": 1, "actions": ["shred"]})).await?)?;
    assert!(matches!(reply, Reply::Error(e) if e.message.contains("malformed")));
    // A tenant with nothing stored has nothing to archive.
    let unknown = serde_json::json!({"v": 1, "tenant_id": "nobody", "actions": ["archive"]});
    let reply: Reply<RetentionRunResponse> = serde_json::from_slice(&ask(unknown).await?)?;
    let Reply::Ok(report) = reply else { anyhow::bail!("{reply:?}") };
    assert_eq!((report.archived, report.deleted), (0, 0));
    env.finish().await
}

#[tokio::test]
async fn a_bad_schedule_is_refused_at_build_naming_the_variable() -> anyhow::Result<()> {
    let env = TestEnv::start_with(|vars| {
        vars.insert("MEMORY_RETENTION_SCHEDULE".into(), "every full moon".into());
    })
    .await?;
    let err = retention::Retention::build(&env.config, env.deps.clone(), &mut Registry::default())
        .await
        .err()
        .expect("a bad schedule must be refused at build");
    let source = std::error::Error::source(&err).map(ToString::to_string).unwrap_or_default();
    assert!(source.contains("MEMORY_RETENTION_SCHEDULE=\"every full moon\""), "{err}: {source}");
    env.finish().await
}

#[tokio::test]
async fn lifecycle_commands_are_counted_and_runs_prune_old_tombstones() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let id = message(&env, "c", 1, 0.5, false).await?;
    let mut registry = Registry::with_prefix("memory");
    let service = retention::Retention::build(&env.config, env.deps.clone(), &mut registry).await?;
    let runner = service.runner();
    let (t, grace) = (env.shutdown.clone(), env.config.shutdown_grace);
    env.tasks.spawn(async move { service.run(t, grace).await });
    let ask = |subject: String, payload: serde_json::Value| {
        let envelope = common::bus::Envelope::new(subject, payload.to_string());
        env.deps.bus.request(envelope, Duration::from_secs(10))
    };
    let reply =
        ask(env.subjects.delete_messages(), serde_json::json!({"v": 1, "tenant_id": "acme", "message_ids": [id]}))
            .await?;
    assert!(String::from_utf8_lossy(&reply).contains(&id.to_string()), "{reply:?}");
    let reply =
        ask(env.subjects.delete_messages(), serde_json::json!({"v": 1, "tenant_id": "acme", "message_ids": []}))
            .await?;
    assert!(String::from_utf8_lossy(&reply).contains("bad_request"));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    assert!(text.contains(r#"memory_retention_commands_total{command="delete",outcome="ok"} 1"#), "{text}");
    assert!(text.contains(r#"memory_retention_commands_total{command="delete",outcome="bad_request"} 1"#));
    assert!(text.contains("memory_retention_delete_lock_seconds_count 1"), "{text}");
    assert!(text.contains("memory_retention_deleted_messages_total 1"), "{text}");

    // The tombstone stays while young; a run prunes it once it is old and the stream is past it.
    let tombstones =
        || async { sqlx::query_scalar::<_, i64>("SELECT count(*) FROM tombstones").fetch_one(env.store.pool()).await };
    runner.run(&request(false)).await?;
    assert_eq!(tombstones().await?, 1);
    sqlx::query("UPDATE tombstones SET created_at = now() - interval '2 hours'").execute(env.store.pool()).await?;
    runner.run(&request(false)).await?;
    assert_eq!(tombstones().await?, 0);
    env.finish().await
}

#[tokio::test]
async fn a_dry_run_counts_every_candidate_and_lists_the_oldest_twenty() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let mut ids = Vec::new();
    for age in 0..25 {
        ids.push(message(&env, "c", 100 - age, 0.1, false).await?);
    }
    let dry = runner(&env, &[]).await?.run(&request(true)).await?;
    assert_eq!(dry.archived, 25, "{dry:?}");
    assert_eq!(dry.tenants[0].sample_archived, ids[..20], "the oldest twenty, oldest first");
    env.finish().await
}
