use chrono::Utc;
use common::contract::SpaceRef;
use common::domain::{MessageId, MessageInput, MessageStatus, TenantId};
use common::store::{
    Backfill, Deletes, Edits, IngestWrites, Locks, MessageReads, NewRow, NewVector, SearchReads, Spaces, StoreError,
    VectorQuery,
};
use common::testing::TestEnv;

fn row(tenant: &str, content: &str) -> NewRow {
    let message = MessageInput {
        tenant_id: tenant.into(),
        conversation_id: "c".into(),
        role: "user".into(),
        content: content.into(),
        ..MessageInput::default()
    }
    .validate(Utc::now(), MessageId::new)
    .unwrap();
    NewRow { message, importance: 0.5, origin: None }
}

fn space(model: &str, dimensions: u32) -> SpaceRef {
    SpaceRef { provider: "test".into(), model: model.into(), dimensions }
}

fn unit(dimensions: usize, hot: usize) -> Vec<f32> {
    let mut v = vec![0.0; dimensions];
    v[hot] = 1.0;
    v
}

#[tokio::test]
async fn inserts_are_idempotent_and_say_which_rows_are_new() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let a = row("acme", "first");
    let b = row("acme", "second");
    let first = env.store.insert_messages(std::slice::from_ref(&a)).await?;
    assert_eq!(first.len(), 1);
    assert!(first[0].new);
    assert_eq!(first[0].row.status, MessageStatus::Pending);

    let again = env.store.insert_messages(&[a.clone(), b.clone(), b.clone()]).await?;
    assert_eq!(again.len(), 2);
    for inserted in &again {
        assert_eq!(inserted.new, inserted.row.message_id == b.message.message_id, "{inserted:?}");
    }
    let stored = env.store.get_message(&a.message.tenant_id, a.message.message_id).await?.unwrap();
    assert_eq!(stored.content, "first");
    assert_eq!(stored.tenant_id, TenantId::parse("acme")?);
    env.finish().await
}

#[tokio::test]
async fn concurrent_registrations_agree_on_one_space_and_only_the_first_is_active() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let m1 = space("m1", 4);
    let spaces = futures::future::try_join_all((0..4).map(|_| env.store.register_space(&m1))).await?;
    assert!(spaces.iter().all(|s| s.id == spaces[0].id && s.active), "{spaces:?}");
    let second = env.store.register_space(&space("m2", 8)).await?;
    assert!(!second.active);
    assert_eq!(env.store.active_space().await?.unwrap().id, spaces[0].id);
    env.finish().await
}

#[tokio::test]
async fn vector_search_is_tenant_scoped_and_checks_dimensions() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let s = env.store.register_space(&space("m1", 4)).await?;
    let rows = [row("a", "a0"), row("a", "a1"), row("b", "b0")];
    env.store.insert_messages(&rows).await?;
    let vectors: Vec<NewVector> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| NewVector {
            message_id: r.message.message_id,
            tenant_id: r.message.tenant_id.clone(),
            vector: unit(4, i),
            revision: 0,
        })
        .collect();
    env.store.save_vectors(&s, &vectors).await?;
    let first = &rows[0].message;
    assert_eq!(
        env.store.get_message(&first.tenant_id, first.message_id).await?.unwrap().status,
        MessageStatus::Embedded
    );

    let tenant = TenantId::parse("a")?;
    let query = unit(4, 1);
    let hits = env
        .store
        .search_vectors(
            &s,
            VectorQuery {
                tenant_id: &tenant,
                vector: &query,
                limit: 10,
                filters: &Default::default(),
                ef_search: None,
                exact: false,
            },
        )
        .await?;
    let contents: Vec<&str> = hits.iter().map(|h| h.message.content.as_str()).collect();
    assert_eq!(contents, ["a1", "a0"], "tenant b's row must never appear");
    assert!((hits[0].similarity - 1.0).abs() < 1e-6 && hits[1].similarity.abs() < 1e-6);

    let wrong = [NewVector {
        message_id: rows[0].message.message_id,
        tenant_id: tenant.clone(),
        vector: vec![1.0; 3],
        revision: 0,
    }];
    assert!(matches!(
        env.store.save_vectors(&s, &wrong).await,
        Err(StoreError::Dimensions { expected: 4, got: 3, .. })
    ));
    env.finish().await
}

