//! Test fixtures: each `TestEnv` gets its own Postgres database, its own subject prefix (so its
//! own streams), its own shutdown token and task tracker, against the real servers started by
//! `scripts/services.sh up` (URLs from `MEMORY_TEST_*`).

pub mod gemini;
pub mod nats;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use sqlx::{AssertSqlSafe, Connection as _};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bus::{Bus, NatsBus};
use crate::config::Config;
use crate::contract::{StreamKind, Subjects};
use crate::deps::Deps;
use crate::store::PgStore;

/// How long `eventually` keeps trying.
pub const EVENTUALLY: Duration = Duration::from_secs(30);

fn required(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| {
        format!("{name} is not set: run `scripts/services.sh up` and `export $(scripts/services.sh env)`, or use scripts/test.sh")
    })
}

/// Replaces the database name in a `postgres://…/name?params` URL.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let base = base.rsplit_once('/').map_or(base, |(head, _)| head);
    match query {
        Some(q) => format!("{base}/{database}?{q}"),
        None => format!("{base}/{database}"),
    }
}

pub struct TestEnv {
    pub config: Config,
    /// The `MEMORY_*` variables `config` was read from, to start a binary with.
    pub vars: BTreeMap<String, String>,
    pub deps: Deps,
    pub subjects: Subjects,
    /// The concrete handles, for tests that reach past the traits.
    pub nats: NatsBus,
    pub store: PgStore,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
    admin_url: String,
    database: String,
}

impl TestEnv {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(|_| {}).await
    }

    /// Starts with extra `MEMORY_*` variables set by `configure`.
    pub async fn start_with(configure: impl FnOnce(&mut BTreeMap<String, String>)) -> anyhow::Result<Self> {
        crate::telemetry::init_for_test();
        let admin_url = required("MEMORY_TEST_DATABASE_URL")?;
        let nats_url = required("MEMORY_TEST_NATS_URL")?;
        // The tail of a v7 UUID is random; its head is a timestamp shared by parallel tests.
        let unique = uuid::Uuid::now_v7().simple().to_string();
        let database = format!("t_{}", &unique[16..]);
        let prefix = format!("t{}", &unique[20..]);

        let mut admin = sqlx::PgConnection::connect(&admin_url).await.context("connecting to the test Postgres")?;
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {database}"))).execute(&mut admin).await?;
        admin.close().await?;

        let mut vars = BTreeMap::from([
            ("MEMORY_DATABASE_URL".to_owned(), with_database(&admin_url, &database)),
            ("MEMORY_NATS_URL".to_owned(), nats_url),
            ("MEMORY_SUBJECT_PREFIX".to_owned(), prefix),
            ("MEMORY_ADMIN_API_KEY".to_owned(), "test-admin-key".to_owned()),
            ("MEMORY_DATABASE_MAX_CONNECTIONS".to_owned(), "4".to_owned()),
            ("MEMORY_EMBEDDER_BATCH_WAIT_MS".to_owned(), "20".to_owned()),
            ("MEMORY_SHUTDOWN_GRACE_SECS".to_owned(), "10".to_owned()),
            ("MEMORY_EMBEDDING_PROVIDER".to_owned(), "hash".to_owned()),
            // Streams reserve their byte limits on the server: tests keep them small.
            ("MEMORY_INGEST_MAX_BYTES".to_owned(), (64 << 20).to_string()),
            ("MEMORY_EVENTS_MAX_BYTES".to_owned(), (64 << 20).to_string()),
            ("MEMORY_DEAD_MAX_BYTES".to_owned(), (16 << 20).to_string()),
        ]);
        configure(&mut vars);
        let config = Config::from_map(&vars)?;
        let subjects = Subjects::new(config.nats.subject_prefix.clone());
        let store = PgStore::connect(config.database_url()?, &config.database).await?;
        let nats = NatsBus::connect(&config.nats, subjects.clone()).await?;
        let deps = Deps { store: Arc::new(store.clone()), bus: Arc::new(nats.clone()), subjects: subjects.clone() };
        Ok(Self {
            config,
            vars,
            deps,
            subjects,
            nats,
            store,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            admin_url,
            database,
        })
    }

    /// Polls `check` until it succeeds, failing with its last error after [`EVENTUALLY`].
    pub async fn eventually<T, F, Fut>(&self, check: F) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = anyhow::Result<T>>,
    {
        self.eventually_within(EVENTUALLY, check).await
    }

    /// Polls `check` until it succeeds, failing with its last error after `within`.
    pub async fn eventually_within<T, F, Fut>(&self, within: Duration, mut check: F) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = anyhow::Result<T>>,
    {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match check().await {
                Ok(v) => return Ok(v),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(e.context(format!("still failing after {within:?}")));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
            }
        }
    }

    /// Waits until the HTTP server at `addr` answers `/readyz` with 200.
    pub async fn until_ready(&self, addr: std::net::SocketAddr) -> anyhow::Result<()> {
        self.eventually(|| async {
            let (status, body) = http_get(addr, "/readyz").await?;
            anyhow::ensure!(status == 200, "{status} {body}");
            Ok(())
        })
        .await
    }

    /// Stops every task, checks the embedder left nothing pending or unacknowledged, then
    /// removes the test's streams and database.
    pub async fn finish(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(Duration::from_secs(30), self.tasks.wait()).await.is_err() {
            bail!("tasks did not stop within 30 s of shutdown");
        }
        if let Ok(state) = self.nats.consumer_state(StreamKind::Ingest, self.subjects.embedder_consumer()).await {
            anyhow::ensure!(state.pending == 0 && state.ack_pending == 0, "the embedder left work behind: {state:?}");
        }
        for kind in [StreamKind::Ingest, StreamKind::Events, StreamKind::Dead] {
            let _ = self.nats.jetstream().delete_stream(self.subjects.stream(kind)).await;
        }
        self.store.pool().close().await;
        let mut admin = sqlx::PgConnection::connect(&self.admin_url).await?;
        sqlx::query(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.database)))
            .execute(&mut admin)
            .await?;
        Ok(())
    }
}

