//! Nothing acknowledged is lost when Postgres crashes, on a cluster with durable settings (the
//! ones `scripts/run-local.sh`, compose and Kubernetes use). The test cluster runs with fsync and
//! synchronous_commit off, where the same crashes lose acknowledged messages: the embedder acks an
//! event once its commit returns, and such a commit may not have reached the write-ahead log.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use common::bus::Envelope;
use common::testing::{Process, TestEnv, free_addr};
use serde_json::json;

use crate::MEMORY;

/// The unprivileged user PostgreSQL runs as when the tests run as root (`scripts/services.sh`).
const PG_USER: &str = "memtest";

/// A throwaway PostgreSQL cluster with PostgreSQL's durable defaults, removed on drop.
struct Cluster {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
}

impl Cluster {
    fn start() -> anyhow::Result<Self> {
        let bin = PathBuf::from(std::env::var("MEMORY_TEST_PG_BIN").context(
            "MEMORY_TEST_PG_BIN is not set: run through scripts/test.sh, or export $(scripts/services.sh env)",
        )?);
        let data = std::env::temp_dir().join(format!("memory-durable-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&data)?;
        let cluster = Self { bin, data, port: free_addr()?.port() };
        if is_root() {
            run(Command::new("chown").arg(format!("{PG_USER}:{PG_USER}")).arg(&cluster.data))?;
        }
        cluster.pg("initdb", &["-D", &cluster.dir(), "-U", "postgres", "--auth=trust", "-E", "UTF8"])?;
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n",
            cluster.port,
            cluster.dir()
        );
        let path = cluster.data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&path)?;
        text.push_str(&conf);
        std::fs::write(&path, text)?;
        cluster.up()?;
        Ok(cluster)
    }

    fn dir(&self) -> String {
        self.data.display().to_string()
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn pg(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        let program = self.bin.join(tool);
        let mut command = if is_root() {
            let mut c = Command::new("setpriv");
            c.args(["--reuid", PG_USER, "--regid", PG_USER, "--init-groups", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        run(command.args(args))
    }

    fn up(&self) -> anyhow::Result<()> {
        let log = self.data.join("server.log").display().to_string();
        self.pg("pg_ctl", &["-D", &self.dir(), "-l", &log, "-w", "-t", "60", "start"])
    }

    /// Like a power cut for the server processes: no checkpoint, no flush of what is buffered.
    fn crash(&self) -> anyhow::Result<()> {
        self.pg("pg_ctl", &["-D", &self.dir(), "-m", "immediate", "-w", "stop"])
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.pg("pg_ctl", &["-D", &self.dir(), "-m", "immediate", "-w", "stop"]);
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let output = command.output().with_context(|| format!("running {command:?}"))?;
    anyhow::ensure!(
        output.status.success(),
        "{command:?}: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

#[tokio::test]
async fn acknowledged_messages_survive_postgres_crashes_on_a_durable_cluster() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let env = TestEnv::start().await?;
    let mut vars = env.vars.clone();
    vars.insert("MEMORY_DATABASE_URL".into(), cluster.url());
    vars.insert("MEMORY_METRICS_ADDR".into(), free_addr()?.to_string());
    vars.insert("MEMORY_EMBEDDER_BATCH_SIZE".into(), "32".into());
    let embedder = Process::spawn(MEMORY, &["embedder"], &vars)?;

    // Publish steadily (each publish returns once JetStream stored it: the gateway's 202) while
    // Postgres is crash-stopped and restarted under the embedder three times.
    const MESSAGES: usize = 3_000;
    let subject = format!("{}.v1.ingest.acme", env.subjects.prefix());
    let bus = env.deps.bus.clone();
    let publishing = tokio::spawn(async move {
        for i in 0..MESSAGES {
            let payload = json!({"v": 1, "tenant_id": "acme", "conversation_id": "c", "role": "user",
                "content": format!("durable message {i}")});
            bus.publish(Envelope::new(subject.clone(), payload.to_string()), None).await?;
            if i % 100 == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        anyhow::Ok(())
    });
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        cluster.crash()?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        cluster.up()?;
    }
    publishing.await??;

    let pool = sqlx::PgPool::connect(&cluster.url()).await?;
    // Redeliveries after the crashes back off for up to some seconds each.
    env.eventually_within(Duration::from_secs(120), || async {
        let (rows, distinct): (i64, i64) =
            sqlx::query_as("SELECT count(*), count(DISTINCT content) FROM messages").fetch_one(&pool).await?;
        anyhow::ensure!(rows == MESSAGES as i64, "{rows} of {MESSAGES} stored");
        anyhow::ensure!(distinct == rows, "duplicates: {rows} rows, {distinct} distinct");
        Ok(())
    })
    .await?;
    assert!(embedder.terminate().await?.success());
    pool.close().await;
    drop(cluster);
    env.finish().await
}