#[tokio::test]
async fn connecting_to_an_unreachable_server_gives_up_after_the_startup_timeout() -> anyhow::Result<()> {
    // Port 1 on loopback: nothing listens there.
    let vars =
        [("MEMORY_DATABASE_URL", "postgres://postgres@127.0.0.1:1/postgres"), ("MEMORY_STARTUP_TIMEOUT_SECS", "1")];
    let config = common::Config::from_lookup(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned()))?;
    let err = common::Deps::connect(&config).await.err().expect("nothing listens on port 1");
    assert!(matches!(err, common::deps::ConnectError::Store(ref e) if e.is_unreachable()), "{err:?}");
    Ok(())
}

#[tokio::test]
async fn request_statements_are_cancelled_at_their_timeout_and_lifecycle_work_gets_longer() -> anyhow::Result<()> {
    let env = TestEnv::start_with(|vars| {
        vars.insert("MEMORY_DATABASE_STATEMENT_TIMEOUT_MS".into(), "200".into());
    })
    .await?;
    let store = common::store::PgStore::connect(env.config.database_url()?, &env.config.database).await?;
    let err = sqlx::query("SELECT pg_sleep(2)").execute(store.pool()).await.map_err(StoreError::from).unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    // The connection that ran it serves the next statement.
    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(store.pool()).await?;
    assert_eq!(one, 1);
    let mut tx = store.long_work().await?;
    sqlx::query("SELECT pg_sleep(0.5)").execute(&mut *tx).await?;
    tx.commit().await?;
    // The long timeout ends with its transaction.
    let err = sqlx::query("SELECT pg_sleep(2)").execute(store.pool()).await.map_err(StoreError::from).unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    env.finish().await
}

#[tokio::test]
async fn activation_takes_over_statuses_and_retires_the_old_space() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let old = env.store.register_space(&space("old", 4)).await?;
    let new = env.store.register_space(&space("new", 4)).await?;
    assert!(old.active && !new.active);
    let rows: Vec<NewRow> = (0..4).map(|i| row("acme", &format!("m{i}"))).collect();
    env.store.insert_messages(&rows).await?;
    let ids: Vec<MessageId> = rows.iter().map(|r| r.message.message_id).collect();
    let tenant = TenantId::parse("acme")?;
    let vector =
        |id: MessageId| NewVector { message_id: id, tenant_id: tenant.clone(), vector: unit(4, 0), revision: 0 };
    env.store.save_vectors(&old, &ids.iter().map(|id| vector(*id)).collect::<Vec<_>>()).await?;

    // The backfill covered two messages with vectors and refused one; one is still missing.
    let refusal =
        common::store::Failure { message_id: ids[2], tenant_id: tenant.clone(), reason: "refused".into(), revision: 0 };
    let cursor = rows[2].message.key();
    env.store.save_backfill(&new, &[vector(ids[0]), vector(ids[1])], &[refusal], &cursor).await?;
    assert_eq!(env.store.space(new.id).await?.unwrap().backfill_cursor, Some(cursor), "the cursor reads back");
    assert_eq!(env.store.coverage(&new).await?, common::store::Coverage { messages: 4, missing: 1 });
    assert_eq!(env.store.unembedded(&new, None, 10).await?.iter().map(|m| m.message_id).collect::<Vec<_>>(), [ids[3]]);
    assert!(env.store.activate_space(&new, 0).await?.is_none(), "one missing, none allowed: not activated");
    assert!(env.store.active_space().await?.unwrap().id == old.id);

    let leftovers = env.store.activate_space(&new, 1).await?.expect("activated");
    assert_eq!(leftovers.iter().map(|m| m.message_id).collect::<Vec<_>>(), [ids[3]]);
    let store = &env.store;
    let acme = &tenant;
    let status = |id| async move { store.get_message(acme, id).await.map(|m| m.unwrap().status) };
    assert_eq!(status(ids[0]).await?, MessageStatus::Embedded);
    assert_eq!(status(ids[2]).await?, MessageStatus::Failed);
    assert_eq!(status(ids[3]).await?, MessageStatus::Pending, "a leftover waits for its vector");
    let retired = env.store.space(old.id).await?.unwrap();
    assert!(retired.is_retired());

    // The old space takes no more writes; the new one does.
    let err = env.store.save_vectors(&old, &[vector(ids[3])]).await.unwrap_err();
    assert!(matches!(err, StoreError::SpaceInactive(id) if id == old.id), "{err:?}");
    let new = env.store.space(new.id).await?.unwrap();
    env.store.save_vectors(&new, &[vector(ids[3])]).await?;
    assert_eq!(status(ids[3]).await?, MessageStatus::Embedded);
    env.finish().await
}