/// A loopback address that was free a moment ago.
pub fn free_addr() -> anyhow::Result<std::net::SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// A plain HTTP/1.1 GET: status and body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    http(addr, "GET", path, &[], None).await
}

/// A plain HTTP/1.1 request with headers and an optional JSON body: status and body.
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    head.push_str(body.unwrap_or_default());
    stream.write_all(head.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).context("no HTTP status line")?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    Ok((status, body))
}

/// One of the service binaries, run as a child process with the test's variables.
pub struct Process {
    child: tokio::process::Child,
    /// What it logged, when started with `spawn_logging`.
    log: Option<tokio::task::JoinHandle<String>>,
}

impl Process {
    /// A service (`memory <role>`, say), its output dropped, logging warnings only.
    pub fn spawn(binary: &str, args: &[&str], vars: &BTreeMap<String, String>) -> anyhow::Result<Self> {
        Self::start(binary, args, vars, std::process::Stdio::null())
    }

    /// A service whose log (stdout, at `MEMORY_LOG` as given in `vars`) is kept; `terminate_logged`
    /// returns it.
    pub fn spawn_logging(binary: &str, args: &[&str], vars: &BTreeMap<String, String>) -> anyhow::Result<Self> {
        use tokio::io::AsyncReadExt;
        let mut child = tokio::process::Command::new(binary)
            .args(args)
            .env_clear()
            .envs(vars)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {binary}"))?;
        let mut stdout = child.stdout.take().context("no stdout")?;
        // Read as it comes, so a verbose log never fills the pipe and blocks the process.
        let log = tokio::spawn(async move {
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text).await;
            text
        });
        Ok(Self { child, log: Some(log) })
    }

    /// Sends SIGTERM, waits for the exit, and returns what the process logged.
    pub async fn terminate_logged(mut self) -> anyhow::Result<(std::process::ExitStatus, String)> {
        let log = self.log.take().context("started without spawn_logging")?;
        let status = self.terminate().await?;
        Ok((status, log.await?))
    }

    /// A command that runs to its end (a subcommand, say); `output` returns what it printed.
    pub fn spawn_with_args(binary: &str, args: &[&str], vars: &BTreeMap<String, String>) -> anyhow::Result<Self> {
        Self::start(binary, args, vars, std::process::Stdio::piped())
    }

    fn start(
        binary: &str,
        args: &[&str],
        vars: &BTreeMap<String, String>,
        stdout: std::process::Stdio,
    ) -> anyhow::Result<Self> {
        let child = tokio::process::Command::new(binary)
            .args(args)
            .env_clear()
            .envs(vars)
            .env("MEMORY_LOG", "warn")
            .stdout(stdout)
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {binary}"))?;
        Ok(Self { child, log: None })
    }

    /// Sends SIGTERM and waits for the exit, at most 30 s.
    pub async fn terminate(mut self) -> anyhow::Result<std::process::ExitStatus> {
        self.signal("TERM").await?;
        Ok(tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .context("no exit within 30 s of SIGTERM")??)
    }

    /// Sends a signal (`TERM`, `KILL`, …) and returns at once.
    pub async fn signal(&self, name: &str) -> anyhow::Result<()> {
        let pid = self.child.id().context("the process already exited")?;
        let status = tokio::process::Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status().await?;
        anyhow::ensure!(status.success(), "kill -{name} {pid} failed");
        Ok(())
    }

    /// Waits for the process to exit on its own; returns its status and what it wrote to stderr.
    pub async fn exit(self) -> anyhow::Result<(std::process::ExitStatus, String)> {
        let output = self.output().await?;
        Ok((output.status, String::from_utf8_lossy(&output.stderr).into_owned()))
    }

    /// Waits for the process to exit on its own; returns everything it wrote.
    pub async fn output(self) -> anyhow::Result<std::process::Output> {
        tokio::time::timeout(Duration::from_secs(60), self.child.wait_with_output())
            .await
            .context("the process did not exit within 60 s")?
            .context("waiting for the process")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn database_names_are_swapped_in_urls() {
        assert_eq!(super::with_database("postgres://u@h:1/postgres", "t_1"), "postgres://u@h:1/t_1");
        assert_eq!(super::with_database("postgres://u@h/x?sslmode=disable", "t"), "postgres://u@h/t?sslmode=disable");
    }
}
