//! Servers a test owns, to stop, crash and restart under the binary: a PostgreSQL cluster with
//! PostgreSQL's durable defaults, a NATS server with JetStream on disk, and a Redis server.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context as _;
use common::testing::free_addr;

/// The unprivileged user PostgreSQL runs as when the tests run as root (`scripts/services.sh`).
const PG_USER: &str = "memtest";

/// A throwaway PostgreSQL cluster with PostgreSQL's durable defaults, removed on drop.
pub(crate) struct Cluster {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
}

impl Cluster {
    pub(crate) fn start() -> anyhow::Result<Self> {
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
            "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\nmax_connections = 200\n",
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

    pub(crate) fn url(&self) -> String {
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

    pub(crate) fn up(&self) -> anyhow::Result<()> {
        let log = self.data.join("server.log").display().to_string();
        self.pg("pg_ctl", &["-D", &self.dir(), "-l", &log, "-w", "-t", "60", "start"])
    }

    /// Like a power cut for the server processes: no checkpoint, no flush of what is buffered.
    pub(crate) fn crash(&self) -> anyhow::Result<()> {
        self.pg("pg_ctl", &["-D", &self.dir(), "-m", "immediate", "-w", "stop"])
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.pg("pg_ctl", &["-D", &self.dir(), "-m", "immediate", "-w", "stop"]);
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// A server process killed and started again on the same port (and store): NATS with JetStream on
/// disk, or Redis without persistence.
pub(crate) struct Server {
    scheme: &'static str,
    program: String,
    args: Vec<String>,
    port: u16,
    /// Removed on drop.
    store: Option<PathBuf>,
    child: Option<std::process::Child>,
}

impl Server {
    pub(crate) fn nats() -> anyhow::Result<Self> {
        let program = std::env::var("MEMORY_TEST_NATS_SERVER").context(
            "MEMORY_TEST_NATS_SERVER is not set: run through scripts/test.sh, or export $(scripts/services.sh env)",
        )?;
        let store = std::env::temp_dir().join(format!("memory-nats-{}", uuid::Uuid::new_v4().simple()));
        let port = free_addr()?.port();
        let args = ["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd", &store.display().to_string()]
            .map(str::to_owned)
            .to_vec();
        Self { scheme: "nats", program, args, port, store: Some(store), child: None }.started()
    }

    /// Debian's redis-server.
    pub(crate) fn redis() -> anyhow::Result<Self> {
        let port = free_addr()?.port();
        let args = ["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"]
            .map(str::to_owned)
            .to_vec();
        Self { scheme: "redis", program: "redis-server".into(), args, port, store: None, child: None }.started()
    }

    fn started(mut self) -> anyhow::Result<Self> {
        self.up()?;
        Ok(self)
    }

    pub(crate) fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    pub(crate) fn up(&mut self) -> anyhow::Result<()> {
        let child = Command::new(&self.program)
            .args(&self.args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", self.program))?;
        self.child = Some(child);
        wait_port(self.port)
    }

    /// SIGKILL: what the server wrote is on disk (in the page cache), nothing else.
    pub(crate) fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.kill();
        if let Some(store) = &self.store {
            let _ = std::fs::remove_dir_all(store);
        }
    }
}

/// Waits up to 20 s for a loopback port to accept connections.
fn wait_port(port: u16) -> anyhow::Result<()> {
    for _ in 0..400 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    anyhow::bail!("nothing listens on 127.0.0.1:{port} after 20 s")
}

pub(crate) fn is_root() -> bool {
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
