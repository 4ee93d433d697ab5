//! deploy/nats/nats.conf on a real nats-server: a tenant's user publishes only on its own ingest
//! subjects, reads only its own inboxes, and gets JetStream's acks; the services' user does its
//! work.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::ConnectOptions;
use futures::StreamExt;

struct Server {
    url: String,
    _child: tokio::process::Child,
    store: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

async fn start() -> anyhow::Result<Server> {
    let binary = std::env::var("MEMORY_TEST_NATS_SERVER")
        .context("MEMORY_TEST_NATS_SERVER is not set: run scripts/test.sh, or export $(scripts/services.sh env)")?;
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/nats/nats.conf");
    let port = common::testing::free_addr()?.port();
    let monitor = common::testing::free_addr()?.port();
    let store = std::env::temp_dir().join(format!("nats-permissions-{}", uuid::Uuid::now_v7().simple()));
    let child = tokio::process::Command::new(binary)
        .args(["-c", config, "-a", "127.0.0.1", "-p", &port.to_string(), "-m", &monitor.to_string()])
        .arg("-sd")
        .arg(&store)
        .env("MEMORY_SERVICE_NATS_PASSWORD", "service-pw")
        .env("TENANT_ACME_NATS_PASSWORD", "acme-pw")
        .env("TENANT_GLOBEX_NATS_PASSWORD", "globex-pw")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting nats-server")?;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(Server { url: format!("nats://127.0.0.1:{port}"), _child: child, store });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::bail!("nats-server did not start with deploy/nats/nats.conf")
}

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
    let server = start().await?;
    let service = connect(&server, "memory-service", "service-pw", "_INBOX").await?;
    let acme = connect(&server, "tenant-acme", "acme-pw", "_INBOX_acme").await?;
    assert!(connect(&server, "tenant-acme", "wrong", "_INBOX_acme").await.is_err(), "a wrong password is refused");

    let mut ingest = service.subscribe("mem.v1.ingest.>").await?;
    // The subscription is live once it receives the service's own probe.
    service.publish("mem.v1.ingest.probe", "probe".into()).await?;
    assert_eq!(until(&mut ingest, "probe").await?, ["probe"]);
    acme.publish("mem.v1.ingest.acme", "acme's own".into()).await?;
    acme.publish("mem.v1.ingest.acme.0193d1d0-0000-7000-8000-000000000000", "acme's own, with an id".into()).await?;
    acme.publish("mem.v1.ingest.globex", "posing as globex".into()).await?;
    acme.publish("mem.v1.search", "asking the searcher".into()).await?;
    acme.publish("mem.v1.ingest.acme", "sentinel".into()).await?;
    acme.flush().await?;
    let got = until(&mut ingest, "sentinel").await?;
    assert_eq!(got, ["acme's own", "acme's own, with an id", "sentinel"], "only its own ingest subjects get through");

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
    let server = start().await?;
    let with = |credentials: &str| {
        let url = server.url.replacen("nats://", &format!("nats://{credentials}@"), 1);
        common::config::Config::from_map(&[("MEMORY_NATS_URL".to_owned(), url)].into())
    };
    let subjects = common::contract::Subjects::new("mem".to_owned());
    let bus = common::bus::NatsBus::connect(&with("memory-service:service-pw")?.nats, subjects.clone()).await?;
    common::bus::Bus::ping(&bus).await?;
    // Percent-encoded, as a URL requires for `@`, `:` or `/` in a password: decoded before use.
    let wrong = common::bus::NatsBus::connect(&with("memory-service:service%2Dpw%40x")?.nats, subjects.clone()).await;
    let err = wrong.err().context("a wrong password must be refused")?;
    let shown = format!("{err:#}");
    assert!(!shown.contains("service-pw@x") && !shown.contains("service%2Dpw"), "the password leaks: {shown}");
    assert!(shown.contains("nats://127.0.0.1:"), "{shown}");
    assert!(common::bus::NatsBus::connect(&with("memory-service:service%2Dpw")?.nats, subjects).await.is_ok());
    Ok(())
}
