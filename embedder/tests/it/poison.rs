//! Poison events from direct publishers: whatever they carry, each one ends in the dead-letter
//! stream (cut to what it takes, with only our headers) and ingest never stalls for anyone else.

use common::bus::Envelope;
use common::contract::{
    DEAD_CODE_HEADER, DEAD_PAYLOAD_MAX, DEAD_TRUNCATED_HEADER, MessageReceived, StreamKind, VERSION,
};
use common::domain::{MessageId, MessageInput};
use common::testing::TestEnv;

use crate::support::{spawn_embedder, until_status};

/// Events of each hostile kind.
const HOSTILE: usize = 300;
/// Events near the largest message NATS takes.
const LARGE: usize = 20;

#[tokio::test]
async fn poison_events_are_dead_lettered_and_never_stall_ingest() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let _embedder = spawn_embedder(&env).await?;
    let bus = &env.deps.bus;
    let acme = format!("{}.v1.ingest.acme", env.subjects.prefix());
    // A header the ingest stream accepts and any other stream refuses: a dead letter that kept
    // it could never be published.
    let expected = ("Nats-Expected-Stream", env.subjects.stream(StreamKind::Ingest));
    for i in 0..HOSTILE {
        let envelope = Envelope::new(acme.clone(), format!("not json {i}")).with_header(expected.0, &expected.1);
        bus.publish(envelope, None).await?;
    }
    for i in 0..HOSTILE {
        // Valid JSON, but for another tenant than the subject's.
        let event = MessageReceived {
            v: VERSION,
            message: MessageInput {
                tenant_id: "globex".into(),
                conversation_id: "c".into(),
                role: "user".into(),
                content: format!("misrouted {i}"),
                ..MessageInput::default()
            },
            importance: None,
        };
        let envelope = Envelope::new(acme.clone(), serde_json::to_vec(&event)?).with_header(expected.0, &expected.1);
        bus.publish(envelope, None).await?;
    }
    // So large that a copy with the dead-letter headers would not fit in a NATS message.
    let max_payload = env.nats.client().server_info().max_payload;
    for _ in 0..LARGE {
        bus.publish(Envelope::new(acme.clone(), vec![b'x'; max_payload - 1024]), None).await?;
    }

    // Another tenant's message, sent after all of them, is stored and embedded.
    let id = MessageId::new();
    let event = MessageReceived {
        v: VERSION,
        message: MessageInput {
            message_id: Some(id.to_string()),
            tenant_id: "globex".into(),
            conversation_id: "c".into(),
            role: "user".into(),
            content: "still flowing".into(),
            ..MessageInput::default()
        },
        importance: None,
    };
    let globex = format!("{}.v1.ingest.globex", env.subjects.prefix());
    bus.publish(Envelope::new(globex, serde_json::to_vec(&event)?), None).await?;
    until_status(&env, id, "embedded").await?;

    // Every poison event is a dead letter, and the consumer has nothing left in hand.
    let total = (2 * HOSTILE + LARGE) as u64;
    env.eventually(|| async {
        let dead = bus.stream_state(StreamKind::Dead).await?.last_sequence;
        anyhow::ensure!(dead == total, "{dead} of {total} dead letters");
        let state = bus.consumer_state(StreamKind::Ingest, env.subjects.embedder_consumer()).await?;
        anyhow::ensure!(state.pending == 0 && state.ack_pending == 0, "{state:?}");
        Ok(())
    })
    .await?;
    let stream = env.nats.jetstream().get_stream(env.subjects.stream(StreamKind::Dead)).await?;
    let mut truncated = 0;
    for sequence in 1..=total {
        let dead = stream.get_raw_message(sequence).await?;
        assert!(dead.headers.get("Nats-Expected-Stream").is_none(), "a publisher's header was kept");
        assert!(dead.headers.get(DEAD_CODE_HEADER).is_some());
        if let Some(size) = dead.headers.get(DEAD_TRUNCATED_HEADER) {
            assert_eq!(size.as_str(), (max_payload - 1024).to_string());
            assert_eq!(dead.payload.len(), DEAD_PAYLOAD_MAX);
            truncated += 1;
        }
    }
    assert_eq!(truncated, LARGE, "every large payload is cut and marked");
    env.finish().await
}

#[tokio::test]
async fn an_event_that_cannot_be_dead_lettered_is_terminated_not_redelivered_forever() -> anyhow::Result<()> {
    let env = TestEnv::start_with(|vars| {
        vars.insert("MEMORY_EMBEDDER_MAX_DELIVERIES".into(), "2".into());
    })
    .await?;
    let _embedder = spawn_embedder(&env).await?;
    // No dead-letter stream: every dead-letter publish fails.
    env.nats.jetstream().delete_stream(env.subjects.stream(StreamKind::Dead)).await?;
    let acme = format!("{}.v1.ingest.acme", env.subjects.prefix());
    for i in 0..50 {
        env.deps.bus.publish(Envelope::new(acme.clone(), format!("not json {i}")), None).await?;
    }
    // Tried again once (the publish may have failed for a moment), then given up on: nothing is
    // left pending or in hand, and the stream holds none of them.
    env.eventually(|| async {
        let state = env.deps.bus.consumer_state(StreamKind::Ingest, env.subjects.embedder_consumer()).await?;
        anyhow::ensure!(state.pending == 0 && state.ack_pending == 0, "{state:?}");
        let ingest = env.deps.bus.stream_state(StreamKind::Ingest).await?;
        anyhow::ensure!(ingest.first_sequence > ingest.last_sequence, "{ingest:?}");
        Ok(())
    })
    .await?;
    env.finish().await
}
