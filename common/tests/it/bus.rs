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

#[tokio::test]
async fn a_responder_checks_versions_answers_busy_at_capacity_and_drops_work_nobody_awaits() -> anyhow::Result<()> {
    use common::bus::respond::{Answered, Responder};
    use common::contract::{GetMessageRequest, GetMessageResponse, RemoteErrorCode, Reply, TIMEOUT_HEADER, VERSION};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let env = TestEnv::start().await?;
    let subject = env.subjects.get_message();
    let mut requests = env.deps.bus.serve(subject.clone(), "probe".into()).await?;
    let responder = Responder::new(env.deps.bus.clone(), 1);
    let tasks = tokio_util::task::TaskTracker::new();
    let release = Arc::new(tokio::sync::Notify::new());
    let dropped = Arc::new(AtomicBool::new(false));
    let (outcomes, mut answered) = tokio::sync::mpsc::unbounded_channel::<Answered>();
    let (serving_release, serving_dropped) = (release.clone(), dropped.clone());
    let serving = tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            let (release, dropped, outcomes) = (serving_release.clone(), serving_dropped.clone(), outcomes.clone());
            let handle = move |_: GetMessageRequest, _| async move {
                // Notices being dropped before the end.
                struct Guard(Arc<AtomicBool>);
                impl Drop for Guard {
                    fn drop(&mut self) {
                        self.0.store(true, Ordering::SeqCst);
                    }
                }
                let guard = Guard(dropped);
                release.notified().await;
                std::mem::forget(guard);
                Ok(GetMessageResponse { message: None })
            };
            responder.spawn(&tasks, "get", request, handle, move |a| {
                outcomes.send(a).expect("the test listens");
            });
        }
    });
    let ask = |payload: serde_json::Value, headers: &[(&str, &str)]| {
        let mut envelope = Envelope::new(subject.clone(), payload.to_string());
        for (k, v) in headers {
            envelope = envelope.with_header(*k, *v);
        }
        let bus = env.deps.bus.clone();
        async move {
            let bytes = bus.request(envelope, Duration::from_secs(5)).await?;
            anyhow::Ok(serde_json::from_slice::<Reply<GetMessageResponse>>(&bytes)?)
        }
    };
    let valid = serde_json::json!({"v": VERSION, "tenant_id": "acme", "message_id": uuid::Uuid::now_v7()});
    let newer = serde_json::json!({"v": 2, "tenant_id": "acme", "message_id": uuid::Uuid::now_v7()});
    let reply = ask(newer, &[]).await?;
    assert!(
        matches!(&reply, Reply::Error(e) if e.code == RemoteErrorCode::BadRequest && e.message.contains("version"))
    );

    // One request holds the only slot; the next is answered busy at once.
    let first = tokio::spawn(ask(valid.clone(), &[]));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let reply = ask(valid.clone(), &[]).await?;
    assert!(matches!(&reply, Reply::Error(e) if e.code == RemoteErrorCode::Busy), "{reply:?}");
    release.notify_one();
    assert!(matches!(first.await??, Reply::Ok(_)));

    // A caller that waits 200 ms: its work is dropped then, and the slot is free again.
    let reply = ask(valid.clone(), &[(TIMEOUT_HEADER, "200")]).await?;
    assert!(matches!(&reply, Reply::Error(e) if e.code == RemoteErrorCode::Unavailable), "{reply:?}");
    assert!(dropped.load(Ordering::SeqCst), "the handler was dropped");
    let mut codes = Vec::new();
    while let Ok(a) = answered.try_recv() {
        codes.push(a.error);
    }
    assert_eq!(
        codes,
        [Some(RemoteErrorCode::BadRequest), Some(RemoteErrorCode::Busy), None, Some(RemoteErrorCode::Unavailable)]
    );
    serving.abort();
    env.finish().await
}
