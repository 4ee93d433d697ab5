//! deploy/nats/nats.conf on a real nats-server: a tenant's user publishes only on its own ingest
//! subjects, reads only its own inboxes, and gets JetStream's acks; the services' user does its
//! work.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::ConnectOptions;
use futures::StreamExt;

use common::testing::nats::ConfiguredNats as Server;

async fn connect(server: &Server, user: &str, password: &str, inbox: &str) -> anyhow::Result<async_nats::Client> {
    Ok(ConnectOptions::with_user_and_password(user.into(), password.into())
        .custom_inbox_prefix(inbox)
        .connect(&server.url)
        .await?)
}

/// Everything a subscription receives up to and including `sentinel` (published last by the same
/// client, so nothing published before it can still be on its way).
async fn until(sub: &mut async_nats::Subscriber, sentinel: &str) -> anyhow::Result<Vec<String>> {
    let mut got = Vec::new();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .context("the sentinel never arrived")?
            .context("subscription closed")?;
        let text = String::from_utf8_lossy(&m.payload).into_owned();
        let done = text == sentinel;
        got.push(text);
        if done {
            return Ok(got);
        }
    }
}

#[tokio::test]
async fn a_tenant_user_publishes_only_its_own_messages() -> anyhow::Result<()> {
    let server = Server::start().await?;
    let service = connect(&server, "memory-service", "memory-service-pw", "_INBOX").await?;
    let acme = connect(&server, "tenant-acme", "tenant-acme-pw", "_INBOX_acme").await?;
    assert!(connect(&server, "tenant-acme", "wrong", "_INBOX_acme").await.is_err(), "a wrong password is refused");

    let mut ingest = service.subscribe("mem.v1.ingest.>").await?;
    // The subscription is live once it receives the service's own probe.
    service.publish("mem.v1.ingest.probe", "probe".into()).await?;
    assert_eq!(until(&mut ingest, "probe").await?, ["probe"]);
    acme.publish("mem.v1.ingest.acme", "acme's own".into()).await?;
    // A subject per message would escape the per-tenant quota: the id goes in the payload.
    acme.publish("mem.v1.ingest.acme.0193d1d0-0000-7000-8000-000000000000", "acme's, with an id".into()).await?;
    acme.publish("mem.v1.ingest.globex", "posing as globex".into()).await?;
    acme.publish("mem.v1.search", "asking the searcher".into()).await?;
    acme.publish("mem.v1.ingest.acme", "sentinel".into()).await?;
    acme.flush().await?;
    let got = until(&mut ingest, "sentinel").await?;
    assert_eq!(got, ["acme's own", "sentinel"], "only its own ingest subject gets through");

    // It cannot listen to events, nor to other clients' inboxes (checked below, once a later
    // message has reached it).
    let mut events = acme.subscribe("mem.v1.events.>").await?;
    let mut inboxes = acme.subscribe("_INBOX.>").await?;
    acme.flush().await?;
    service.publish("mem.v1.events.globex.stored.x", "globex's event".into()).await?;
    service.publish("_INBOX.someone", "someone's reply".into()).await?;
    service.flush().await?;

    // Through JetStream: the services create the stream; the tenant's publish is acknowledged on
    // its own inbox, and a publish for another tenant never is.
    let js = async_nats::jetstream::new(service.clone());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "MEMORY_INGEST".into(),
        subjects: vec!["mem.v1.ingest.>".into()],
        ..Default::default()
    })
    .await?;
    let mut tenant_js = async_nats::jetstream::new(acme.clone());
    tenant_js.set_timeout(Duration::from_millis(500));
    let ack = tenant_js.publish("mem.v1.ingest.acme", "stored".into()).await?.await?;
    assert_eq!(ack.stream, "MEMORY_INGEST");
    // The ack came on its own inbox after the event and the reply above: neither reached it.
    let nothing = |sub: &mut async_nats::Subscriber| futures::FutureExt::now_or_never(sub.next()).is_none();
    assert!(nothing(&mut events), "it received an event");
    assert!(nothing(&mut inboxes), "it received another client's reply");
    let refused = tenant_js.publish("mem.v1.ingest.globex", "not stored".into()).await;
    let refused = match refused {
        Ok(future) => future.await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "no ack for another tenant's subject");
    let info = js.get_stream("MEMORY_INGEST").await?.cached_info().state.messages;
    assert_eq!(info, 1, "only acme's message is in the stream");
    Ok(())
}

#[tokio::test]
async fn the_services_authenticate_with_the_user_and_password_in_memory_nats_url() -> anyhow::Result<()> {
    let server = Server::start().await?;
    let with = |credentials: &str| {
        let url = server.url.replacen("nats://", &format!("nats://{credentials}@"), 1);
        common::config::Config::from_map(&[("MEMORY_NATS_URL".to_owned(), url)].into())
    };
    let subjects = common::contract::Subjects::new("mem".to_owned());
    let bus = common::bus::NatsBus::connect(&with("memory-service:memory-service-pw")?.nats, subjects.clone()).await?;
    common::bus::Bus::ping(&bus).await?;
    // Percent-encoded, as a URL requires for `@`, `:` or `/` in a password: decoded before use.
    let wrong =
        common::bus::NatsBus::connect(&with("memory-service:memory-service%2Dpw%40x")?.nats, subjects.clone()).await;
    let err = wrong.err().context("a wrong password must be refused")?;
    let shown = format!("{err:#}");
    assert!(!shown.contains("service-pw@x") && !shown.contains("service%2Dpw"), "the password leaks: {shown}");
    assert!(shown.contains("nats://127.0.0.1:"), "{shown}");
    assert!(common::bus::NatsBus::connect(&with("memory-service:memory-service%2Dpw")?.nats, subjects).await.is_ok());
    Ok(())
}