#[tokio::test]
async fn an_advisory_lock_is_held_until_dropped() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let key = common::store::locks::backfill(42);
    let held = env.store.try_lock(key).await?.expect("free");
    assert!(env.store.try_lock(key).await?.is_none(), "held elsewhere");
    drop(held);
    env.eventually(|| async {
        anyhow::ensure!(env.store.try_lock(key).await?.is_some(), "not released yet");
        Ok(())
    })
    .await?;
    env.finish().await
}

fn from_stream(mut r: NewRow, sequence: u64, published_at: chrono::DateTime<Utc>) -> NewRow {
    r.origin = Some(common::store::Origin { sequence, published_at });
    r
}

#[tokio::test]
async fn tombstones_stop_only_the_events_accepted_before_the_delete() -> anyhow::Result<()> {
    use common::store::{Cutoff, Tombstone};
    let env = TestEnv::start().await?;
    let acme = TenantId::parse("acme")?;
    let t0 = Utc::now() - chrono::Duration::seconds(10);
    let cutoff = Cutoff { sequence: 100, at: Some(t0) };
    let conversation = common::domain::ConversationId::parse("c")?;
    let mut hold = env.store.hold_tenant(&acme).await?;
    hold.tombstone(&[Tombstone::Conversation(conversation)], cutoff).await?;
    hold.commit().await?;

    let old = from_stream(row("acme", "queued before the delete"), 99, t0 - chrono::Duration::seconds(1));
    let newer = from_stream(row("acme", "published after"), 101, t0 + chrono::Duration::seconds(1));
    // A recreated stream starts its sequences over, but its clock moves on.
    let recreated = from_stream(row("acme", "a new stream"), 5, t0 + chrono::Duration::minutes(2));
    let other = from_stream(row("globex", "another tenant"), 50, t0 - chrono::Duration::seconds(1));
    let direct = row("acme", "a direct write");
    let rows = [old.clone(), newer.clone(), recreated.clone(), other.clone(), direct.clone()];
    let stored = env.store.insert_messages(&rows).await?;
    let ids: std::collections::HashSet<MessageId> = stored.iter().map(|i| i.row.message_id).collect();
    assert!(!ids.contains(&old.message.message_id));
    for kept in [&newer, &recreated, &other, &direct] {
        assert!(ids.contains(&kept.message.message_id), "{} was dropped", kept.message.content);
    }
    assert_eq!(env.store.tombstoned(&rows).await?, [old.message.key()]);

    // A message tombstone: the tenant's message of that id.
    let by_id = from_stream(row("acme", "deleted by id"), 7, t0 - chrono::Duration::seconds(5));
    let mut hold = env.store.hold_tenant(&acme).await?;
    hold.tombstone(&[Tombstone::Message(by_id.message.message_id)], cutoff).await?;
    hold.commit().await?;
    assert!(env.store.insert_messages(std::slice::from_ref(&by_id)).await?.is_empty());
    // Another tenant's message of the same id is not stopped by it.
    let mut squatter = by_id.clone();
    squatter.message.tenant_id = TenantId::parse("globex")?;
    assert_eq!(env.store.tombstoned(std::slice::from_ref(&squatter)).await?, []);

    // Pruned once no event in the stream can match (first sequence past it) and old enough.
    assert_eq!(env.store.prune_tombstones(101, Utc::now() - chrono::Duration::hours(1)).await?, 0, "too young");
    assert_eq!(env.store.prune_tombstones(100, Utc::now() + chrono::Duration::seconds(1)).await?, 0, "still matchable");
    assert_eq!(env.store.prune_tombstones(101, Utc::now() + chrono::Duration::seconds(1)).await?, 2);
    env.finish().await
}

