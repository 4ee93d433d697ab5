//! A nats-server of its own running `deploy/nats/nats.conf` (users, permissions, JetStream), for
//! tests of what each NATS user may do.

use std::time::Duration;

use anyhow::Context as _;

/// Every user of `deploy/nats/nats.conf` and the variable its password is read from; the test
/// server's password of each is [`ConfiguredNats::password`].
const USERS: [(&str, &str); 7] = [
    ("memory-service", "MEMORY_SERVICE_NATS_PASSWORD"),
    ("gateway", "GATEWAY_NATS_PASSWORD"),
    ("embedder", "EMBEDDER_NATS_PASSWORD"),
    ("searcher", "SEARCHER_NATS_PASSWORD"),
    ("retention", "RETENTION_NATS_PASSWORD"),
    ("tenant-acme", "TENANT_ACME_NATS_PASSWORD"),
    ("tenant-globex", "TENANT_GLOBEX_NATS_PASSWORD"),
];

pub struct ConfiguredNats {
    pub url: String,
    _child: tokio::process::Child,
    store: std::path::PathBuf,
}

impl Drop for ConfiguredNats {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

impl ConfiguredNats {
    /// Starts nats-server with `deploy/nats/nats.conf` on free loopback ports.
    pub async fn start() -> anyhow::Result<Self> {
        let binary = std::env::var("MEMORY_TEST_NATS_SERVER")
            .context("MEMORY_TEST_NATS_SERVER is not set: run scripts/test.sh, or export $(scripts/services.sh env)")?;
        let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/nats/nats.conf");
        let port = super::free_addr()?.port();
        let monitor = super::free_addr()?.port();
        let store = std::env::temp_dir().join(format!("nats-configured-{}", uuid::Uuid::now_v7().simple()));
        let child = tokio::process::Command::new(binary)
            .args(["-c", config, "-a", "127.0.0.1", "-p", &port.to_string(), "-m", &monitor.to_string()])
            .arg("-sd")
            .arg(&store)
            .envs(USERS.map(|(user, variable)| (variable, Self::password(user))))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting nats-server")?;
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return Ok(Self { url: format!("nats://127.0.0.1:{port}"), _child: child, store });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        anyhow::bail!("nats-server did not start with deploy/nats/nats.conf")
    }

    /// The password of `user` in this server.
    pub fn password(user: &str) -> String {
        format!("{user}-pw")
    }
}
