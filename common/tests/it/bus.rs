use std::time::Duration;

use common::bus::{BusError, ConsumerSpec, Disposition, Envelope, Rejection};
use common::contract::{DEAD_CODE_HEADER, StreamKind};
use common::testing::TestEnv;
use futures::StreamExt;

fn spec(env: &TestEnv) -> ConsumerSpec {
    ConsumerSpec {
        stream: StreamKind::Ingest,
        durable: "probe".into(),
        filter: env.subjects.ingest_all(),
        ack_wait: Duration::from_secs(1),
        max_ack_pending: 100,
        max_deliver: 10,
    }
}

#[tokio::test]
async fn publishes_are_deduplicated_by_id_and_settled_as_told() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let bus = &env.deps.bus;
    let subject = format!("{}.v1.ingest.acme", env.subjects.prefix());
    let first = bus.publish(Envelope::new(subject.clone(), "one"), Some("id-1")).await?;
    let again = bus.publish(Envelope::new(subject.clone(), "one"), Some("id-1")).await?;
    assert!(!first.duplicate && again.duplicate);
    bus.publish(Envelope::new(subject.clone(), "two"), Some("id-2")).await?;
    bus.publish(Envelope::new(subject.clone(), "three"), Some("id-3")).await?;

    let mut consumer = bus.consumer(&spec(&env)).await?;
    let mut batch = consumer.fetch(10, Duration::from_millis(500)).await?;
    assert_eq!(batch.len(), 3);
    let third = batch.pop().unwrap();
    let second = batch.pop().unwrap();
    batch.pop().unwrap().settle(Disposition::Ack).await?;
    second.settle(Disposition::Retry(Some(Duration::from_millis(10)))).await?;
    third.settle(Disposition::Reject(Rejection { code: "probe", reason: "testing".into() })).await?;

    let redelivered = consumer.fetch(10, Duration::from_millis(500)).await?;
    assert_eq!(redelivered.len(), 1);
    assert_eq!(&redelivered[0].message.payload[..], b"two");
    assert_eq!(redelivered[0].delivered, 2);
    redelivered.into_iter().next().unwrap().settle(Disposition::Ack).await?;

    let dead = bus.last_on_subject(StreamKind::Dead, &env.subjects.dead("acme")).await?.expect("dead letter").message;
    assert_eq!(&dead.payload[..], b"three");
    assert_eq!(dead.header(DEAD_CODE_HEADER), Some("probe"));
    let state = bus.consumer_state(StreamKind::Ingest, "probe").await?;
    assert_eq!((state.pending, state.ack_pending), (0, 0));
    // The work queue forgets acked messages: nothing is left to look up.
    assert!(bus.last_on_subject(StreamKind::Ingest, &subject).await?.is_none());
    env.finish().await
}

#[tokio::test]
async fn requests_reach_one_member_of_a_queue_group_and_fail_fast_without_one() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let bus = env.deps.bus.clone();
    let subject = format!("{}.v1.echo", env.subjects.prefix());
    let err = bus.request(Envelope::new(subject.clone(), "x"), Duration::from_secs(2)).await.unwrap_err();
    assert!(matches!(err, BusError::NoResponders { .. }), "{err:?}");

    let mut requests = bus.serve(subject.clone(), "g".into()).await?;
    let (responder, shutdown) = (bus.clone(), env.shutdown.clone());
    env.tasks.spawn(async move {
        while let Some(Some(r)) = shutdown.run_until_cancelled(requests.next()).await {
            let reply = r.reply.unwrap();
            responder.respond(&reply, r.message.payload.clone()).await.unwrap();
        }
    });
    let reply = bus.request(Envelope::new(subject, "ping"), Duration::from_secs(2)).await?;
    assert_eq!(&reply[..], b"ping");
    env.finish().await
}