#[tokio::test]
async fn a_vector_computed_before_an_edit_is_not_stored() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let s = env.store.register_space(&space("m1", 4)).await?;
    let r = row("acme", "old words");
    let id = r.message.message_id;
    env.store.insert_messages(std::slice::from_ref(&r)).await?;
    let update =
        common::domain::MessageUpdate { content: Some("new words".into()), ..Default::default() }.validate()?;
    let acme = TenantId::parse("acme")?;
    let edited = env.store.update_message(&acme, id, &update, Default::default(), Utc::now()).await?.expect("stored");
    assert!(edited.content_changed);
    assert_eq!((edited.message.revision, edited.message.status), (1, MessageStatus::Pending));
    assert_eq!(edited.message.importance, 0.5, "importance is kept when neither override nor pin changes");
    let stale = NewVector { message_id: id, tenant_id: TenantId::parse("acme")?, vector: unit(4, 0), revision: 0 };
    env.store.save_vectors(&s, &[stale]).await?;
    assert_eq!(
        env.store.get_message(&acme, id).await?.unwrap().status,
        MessageStatus::Pending,
        "the old text's vector is dropped"
    );
    let fresh = NewVector { message_id: id, tenant_id: TenantId::parse("acme")?, vector: unit(4, 0), revision: 1 };
    env.store.save_vectors(&s, &[fresh]).await?;
    assert_eq!(env.store.get_message(&acme, id).await?.unwrap().status, MessageStatus::Embedded);
    env.finish().await
}

#[tokio::test]
async fn two_writers_saving_the_same_vectors_queue_rather_than_deadlock() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let s = env.store.register_space(&space("m1", 4)).await?;
    let rows: Vec<NewRow> = (0..50).map(|i| row("acme", &format!("message {i}"))).collect();
    env.store.insert_messages(&rows).await?;
    let vectors: Vec<NewVector> = rows
        .iter()
        .map(|r| NewVector {
            message_id: r.message.message_id,
            tenant_id: r.message.tenant_id.clone(),
            vector: unit(4, 1),
            revision: 0,
        })
        .collect();
    // An ingest batch and the sweeper (or two replicas) embedding the same messages at once.
    for _ in 0..10 {
        let (a, b) = tokio::join!(env.store.save_vectors(&s, &vectors), env.store.save_vectors(&s, &vectors));
        a?;
        b?;
    }
    for r in &rows {
        let stored = env.store.get_message(&r.message.tenant_id, r.message.message_id).await?.unwrap();
        assert_eq!(stored.status, MessageStatus::Embedded);
    }
    env.finish().await
}