/// A bus connected as one of the roles' users, with the credentials given apart from the URL.
async fn role_bus(server: &Server, user: &str) -> anyhow::Result<common::bus::NatsBus> {
    let vars = [
        ("MEMORY_NATS_URL", server.url.clone()),
        ("MEMORY_NATS_USER", user.to_owned()),
        ("MEMORY_NATS_PASSWORD", Server::password(user)),
        ("MEMORY_NATS_REQUEST_TIMEOUT_MS", "1000".to_owned()),
    ];
    let config = common::config::Config::from_map(&vars.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect())?;
    Ok(common::bus::NatsBus::connect(&config.nats, common::contract::Subjects::new("mem".to_owned())).await?)
}

#[tokio::test]
async fn each_role_has_only_its_own_subjects() -> anyhow::Result<()> {
    use common::bus::{Bus, Envelope};
    let server = Server::start().await?;
    let retention = role_bus(&server, "retention").await?;
    let embedder = role_bus(&server, "embedder").await?;
    let gateway = role_bus(&server, "gateway").await?;
    let searcher = role_bus(&server, "searcher").await?;
    let subjects = retention.subjects().clone();
    // Retention serves erasure and answers whoever may ask.
    let mut erase = retention.serve(subjects.erase_tenant(), "retention".into()).await?;
    let answering = tokio::spawn(async move {
        let mut asked = 0;
        while let Some(request) = erase.next().await {
            asked += 1;
            if let Some(reply) = request.reply {
                let _ = retention.respond(&reply, "erased".into()).await;
            }
        }
        asked
    });
    async fn ask(bus: &common::bus::NatsBus) -> Result<bytes::Bytes, common::bus::BusError> {
        bus.request(Envelope::new(bus.subjects().erase_tenant(), "{}"), Duration::from_millis(1000)).await
    }
    // (Once retention's subscription has reached the server.)
    let mut answer = ask(&gateway).await;
    for _ in 0..50 {
        if answer.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        answer = ask(&gateway).await;
    }
    assert_eq!(answer?, "erased", "the gateway may ask for an erasure");
    assert!(ask(&embedder).await.is_err(), "the embedder's user cannot ask for an erasure");
    assert!(ask(&searcher).await.is_err(), "the searcher's user cannot ask for an erasure");
    // The searcher cannot write messages, nor the embedder take the gateway's place.
    let ingest = subjects.ingest(&common::domain::TenantId::parse("acme")?, common::domain::MessageId::new());
    assert!(searcher.publish(Envelope::new(ingest.clone(), "{}"), None).await.is_err());
    assert!(embedder.publish(Envelope::new(ingest.clone(), "{}"), None).await.is_err());
    assert!(gateway.publish(Envelope::new(ingest, "{}"), None).await.is_ok());
    drop(answering);
    Ok(())
}

#[tokio::test]
async fn a_tenant_flooding_its_subject_is_refused_while_another_tenant_publishes() -> anyhow::Result<()> {
    let server = Server::start().await?;
    // The services create the streams, with a quota of three queued messages per tenant.
    let vars = [
        ("MEMORY_NATS_URL", server.url.clone()),
        ("MEMORY_NATS_USER", "memory-service".to_owned()),
        ("MEMORY_NATS_PASSWORD", Server::password("memory-service")),
        ("MEMORY_INGEST_MAX_PER_TENANT", "3".to_owned()),
        ("MEMORY_INGEST_MAX_MESSAGE_BYTES", (64 << 10).to_string()),
    ];
    let config = common::config::Config::from_map(&vars.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect())?;
    common::bus::NatsBus::connect(&config.nats, common::contract::Subjects::new("mem".to_owned())).await?;
    let js = |client: async_nats::Client| {
        let mut js = async_nats::jetstream::new(client);
        js.set_timeout(Duration::from_secs(2));
        js
    };
    let acme = js(connect(&server, "tenant-acme", "tenant-acme-pw", "_INBOX_acme").await?);
    let globex = js(connect(&server, "tenant-globex", "tenant-globex-pw", "_INBOX_globex").await?);
    let publish = |js: &async_nats::jetstream::Context, subject: &'static str, payload: Vec<u8>| {
        let js = js.clone();
        async move {
            match js.publish(subject, payload.into()).await {
                Ok(ack) => ack.await.is_ok(),
                Err(_) => false,
            }
        }
    };
    for n in 0..3 {
        assert!(publish(&acme, "mem.v1.ingest.acme", vec![b'a'; 10]).await, "acme's message {n} is queued");
    }
    assert!(!publish(&acme, "mem.v1.ingest.acme", vec![b'a'; 10]).await, "acme's fourth is refused");
    assert!(publish(&globex, "mem.v1.ingest.globex", vec![b'g'; 10]).await, "globex still publishes");
    assert!(
        !publish(&globex, "mem.v1.ingest.globex", vec![b'g'; 65 << 10]).await,
        "a message over the size limit is refused"
    );
    Ok(())
}