#[tokio::test]
async fn upgrading_to_per_tenant_ids_keeps_vectors_and_refusals() -> anyhow::Result<()> {
    use sqlx::Connection;
    let env = TestEnv::start().await?;
    // A database of its own, at the schema before message ids became per tenant.
    let admin_url = std::env::var("MEMORY_TEST_DATABASE_URL")?;
    let database = format!("{}_upgrade", env.config.database_url()?.rsplit('/').next().unwrap_or("t"));
    let mut admin = sqlx::PgConnection::connect(&admin_url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}"))).execute(&mut admin).await?;
    let url = common::testing::with_database(&admin_url, &database);
    let pool = sqlx::PgPool::connect(&url).await?;
    sqlx::migrate!("./migrations").run_to(7, &pool).await?;
    sqlx::raw_sql(
        "INSERT INTO embedding_spaces (provider, model, dimensions, active) VALUES ('test', 'old', 4, true);
         CREATE TABLE message_vectors_1 (
             message_id uuid PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
             tenant_id text NOT NULL, embedding vector(4) NOT NULL);
         CREATE INDEX message_vectors_1_tenant ON message_vectors_1 (tenant_id);
         INSERT INTO messages (id, tenant_id, conversation_id, role, content, importance, created_at, status) VALUES
             ('00000000-0000-7000-8000-000000000001', 'acme', 'c', 'user', 'embedded before', 0.5, now(), 'embedded'),
             ('00000000-0000-7000-8000-000000000002', 'acme', 'c', 'user', 'refused before', 0.5, now(), 'failed');
         INSERT INTO message_vectors_1 VALUES ('00000000-0000-7000-8000-000000000001', 'acme', '[1,0,0,0]');
         INSERT INTO embedding_failures (space_id, message_id, reason)
             VALUES (1, '00000000-0000-7000-8000-000000000002', 'refused');",
    )
    .execute(&pool)
    .await?;
    pool.close().await;

    let store = common::store::PgStore::connect(&url, &env.config.database).await?;
    let space = store.active_space().await?.expect("kept");
    let acme = TenantId::parse("acme")?;
    let query = VectorQuery {
        tenant_id: &acme,
        vector: &unit(4, 0),
        limit: 5,
        filters: &Default::default(),
        ef_search: None,
        exact: false,
    };
    let hits = store.search_vectors(&space, query).await?;
    assert_eq!(hits.iter().map(|h| h.message.content.as_str()).collect::<Vec<_>>(), ["embedded before"]);
    assert_eq!(store.coverage(&space).await?.missing, 0, "the vector and the refusal are both kept");
    // The same id in another tenant is a new message; deleting the first takes its vector along.
    let mut other = row("globex", "same id, other tenant");
    other.message.message_id = MessageId(uuid::Uuid::parse_str("00000000-0000-7000-8000-000000000001")?);
    assert!(store.insert_messages(std::slice::from_ref(&other)).await?[0].new);
    let mut hold = store.hold_tenant(&acme).await?;
    assert_eq!(hold.delete(&[other.message.message_id]).await?.len(), 1);
    hold.commit().await?;
    let remaining: i64 = sqlx::query_scalar("SELECT count(*) FROM message_vectors_1").fetch_one(store.pool()).await?;
    assert_eq!(remaining, 0);
    assert!(store.get_message(&other.message.tenant_id, other.message.message_id).await?.is_some());
    store.pool().close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {database}"))).execute(&mut admin).await?;
    env.finish().await
}

#[tokio::test]
async fn a_common_word_gives_its_newest_unarchived_matches_in_the_tenant() -> anyhow::Result<()> {
    use common::domain::SearchFilters;
    use common::store::{LexicalQuery, Term, TextQuery};
    let env = TestEnv::start().await?;
    // Every third message of acme mentions the hotel; the newest of them are archived, and
    // globex's newer ones are another tenant's.
    sqlx::query(
        "INSERT INTO messages (id, tenant_id, conversation_id, role, content, importance, created_at, archived_at)
         SELECT gen_random_uuid(), t, 'c', 'user',
                CASE WHEN i % 3 = 0 THEN 'the hotel ' || i ELSE 'small talk ' || i END, 0.5,
                now() - make_interval(secs => i) + CASE WHEN t = 'globex' THEN interval '1 day' ELSE interval '0' END,
                CASE WHEN t = 'acme' AND i < 9 THEN now() END
         FROM generate_series(1, 600) i, unnest(ARRAY['acme', 'globex']) t",
    )
    .execute(env.store.pool())
    .await?;
    let acme = TenantId::parse("acme")?;
    let query = TextQuery::Newest(Term { lexeme: "hotel".into(), weight: 1.5 });
    let filters = SearchFilters::default();
    let hits = env
        .store
        .search_lexical(LexicalQuery {
            tenant_id: &acme,
            query: &query,
            limit: 10,
            filters: &filters,
            similarity_to: None,
        })
        .await?;
    // The 10 newest unarchived: 9, 12, ..., 36, all ranked by the word's weight.
    let expected: Vec<String> = (3..13).map(|k| format!("the hotel {}", k * 3)).collect();
    assert_eq!(hits.iter().map(|h| h.message.content.as_str()).collect::<Vec<_>>(), expected);
    assert!(hits.iter().all(|h| h.rank == 1.5 && h.message.tenant_id == acme));
    env.finish().await
}
